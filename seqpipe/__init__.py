"""seqpipe: variable-length time series from Parquet to Keras-ready batches.

    config = seqpipe.load_config("configs/demo.yaml")
    model.fit(seqpipe.build_dataset(config), epochs=5)
"""

from seqpipe.batches.block import Batch
from seqpipe.config import PipelineConfig, load_config
from seqpipe.errors import ConfigError, DataError, SeqpipeError, SourceNotFoundError
from seqpipe.formats.build import build_dataset
from seqpipe.formats.load import load_materialized
from seqpipe.materialized.write import materialize
from seqpipe.metrics import masked_metric
from seqpipe.pipeline import Pipeline
from seqpipe.predict import predict
from seqpipe.report import Report
from seqpipe.resume import BackupAndRestore, resume_state
from seqpipe.statistics import Statistics
from seqpipe.tfdata.dataset import element_spec

__version__ = "0.1.0"

__all__ = [
    "BackupAndRestore", "Batch", "ConfigError", "DataError", "Pipeline", "PipelineConfig", "Report",
    "SeqpipeError", "SourceNotFoundError", "Statistics", "build_dataset", "element_spec",
    "load_config", "load_materialized", "masked_metric", "materialize", "predict", "resume_state",
]
