"""Our run against the published training log, while it trains: on track at hour 2 of 40?

§ numbers refer to docs/reference.md (§6.4: the log's conventions).

At every iteration both logs have a train line (mmcv logs every 50 iterations, and so do we):

* **lr**: ours rounded as mmcv rounds it (5 decimals) must equal the published value within a
  relative error of ``LR_RTOL``; otherwise the schedule differs (base lr, max_iters, poly power,
  min_lr, batch-scaled lr) and no later iteration can match: :class:`OffTrackError` stops the run.
* **loss**: our interval-mean loss should lie within ``loss_band`` (relative) of the published
  one. A different seed and data order move a 50-iteration mean by a few percent, a different
  loss (weights, ignore index, denominator) by far more; leaving the band is logged as a
  warning and marked in MLflow (``trajectory/loss_in_band`` = 0), never an error.

At every iteration both logs have a validation (mmseg evaluates every 4000/8000/16000):

* **mIoU**: ours more than the row's tolerance (registry, ``params/published.yaml``) below the
  published value is a warning; with ``stop_if_off_track`` it stops the run, saying why.

:meth:`Trajectory.record` is what ``results/<run>/trajectory.json`` holds: every compared point,
the largest lr error, the loss-band verdict and the mIoU at each published evaluation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnlrepro.core.files import write_bytes_atomic, write_json
from dnlrepro.engine import reflog
from dnlrepro.engine.reflog import RefLog, mmcv_round

logger = logging.getLogger(__name__)

LR_RTOL = 1e-6
LOG_FILE = "log.json"  # results/<run>/: our run in mmseg 0.x's log.json format
TRAJECTORY_FILE = "trajectory.json"  # results/<run>/: the comparison (Trajectory.record)


class OffTrackError(RuntimeError):
    """Our run left the published trajectory where it must not (lr, or mIoU with the stop flag)."""


@dataclass
class Trajectory:
    """Compare a run with ``ref`` as it trains; ``tracker`` (optional) gets the verdicts."""

    ref: RefLog
    miou_tolerance: float  # mIoU points below the published value before we warn (or stop)
    loss_band: float  # relative band around the published loss
    stop_if_off_track: bool = False
    quiet: bool = False  # a replay of points the loop already reported: no warnings
    train_points: list[dict[str, Any]] = field(default_factory=list)
    val_points: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._train = {p.iter: p for p in self.ref.train}
        self._val = {p.iter: p for p in self.ref.val}

    def on_train(self, point: dict[str, Any], tracker: Any = None) -> None:
        """``point``: our history entry (``iter``, ``lr``, ``loss``, ...) of a logged iteration."""
        it = int(point["iter"])
        ref = self._train.get(it)
        if ref is None:
            return
        ours_lr = mmcv_round(point["lr"])
        lr_err = abs(ours_lr - ref.lr) / max(abs(ref.lr), 1e-12)
        loss = float(point.get("loss", float("nan")))
        ratio = loss / ref.loss if ref.loss else float("nan")
        in_band = abs(ratio - 1.0) <= self.loss_band
        self.train_points.append(
            {"iter": it, "lr": point["lr"], "ref_lr": ref.lr, "lr_rel_error": lr_err,
             "loss": loss, "ref_loss": ref.loss, "loss_ratio": ratio, "loss_in_band": in_band}
        )  # fmt: skip
        if tracker is not None:
            tracker.log_metrics(
                {"trajectory/ref_loss": ref.loss, "trajectory/ref_lr": ref.lr,
                 "trajectory/loss_in_band": float(in_band)}, step=it,
            )  # fmt: skip
        if lr_err > LR_RTOL:
            raise OffTrackError(
                f"iteration {it}: our lr {point['lr']:.8g} (logged as {ours_lr:.5f}) differs from "
                f"the published lr {ref.lr:.5f} of {self.ref.path} (relative error {lr_err:.2e} > "
                f"{LR_RTOL:g}); the schedule differs (schedule.lr, max_iters, poly power, min_lr): "
                "check the resolved config against the published one"
            )
        if not in_band and not self.quiet:
            logger.warning(
                "iteration %d: loss %.4f is %.2fx the published %.4f, outside the band +-%.0f%% "
                "(%s)", it, loss, ratio, ref.loss, 100 * self.loss_band, self.ref.path.name,
            )  # fmt: skip

    def on_val(self, result: dict[str, Any], tracker: Any = None) -> None:
        """``result``: our validation (``iter``, ``mIoU`` in percent)."""
        it = int(result["iter"])
        ref = self._val.get(it)
        if ref is None or result.get("mIoU") is None:
            return
        ours = float(result["mIoU"])
        below = ref.mIoU - ours
        ok = below <= self.miou_tolerance
        self.val_points.append(
            {"iter": it, "mIoU": ours, "ref_mIoU": ref.mIoU, "below": below, "on_track": ok}
        )
        if tracker is not None:
            tracker.log_metrics({"trajectory/ref_mIoU": ref.mIoU}, step=it)
        if ok:
            return
        why = (
            f"iteration {it}: mIoU {ours:.2f} is {below:.2f} points below the published "
            f"{ref.mIoU:.2f} ({self.ref.path.name}), more than the tolerance "
            f"{self.miou_tolerance:g}"
        )
        if self.stop_if_off_track:
            raise OffTrackError(f"{why}; stopping (--stop-if-off-track)")
        if not self.quiet:
            logger.warning("%s; the run continues (--stop-if-off-track would stop it)", why)

    def record(self) -> dict[str, Any]:
        """The comparison as ``trajectory.json`` holds it (plus both curves for the plots)."""
        errors = [p["lr_rel_error"] for p in self.train_points]
        outside = [p["iter"] for p in self.train_points if not p["loss_in_band"]]
        return {
            "reference": self.ref.path.name,
            "lr_rtol": LR_RTOL,
            "loss_band": self.loss_band,
            "miou_tolerance": self.miou_tolerance,
            "compared_train_points": len(self.train_points),
            "max_lr_rel_error": max(errors) if errors else None,
            "loss_outside_band": outside,
            "loss_verdict": _loss_verdict(len(self.train_points), outside),
            "val": self.val_points,
            "train": self.train_points,
            "published": {
                "train": [{"iter": p.iter, "lr": p.lr, "loss": p.loss} for p in self.ref.train],
                "val": [{"iter": p.iter, "mIoU": p.mIoU} for p in self.ref.val],
            },
        }


def _loss_verdict(compared: int, outside: list[int]) -> str:
    if not compared:
        return "not compared"
    return "in band" if not outside else f"left the band at {len(outside)} of {compared} points"


# ---------------------------------------------------------------------------------------------
# Wiring: what engine/train.py calls
# ---------------------------------------------------------------------------------------------


class Off:
    """No reference (``settings.reference.source: off``, or not recorded yet): compares nothing."""

    def on_train(self, point: dict[str, Any], tracker: Any = None) -> None:
        pass

    def on_val(self, result: dict[str, Any], tracker: Any = None) -> None:
        pass


def live(reference: dict[str, Any] | None) -> Trajectory | Off:
    """The comparison that runs with the loop. ``reference``: ``log`` (path), ``miou_tolerance``,
    ``loss_band``, ``stop_if_off_track``; None: :class:`Off`."""
    if not reference:
        return Off()
    log = reflog.read(reference["log"])
    stop = bool(reference.get("stop_if_off_track", False))
    logger.info(
        "comparing with %s: lr exact (rel. %g after mmcv's rounding), loss within +-%.0f%%, "
        "mIoU at most %g below at %d published evaluations%s",
        log.path, LR_RTOL, 100 * reference["loss_band"], reference["miou_tolerance"],
        len(log.val), " (stops when below)" if stop else "",
    )  # fmt: skip
    return Trajectory(log, reference["miou_tolerance"], reference["loss_band"], stop)


def write_outputs(
    reference: dict[str, Any] | None, history: dict[str, Any], meta: dict[str, Any], out_dir: Path
) -> None:
    """``log.json`` (our run in mmseg 0.x's format, the smoke references are recorded from it) and
    ``trajectory.json`` (the comparison replayed over the whole history, so a resumed run's record
    covers the iterations before the resume too; replaying never stops)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reflog.write(out_dir / LOG_FILE, reflog.lines_from_history(meta, history))
    if not reference:
        write_json(
            out_dir / TRAJECTORY_FILE, {"reference": None, "reason": "no reference trajectory"}
        )
        write_plots({}, out_dir)
        return
    log = reflog.read(reference["log"])
    replay = Trajectory(log, reference["miou_tolerance"], reference["loss_band"], quiet=True)
    try:
        for point in history.get("train", []):
            replay.on_train(point)
        for result in history.get("val", []):
            replay.on_val(result)
    except OffTrackError as e:  # an lr mismatch in a resumed history: recorded, not raised
        logger.error("%s", e)
    record = replay.record()
    write_json(out_dir / TRAJECTORY_FILE, record)
    write_plots(record, out_dir)


def write_plots(record: dict[str, Any], out_dir: Path) -> None:
    """``trajectory_loss.csv`` / ``trajectory_val.csv``: ours and the reference in long format
    (``iter,curve,<value>``), the DVC plots that ``.dvc/plots/overlay.json`` colours by curve."""
    published = record.get("published", {})
    for name, key, ours, ref in (
        ("trajectory_loss.csv", "loss", record.get("train", []), published.get("train", [])),
        ("trajectory_val.csv", "mIoU", record.get("val", []), published.get("val", [])),
    ):
        rows = [f"{p['iter']},reference,{p[key]:.6g}" for p in ref]
        rows += [f"{p['iter']},ours,{p[key]:.6g}" for p in ours]
        text = "\n".join([f"iter,curve,{key}", *rows]) + "\n"
        write_bytes_atomic(out_dir / name, text.encode())


def run_meta(cfg: Any, world_size: int, device: str) -> dict[str, Any]:
    """The first line of our ``log.json``: mmseg's keys (``env_info``, ``seed``, ``exp_name``)
    with what we know; nothing time- or host-dependent, so a re-run writes the same bytes."""
    import torch

    env = f"PyTorch: {torch.__version__}\nDevice: {device}\nWorld size: {world_size}"
    return {"env_info": env, "seed": cfg.schedule.seed, "exp_name": f"{cfg.name}.py"}


def add_arguments(parser: Any) -> None:
    """``dnlrepro train``'s reference options (train@ passes the run plan's)."""
    parser.add_argument(
        "--reference-log",
        default=None,
        help="an mmseg 0.x log.json to compare with while training (docs/reference.md §6.4)",
    )
    parser.add_argument("--miou-tolerance", type=float, default=0.5, help="mIoU points")
    parser.add_argument("--loss-band", type=float, default=0.3, help="relative, e.g. 0.3")
    parser.add_argument(
        "--stop-if-off-track",
        action="store_true",
        help="stop when the mIoU at a published evaluation is below it by more than the tolerance",
    )


def from_args(args: Any) -> dict[str, Any] | None:
    if not args.reference_log:
        return None
    return {
        "log": args.reference_log,
        "miou_tolerance": args.miou_tolerance,
        "loss_band": args.loss_band,
        "stop_if_off_track": args.stop_if_off_track,
    }
