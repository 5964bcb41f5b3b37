"""The demo: ICU-style vitals in Parquet -> seqpipe -> a two-output Keras model.

It shows what seqpipe is for: how much it read, what padding costs with and without
buckets, and, per output, the loss Keras reports beside the true masked mean of the same
batch (and what naive 0/1 weights would have reported).
"""

from __future__ import annotations

import importlib.resources
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqpipe._internal import paths
from seqpipe.config import load_config
from seqpipe.metrics import masked_metric
from seqpipe.pipeline import Pipeline
from seqpipe.weights import sample_weight

VITALS = ["hr", "sbp", "dbp", "spo2", "resp_rate", "temp"]
DEMO_FILES = 4


def default_cache_dir() -> Path:
    return paths.user_cache("seqpipe", "demo")


def demo_config_path():
    return importlib.resources.files("seqpipe.configs") / "demo.yaml"


def make_icu_data(out_dir: Path, patients: int = 2000, seed: int = 0) -> int:
    """Writes a long-layout ICU dataset: one row per patient-hour in `DEMO_FILES` files, each
    holding one range of patients with its rows shuffled (so seqpipe orders them) in one row
    group (so seqpipe can stream the files one at a time).

    Returns:
      The number of rows written.
    """
    rng = np.random.default_rng(seed)
    hours = np.clip(np.round(rng.lognormal(np.log(40), 0.7, patients)), 4, 400).astype(int)
    patient = np.repeat(np.arange(patients), hours)
    first = np.repeat(np.cumsum(hours) - hours, hours)
    hour = np.arange(hours.sum()) - first
    severity = rng.normal(size=patients)[patient]
    age = np.clip(rng.normal(65, 15, patients), 18, 95).round()
    sex = np.array(["F", "M"])[rng.integers(0, 2, patients)]
    unit = np.array(["MICU", "SICU", "CCU", "CSRU", "TSICU"])[
        rng.choice(5, patients, p=[0.35, 0.2, 0.2, 0.15, 0.1])]
    drift = np.cumsum(rng.normal(0, 1.5, len(hour)))
    drift -= np.repeat(drift[np.cumsum(hours) - hours], hours)  # a random walk per stay
    noise = lambda scale: rng.normal(0, scale, len(hour))  # noqa: E731
    hr = 78 + 9 * severity + drift + noise(3)
    sbp = 122 - 7 * severity + noise(9)
    columns = {
        "patient_id": np.char.add("P", np.char.zfill(patient.astype(str), 5)),
        "hour": hour,
        "hr": hr, "sbp": sbp, "dbp": 0.6 * sbp + noise(5),
        "spo2": np.minimum(100, 96.5 - 1.5 * severity + noise(1.2)),
        "resp_rate": 16 + 2.5 * severity + noise(2),
        "temp": 37 + 0.4 * severity + noise(0.3),
    }
    for name in ("spo2", "temp"):  # a few readings were never taken
        columns[name][rng.random(len(hour)) < 0.01] = np.nan
    change = np.append(hr[1:] - hr[:-1], np.nan)
    change[hour == hours[patient] - 1] = np.nan  # no next hour after discharge
    change[rng.random(len(hour)) < 0.15] = np.nan  # and some hours were not charted
    columns["hr_change_next"] = change
    risk = 1 / (1 + np.exp(-(-2.2 + 1.3 * severity + 0.03 * (age[patient] - 65)
                             + 0.6 * (unit[patient] == "MICU"))))
    died = (rng.random(patients)[patient] < risk).astype(float)
    died[(rng.random(patients) < 0.25)[patient]] = np.nan  # outcome not yet known
    columns.update(died=died, age=age[patient], sex=sex[patient], unit=unit[patient])
    table = pa.table(columns)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, patients_here in enumerate(np.array_split(np.arange(patients), DEMO_FILES)):
        rows = np.flatnonzero(np.isin(patient, patients_here))
        part = table.take(rng.permutation(rows))
        pq.write_table(part, out_dir / f"part-{i}.parquet", row_group_size=part.num_rows)
    return table.num_rows


def build_model(pipeline: Pipeline):
    """A GRU over the vitals with a per-hour head, and a per-stay head that also reads age
    and the categorical sex and care unit (seqpipe scaled and encoded them)."""
    import keras

    keras.utils.set_random_seed(0)  # the same demo numbers run after run
    config, statistics = pipeline.config, pipeline.statistics
    vitals = keras.Input((None, config.inputs["vitals"].width), name="vitals")
    age = keras.Input((config.inputs["age"].width,), name="age")
    categories = {name: keras.Input((), dtype="int32", name=name) for name in ("sex", "unit")}
    states = keras.layers.GRU(32, return_sequences=True)(vitals)
    hr_change = keras.layers.Dense(1, name="hr_change")(states)
    # Pre-padding puts each stay's last real hour at the final step.
    embedded = [keras.layers.Embedding(statistics.input_dim(name), 3)(ids)
                for name, ids in categories.items()]
    summary = keras.layers.Concatenate()([states[:, -1, :], age, *embedded])
    mortality = keras.layers.Dense(1, activation="sigmoid", name="mortality")(
        keras.layers.Dense(16, activation="relu")(summary))
    model = keras.Model({"vitals": vitals, "age": age, **categories},
                        {"hr_change": hr_change, "mortality": mortality})
    losses = {"hr_change": "mse", "mortality": "binary_crossentropy"}
    # The true epoch loss per output, beside Keras's own (see `seqpipe.masked_metric`).
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=losses,
                  weighted_metrics={name: [masked_metric(loss, name="masked")]
                                    for name, loss in losses.items()})
    return model


