"""Typed configuration: one dataclass per role under :class:`Config`, loaded from YAML."""

from configs.loader import ConfigError, load_config, to_dict
from configs.schema import (
    ActorConfig, Config, EnvConfig, EvalConfig, InferenceConfig, LearnerConfig, ModelConfig,
    NetworkConfig, ProfileConfig, RunConfig, VideoConfig,
)

__all__ = [
    "ActorConfig", "Config", "ConfigError", "EnvConfig", "EvalConfig", "InferenceConfig",
    "LearnerConfig", "ModelConfig", "NetworkConfig", "ProfileConfig", "RunConfig",
    "VideoConfig",
    "load_config", "to_dict",
]
