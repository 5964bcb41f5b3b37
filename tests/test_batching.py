"""Truncation and padding against keras.utils.pad_sequences; buckets; the epoch plan."""

import itertools

import keras
import numpy as np
import pytest

from seqpipe import DataError, Pipeline, load_config
from seqpipe.batches import buckets as batching
from seqpipe.batches.buckets import auto_boundaries, bucket_of, padding_waste
from tests.helpers import base_config, long_table, raw_sequences

SIDES = list(itertools.product(["pre", "post"], ["pre", "post"]))


@pytest.mark.parametrize("side, truncating", SIDES,
                         ids=[f"padding={s}-truncating={t}" for s, t in SIDES])
@pytest.mark.parametrize("maxlen", [None, 6], ids=["no-maxlen", "maxlen=6"])
def test_padding_and_truncation_equal_keras_pad_sequences(side, truncating, maxlen):
    lengths = [5, 1, 9, 3, 12, 7, 2, 8, 4, 6, 11]
    table = long_table(lengths)
    config = load_config(base_config(None), {
        "padding": {"maxlen": maxlen, "side": side, "truncating": truncating, "value": -3.0},
        "batching.batch_size": 3, "shuffle.buffer_size": 100, "shuffle.seed": 5})
    raw = raw_sequences(table)
    batches = list(Pipeline(config, table).batches())
    assert sum(len(b.ids) for b in batches) == len(lengths)
    for batch in batches:
        codes = [raw[i][0] for i in batch.ids]
        labels = [np.nan_to_num(raw[i][1], nan=0.0) for i in batch.ids]
        present = [(~np.isnan(raw[i][1])).astype(float) for i in batch.ids]
        longest = max(len(c) for c in codes)
        width = longest if maxlen is None else min(maxlen, longest)
        options = dict(maxlen=width, padding=side, truncating=truncating, dtype="float32")
        expected_codes = keras.utils.pad_sequences(codes, value=-3.0, **options)
        expected_labels = keras.utils.pad_sequences(labels, value=-3.0, **options)
        expected_present = keras.utils.pad_sequences(present, value=0.0, **options)
        np.testing.assert_array_equal(batch.x["steps"][..., 0], expected_codes)
        np.testing.assert_array_equal(batch.y["y"][..., 0], expected_labels)
        np.testing.assert_array_equal(batch.sample_weight["y"] > 0, expected_present > 0)


def test_features_of_several_columns_are_stacked_in_config_order():
    table = long_table([3, 2], shuffle_rows=False)
    batch = next(Pipeline(base_config(None), table).batches())
    assert batch.x["steps"].shape == (2, 3, 2)
    assert batch.x["static"].tolist() == [[40.0], [41.0]]
    np.testing.assert_allclose(batch.x["steps"][0, :, 1], table["x"].to_numpy()[:3], rtol=1e-6)
    assert batch.y["y"].shape == (2, 3, 1) and batch.sample_weight["y"].shape == (2, 3)
    assert batch.y["died"].shape == (2, 1) and batch.sample_weight["died"].shape == (2,)
    assert all(a.dtype == np.float32 for a in [*batch.x.values(), *batch.y.values(),
                                                 *batch.sample_weight.values()])


def test_bucket_of_follows_tf_bucket_by_sequence_length_boundaries():
    lengths = np.array([1, 3, 4, 5, 7, 8, 100])
    assert bucket_of(lengths, (4, 8)).tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert bucket_of(lengths, ()).tolist() == [0] * 7


def test_a_batch_only_mixes_one_bucket_and_pads_to_its_longest():
    lengths = np.random.default_rng(0).integers(1, 40, 60)
    config = load_config(base_config(None), {"batching": {"batch_size": 5,
                                                          "bucket_boundaries": [10, 20]},
                                             "shuffle.buffer_size": 1000, "shuffle.seed": 1})
    for batch in Pipeline(config, long_table(lengths)).batches():
        assert len(set(bucket_of(batch.lengths, (10, 20)))) == 1
        assert batch.x["steps"].shape[1] == batch.lengths.max()


def test_auto_boundaries_cut_padding():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(60), 0.9, 5000).astype(int), 1, 1000)
    boundaries = auto_boundaries(lengths)
    assert 1 <= len(boundaries) <= 8
    assert list(boundaries) == sorted(set(boundaries))
    config = load_config(base_config(None), {"batching.batch_size": 32,
                                             "batching.bucket_boundaries": "auto",
                                             "shuffle.buffer_size": 10**6, "shuffle.seed": 0})
    pipeline = Pipeline(config, long_table(lengths, label_missing=0, outcome_missing=0))
    assert pipeline.report.bucket_boundaries == boundaries
    assert pipeline.report.padding_waste < pipeline.report.padding_waste_unbucketed / 3