def elementwise_loss(output: str, y: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The demo model's per-element loss, in NumPy: mse or binary cross-entropy."""
    if output == "mortality":
        p = np.clip(prediction, 1e-7, 1 - 1e-7)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=-1)
    return ((y - prediction) ** 2).mean(axis=-1)


def run_demo(cache_dir: Path, epochs: int = 3, patients: int = 2000,
             overrides: Optional[Mapping[str, Any]] = None) -> None:
    """Generates the data if needed, trains for `epochs`, prints what a user wants to see."""
    started = time.perf_counter()
    data_dir = cache_dir / f"icu3-{patients}"  # icu3: categorical sex and care unit
    if not data_dir.exists():
        rows = make_icu_data(data_dir, patients)
        print(f"wrote {rows:,} rows of ICU-style vitals to {data_dir} ({DEMO_FILES} files, "
              f"one range of patients each, rows shuffled)")
    else:
        print(f"reading the ICU-style vitals written earlier to {data_dir} (--cache-dir "
              f"chooses another folder)")
    config = load_config(demo_config_path(), {"source.path": str(data_dir), **(overrides or {})})
    pipeline = Pipeline(config)
    from seqpipe.formats.build import build_dataset

    model = build_model(pipeline)
    print(f"\n== training a two-output GRU for {epochs} epochs ==")
    _tip_for_xla(config)
    # seqpipe reshuffles every epoch; Keras cannot shuffle a tf.data.Dataset itself.
    model.fit(build_dataset(pipeline), epochs=epochs, verbose=2, shuffle=False)

    # After the first epoch, so that a streamed source's fills and missing labels are counted.
    print("\n== what seqpipe read ==")
    print(pipeline.report)

    print("\n== the loss Keras reports vs the loss you meant (one batch) ==")
    batch = next(pipeline.batches(epoch=0))
    _print_loss_check(model, batch)
    print("\n== the same over a whole epoch ==")
    _print_epoch_check(model, pipeline, build_dataset(pipeline))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")


def _tip_for_xla(config) -> None:
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow" and not config.batching.static_shapes:
        print(f"(Keras on {backend} compiles the model again for every new batch shape; "
              f"--set batching.static_shapes=true gives each bucket one shape)")


def _batch_loss(model, x, y, sample_weight) -> dict:
    """What Keras reports for one batch on every Keras 3: before 3.15, `test_on_batch`
    keeps a running mean over the calls since the last `reset_metrics()`."""
    model.reset_metrics()
    return model.test_on_batch(x, y, sample_weight, return_dict=True)


def _print_epoch_check(model, pipeline, dataset) -> None:
    logs = model.evaluate(dataset, verbose=0, return_dict=True)
    totals: dict = {name: [0.0, 0] for name in pipeline.config.outputs}
    for batch in pipeline.batches(epoch=0):  # the epoch evaluate read: the dataset's first
        predictions = model.predict_on_batch(batch.x)
        for name, weights in batch.sample_weight.items():
            valid = weights > 0
            losses = elementwise_loss(name, batch.y[name], predictions[name])
            totals[name][0] += float(losses[valid].sum())
            totals[name][1] += int(valid.sum())
    print(f"{'output':<11}{'Keras epoch loss':>18}{'masked_metric':>15}{'true masked mean':>18}")
    for name, (total, count) in totals.items():
        print(f"{name:<11}{logs[f'{name}_loss']:>18.4f}{logs[f'{name}_masked']:>15.4f}"
              f"{total / max(count, 1):>18.4f}")
    print("(Keras averages batch losses, weighting them by batch size on most backends; "
          "seqpipe.masked_metric in weighted_metrics sums over the epoch's present labels)")


def _print_loss_check(model, batch) -> None:
    reported = _batch_loss(model, batch.x, batch.y, batch.sample_weight)
    binary = {name: sample_weight("binary", w > 0) for name, w in batch.sample_weight.items()}
    naive = _batch_loss(model, batch.x, batch.y, binary)
    predictions = model.predict_on_batch(batch.x)
    print(f"{'output':<11}{'Keras reports':>15}{'true masked mean':>18}"
          f"{'0/1 weights would report':>26}")
    for name, weights in batch.sample_weight.items():
        losses = elementwise_loss(name, batch.y[name], predictions[name])
        valid = weights > 0
        true_mean = losses[valid].mean() if valid.any() else 0.0
        print(f"{name:<11}{reported[f'{name}_loss']:>15.4f}{true_mean:>18.4f}"
              f"{naive[f'{name}_loss']:>26.4f}")
    print("(batch_mean weights make Keras's default reduction report the masked mean; plain "
          "0/1 weights divide by padding and missing labels too)")
