"""The pipeline config: `load_config` turns a YAML file or a mapping into a frozen,
validated `PipelineConfig`, one dataclass per YAML section (`sections`), its cross-section
rules checked (`rules`)."""

from seqpipe.config.rules import leaked_labels
from seqpipe.config.sections import (
    BatchingConfig,
    CacheConfig,
    InputConfig,
    OutputConfig,
    PaddingConfig,
    PipelineConfig,
    ShuffleConfig,
    SourceConfig,
    SplitConfig,
    WeightMode,
    WeightsConfig,
    WindowsConfig,
    load_config,
)

__all__ = [
    "BatchingConfig", "CacheConfig", "InputConfig", "OutputConfig", "PaddingConfig",
    "PipelineConfig", "ShuffleConfig", "SourceConfig", "SplitConfig", "WeightMode",
    "WeightsConfig", "WindowsConfig", "leaked_labels", "load_config",
]
