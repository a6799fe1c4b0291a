"""scripts/gpu_check.py --dry-run: every section runs on the CPU with tiny shapes, so the
GPU check is known to work before a GPU is lent; the figures it writes are the real
measurements of this run (checked for consistency, not for speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_dry_run_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/gpu_check.py"), "--dry-run",
                           "--batches", "2,4", "--launch-seconds", "8",
                           "--launch-runs", "gloo", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["meta"]["dry_run"] and all("error" not in r[s] for s in
                                        ("matmul", "qwen_oft_3b", "logprob_drift", "weights",
                                         "openvla_oft_7b_lora", "launch"))
    rows = r["qwen_oft_3b"]["batches"]
    assert [row["batch"] for row in rows] == [2, 4]
    # Counted, not estimated: twice the rows, about twice the FLOPs.
    assert 1.8 < rows[1]["flops_per_call"] / rows[0]["flops_per_call"] < 2.2
    assert all(row["forward_chunks_s"] > 0 and row["tflops"] > 0 for row in rows)
    drift = r["logprob_drift"]
    # bf16 against fp32 differs, but by far less than the log-probs themselves.
    assert 0 < drift["server_vs_fp32"]["mean"] < drift["logprob_scale"]
    w = r["weights"]
    assert w["bytes"] > 0 and w["gloo"]["error"] is None and w["gloo"]["seconds"] > 0
    assert "GPU" in w["ipc"]["error"]  # CUDA IPC is reported as not run, not faked
    assert w["shared"]["error"] is None and w["shared"]["seconds"] > 0  # /dev/shm on CPU
    vla = r["openvla_oft_7b_lora"]
    assert 0 < vla["trainable"] < vla["params"] and vla["tries"][-1]["step_s"] > 0
    assert vla["tries"][-1]["estimate_gib"] > 0 and "activations" in vla["tries"][-1]["estimate"]
    got = r["launch"]["gloo"]  # on the CPU the default backend is gloo too
    assert got["exit"] == 0 and got["updates"] > 0 and got["trained_twice"] == 0, got
