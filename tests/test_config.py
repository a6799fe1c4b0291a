"""Config loading: types, unknown keys, interpolation, overrides, cross-field rules."""


import pytest

from configs import Config, ConfigError, load_config
from envs import planned_init_states
from tests.conftest import ROOT


def test_every_shipped_config_loads():
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert files
    for path in files:
        assert isinstance(load_config(path), Config)


def test_defaults_and_interpolation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  name: exp\n  log_dir: runs/${run.name}/x\n"
                    "actor:\n  actions_per_chunk: ${model.num_action_chunks}\n")
    cfg = load_config(path)
    assert cfg.run.log_dir == "runs/exp/x"
    assert cfg.actor.actions_per_chunk == 8 and isinstance(cfg.actor.actions_per_chunk, int)
    assert cfg.learner.clip_ratio_high == 0.28  # untouched default


def test_dotted_overrides_are_typed():
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml",
                      ["learner.lr=1e-5", "actor.num_actors=3",
                       "learner.grpo.filter_equal_groups=true",
                       "network.inference_hosts=[a, b]", "inference.num_servers=2"])
    assert cfg.learner.lr == 1e-5 and cfg.actor.num_actors == 3
    assert cfg.learner.grpo.filter_equal_groups is True
    assert cfg.network.inference_hosts == ["a", "b"]


@pytest.mark.parametrize("override, words", [
    ("learner.lrr=1", ["unknown config key 'learner.lrr'", "lr"]),
    ("nosuch.key=1", ["unknown config key 'nosuch'", "learner"]),
    ("learner.lr=fast", ["learner.lr must be float"]),
    ("actor.num_actors=2.5", ["actor.num_actors must be int"]),
    ("actor.num_actors=true", ["actor.num_actors must be int"]),
    ("learner.ratio_level=token", ["choose one of", "action_dim"]),
    ("actor.actions_per_chunk=9", ["actions_per_chunk must be in 1..8"]),
    ("actor.envs_per_actor=12", ["multiple of pipeline_stages*group_size"]),
    ("run.log_dir=${run.nope}", ["${run.nope}"]),
    ("learner", ["must look like section.key=value"]),
    ("run.mode=sft", ["run.mode=sft needs sft.datasets"]),
    ("run.mode=record", ["set actor.group_size=1"]),
    ("record.episodes_per_task=950", ["record:", "sum <= 1000"]),
    ("record.action_noise=-1", ["action_noise >= 0"]),
    ("sft.val_fraction=1.0", ["val_fraction in [0, 1)"]),
    ("sft.loss=l1", ["choose one of", "nll"]),
    ("eval.every_updates=-1", ["every_updates"]),
])
def test_bad_values_fail_with_a_message_naming_them(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs/synthetic_grpo.yaml", [override])
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("old, new", [
    ("env.num_targets", "env.synthetic.num_targets"), ("env.suite", "env.libero.suite"),
    ("env.task", "env.robosuite.task"), ("learner.gamma", "learner.ppo.gamma"),
    ("learner.filter_equal_groups", "learner.grpo.filter_equal_groups"),
    ("model.image_resolution", "model.cnn.image_resolution"),
])
def test_a_flat_key_of_a_family_names_its_new_place(tmp_path, old, new):
    # The family sub-sections' fields were flat keys of their sections before: an old
    # override or YAML key is refused with the new name, never silently ignored.
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml")
    value = cfg
    for part in new.split("."):
        value = getattr(value, part)
    with pytest.raises(ConfigError, match=f"{old!r} moved to {new!r}"):
        load_config(ROOT / "configs/synthetic_grpo.yaml", [f"{old}={value}"])
    section, key = old.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(f"{section}:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=f"{old!r} moved to {new!r}"):
        load_config(path)
    path.write_text(f"{section}:\n  {new.split('.')[1]}:\n    {key}: {value}\n")
    assert load_config(path) == load_config(None, [f"{new}={value}"])  # the new place works


def test_every_old_flat_key_is_refused():
    from configs.loader import moved_keys

    moved = moved_keys()
    assert len(moved) == 28  # the flat keys of 2026-12-03; later fields never were flat
    assert "env.branch" not in moved and "env.checkpoint" not in moved
    defaults = load_config(None)
    for old, new in moved.items():
        with pytest.raises(ConfigError, match="moved to"):
            load_config(None, [f"{old}=1"])
        section, family, name = new.split(".")
        assert hasattr(getattr(getattr(defaults, section), family), name), new  # still there


def test_missing_file_and_cycles(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  name: ${run.log_dir}\n  log_dir: ${run.name}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(path)


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(Exception):
        cfg.learner.lr = 1.0  # type: ignore[misc]


def test_every_field_is_documented():
    import dataclasses
    import typing

    from configs import schema
    seen = []

    def walk(cls):
        seen.append(cls)
        hints = typing.get_type_hints(cls)  # the annotations are strings (__future__)
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name])

    walk(Config)
    sections = {c for c in vars(schema).values()
                if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__ ==
                schema.__name__}
    assert sections == set(seen)  # every section class is reached from Config
    assert len(seen) >= 14


def test_cross_field_rules_of_the_demonstration_chain():
    base = ROOT / "configs/synthetic_nogoal.yaml"
    with pytest.raises(ConfigError, match="multiple of actor.pipeline_stages"):
        load_config(base, ["eval.envs_per_actor=3"])
    with pytest.raises(ConfigError, match="held_out_eval_states keeps state indices below 100"):
        load_config(base, ["eval.num_trials=200"])
    with pytest.raises(ConfigError, match="eval.first_state . num_trials must be <= 100"):
        load_config(base, ["eval.first_state=50", "eval.num_trials=60"])
    with pytest.raises(ConfigError, match="first_state >= 0, their sum <= 1000"):
        load_config(base, ["env.held_out_eval_states=false", "eval.first_state=950",
                           "eval.num_trials=60"])
    more = load_config(base, ["env.held_out_eval_states=false", "eval.first_state=700",
                              "eval.num_trials=200", "run.mode=eval", "actor.group_size=1"])
    assert planned_init_states(more) == list(range(700, 900))
    with pytest.raises(ConfigError, match="cnn_gaussian"):
        load_config(base, ["sft.loss=mse", "model.kind=qwen_oft", "model.model_path=x"])
    with pytest.raises(ConfigError, match="set model.cnn.read_state=false"):
        load_config(ROOT / "configs/synthetic_world_model.yaml", ["model.cnn.read_state=true"])
    # ... unless the world model hands it the proprioception of the state it predicts
    assert load_config(ROOT / "configs/synthetic_world_model.yaml", [
        "model.cnn.read_state=true", "env.world_model.proprio=state"]).model.cnn.read_state
    with pytest.raises(ConfigError, match="set env.wrist_camera=true"):
        load_config(base, ["model.cnn.wrist_camera=true", "env.wrist_camera=false"])
    cfg = load_config(base, ["eval.actors=2"])
    assert cfg.total_actors == cfg.actor.num_actors + 2 and cfg.is_eval_actor(3)
    assert not cfg.is_eval_actor(1) and cfg.inference_needed
    record = load_config(base, ["run.mode=record", "actor.group_size=1"])
    assert record.total_actors == record.actor.num_actors and not record.inference_needed
