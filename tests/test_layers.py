"""The wire (protocol/) stands alone: it imports no config, no links, no role."""

import ast

import pytest

from tests.conftest import ROOT

OUTSIDE = {"configs", "links", "actors", "learner", "inference_server", "envs", "models",
           "launcher", "launch", "sft", "demos", "experts", "profiling"}


@pytest.mark.parametrize("path", sorted((ROOT / "protocol").glob("*.py")), ids=lambda p: p.name)
def test_protocol_imports_only_itself_and_libraries(path):
    tree = ast.parse(path.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & OUTSIDE, f"{path.name} imports {sorted(names & OUTSIDE)}"
