"""Typed configuration: one dataclass per role under :class:`Config`, loaded from YAML."""

from configs.loader import ConfigError, load_config, to_dict
from configs.schema import (
    ActorConfig, Config, EnvConfig, InferenceConfig, LearnerConfig, ModelConfig,
    NetworkConfig, RunConfig,
)

__all__ = [
    "ActorConfig", "Config", "ConfigError", "EnvConfig", "InferenceConfig", "LearnerConfig",
    "ModelConfig", "NetworkConfig", "RunConfig", "load_config", "to_dict",
]
