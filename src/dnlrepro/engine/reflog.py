"""The training logs of the model zoo (mmseg 0.x ``<timestamp>.log.json``), read strictly.

§ numbers refer to docs/reference.md (§6.4 lists each convention with its upstream source).

One JSON object per line, written by mmcv's TextLoggerHook:

* line 1: the run's ``meta`` (``env_info``, ``seed``, ``exp_name``, ...), no ``mode`` key;
* ``mode: "train"`` every ``log_config.interval`` (50) iterations: ``iter`` counts iterations
  *done* (mmcv writes ``runner.iter + 1``), ``lr`` is the lr of the last of them, the losses and
  ``time``/``data_time`` are means over the interval, ``memory`` is in MB;
* ``mode: "val"`` after each evaluation: ``mIoU``, ``mAcc``, ``aAcc`` (and from v0.1x
  ``IoU.<class>``/``Acc.<class>``) as **fractions** of 1. With mmcv 1.1 (the 2020 runs) its
  ``iter`` is the evaluation's iteration and no train line is written there (the eval hook
  clears the log buffer); later mmcv writes the number of validation images instead, after the
  train line of that iteration. :func:`read` resolves both to :attr:`ValPoint.iter`.
* every float is rounded to 5 decimals (``_round_float``): compare lrs after the same rounding.

This module reads plain JSON only (``json.loads``): a log never executes anything.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnlrepro.core.files import write_bytes_atomic

logger = logging.getLogger(__name__)

DECIMALS = 5  # mmcv TextLoggerHook._round_float
META_KEYS = ("env_info", "seed", "exp_name", "config", "mmseg_version", "CLASSES", "PALETTE")
TRAIN_REQUIRED = ("iter", "lr", "loss")
VAL_REQUIRED = ("iter", "mIoU")
VAL_FRACTIONS = ("mIoU", "mAcc", "aAcc")  # fractions in the log, percentages everywhere else


class RefLogError(ValueError):
    """A reference log is malformed; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class TrainPoint:
    iter: int  # iterations done (mmcv's runner.iter + 1)
    lr: float
    loss: float
    values: dict[str, float] = field(default_factory=dict)  # every other number of the line


@dataclass(frozen=True)
class ValPoint:
    iter: int  # the training iteration the evaluation followed
    mIoU: float  # noqa: N815 -- the log's key; percent (its fraction x 100)
    mAcc: float | None  # noqa: N815
    aAcc: float | None  # noqa: N815
    line_iter: int  # the val line's own ``iter`` (image count with mmcv >= 1.3)


@dataclass(frozen=True)
class RefLog:
    path: Path
    meta: dict[str, Any]
    train: tuple[TrainPoint, ...]
    val: tuple[ValPoint, ...]


def mmcv_round(value: float) -> float:
    """``value`` as mmcv writes it into the log (Python ``round`` to 5 decimals)."""
    return round(float(value), DECIMALS)


