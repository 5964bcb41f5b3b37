"""Statistics: what scaling and categorical ids are computed from, in one streaming pass.

Means, standard deviations, minima and maxima of the scaled columns, and the vocabularies
of the categorical inputs and labels, come from the present values at the kept timesteps of
the sequences they are computed over: the train part when the config has a `split` (whichever
part is being built, so that validation and test never leak into training), else every
sequence read. Never from padding. Chunks are reduced as they stream past (counts, means and
squared deviations merge exactly, Chan et al.), so memory does not grow with the data.

`Statistics` is a plain, frozen object: saved as readable JSON, loaded again to prepare data
seen later (validation run alone, serving, `seqpipe.predict`) exactly as training did.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

import numpy as np

from seqpipe.config import PipelineConfig, load_config
from seqpipe.errors import ConfigError
from seqpipe.parquet.sequences import Categories, Sequences, ranges

logger = logging.getLogger("seqpipe")
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ColumnStatistics:
    """One scaled column's present values: how many, their mean, population std (ddof 0),
    minimum and maximum."""

    count: int
    mean: float
    std: float
    min: float
    max: float

    def scale(self, method: str) -> tuple[float, float]:
        """(shift, divisor) that map a raw value v to (v - shift) / divisor. A constant or
        empty column divides by 1."""
        if method == "standard":
            return self.mean, self.std if self.std > 0 else 1.0
        if method == "minmax":
            spread = self.max - self.min
            return self.min, spread if spread > 0 else 1.0
        raise ConfigError(f"normalize must be 'standard' or 'minmax'; got {method!r}")


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The categories of one input or label, most frequent first (ties by value), with how
    often each was seen. `values[i]` gets id `first_id + i`: 2 for an input (0 is padding,
    1 missing or unseen), 0 for a label (a class id). `dropped` values were left out by
    `max_tokens` and map to 1."""

    values: tuple
    counts: tuple[int, ...]
    first_id: int
    missing: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.values)


@dataclasses.dataclass(frozen=True)
class Statistics:
    """Scaling statistics and vocabularies, as `Pipeline.statistics` holds them.

    Attributes:
      columns: input or output name -> column -> `ColumnStatistics`, for inputs and
        outputs scaled `per: dataset` (their `normalize`).
      vocabularies: input or output name -> `Vocabulary`, for categorical ones.
      sequences: how many sequences they were computed over.
      computed_on: which sequences, in words ("the train part of data/x.parquet").

    Example::

      pipeline = Pipeline("train.yaml", split="train")
      pipeline.statistics.save("stats.json")
      keras.layers.Embedding(pipeline.statistics.input_dim("event"), 16, mask_zero=True)
      later = build_dataset("train.yaml", split="test",
                            statistics=Statistics.load("stats.json"))
    """

    columns: Mapping[str, Mapping[str, ColumnStatistics]] = dataclasses.field(
        default_factory=dict)
    vocabularies: Mapping[str, Vocabulary] = dataclasses.field(default_factory=dict)
    sequences: int = 0
    computed_on: str = ""

    def input_dim(self, name: str) -> int:
        """`Embedding(input_dim=...)` for a categorical input (ids 0 and 1 included), or the
        number of classes of a categorical output."""
        if name not in self.vocabularies:
            raise KeyError(f"{name!r} is not categorical; categorical inputs and outputs: "
                           f"{sorted(self.vocabularies)}")
        vocabulary = self.vocabularies[name]
        return len(vocabulary) + vocabulary.first_id

    def to_dict(self) -> dict:
        return {"format": FORMAT, "computed_on": self.computed_on, "sequences": self.sequences,
                "columns": {name: {c: dataclasses.asdict(s) for c, s in columns.items()}
                            for name, columns in self.columns.items()},
                "vocabularies": {name: {"values": list(v.values), "counts": list(v.counts),
                                        "first_id": v.first_id, "missing": v.missing,
                                        "dropped": v.dropped}
                                 for name, v in self.vocabularies.items()}}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "the statistics",
                  fix: str = "Save them again with Statistics.save (Pipeline(config, "
                             "split='train').statistics) rather than edit the file") -> Statistics:
        """Statistics from what `to_dict` gave, every entry checked: a hand-edited or damaged
        file would otherwise scale every value to NaN or zero without a word.

        Raises:
          ConfigError: an entry is missing, of the wrong type, or out of its rule (numbers
            finite, std >= 0, min <= max, vocabularies of unique values with a count each),
            naming `where` and the entry.
        """
        check = _Checker(where, fix)
        check.mapping(raw, "")
        if raw.get("format") != FORMAT:
            raise check.error(f"its format is {raw.get('format')!r}, and this seqpipe reads "
                              f"format {FORMAT}")
        columns = {name: {c: check.column(s, f"columns.{name}.{c}")
                          for c, s in check.mapping(spec, f"columns.{name}").items()}
                   for name, spec in check.mapping(raw.get("columns"), "columns").items()}
        vocabularies = {name: check.vocabulary(v, f"vocabularies.{name}")
                        for name, v in check.mapping(raw.get("vocabularies"),
                                                     "vocabularies").items()}
        return cls(columns, vocabularies, check.count(raw.get("sequences"), "sequences"),
                   check.text(raw.get("computed_on"), "computed_on"))

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the statistics as JSON (readable, diffable)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> Statistics:
        """Reads statistics `save` wrote."""
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"could not read statistics from {os.fspath(path)!r}: {e}") from e
        return cls.from_dict(raw, where=os.fspath(path))

    def check(self, config: PipelineConfig) -> None:
        """Raises a ConfigError when these statistics do not hold what `config` needs."""
        for key, name, columns in scaled_columns(config):
            have = sorted(self.columns.get(name, {}))
            if have != sorted(columns):
                raise ConfigError(
                    f"the statistics do not match the config: {key} normalizes columns "
                    f"{list(columns)}, the statistics hold {have or 'none'} for it. Compute "
                    f"statistics with this config (Pipeline(config).statistics), or pass "
                    f"none.")
        for name in categorical_names(config):
            if name not in self.vocabularies:
                raise ConfigError(
                    f"the statistics do not match the config: {name!r} is categorical and "
                    f"the statistics hold no vocabulary for it (they hold "
                    f"{sorted(self.vocabularies) or 'none'}). Compute statistics with this "
                    f"config, or pass none.")

    def __str__(self) -> str:
        lines = [f"statistics over {self.computed_on} ({self.sequences:,} sequences)"]
        for name, columns in self.columns.items():
            for column, s in columns.items():
                lines.append(f"  {name}.{column}: mean {s.mean:.6g}, std {s.std:.6g}, "
                             f"min {s.min:.6g}, max {s.max:.6g} ({s.count:,} values)")
        for name, v in self.vocabularies.items():
            shown = ", ".join(repr(x) for x in v.values[:5]) + (", ..." if len(v) > 5 else "")
            lines.append(f"  {name}: {len(v):,} values ({shown}); input_dim "
                         f"{self.input_dim(name)}" + (f", {v.dropped:,} rarer values map to 1"
                                                      if v.dropped else ""))
        return "\n".join(lines)


