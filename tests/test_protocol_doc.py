"""protocol/README.md against the code: its generated blocks are current (and a stale
one is caught), its prose states the code's schema version and error codes, and a client
written from it alone, importing nothing from chunkrl, is served by a real server."""

import ast
import json
import re
import subprocess
import sys

from configs import load_config
from links import wiring
from protocol.codec import SCHEMA_VERSION
from tests.conftest import ROOT, small_overrides
from tests.test_inference import ServerThread

DOC = ROOT / "protocol/README.md"
SCRIPT = ROOT / "scripts/protocol_doc.py"
CLIENT = ROOT / "examples/standalone_client.py"


def _check(doc) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--doc", str(doc)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_committed_doc_is_what_the_script_generates():
    out = _check(DOC)
    assert out.returncode == 0, out.stderr


def test_a_stale_doc_is_caught_naming_the_block(tmp_path):
    text = DOC.read_text()
    # A field dropped from a table, as happened when messages gained fields.
    row = next(line for line in text.splitlines() if line.startswith("| `action_rewards`"))
    stale = tmp_path / "README.md"
    stale.write_text(text.replace(row + "\n", ""))
    out = _check(stale)
    assert out.returncode == 1 and "'messages' is stale" in out.stderr
    # The worked example's bytes of an older schema version.
    old = text.replace("87a6736368656d61" + f"{SCHEMA_VERSION:02x}", "87a6736368656d6101")
    assert old != text
    stale.write_text(old)
    out = _check(stale)
    assert out.returncode == 1 and "'example' is stale" in out.stderr
    # An endpoint's accepted types as they were before evaluation rounds.
    stale.write_text(text.replace("`StopActors`, `EvalRound`, `ErrorReply`",
                                  "`StopActors`, `ErrorReply`"))
    out = _check(stale)
    assert out.returncode == 1 and "'accepts' is stale" in out.stderr


def test_the_prose_states_the_codes_schema_version():
    text = DOC.read_text()
    stated = re.findall(
        r"schema version (\d+)|`schema == (\d+)`|\*\*`(\d+)`\*\*|`schema`\(=(\d+)\)", text)
    versions = {int(next(v for v in match if v)) for match in stated}
    assert len(stated) >= 4 and versions == {SCHEMA_VERSION}


def _sources() -> str:
    return "\n".join(p.read_text() for d in ("protocol", "links", "inference_server", "learner",
                                            "actors")
                     for p in (ROOT / d).glob("*.py"))


def test_every_error_code_the_code_sends_is_documented_and_none_that_it_does_not():
    code = _sources()
    sent = set(re.findall(r'ProtocolError\(\s*"(\w+)"', code))
    sent |= set(re.findall(r'ErrorReply\([^"\n]*"(\w+)"', code))
    sent |= set(re.findall(r'_refuse\([^"\n]*"(\w+)"', code))
    assert {"bad_version", "bad_shape", "bad_request", "retired", "bad_role"} <= sent
    section5 = DOC.read_text().split("## 5.")[1].split("## 6.")[0]
    # A table cell that is one code alone: `| `bad_shape` |`.
    documented = set(re.findall(r"\|\s*`([a-z_]+)`\s*(?=\|)", section5))
    assert sent - documented == set(), "codes the code sends that section 5 does not list"
    for name in documented:  # every documented code is a string the code uses
        assert f'"{name}"' in code, f"section 5 documents {name!r}, which nothing sends"


def test_the_client_imports_nothing_from_chunkrl():
    tree = ast.parse(CLIENT.read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree)
               if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)}
    assert modules <= {"__future__", "argparse", "json", "msgpack", "numpy", "zmq"}, modules


def test_a_client_written_from_the_doc_gets_chunks_and_the_documented_codes(tmp_path):
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml", small_overrides(tmp_path))
    server = ServerThread(cfg)
    try:
        out = subprocess.run(
            [sys.executable, str(CLIENT), "--address", wiring.inference_address(cfg, 0, False),
             "--run", cfg.run.run_id, "--state-dim", str(cfg.model.state_dim),
             "--image-size", str(cfg.env.image_size)],
            cwd=tmp_path, capture_output=True, text=True, timeout=180)
    finally:
        stats = server.close()
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    m = cfg.model
    assert got["reply"] == {"type": "ActionReply", "request_id": 7, "finite": True,
                            "actions_shape": [2, m.num_action_chunks, m.action_dim],
                            "logprobs_shape": [2, m.num_action_chunks, m.action_dim]}
    assert got["errors"] == {
        "old_schema": {"type": "ErrorReply", "code": "bad_version", "request_id": -1},
        "wrong_run": {"type": "ErrorReply", "code": "wrong_run", "request_id": 7},
        "float64_states": {"type": "ErrorReply", "code": "bad_dtype", "request_id": 8},
        "one_description_for_two_rows": {"type": "ErrorReply", "code": "bad_shape",
                                         "request_id": 9},
        "missing_states": {"type": "ErrorReply", "code": "missing_array", "request_id": 10}}
    assert got["after_errors"] == {"type": "ActionReply", "request_id": 11}
    assert stats["rejected"] == 5 and stats["requests"] == 2


def test_the_weights_headers_are_the_codes():
    from links.weights import KEEPALIVE, SHUTDOWN
    section8 = DOC.read_text().split("## 8.")[1].split("## 9.")[0]
    assert f"`[{SHUTDOWN}, 0]`" in section8 and f"`[{KEEPALIVE}, 0]`" in section8
