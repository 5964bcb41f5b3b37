"""The pipeline config: `load_config` turns a YAML file or a mapping into a frozen,
validated `PipelineConfig` (`pipeline_config`, with the rules that tie sections together),
one dataclass per YAML section (`sections`)."""

from seqpipe.config.pipeline_config import PipelineConfig, leaked_labels, load_config
from seqpipe.config.sections import (
    BatchingConfig,
    CacheConfig,
    InputConfig,
    OutputConfig,
    PackingConfig,
    PaddingConfig,
    ScalingConfig,
    ShuffleConfig,
    SourceConfig,
    SplitConfig,
    WeightMode,
    WeightsConfig,
    WindowsConfig,
)

__all__ = [
    "BatchingConfig", "CacheConfig", "InputConfig", "OutputConfig", "PackingConfig",
    "PaddingConfig", "PipelineConfig", "ScalingConfig", "ShuffleConfig", "SourceConfig",
    "SplitConfig", "WeightMode", "WeightsConfig", "WindowsConfig", "leaked_labels",
    "load_config",
]