def _number(obj: dict, key: str, where: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RefLogError(f"{where}: key {key!r} must be a finite number, got {value!r}")
    return float(value)


def _train(obj: dict, where: str) -> TrainPoint:
    for key in TRAIN_REQUIRED:
        if key not in obj:
            raise RefLogError(f"{where}: train line without key {key!r} (mmcv writes it always)")
    it = _number(obj, "iter", where)
    if it != int(it) or it < 1:
        raise RefLogError(f"{where}: 'iter' must be a positive integer, got {obj['iter']!r}")
    values = {
        k: float(v)
        for k, v in obj.items()
        if k not in ("mode", "epoch", "iter", "lr", "loss")
        and isinstance(v, int | float)
        and not isinstance(v, bool)
    }
    return TrainPoint(int(it), _number(obj, "lr", where), _number(obj, "loss", where), values)


def _val(obj: dict, where: str, last_train: int) -> ValPoint:
    for key in VAL_REQUIRED:
        if key not in obj:
            raise RefLogError(f"{where}: val line without key {key!r}")
    pct = {}
    for key in VAL_FRACTIONS:
        if key in obj:
            value = _number(obj, key, where)
            if not 0.0 <= value <= 1.0:
                raise RefLogError(
                    f"{where}: {key!r} is {value}, but mmseg 0.x logs it as a fraction in [0, 1] "
                    "(a percentage here means the file is not an mmseg 0.x log.json)"
                )
            pct[key] = value * 100.0
    line_iter = int(_number(obj, "iter", where))
    # mmcv 1.1: the val line carries the evaluation's iteration (after the last train line);
    # mmcv >= 1.3: the number of validation images, after the train line of that iteration.
    at = line_iter if line_iter > last_train else last_train
    if at < 1:
        raise RefLogError(f"{where}: a val line before any train line cannot be placed")
    return ValPoint(at, pct["mIoU"], pct.get("mAcc"), pct.get("aAcc"), line_iter)


def read(path: str | Path) -> RefLog:
    """Parse ``path`` strictly: metadata first, then train/val lines in iteration order.

    Raises:
        FileNotFoundError: no such file.
        RefLogError: not JSON, an unknown ``mode``, a missing or non-numeric key, iterations
            going backwards; the message names ``path:line``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference log {path} does not exist")
    meta: dict[str, Any] | None = None
    train: list[TrainPoint] = []
    val: list[ValPoint] = []
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            where = f"{path}:{number}"
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise RefLogError(f"{where}: not a JSON object ({e.msg})") from None
            if not isinstance(obj, dict):
                raise RefLogError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            mode = obj.get("mode")
            if mode is None:
                if meta is not None or train or val:
                    raise RefLogError(f"{where}: a line without 'mode' after the first line")
                if not any(k in obj for k in META_KEYS):
                    raise RefLogError(
                        f"{where}: the first line has neither 'mode' nor any metadata key "
                        f"({', '.join(META_KEYS)})"
                    )
                meta = obj
            elif mode == "train":
                point = _train(obj, where)
                if train and point.iter <= train[-1].iter:
                    raise RefLogError(
                        f"{where}: iter {point.iter} after iter {train[-1].iter}; a log of a "
                        "resumed run must be cut at the resume point before it is used"
                    )
                train.append(point)
            elif mode == "val":
                last = max(train[-1].iter if train else 0, val[-1].iter if val else 0)
                val.append(_val(obj, where, last))
            else:
                raise RefLogError(f"{where}: unknown mode {mode!r}; expected 'train' or 'val'")
    if not train:
        raise RefLogError(f"{path}: no train line; is it an mmseg training log.json?")
    logger.debug("%s: %d train and %d val lines", path, len(train), len(val))
    return RefLog(path, meta or {}, tuple(train), tuple(val))


# ---------------------------------------------------------------------------------------------
# Writing our own run in the same format (the smoke profile's recorded references)
# ---------------------------------------------------------------------------------------------


def _rounded(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: mmcv_round(v) if isinstance(v, float) else v for k, v in obj.items()}


def lines_from_history(meta: dict[str, Any], history: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """Our history (``state.history``: percent mIoU) as mmseg 0.x log lines (fractions), all of
    them in epoch 1 (an iteration-based run)."""
    yield meta
    val = {p["iter"]: p for p in history.get("val", [])}
    for point in history.get("train", []):
        it = point["iter"]
        losses = {k: v for k, v in point.items() if k not in ("iter", "lr")}
        yield _rounded({"mode": "train", "epoch": 1, "iter": it, "lr": point["lr"], **losses})
        if it in val:
            yield _val_line(val.pop(it), point["lr"])
    for it in sorted(val):  # evaluations at iterations without a log line
        yield _val_line(val[it], None)


def _val_line(point: dict[str, Any], lr: float | None) -> dict[str, Any]:
    line: dict[str, Any] = {"mode": "val", "epoch": 1, "iter": point["iter"]}
    if lr is not None:
        line["lr"] = lr
    for key in VAL_FRACTIONS:
        if point.get(key) is not None:
            line[key] = point[key] / 100.0
    return _rounded(line)


def write(path: str | Path, lines: Iterable[dict[str, Any]]) -> Path:
    """One JSON object per line, as mmcv dumps them."""
    path = Path(path)
    text = "".join(json.dumps(line) + "\n" for line in lines)
    write_bytes_atomic(path, text.encode())
    return path


# ---------------------------------------------------------------------------------------------
# What the published run was (the metadata line)
# ---------------------------------------------------------------------------------------------

_GPU = re.compile(r"^GPU ([0-9,]+): (.+)$")
VERSIONS = ("Python", "PyTorch", "TorchVision", "OpenCV", "MMCV", "MMSegmentation", "NVCC")


def run_facts(log: RefLog) -> dict[str, Any]:
    """GPU model and count, seed and versions from the metadata line's ``env_info`` (mmcv's
    ``collect_env``: one ``key: value`` per line, GPUs grouped as ``GPU 0,1,2,3: <model>``)."""
    env = str(log.meta.get("env_info") or "")
    gpus: dict[str, int] = {}
    versions: dict[str, str] = {}
    for line in env.splitlines():
        line = line.strip()
        match = _GPU.match(line)
        if match:
            gpus[match.group(2).strip()] = len(match.group(1).split(","))
            continue
        key, _, value = line.partition(":")
        if key.strip() in VERSIONS and value.strip():
            versions[key.strip()] = value.strip()
    return {
        "gpus": gpus,  # {model: count} of the machine that wrote the log
        "seed": log.meta.get("seed"),
        "exp_name": log.meta.get("exp_name"),
        "versions": versions,
        "train_lines": len(log.train),
        "last_iter": log.train[-1].iter,
        **cadence(log),
        "val": {p.iter: round(p.mIoU, 2) for p in log.val},
    }


def cadence(log: RefLog) -> dict[str, Any]:
    """How often the run logged: the most frequent gap between train lines (mmseg 0.x: 50; the
    gap across an evaluation is 100 in a 2020 log, which has no train line there) and the
    evaluations' iterations."""
    gaps = [b.iter - a.iter for a, b in zip(log.train, log.train[1:], strict=False)]
    interval = max(set(gaps), key=gaps.count) if gaps else None
    evals = [p.iter for p in log.val]
    every = (
        evals[0]
        if evals and all(b - a == evals[0] for a, b in zip([0, *evals], evals, strict=False))
        else None
    )
    return {"log_interval": interval, "eval_interval": every, "eval_iters": evals}
