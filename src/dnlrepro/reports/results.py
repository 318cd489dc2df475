"""Our measured numbers, read from the files the stages write under ``results/<config>/``.

* ``eval.json``          (``dnlrepro evaluate``): ``single_scale`` / ``ms_flip`` blocks with
  ``mIoU``, ``mAcc``, ``aAcc`` in percent, the majority-class baseline, plus ``protocol``.
* ``train_summary.json`` (``dnlrepro train``): effective batch, world size, losses.
* ``run.json``           (``pipeline/evaluate.py``): profile and resolved-config digest.

and the machine-dependent ones under ``timings/<config>/``:

* ``train.json``         (``dnlrepro train``): peak memory and wall time of the training.
* ``benchmark.json``     (``dnlrepro benchmark``): ``fps``, ``mem_gb``, ``device``.

(``results/<config>/metrics.json`` is the compact copy of the headline numbers for
``dvc metrics show``; nothing here reads it.)

A row with several seeds (:mod:`dnlrepro.core.runs`) has one such folder per run; :func:`aggregate`
turns them into the row's :class:`Measured`: the accuracy metrics are the seeds' means, their
spread (n, std, values) is kept beside them, everything else is the first seed's.

These files, not MLflow, are the source of truth for the tables and the diff report. A file that
does not exist means "not measured" (the table shows ``-``); a file that exists but cannot be
read is an error naming the file.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dnlrepro.core import workspace
from dnlrepro.core.profile import Profile
from dnlrepro.core.runs import of_rows, plan

logger = logging.getLogger(__name__)


class ResultsError(ValueError):
    """A results file exists but is malformed; the message names the file and the key."""


# The metrics a row's seeds are averaged over (the rest -- Mem, fps, protocol -- is per machine
# and configuration, not per seed: the first seed's).
SEED_METRICS: tuple[str, ...] = ("mIoU", "mIoU_ms_flip", "mIoU_ms_flip_alt", "mAcc", "aAcc")
CUDA_MEMORY = "cuda_max_memory_allocated"  # the memory_kind of the published Mem (§5.5)


@dataclass(frozen=True)
class Spread:
    """One metric over a row's seeds."""

    values: tuple[float, ...]  # one per seed that has the number, in the row's seed order
    seeds: tuple[int, ...]  # their seeds
    planned: int  # how many runs the profile lists for the row

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return round(statistics.fmean(self.values), 4)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1 in the denominator); None for one seed."""
        return round(statistics.stdev(self.values), 4) if self.n > 1 else None


@dataclass(frozen=True)
class Measured:
    name: str
    metrics: dict[str, float | None]  # mIoU, mIoU_ms_flip, mAcc, aAcc, mem_gb, fps, baseline_mIoU
    protocol: dict[str, Any] = field(default_factory=dict)  # from eval.json
    train: dict[str, Any] = field(default_factory=dict)  # train_summary.json + timings/train.json
    benchmark: dict[str, Any] = field(default_factory=dict)  # benchmark.json as written
    run: dict[str, Any] = field(default_factory=dict)  # run.json: profile, config digest
    files: dict[str, str] = field(default_factory=dict)  # which files were found
    # A row of several seeds (aggregate): metric -> spread; the metrics above are the means.
    spread: dict[str, Spread] = field(default_factory=dict)
    runs: tuple[str, ...] = ()  # the run folders behind the numbers (results/<run>/)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e}); re-run the stage that writes it") from e


def _number(block: Any, key: str, path: Path, where: str) -> float | None:
    if not isinstance(block, dict) or block.get(key) is None:
        return None
    value = block[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ResultsError(f"{path}: key '{where}{key}' must be a number, got {value!r}")
    return float(value)


def _read_mapping(path: Path, files: dict[str, str], key: str, writer: str) -> dict[str, Any]:
    """The JSON mapping at ``path`` (recorded in ``files[key]``), or ``{}`` when it is absent."""
    if not path.is_file():
        return {}
    files[key] = str(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a mapping written by {writer}")
    return data


def load_measured(
    name: str, results_dir: str | Path | None = None, timings_dir: str | Path | None = None
) -> Measured:
    """Everything we measured for configuration ``name`` (missing files give ``None`` values).

    ``results_dir`` / ``timings_dir`` default to the workspace's ``results/`` / ``timings/``
    (with an explicit ``results_dir``, its sibling ``timings/``).
    """
    base = Path(results_dir) if results_dir is not None else workspace.find().results
    root = base / name
    troot = (Path(timings_dir) if timings_dir is not None else base.parent / "timings") / name
    files: dict[str, str] = {}
    metrics: dict[str, float | None] = dict.fromkeys(
        ("mIoU", "mIoU_ms_flip", "mAcc", "aAcc", "mem_gb", "fps", "baseline_mIoU")
    )
    metrics["mIoU_ms_flip_alt"] = None
    protocol: dict[str, Any] = {}
    path = root / "eval.json"
    if path.is_file():
        files["eval"] = str(path)
        data = read_json(path)
        if not isinstance(data, dict) or "single_scale" not in data:
            raise ResultsError(
                f"{path}: expected a mapping with 'single_scale' (and 'ms_flip'); it was not "
                "written by `dnlrepro evaluate --out`"
            )
        single = data["single_scale"]
        for key in ("mIoU", "mAcc", "aAcc"):
            metrics[key] = _number(single, key, path, "single_scale.")
        metrics["mIoU_ms_flip"] = _number(data.get("ms_flip"), "mIoU", path, "ms_flip.")
        # ms+flip with the other small-window mode of the slide rows (§5.2), when measured
        metrics["mIoU_ms_flip_alt"] = _number(data.get("ms_flip_alt"), "mIoU", path, "ms_flip_alt.")
        baseline = single.get("majority_baseline") if isinstance(single, dict) else None
        metrics["baseline_mIoU"] = _number(baseline, "mIoU", path, "single_scale.baseline.")
        protocol = dict(data.get("protocol") or {})
    path = root / "train_summary.json"
    train = _read_mapping(path, files, "train_summary", "`dnlrepro train`")
    timing = _read_mapping(troot / "train.json", files, "train_timing", "`dnlrepro train`")
    train = {**train, **timing}
    # §5.5 defines Mem as CUDA max_memory_allocated; a CPU RSS figure is not that number.
    if train and train.get("memory_kind", CUDA_MEMORY) == CUDA_MEMORY:
        # GiB = MB / 1024 (§5.5), as engine/train_summary.py's build_timing writes it (into
        # timings/<run>/train.json; an error names the file the value came from)
        mem_file = troot / "train.json" if "max_memory_gb" in timing else path
        metrics["mem_gb"] = _number(train, "max_memory_gb", mem_file, "")
    path = troot / "benchmark.json"
    bench = _read_mapping(path, files, "benchmark", "`dnlrepro benchmark`")
    # The published fps / Mem are V100 figures (§5.4, §5.5): a CPU timing is not that quantity,
    # and leaving it out keeps the tables and the diff byte-identical from run to run (the CPU
    # figures stay in timings/<config>/).
    if bench and bench.get("device") == "cuda":
        metrics["fps"] = _number(bench, "fps", path, "")
        if metrics["mem_gb"] is None:
            metrics["mem_gb"] = _number(bench, "mem_gb", path, "")
    run = _read_mapping(root / "run.json", files, "run", "pipeline/evaluate.py")
    if not files:
        logger.debug("no results for %s under %s", name, root)
    return Measured(name, metrics, protocol, train, bench, run, files)


def aggregate(name: str, runs: Sequence[Measured], seeds: Sequence[int]) -> Measured:
    """Row ``name`` from its runs (first seed first): the means of :data:`SEED_METRICS` with
    their :class:`Spread`; a single run is returned as it is (its spread is n = 1)."""
    if not runs:
        raise ValueError(f"row {name!r} has no runs")
    first = runs[0]
    metrics, spread = dict(first.metrics), {}
    for metric in SEED_METRICS:
        have = [(m.metrics[metric], s) for m, s in zip(runs, seeds, strict=True)]
        have = [(v, s) for v, s in have if v is not None]
        if not have:
            continue
        sp = Spread(tuple(v for v, _ in have), tuple(s for _, s in have), len(runs))
        spread[metric] = sp
        metrics[metric] = sp.mean if sp.n > 1 else sp.values[0]
    return replace(
        first, name=name, metrics=metrics, spread=spread, runs=tuple(m.name for m in runs)
    )


def load_row(
    name: str,
    runs: Sequence[tuple[str, int]],
    results_dir: str | Path | None = None,
    timings_dir: str | Path | None = None,
) -> Measured:
    """Row ``name`` from its runs, given as (run key, seed) pairs (first seed first)."""
    measured = [load_measured(key, results_dir, timings_dir) for key, _ in runs]
    return aggregate(name, measured, [seed for _, seed in runs])


def load_rows(
    names: Sequence[str],
    profile: Profile,
    results_dir: str | Path | None = None,
    ws: workspace.Workspace | None = None,
) -> dict[str, Measured]:
    """Each row of ``names`` over the runs ``profile`` lists for it (:func:`load_row`)."""
    rows = of_rows(plan(profile, ws), list(names))
    return {n: load_row(n, [(r.key, r.seed) for r in rows[n]], results_dir) for n in names}


def num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    """A number as the reports print it; ``-`` when it was not measured."""
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def with_spread(meas: Measured, metric: str, digits: int = 2) -> str:
    """``78.61`` for one seed, ``78.40 ± 0.52 (n=3)`` for several; ``-`` when not measured."""
    value, sp = meas.metrics.get(metric), meas.spread.get(metric)
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    if sp is not None and sp.std is not None:
        text += f" ± {sp.std:.{digits}f} (n={sp.n})"
    if sp is not None and sp.n < sp.planned:
        text += f" ({sp.n} of {sp.planned} seeds evaluated)"
    return text


def device_of(measured: Measured) -> str | None:
    """Where the numbers were measured, e.g. ``cpu (x86_64)`` or ``NVIDIA H100``."""
    for source in (measured.benchmark, measured.train, measured.protocol):
        name, kind = source.get("device_name"), source.get("device")
        if name and kind and str(kind) not in str(name):
            return f"{kind} ({name})"
        if name or kind:
            return str(name or kind)
    return None
