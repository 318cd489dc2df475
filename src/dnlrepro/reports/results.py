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

These files, not MLflow, are the source of truth for the tables and the diff report. A file that
does not exist means "not measured" (the table shows ``-``); a file that exists but cannot be
read is an error naming the file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnlrepro import workspace

logger = logging.getLogger(__name__)


class ResultsError(ValueError):
    """A results file exists but is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Measured:
    name: str
    metrics: dict[str, float | None]  # mIoU, mIoU_ms_flip, mAcc, aAcc, mem_gb, fps, baseline_mIoU
    protocol: dict[str, Any] = field(default_factory=dict)  # from eval.json
    train: dict[str, Any] = field(default_factory=dict)  # train_summary.json + timings/train.json
    benchmark: dict[str, Any] = field(default_factory=dict)  # benchmark.json as written
    run: dict[str, Any] = field(default_factory=dict)  # run.json: profile, config digest
    files: dict[str, str] = field(default_factory=dict)  # which files were found


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


def _first_number(block: dict[str, Any], keys: tuple[str, ...], path: Path) -> float | None:
    for key in keys:
        value = _number(block, key, path, "")
        if value is not None:
            return value
    return None


def _mem_gb(train: dict[str, Any], path: Path) -> float | None:
    """Training memory in GiB (§5.5: max_memory_allocated, MB/1024), whatever unit was logged."""
    gb = _first_number(train, ("mem_gb", "max_memory_gb", "max_mem_gb", "memory_gb"), path)
    if gb is not None:
        return gb
    mb = _first_number(train, ("max_memory_mb", "mem_mb", "memory_mb"), path)
    if mb is not None:
        return mb / 1024
    nbytes = _first_number(train, ("max_memory_allocated", "max_memory_bytes"), path)
    return None if nbytes is None else nbytes / 1024**3


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
    if train and train.get("memory_kind", "cuda_max_memory_allocated") == (
        "cuda_max_memory_allocated"
    ):
        metrics["mem_gb"] = _mem_gb(train, path)
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


def device_of(measured: Measured) -> str | None:
    """Where the numbers were measured, e.g. ``cpu (x86_64)`` or ``NVIDIA H100``."""
    for source in (measured.benchmark, measured.train, measured.protocol):
        name, kind = source.get("device_name"), source.get("device")
        if name and kind and str(kind) not in str(name):
            return f"{kind} ({name})"
        if name or kind:
            return str(name or kind)
    return None
