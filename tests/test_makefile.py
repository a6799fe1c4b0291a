"""The Makefile's first step: an untested Python is refused with one line, before
anything is installed or created."""

import shutil
import subprocess

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("version", ["3.12", "3.10"])
def test_make_stops_at_once_on_an_untested_python(tmp_path, version):
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    for name in ("Makefile", "pyproject.toml", "constraints.txt", "constraints-vllm.txt",
                 "scripts/install_system_deps.sh"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    # A stand-in interpreter that reports another version; it records any other use.
    fake = tmp_path / "python-fake"
    fake.write_text(f'#!/bin/bash\nif [[ "$*" == *version_info* ]]; then echo {version}; '
                    f'exit 0; fi\necho "$@" >> {tmp_path}/used\n')
    fake.chmod(0o755)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = subprocess.run(["make", "install", f"PYTHON={fake}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    message = [line for line in out.stderr.splitlines() if line.startswith("chunkrl")]
    assert len(message) == 1 and f"is {version}" in message[0] and \
        "make PYTHON=python3.11" in message[0]
    assert "installing system packages" not in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no .venv, nothing used


def test_the_tested_python_is_the_one_pyproject_requires():
    makefile = (ROOT / "Makefile").read_text()
    tested = makefile.split("PYTHON_TESTED := ")[1].split()[0]
    assert f'requires-python = "=={tested}.*"' in (ROOT / "pyproject.toml").read_text()
