"""scripts/slurm_chunkrl.sbatch, checked without a cluster: its resource requests per
role (parsed), and the commands it starts, run with stand-ins for srun, scontrol and
hostname that record them (tests/test_slurm_cluster.py runs it on a real Slurm)."""

import re
import shlex
import subprocess

from configs import load_config
from tests.conftest import ROOT

SCRIPT = ROOT / "scripts/slurm_chunkrl.sbatch"


def _components() -> list[str]:
    """The #SBATCH options of each heterogeneous component, in order."""
    parts, current = [], []
    for line in SCRIPT.read_text().splitlines():
        if line.startswith("#SBATCH"):
            option = line[len("#SBATCH"):].strip()
            if option == "hetjob":
                parts.append(" ".join(current))
                current = []
            elif option.startswith("--nodes"):  # a component's own requests
                current.append(option)
    return parts + [" ".join(current)]


def test_the_learner_and_server_get_a_gpu_and_the_actors_cpus_only():
    learner, server, actors = _components()
    assert "--gpus-per-task=1" in learner and "--gpus-per-task=1" in server
    assert "gpu" not in actors and "--cpus-per-task=8" in actors


def _stub(bin_dir, name, body):
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def test_the_script_starts_every_role_from_one_config_with_the_learner_address(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    # srun records its options and runs the command after them; launch.py is echoed.
    _stub(bin_dir, "srun", f'echo "srun $*" >> {log}\n'
          'while [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    _stub(bin_dir, "scontrol", 'echo "$3"\n')
    _stub(bin_dir, "hostname", 'echo "10.1.2.3 fe80::1"\n')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": f"echo {log.name}:",
           "ACTORS": "3", "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST_HET_GROUP_0": "gpu-a"}
    config = "configs/synthetic_grpo.yaml"
    out = subprocess.run(["bash", str(SCRIPT), config, "run.total_updates=5"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "learner on gpu-a (10.1.2.3), 3 actors" in out.stdout
    steps = log.read_text().splitlines()
    starts = [line.split(":", 1)[1].split() for line in out.stdout.splitlines()
              if line.startswith(log.name)]
    roles = sorted(" ".join(a[a.index("--role"):]) for a in starts)
    assert roles == ["--role actor --index 0", "--role actor --index 1",
                     "--role actor --index 2", "--role inference --index 0", "--role learner"]
    for args in starts:
        assert args[:3] == ["launch.py", "--config", config]
        overrides = args[3:args.index("--role")]
        assert "network.learner_host=10.1.2.3" in overrides
        assert "network.bind_host=10.1.2.3" in overrides
        cfg = load_config(ROOT / config, overrides)  # every override is a real key
        assert (cfg.run.name, cfg.run.log_dir, cfg.actor.num_actors,
                cfg.run.total_updates) == ("chunkrl-77", "runs/chunkrl-77", 3, 5)
        assert "--resume" not in args  # no checkpoint in runs/chunkrl-77: a fresh run
    gpu_steps = [s for s in steps if "--gpus-per-task=1" in s]
    assert len(gpu_steps) == 2 and all(re.search(r"--het-group=[01] ", s) for s in gpu_steps)
    assert any("--het-group=2" in s and "gpus" not in s for s in steps)


def test_the_slurm_examples_in_the_docs_name_configs_that_exist():
    text = (ROOT / "docs/multi-host.md").read_text()
    commands = [line for line in text.splitlines() if line.startswith("sbatch ")]
    assert commands
    for command in commands:
        words = [w for part in shlex.split(command) for w in part.split()]
        configs = [w for w in words if w.endswith(".yaml")]
        assert configs, command
        assert all((ROOT / c).is_file() for c in configs), f"docs/multi-host.md: {configs}"
