"""Every command in the README's and docs' shell blocks names things that exist: scripts,
configs, make targets, launch.py flags, and config keys (its overrides load)."""

import re
import shlex
import subprocess
import sys

import pytest

from configs import ConfigError, load_config
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
STARTS = ("python ", ".venv/bin/python ", "make ", "sbatch ", "bash ")


def _shell_blocks(text: str):
    """The bodies of the fenced blocks marked bash or sh, or not marked at all."""
    block, kind = None, ""
    for line in text.splitlines():
        if line.startswith("```"):
            if block is None:
                block, kind = [], line[3:].strip()
            else:
                if kind in ("", "bash", "sh"):
                    yield "\n".join(block)
                block = None
        elif block is not None:
            block.append(line)


def _commands():
    for doc in DOCS:
        for block in _shell_blocks(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("for k in 0 1 2 3; do").strip()
                if line.startswith(STARTS):
                    yield doc.name, line.split(" #")[0].rstrip(" &")


COMMANDS = list(_commands())


def test_the_docs_have_commands_to_check():
    assert len(COMMANDS) >= 10


@pytest.fixture(scope="module")
def launch_flags() -> set:
    out = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    return set(re.findall(r"(--[a-z-]+)", out.stdout))


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[c for _, c in COMMANDS])
def test_a_documented_command_names_what_exists(doc, command, launch_flags):
    words = shlex.split(command.replace("$k", "0"))
    if words[0] == "sbatch" and "--wrap" in words:  # the job's own command is checked
        words = shlex.split(words[words.index("--wrap") + 1])
    if words[0] == "make":
        targets = re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert all(w in targets for w in words[1:] if "=" not in w), (doc, command)
        return
    files = [w for w in words[1:] if re.fullmatch(r"[\w./-]+\.(py|yaml|sbatch|sh)", w)]
    for path in files:
        assert (ROOT / path).is_file(), f"{doc}: {command}: {path} does not exist"
    config = words[words.index("--config") + 1] if "--config" in words else None
    if words[0] == "sbatch":
        config = files[1]
    if files and files[0] == "launch.py":
        flags = {w.split("=")[0] for w in words if w.startswith("--")}
        assert flags <= launch_flags, f"{doc}: {command}: unknown flag(s) {flags - launch_flags}"
    overrides = [w for w in words[1:] if re.fullmatch(r"[a-z_]+\.[a-z_.]+=.*", w)]
    if config or overrides:
        try:
            load_config(ROOT / config if config else None, overrides)
        except ConfigError as err:
            pytest.fail(f"{doc}: {command}: {err}")
