"""docs/config.md is what scripts/config_doc.py makes of configs/schema.py, and a stale
copy is caught."""

import subprocess
import sys

from tests.conftest import ROOT

DOC = ROOT / "docs/config.md"
SCRIPT = ROOT / "scripts/config_doc.py"


def _check(doc) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--doc", str(doc)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_committed_reference_is_current():
    out = _check(DOC)
    assert out.returncode == 0, out.stderr


def test_a_stale_reference_is_caught(tmp_path):
    text = DOC.read_text()
    # A key's row missing, as when a field is added and the doc is not regenerated.
    row = next(line for line in text.splitlines() if line.startswith("| `learner.kl_beta`"))
    stale = tmp_path / "config.md"
    stale.write_text(text.replace(row + "\n", ""))
    out = _check(stale)
    assert out.returncode == 1 and "is stale" in out.stderr
    # A default changed in the schema but not in the doc.
    stale.write_text(text.replace("| `learner.lr` | float | `0.0003` |",
                                  "| `learner.lr` | float | `0.001` |"))
    assert _check(stale).returncode == 1


def _keys(cls, prefix: str) -> list[str]:
    import dataclasses
    import typing

    hints, out = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        out += _keys(hints[f.name], key) if dataclasses.is_dataclass(hints[f.name]) else [key]
    return out


def test_every_key_and_every_renamed_key_is_in_the_reference():
    from configs import Config
    from configs.loader import moved_keys

    text = DOC.read_text()
    keys = _keys(Config, "")
    assert "env.libero.task_ids" in keys and "learner.ppo.gamma" in keys
    for key in keys:
        assert f"| `{key}` |" in text, key
    for old, new in moved_keys().items():
        assert f"| `{old}` | `{new}` |" in text
