"""PyTorch Forecasting's TimeSeriesDataSet over the series of windows.py, for comparison.
Run by `windows.py --torch-python PYTHON` in an environment that has pytorch-forecasting
(it needs torch): the same windows (history, horizon, stride 1, every full window), the same
batch size, a shuffled data loader in the main process."""

from __future__ import annotations

import time
from pathlib import Path

from epoch import _peak_mb, _reset_peak, _rss_mb


def child_torch(path: Path, batches: int, history: int, horizon: int, batch: int) -> dict:
    """Times `batches` batches of the shuffled loader after one untimed batch: its loader
    builds every window in Python, and a whole epoch takes the better part of an hour."""
    import pandas as pd
    from pytorch_forecasting import TimeSeriesDataSet

    baseline = _rss_mb()
    frame = pd.read_parquet(path, columns=["id", "day", "units", "price", "dow"])
    frame["time_idx"] = frame.groupby("id").cumcount()
    frame["id"] = frame["id"].astype(str)
    read_peak = _peak_mb() - baseline
    _reset_peak()
    start = time.perf_counter()
    dataset = TimeSeriesDataSet(
        frame, time_idx="time_idx", target="units", group_ids=["id"],
        max_encoder_length=history, min_encoder_length=history,
        max_prediction_length=horizon, min_prediction_length=horizon,
        time_varying_known_reals=["dow"], time_varying_unknown_reals=["units", "price"],
        target_normalizer=None, add_relative_time_idx=False, add_target_scales=False,
        add_encoder_length=False)
    loader = dataset.to_dataloader(train=True, batch_size=batch, num_workers=0)
    setup = time.perf_counter() - start
    setup_peak = _peak_mb() - baseline
    iterator = iter(loader)
    next(iterator)
    _reset_peak()
    start = time.perf_counter()
    windows = sum(int(next(iterator)[0]["encoder_cont"].shape[0]) for _ in range(batches))
    seconds = time.perf_counter() - start
    return {"windows": windows, "epoch_seconds": seconds, "windows_per_second":
            windows / seconds, "peak_mb": _peak_mb() - baseline, "setup_seconds": setup,
            "setup_peak_mb": setup_peak, "read_peak_mb": read_peak,
            "windows_per_epoch": len(dataset)}
