"""Property tests: over random lengths, missing patterns, layouts and configs, one epoch holds
every kept timestep exactly once, in time order, and padding and missing labels weigh 0."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqpipe import DataError, Pipeline, load_config
from tests.helpers import STEP, base_config, nested_from_long


@st.composite
def datasets(draw):
    n = draw(st.integers(1, 12))
    lengths = draw(st.lists(st.integers(1, 15), min_size=n, max_size=n))
    total = sum(lengths)
    label_missing = draw(st.lists(st.booleans(), min_size=total, max_size=total))
    outcome_missing = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    gaps = draw(st.lists(st.integers(1, 5), min_size=total, max_size=total))
    row_order = draw(st.permutations(range(total)))
    sequence = np.repeat(np.arange(n), lengths)
    step = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    gaps = np.array(gaps)
    times = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[np.cumsum(lengths) - lengths], lengths)
    code = (sequence * STEP + step).astype(float)
    table = pa.table({
        "id": [f"s{i:03d}" for i in sequence],
        "t": times,
        "code": code,
        "x": code / 7.0,
        "y": np.where(label_missing, np.nan, code + 0.5),
        "died": np.where(np.array(outcome_missing)[sequence], np.nan, sequence % 2),
        "age": sequence.astype(float),
    }).take(list(row_order))
    return np.array(lengths), table


@st.composite
def configs(draw):
    return {
        "source.layout": draw(st.sampled_from(["long", "nested"])),
        "padding.maxlen": draw(st.one_of(st.none(), st.integers(1, 10))),
        "padding.side": draw(st.sampled_from(["pre", "post"])),
        "padding.truncating": draw(st.sampled_from(["pre", "post"])),
        "padding.value": draw(st.sampled_from([0.0, -1.0])),
        "batching.batch_size": draw(st.integers(1, 5)),
        "batching.bucket_boundaries": draw(st.sampled_from([None, "auto", [3], [2, 5]])),
        "weights.mode": draw(st.sampled_from(["binary", "batch_mean", "global_mean",
                                              "sequence_mean"])),
        "shuffle.buffer_size": draw(st.sampled_from([0, 3, 100])),
        "shuffle.seed": draw(st.integers(0, 5)),
    }


def _pipeline(table, overrides):
    maxlen = overrides["padding.maxlen"]
    if isinstance(overrides["batching.bucket_boundaries"], list) and maxlen is not None:
        overrides = {**overrides, "batching.bucket_boundaries": [
            b for b in overrides["batching.bucket_boundaries"] if b <= maxlen] or None}
    config = load_config(base_config(None), overrides)
    data = nested_from_long(table) if config.source.layout == "nested" else table
    return Pipeline(config, data)


def _kept(length, maxlen, truncating):
    if maxlen is None or length <= maxlen:
        return np.arange(length)
    return np.arange(length - maxlen, length) if truncating == "pre" else np.arange(maxlen)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), configs(), st.integers(0, 2))
def test_every_kept_timestep_once_in_order_and_padding_weighs_zero(data, overrides, epoch):
    lengths, table = data
    pipeline = _pipeline(table, overrides)
    config = pipeline.config
    seen = {}
    for batch in pipeline.batches(epoch):
        codes = batch.x["steps"][..., 0]
        weights, labels = batch.sample_weight["y"], batch.y["y"][..., 0]
        steps = codes.shape[1]
        assert steps == batch.lengths.max()
        for row, sequence_id in enumerate(batch.ids):
            length = batch.lengths[row]
            real = slice(steps - length, steps) if config.padding.side == "pre" else slice(
                0, length)
            padded = np.ones(steps, bool)
            padded[real] = False
            assert sequence_id not in seen
            seen[sequence_id] = codes[row, real]
            assert (codes[row, padded] == config.padding.value).all()
            assert (weights[row, padded] == 0).all()
            # a label is weighted exactly when it is present (its value is code + 0.5)
            present = labels[row, real] == codes[row, real] + 0.5
            assert ((weights[row, real] > 0) == present).all()
            assert np.isfinite(labels[row]).all()
        died_missing = np.isnan(np.asarray(
            [_outcome(table, i) for i in batch.ids], dtype=float))
        assert ((batch.sample_weight["died"] > 0) == ~died_missing).all()
        assert np.isfinite(batch.y["died"]).all()
    assert len(seen) == len(lengths)
    for sequence_id, codes in seen.items():
        number = int(sequence_id[1:])
        expected = number * STEP + _kept(lengths[number], config.padding.maxlen,
                                         config.padding.truncating)
        np.testing.assert_array_equal(codes, expected)


def _outcome(table, sequence_id):
    ids = table["id"].to_numpy(zero_copy_only=False)
    return table["died"].to_numpy()[ids == sequence_id][0]


@settings(max_examples=60, deadline=None)
@given(datasets(), configs())
def test_drop_remainder_keeps_each_sequence_at_most_once_and_counts_the_rest(data, overrides):
    lengths, table = data
    batch_size = overrides["batching.batch_size"]
    kept_all = _pipeline(table, overrides)
    full = sum(len(b.ids) == batch_size for b in kept_all.batches())
    overrides = {**overrides, "batching.drop_remainder": True}
    if full == 0:
        with pytest.raises(DataError, match="drop_remainder leaves no batch"):
            _pipeline(table, overrides)
        return
    pipeline = _pipeline(table, overrides)
    assert pipeline.report.batches_per_epoch == full
    ids = [i for batch in pipeline.batches() for i in batch.ids]
    assert len(ids) == len(set(ids))
    assert all(len(b.ids) == pipeline.config.batching.batch_size for b in pipeline.batches())
    assert len(ids) + pipeline.report.sequences_dropped_per_epoch == len(lengths)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), configs(), st.integers(0, 2), st.booleans())
def test_with_scaled_and_categorical_inputs_every_timestep_is_once_in_place(
        data, overrides, epoch, pre):
    """The accounting holds with a scaled input, a categorical one (ids 0 exactly at
    padding) and the mask input (True exactly at real timesteps)."""
    lengths, table = data
    code = table["code"].to_numpy()
    kinds = np.array(["a", "b", "c", None], dtype=object)[(code % 4).astype(int)]
    table = table.append_column("kind", pa.array(list(kinds), pa.string()))
    overrides = {**overrides, "padding.side": "pre" if pre else "post"}
    maxlen = overrides["padding.maxlen"]
    if isinstance(overrides["batching.bucket_boundaries"], list) and maxlen is not None:
        overrides["batching.bucket_boundaries"] = [
            b for b in overrides["batching.bucket_boundaries"] if b <= maxlen] or None
    config = load_config(base_config(
        None, inputs={"steps": {"columns": ["code"]},
                      "scaled": {"columns": ["x"], "normalize": "standard"},
                      "kind": {"columns": ["kind"], "categorical": True}},
        padding={"mask": "real"}), overrides)
    data = nested_from_long(table) if config.source.layout == "nested" else table
    pipeline = Pipeline(config, data)
    vocabulary = pipeline.statistics.vocabularies["kind"].values
    seen = {}
    for batch in pipeline.batches(epoch):
        codes, ids, mask = batch.x["steps"][..., 0], batch.x["kind"], batch.x["real"]
        steps = codes.shape[1]
        for row, sequence_id in enumerate(batch.ids):
            length = batch.lengths[row]
            real = np.zeros(steps, bool)
            real[slice(steps - length, steps) if pre else slice(0, length)] = True
            assert sequence_id not in seen
            seen[sequence_id] = codes[row, real]
            np.testing.assert_array_equal(mask[row], real)
            assert (ids[row, ~real] == 0).all() and (ids[row, real] > 0).all()
            want = [vocabulary.index(k) + 2 if k is not None else 1
                    for k in np.array(["a", "b", "c", None], dtype=object)[
                        (codes[row, real] % 4).astype(int)]]
            assert ids[row, real].tolist() == want
            assert (batch.x["scaled"][row, ~real] == config.padding.value).all()
            assert (batch.sample_weight["y"][row, ~real] == 0).all()
    assert len(seen) == len(lengths)
    for sequence_id, codes in seen.items():
        number = int(sequence_id[1:])
        np.testing.assert_array_equal(codes, number * STEP + _kept(
            lengths[number], config.padding.maxlen, config.padding.truncating))