def test_auto_boundaries_need_no_buckets_for_equal_lengths():
    assert auto_boundaries(np.full(100, 7)) == ()
    assert auto_boundaries(np.array([2, 2, 2, 100, 100])) == (3,)


@pytest.mark.parametrize("seed", range(12))
def test_auto_boundaries_are_the_fewest_buckets_within_the_gain_of_the_best(seed):
    """Against every way to cut a few distinct lengths into buckets: the padding of the
    chosen buckets is the least for their number, and no fewer buckets come within
    `AUTO_BUCKET_GAIN` of the best padding."""
    rng = np.random.default_rng(seed)
    lengths = rng.choice(rng.choice(np.arange(1, 200), 7, replace=False), 40)
    values = np.unique(lengths)

    def padding(bounds):
        bucket = np.searchsorted(np.asarray(bounds, dtype=np.int64), lengths, side="right")
        return sum(int(lengths[bucket == b].max()) * int((bucket == b).sum()) -
                   int(lengths[bucket == b].sum()) for b in np.unique(bucket))

    least = {}  # buckets -> least padding over every cut
    for k in range(min(len(values), batching.MAX_AUTO_BUCKETS)):
        least[k + 1] = min(padding([int(values[i]) + 1 for i in cut])
                           for cut in itertools.combinations(range(len(values) - 1), k))
    best = min(least.values())
    enough = best + batching.AUTO_BUCKET_GAIN * (int(lengths.sum()) + best)
    chosen = auto_boundaries(lengths)
    assert len(chosen) + 1 == min(k for k, p in least.items() if p <= enough)
    assert padding(chosen) == least[len(chosen) + 1]


def test_auto_boundaries_are_solved_once_for_the_same_lengths(monkeypatch):
    lengths = np.random.default_rng(3).integers(1, 300, 1000)
    solved = []
    solve = batching._solve_boundaries
    monkeypatch.setattr(batching, "_solve_boundaries",
                        lambda *args: solved.append(1) or solve(*args))
    first = auto_boundaries(lengths)
    assert auto_boundaries(lengths.copy()) == first  # the same lengths: not solved again
    auto_boundaries(lengths[:-1])  # other lengths: solved
    assert len(solved) == 2


def test_padding_waste_counts_padded_over_all_timesteps():
    lengths = np.array([2, 4, 3, 3])
    assert padding_waste(lengths, [np.array([0, 1]), np.array([2, 3])]) == pytest.approx(
        1 - 12 / 14)


def test_same_seed_same_batches_new_epoch_new_order():
    config = load_config(base_config(None), {"shuffle": {"buffer_size": 100, "seed": 3},
                                             "batching.bucket_boundaries": "auto"})
    table = long_table(np.arange(1, 30))
    first, second = Pipeline(config, table), Pipeline(config, table)
    epoch0 = [b.ids.tolist() for b in first.batches(0)]
    assert epoch0 == [b.ids.tolist() for b in second.batches(0)]
    assert epoch0 != [b.ids.tolist() for b in first.batches(1)]
    other_seed = Pipeline(load_config(config, {"shuffle.seed": 4}), table)
    assert epoch0 != [b.ids.tolist() for b in other_seed.batches(0)]


def test_without_shuffle_batches_follow_id_order():
    config = load_config(base_config(None), {"batching.batch_size": 3})
    ids = [b.ids.tolist() for b in Pipeline(config, long_table([4] * 7)).batches()]
    assert ids == [["s000", "s001", "s002"], ["s003", "s004", "s005"], ["s006"]]


def test_drop_remainder_drops_short_batches_and_counts_them():
    config = load_config(base_config(None), {
        "batching": {"batch_size": 3, "drop_remainder": True, "bucket_boundaries": [5]}})
    pipeline = Pipeline(config, long_table([2, 2, 2, 2, 6, 6, 6, 6, 6]))
    sizes = [len(b.ids) for b in pipeline.batches()]
    assert sizes == [3, 3]
    assert pipeline.report.sequences_dropped_per_epoch == 3
    assert "drop_remainder leaves out 3 sequences per epoch" in pipeline.report.changes()


def test_truncation_is_counted_in_the_report():
    config = load_config(base_config(None), {"padding.maxlen": 4})
    report = Pipeline(config, long_table([2, 6, 9])).report
    assert (report.truncated_sequences, report.truncated_timesteps) == (2, 2 + 5)
    assert report.timesteps == 17


def test_drop_remainder_that_leaves_no_batch_is_an_error():
    config = load_config(base_config(None), {"batching": {"batch_size": 8,
                                                          "drop_remainder": True}})
    with pytest.raises(DataError, match=r"drop_remainder leaves no batch: no bucket holds "
                                        r"batching\.batch_size=8 of the 3 sequences"):
        Pipeline(config, long_table([2, 3, 4]))
