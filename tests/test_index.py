"""The source seam: a new kind of source plugs into `Pipeline.from_source` without touching
the pipeline, and its epoch-time counts reach the report once an epoch has read them."""

import numpy as np
import pyarrow as pa

from seqpipe import Pipeline, load_config
from seqpipe.index import Index
from seqpipe.parquet.sequences import Sequences

from .helpers import base_config, long_table

LENGTHS = [5, 1, 12, 7, 3, 9, 2, 8, 4, 6, 11, 1]


class _FrameSource:
    """A `SequenceSource` built with pandas alone (no seqpipe grouping), a few sequences per
    chunk, that counts what it 'filled' as it is read."""

    streamed, shared, file_count, unlabelled, statistics = True, False, 0, (), None

    def __init__(self, config, table: pa.Table, counted: dict) -> None:
        self.config, self.where, self._counted = config, "a pandas frame", counted
        self.report_fields: dict = {}
        frame = table.to_pandas().sort_values(["id", "t"])
        groups = [g for _, g in frame.groupby("id", sort=True)]
        lengths = np.array([len(g) for g in groups])
        self.ids = np.array([g["id"].iloc[0] for g in groups], dtype=object)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.index = Index(self.ids, offsets, {}, int(lengths.sum()))
        y = frame["y"].to_numpy(np.float32)
        died = np.array([g["died"].iloc[0] for g in groups], dtype=np.float32)
        self._whole = Sequences(
            self.ids, offsets,
            {"steps": frame[["code", "x"]].to_numpy(np.float32),
             "static": np.array([[g["age"].iloc[0]] for g in groups], dtype=np.float32)},
            {"y": np.nan_to_num(y), "died": np.nan_to_num(died)},
            {"y": ~np.isnan(y), "died": ~np.isnan(died)})
        self.chunks_read = 0

    def chunks(self, in_part):
        whole, offsets = self._whole, self._whole.offsets
        for a in range(0, len(whole), 5):
            b = min(a + 5, len(whole))
            t0, t1 = offsets[a], offsets[b]
            self.chunks_read += 1
            yield a, Sequences(
                whole.ids[a:b], offsets[a:b + 1] - t0,
                {"steps": whole.features["steps"][t0:t1],
                 "static": whole.features["static"][a:b]},
                {"y": whole.labels["y"][t0:t1], "died": whole.labels["died"][a:b]},
                {"y": whole.present["y"][t0:t1], "died": whole.present["died"][a:b]})
        return self._counted

    def valid_labels(self, output, kept):
        raise AssertionError("only global_mean weights ask for valid labels")

    def sequences(self):
        return self._whole


def test_a_new_kind_of_source_gives_the_batches_of_the_same_sequences_read_from_a_table():
    table = long_table(LENGTHS, seed=3)
    config = load_config(base_config(None, shuffle={"buffer_size": 6, "seed": 7}))
    source = _FrameSource(config, table, {})
    mine = list(Pipeline.from_source(source).batches(epoch=1))
    theirs = list(Pipeline(config, table).batches(epoch=1))
    assert source.chunks_read == 3  # read through the seam, a chunk at a time
    assert len(mine) == len(theirs) > 1
    for a, b in zip(mine, theirs):
        assert a.ids.tolist() == b.ids.tolist()
        for part in ("x", "y", "sample_weight"):
            for name, values in getattr(b, part).items():
                np.testing.assert_array_equal(getattr(a, part)[name], values)


def test_counts_a_source_returns_from_an_epoch_reach_the_report_after_that_epoch():
    table = long_table(LENGTHS, seed=4)
    config = load_config(base_config(None))
    counted = {"filled_values": {"inputs.steps.x": 3}}
    pipeline = Pipeline.from_source(_FrameSource(config, table, counted))
    assert pipeline.report.source == "a pandas frame"
    assert pipeline.report.filled_values is None  # not read yet
    batches = pipeline.batches(0)
    next(batches)
    assert pipeline.report.filled_values is None  # the epoch is not over
    list(batches)
    assert pipeline.report.filled_values == {"inputs.steps.x": 3}
    assert "filled 3 NaN/null/infinite feature values" in "; ".join(pipeline.report.changes())
