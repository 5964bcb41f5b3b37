"""Missing values: what grouping does with nulls, NaNs and infinities.

A null or NaN label is missing: it is filled with its output's `fill_value` (so that it is
finite) and marked not `present`, which gives it weight 0. A NaN, null or infinite feature
is an error unless its input sets `fill_value`; every filled value is counted, per column.
An input that is scaled or flags its missing values keeps them as NaN here, counted:
`seqpipe.transform` fills them after scaling. A missing category (a null) is counted and
becomes id 1 there.
"""

from __future__ import annotations

import numpy as np

from seqpipe.errors import DataError, raise_or_collect


def features(columns, config, where, problems):
    """Every input's values: a categorical one's `Categories`, a numeric one's tuple of
    columns (see `Sequences.features`), and how many values each column had filled."""
    features, filled = {}, {}
    for name, spec in config.inputs.items():
        if spec.categorical:
            values = columns[spec.columns[0], spec.level]
            features[name] = values
            missing = int(np.count_nonzero(values.codes < 0))
            if missing:
                filled[f"inputs.{name}.{spec.columns[0]}"] = missing
    numeric = {name: spec for name, spec in config.inputs.items() if not spec.categorical}
    found, counts = _feature_columns(columns, numeric, where, problems)
    return {**features, **found}, {**filled, **counts}


def read_as(spec) -> type:
    """float64 for a scaled input until `seqpipe.transform` has scaled it (float32 would
    round epoch seconds and large counters), else float32."""
    return np.float64 if spec.normalize else np.float32


def deferred(spec) -> bool:
    """Whether an input's missing values stay NaN until `seqpipe.transform` fills them: after
    scaling, or beside their indicator columns."""
    return bool(spec.normalize or spec.missing_indicators)


def _feature_columns(columns, inputs, where, problems):
    """Each numeric input as a tuple of its columns: columns read straight from Arrow are
    not copied unless a value is filled."""
    features, filled = {}, {}
    for name, spec in inputs.items():
        values = [np.asarray(columns[c, spec.level], dtype=read_as(spec)) for c in spec.columns]
        counts = np.array([v.size - np.count_nonzero(np.isfinite(v)) for v in values])
        if counts.any():
            fills = [spec.fill_for(c) for c in spec.columns]
            unfilled = [j for j, n in enumerate(counts) if n and fills[j] is None]
            if unfilled:
                bad = ~np.isfinite(np.stack(values, axis=1))
                raise_or_collect(problems, _bad_feature_error(name, spec, counts, unfilled, bad,
                                                              where))
            for j, column in enumerate(spec.columns):
                if counts[j] and fills[j] is not None:
                    if not deferred(spec):
                        values[j] = np.where(np.isfinite(values[j]), values[j],
                                             np.float32(fills[j]))
                    filled[f"inputs.{name}.{column}"] = int(counts[j])
        features[name] = tuple(values)
    return features, filled


def _bad_feature_error(name, spec, counts, unfilled, bad, where) -> DataError:
    per_column = ", ".join(f"column {spec.columns[j]!r}: {counts[j]:,}" for j in unfilled)
    rows = int(bad[:, unfilled].any(axis=1).sum())
    unit = "sequences" if spec.level == "sequence" else "rows"
    return DataError(
        f"inputs.{name}: {int(counts[unfilled].sum()):,} NaN, null or infinite values in "
        f"{rows:,} {unit} of {where} ({per_column}). A NaN feature turns every loss it "
        f"touches into NaN. Set inputs.{name}.fill_value to a number (or {{column: number}}) "
        f"to replace them (they are counted in the report), or clean the data.")


def labels(columns, config, where, problems):
    from seqpipe._internal.runs import (
        fill_missing,  # numba, imported when sequences are first grouped
    )

    labels, present = {}, {}
    for name, output in config.outputs.items():
        if output.categorical:
            labels[name] = columns[output.label_columns[0], output.level]
            present[name] = labels[name].codes >= 0
            continue
        found = []
        for column in output.label_columns:
            values, here, infinite = fill_missing(columns[column, output.level],
                                                  output.fill_value)
            found.append((values, here))
            if infinite:
                raise_or_collect(problems, DataError(
                    f"outputs.{name}: column {column!r} has {infinite:,} infinite labels in "
                    f"{where} (or values beyond float32's range); a label must be finite, or "
                    f"null/NaN when missing"))
        if len(found) == 1:
            labels[name], present[name] = found[0]
        else:  # a timestep counts only when every one of its labels is present; one that
            # does not holds fill_value in every column, as a missing label does
            present[name] = np.logical_and.reduce([here for _, here in found])
            labels[name] = np.stack([values for values, _ in found], axis=1)
            labels[name][~present[name]] = np.float32(output.fill_value)
    return labels, present