class _Checker:
    """Checks the entries of a statistics mapping, naming the file and the entry."""

    def __init__(self, where: str, fix: str) -> None:
        self.where, self.fix = where, fix

    def error(self, problem: str) -> ConfigError:
        return ConfigError(f"{self.where} does not hold usable seqpipe statistics: {problem}. "
                           f"{self.fix}.")

    def mapping(self, value: Any, entry: str) -> Mapping:
        if not isinstance(value, Mapping):
            raise self.error(f"{entry or 'the whole'} must be a mapping; got {value!r}"[:300])
        return value

    def number(self, value: Any, entry: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise self.error(f"{entry} must be a finite number; got {value!r}")
        return float(value)

    def count(self, value: Any, entry: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(f"{entry} must be a whole number >= 0; got {value!r}")
        return value

    def text(self, value: Any, entry: str) -> str:
        if not isinstance(value, str):
            raise self.error(f"{entry} must be a string; got {value!r}")
        return value

    def column(self, raw: Any, entry: str) -> ColumnStatistics:
        raw = self.mapping(raw, entry)
        expected = {f.name for f in dataclasses.fields(ColumnStatistics)}
        if set(raw) != expected:
            raise self.error(f"{entry} must have exactly the keys {sorted(expected)}; got "
                             f"{sorted(raw)}")
        found = ColumnStatistics(self.count(raw["count"], f"{entry}.count"),
                                 *(self.number(raw[k], f"{entry}.{k}")
                                   for k in ("mean", "std", "min", "max")))
        if found.std < 0:
            raise self.error(f"{entry}.std must be >= 0; got {found.std!r}")
        if found.min > found.max:
            raise self.error(f"{entry}.min must be <= its max; got min {found.min!r} and max "
                             f"{found.max!r}")
        return found

    def vocabulary(self, raw: Any, entry: str) -> Vocabulary:
        raw = self.mapping(raw, entry)
        for key in ("values", "counts", "first_id", "missing", "dropped"):
            if key not in raw:
                raise self.error(f"{entry} has no key {key!r}")
        values, counts = raw["values"], raw["counts"]
        if not isinstance(values, list) or not isinstance(counts, list) \
                or len(values) != len(counts):
            raise self.error(f"{entry}.values and .counts must be lists of one length; got "
                             f"{type(values).__name__} and {type(counts).__name__}")
        kinds = {type(v) for v in values}
        if len(kinds) > 1 or not kinds <= {str, int, bool}:
            raise self.error(f"{entry}.values must all be strings, or all integers or "
                             f"booleans; got the types {sorted(k.__name__ for k in kinds)}")
        if len(set(values)) != len(values):
            raise self.error(f"{entry}.values must not repeat a value")
        first_id = raw["first_id"]
        if first_id not in (0, 2) or isinstance(first_id, bool):
            raise self.error(f"{entry}.first_id must be 2 (an input) or 0 (a label); got "
                             f"{first_id!r}")
        return Vocabulary(tuple(values),
                          tuple(self.count(c, f"{entry}.counts") for c in counts), first_id,
                          self.count(raw["missing"], f"{entry}.missing"),
                          self.count(raw["dropped"], f"{entry}.dropped"))


StatisticsLike = Union["Statistics", Mapping, str, os.PathLike]


def as_statistics(given: StatisticsLike) -> Statistics:
    """`Statistics` from themselves, a path `Statistics.save` wrote, or its mapping."""
    if isinstance(given, Statistics):
        return given
    if isinstance(given, (str, os.PathLike)):
        return Statistics.load(given)
    if isinstance(given, Mapping):
        return Statistics.from_dict(given)
    raise ConfigError(f"statistics= must be seqpipe.Statistics, the path of a file "
                      f"Statistics.save wrote, or its mapping; got {type(given).__name__}")


def choose(config: PipelineConfig, given: Optional[StatisticsLike], own: Optional[Statistics],
           where: str) -> Optional[Statistics]:
    """The statistics a pipeline prepares its chunks with when they need not be computed:
    the source's `own` (a materialized part's), the `given` ones (checked against the
    config), or empty ones when the config needs none; None: compute them."""
    chosen = None if given is None else as_statistics(given)
    if own is not None:
        if chosen is not None and chosen != own:
            raise ConfigError(
                f"{where} was written with its own statistics, and its records hold values "
                f"prepared with them; statistics= cannot change them. Pass none, or "
                f"materialize again with these statistics.")
        return own
    if chosen is not None:
        chosen.check(config)
        return chosen
    if not needed(config):
        return Statistics(computed_on="no sequences: the config scales no column and has no "
                          "categorical input or output")
    return None


def nothing_to_count(config: PipelineConfig, what: str) -> ConfigError:
    """The error for statistics that would be computed from no timesteps (`what`)."""
    scaled = [f"{key}.normalize" for key, _, _ in scaled_columns(config)]
    used = ", ".join(scaled + [f"the vocabulary of {name}" for name in categorical_names(config)])
    return ConfigError(
        f"the statistics ({used}) would be computed from {what}, which holds none: every "
        f"value would be scaled with mean 0 and std 1 and every category would become id 1. "
        f"Pass the training run's statistics (statistics=Statistics.load('stats.json'), saved "
        f"from Pipeline(config, split='train').statistics), or data that holds the train "
        f"part.")


def needed(config: PipelineConfig) -> bool:
    """Whether the config scales a column over the dataset or has a categorical input or
    output."""
    return bool(scaled_columns(config)) or bool(categorical_names(config))


def scaled_columns(config: PipelineConfig) -> list[tuple[str, str, tuple[str, ...]]]:
    """(key, name, columns) of each input and output scaled `per: dataset`: the ones the
    statistics hold figures for."""
    return [(f"inputs.{name}", name, spec.columns) for name, spec in config.inputs.items()
            if spec.scaling and spec.scaling.per == "dataset"] + [
        (f"outputs.{name}", name, spec.label_columns) for name, spec in config.outputs.items()
        if spec.scaling and spec.scaling.per == "dataset"]


def categorical_names(config: PipelineConfig) -> list[str]:
    return [name for specs in (config.inputs, config.outputs)
            for name, spec in specs.items() if spec.categorical]


class _Moments:
    """count, mean and sum of squared deviations of one column, merged chunk by chunk
    (Chan et al.: exact in any order, up to rounding)."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.low, self.high = math.inf, -math.inf

    def add(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)].astype(np.float64)
        if values.size:
            part = _Moments()
            part.count, part.mean = values.size, float(values.mean())
            part.m2 = float(np.square(values - part.mean).sum())
            part.low, part.high = float(values.min()), float(values.max())
            self.merge(part)

    def merge(self, other: _Moments) -> None:
        if not other.count:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / total
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.count = total
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)

    def result(self) -> ColumnStatistics:
        if not self.count:
            return ColumnStatistics(0, 0.0, 1.0, 0.0, 1.0)
        return ColumnStatistics(self.count, self.mean, math.sqrt(self.m2 / self.count),
                                self.low, self.high)


class Tally:
    """Statistics in the making: what chunks of sequences added so far. Two tallies merge
    (`merge`), so that workers can tally their own sequences (Beam's combiner does).

    Args:
      config: the pipeline config.
    """

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.moments = {name: {c: _Moments() for c in columns}
                        for _, name, columns in scaled_columns(config)}
        self.categories: dict[str, collections.Counter] = {
            name: collections.Counter() for name in categorical_names(config)}
        self.missing = dict.fromkeys(self.categories, 0)
        self.sequences = 0

    def __getstate__(self) -> dict:  # plain pickle, as Beam's coders use: config as a dict
        return {**self.__dict__, "config": self.config.to_dict()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, config=load_config(state["config"]))

    def add(self, chunk: Sequences, skipped: np.ndarray, kept: np.ndarray,
            counted: np.ndarray) -> None:
        """Adds the `counted` sequences of a chunk: of each, the `kept` timesteps after the
        first `skipped` (arrays aligned with the chunk's sequences)."""
        mine = np.flatnonzero(counted)
        if not len(mine):
            return
        self.sequences += len(mine)
        rows = {"timestep": ranges(chunk.offsets[mine] + skipped[mine], kept[mine]),
                "sequence": mine}
        for name, moments in self.moments.items():
            at = rows[self.config.levels[name]]
            if name in self.config.inputs:
                for j, column in enumerate(moments):
                    moments[column].add(chunk.features[name][j][at])
                continue
            labels, present = chunk.labels[name][at], chunk.present[name][at]
            for j, column in enumerate(moments):  # present labels only: the rest are fills
                moments[column].add((labels if labels.ndim == 1 else labels[:, j])[present])
        for name, counter in self.categories.items():
            values = (chunk.features if name in self.config.inputs else chunk.labels)[name]
            self._count(name, counter, values[rows[self.config.levels[name]]])

    def _count(self, name: str, counter: collections.Counter, values: Categories) -> None:
        codes = values.codes
        self.missing[name] += int(np.count_nonzero(codes < 0))
        seen = np.bincount(codes[codes >= 0], minlength=len(values.values))
        found = np.flatnonzero(seen)
        for value, count in zip(values.values.take(found).to_pylist(), seen[found].tolist()):
            counter[value] += count

    def merge(self, other: Tally) -> Tally:
        for name, moments in self.moments.items():
            for column, m in moments.items():
                m.merge(other.moments[name][column])
        for name, counter in self.categories.items():
            counter.update(other.categories[name])
            self.missing[name] += other.missing[name]
        self.sequences += other.sequences
        return self

    def result(self, computed_on: str) -> Statistics:
        columns = {name: {c: m.result() for c, m in moments.items()}
                   for name, moments in self.moments.items()}
        for name, stats in columns.items():
            key = f"{'inputs' if name in self.config.inputs else 'outputs'}.{name}"
            for column, s in stats.items():
                if s.count and s.std == 0:
                    logger.warning("seqpipe: %s column %r is constant (%g) over %s; "
                                   "it is scaled with std 1", key, column, s.mean, computed_on)
                elif not s.count:
                    logger.warning("seqpipe: %s column %r has no present value in %s; "
                                   "it is scaled with mean 0 and std 1", key, column,
                                   computed_on)
        vocabularies = {name: self._vocabulary(name, counter)
                        for name, counter in self.categories.items()}
        return Statistics(columns, vocabularies, self.sequences, computed_on)

    def _vocabulary(self, name: str, counter: collections.Counter) -> Vocabulary:
        ordered = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
        spec = self.config.inputs.get(name)
        limit = spec.max_tokens if spec is not None else None
        kept = ordered[:limit] if limit else ordered
        return Vocabulary(tuple(v for v, _ in kept), tuple(int(c) for _, c in kept),
                          2 if spec is not None else 0, self.missing[name],
                          len(ordered) - len(kept))


def compute(config: PipelineConfig, chunks: Iterable[tuple[int, Sequences]],
            skipped: np.ndarray, kept: np.ndarray, counted: np.ndarray,
            computed_on: str) -> Statistics:
    """The statistics of the `counted` sequences of a stream of chunks in index order (each
    with the index of its first sequence), in one pass; `skipped`, `kept` and `counted`
    are per sequence of the index."""
    tally = Tally(config)
    for first, chunk in chunks:
        at = slice(first, first + len(chunk))
        tally.add(chunk, skipped[at], kept[at], counted[at])
    return tally.result(computed_on)
