"""Typed configuration: one dataclass per role under :class:`Config`, loaded from YAML."""

from configs.loader import ConfigError, config_from_dict, load_config, to_dict
from configs.schema import (
    ActorConfig, CNNPolicyConfig, Config, EnvConfig, EvalConfig, GRPOConfig, InferenceConfig,
    LearnerConfig, LiberoEnvConfig, ModelConfig, NetworkConfig, PPOConfig, ProfileConfig,
    RobosuiteEnvConfig, RunConfig, SyntheticEnvConfig, VideoConfig, VLLMConfig,
    WorldModelConfig, WorldModelEnvConfig,
)

__all__ = [
    "ActorConfig", "CNNPolicyConfig", "Config", "ConfigError", "EnvConfig", "EvalConfig",
    "GRPOConfig", "InferenceConfig", "LearnerConfig", "LiberoEnvConfig", "ModelConfig",
    "NetworkConfig", "PPOConfig", "ProfileConfig", "RobosuiteEnvConfig", "RunConfig",
    "SyntheticEnvConfig", "VideoConfig", "VLLMConfig", "WorldModelConfig",
    "WorldModelEnvConfig", "config_from_dict", "load_config", "to_dict",
]
