"""Load a :class:`Config` from YAML plus ``key=value`` overrides, strictly.

Steps: read YAML -> apply dotted overrides -> resolve ``${a.b}`` interpolation ->
build the frozen dataclasses, rejecting unknown keys and wrongly typed values ->
run the cross-field rules of :func:`configs.schema.validate`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Literal, get_args, get_origin

import yaml

from configs.schema import FAMILY_SECTIONS, Config, validate

_REF = re.compile(r"\$\{([^}]+)\}")


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and the fix."""


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read ``path`` (YAML; None for all defaults), apply overrides, validate."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; see configs/*.yaml")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        _apply_override(raw, item)
    return config_from_dict(raw)


def config_from_dict(raw: dict) -> Config:
    """A validated config from nested sections (a YAML file's, or :func:`to_dict`'s: what
    a checkpoint keeps)."""
    raw = _interpolate(raw, raw, [])
    _rlinf_aliases(raw)
    _refuse_moved_keys(raw)
    cfg = _build(Config, raw, "")
    problems = validate(cfg)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return cfg


# The keys that were flat before the family sub-sections came (2026-12-03, commit e1f23a7),
# by section and family: the only old keys there are. Families and fields added since
# (env.world_model, env.world_model.branch, ...) never had a flat form.
_FLAT_BEFORE_FAMILIES = {
    "env": {"synthetic": ("num_targets", "target_radius", "agent_speed", "progress_reward",
                          "goal_in_state", "step_busy_ms", "step_sleep_ms"),
            "libero": ("suite", "task_ids", "task_assignment"),
            "robosuite": ("task",)},
    "learner": {"ppo": ("critic_lr", "critic_lr_warmup_steps", "critic_warmup_updates", "gamma",
                        "gae_lambda", "reward_level", "normalize_advantages", "value_coef",
                        "value_clip", "huber_delta"),
                "grpo": ("filter_equal_groups", "group_mean_bounds")},
    "model": {"cnn": ("hidden_dim", "conv_channels", "embed_dim", "vocab_size",
                      "image_resolution")},
}


def moved_keys() -> dict[str, str]:
    """Old flat keys of the family sub-sections and where they live now, e.g.
    ``env.num_targets`` -> ``env.synthetic.num_targets``."""
    return {f"{section}.{name}": f"{section}.{family}.{name}"
            for section, families in _FLAT_BEFORE_FAMILIES.items()
            for family, names in families.items() for name in names}


def _refuse_moved_keys(raw: dict) -> None:
    moved = moved_keys()
    for section in FAMILY_SECTIONS:
        keys = raw.get(section)
        for key in sorted(keys) if isinstance(keys, dict) else ():
            old = f"{section}.{key}"
            if old in moved:
                raise ConfigError(f"config key {old!r} moved to {moved[old]!r}: rename it "
                                  f"(in YAML: {key} under {section}: "
                                  f"{moved[old].split('.')[1]}:)")


def _rlinf_aliases(raw: dict) -> None:
    """Accept RLinf's model keys: ``actor.model.X`` is ``model.X``; ``rollout.model.
    model_path`` must name the same model (chunkrl's learner and servers load one)."""
    actor = raw.get("actor")
    if isinstance(actor, dict) and "model" in actor:
        extra = actor.pop("model")
        if not isinstance(extra, dict):
            raise ConfigError("actor.model must be a mapping (RLinf's name for model.*)")
        model = raw.setdefault("model", {})
        for key, value in extra.items():
            if key in model and model[key] != value:
                raise ConfigError(f"actor.model.{key}={value!r} contradicts "
                                  f"model.{key}={model[key]!r}; set one of them")
            model[key] = value
        _rlinf_model_keys(model)
    if "rollout" not in raw:
        return
    rollout = raw.pop("rollout")
    inner = rollout.get("model") if isinstance(rollout, dict) else None
    if not isinstance(inner, dict) or set(rollout) != {"model"} or set(inner) - {"model_path"}:
        raise ConfigError("of RLinf's rollout section chunkrl reads only "
                          "rollout.model.model_path; move the rest to inference.* or model.*")
    model = raw.setdefault("model", {})
    path = inner.get("model_path")
    if path and model.get("model_path", path) != path:
        raise ConfigError(f"rollout.model.model_path={path!r} differs from the learner's "
                          f"model_path={model['model_path']!r}: the inference servers and "
                          "the learner run one model")
    if path:
        model["model_path"] = path


def _rlinf_model_keys(model: dict) -> None:
    """RLinf's names for model fields: model_type is kind (starvla: qwen_oft; a starvla
    section alone means qwen_oft too), num_images_in_input (1 or 2)
    says whether the wrist camera is shown, use_proprio must be false (not read)."""
    if "model_type" in model:
        kind = model.pop("model_type")
        model.setdefault("kind", "qwen_oft" if kind == "starvla" else kind)
    if "starvla" in model and "kind" not in model:
        model["kind"] = "qwen_oft"  # RLinf's StarVLA configs name the model by this section
    if "num_images_in_input" in model:
        n = model.pop("num_images_in_input")
        if isinstance(n, bool) or n not in (1, 2):
            raise ConfigError(f"actor.model.num_images_in_input={n!r}: 1 (main camera) or 2 "
                              "(main and wrist)")
        if model.get("use_wrist_image", n == 2) != (n == 2):
            raise ConfigError(f"actor.model.num_images_in_input={n} contradicts "
                              f"model.use_wrist_image={model['use_wrist_image']}")
        model["use_wrist_image"] = n == 2
    if model.pop("use_proprio", False):
        raise ConfigError("actor.model.use_proprio=true: chunkrl's VLA policies do not read "
                          "the robot state; set it to false")


def to_dict(cfg) -> dict:
    """The plain-dict form of a config (for logging and checkpoints)."""
    return dataclasses.asdict(cfg)


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(text) if text else ""


def _lookup(root: dict, dotted: str, chain: list[str]):
    if dotted in chain:
        raise ConfigError(f"interpolation cycle: {' -> '.join(chain + [dotted])}")
    node = root
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            default = _default_of(dotted)
            if default is _MISSING:
                raise ConfigError(f"${{{dotted}}} refers to a key that is not set")
            return default
        node = node[part]
    return _interpolate(node, root, chain + [dotted])


_MISSING = object()


def _default_of(dotted: str):
    node: object = Config()
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node) or not hasattr(node, part):
            return _MISSING
        node = getattr(node, part)
    return node


def _interpolate(value, root: dict, chain: list[str]):
    if isinstance(value, dict):
        return {k: _interpolate(v, root, chain) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, root, chain) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _REF.fullmatch(value)
    if whole:  # a whole-value reference keeps the referenced type
        return _lookup(root, whole.group(1).strip(), chain)
    return _REF.sub(lambda m: str(_lookup(root, m.group(1).strip(), chain)), value)


def _build(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key {key!r}; valid keys"
                          f"{' of ' + where if where else ''}: {sorted(fields)}")
    values = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key)
        else:
            values[name] = _check(key, hint, value)
    return cls(**values)


def _check(key: str, hint, value):
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of {list(choices)}")
        return value
    if get_origin(hint) is list:
        (item,) = get_args(hint)
        if not isinstance(value, list) or not all(
                isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be a list of {item.__name__}, got {value!r}")
        return list(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {hint.__name__}, got {type(value).__name__} "
                          f"{value!r}")
    return value
