"""Which reference trajectory a run compares itself with while it trains (resolve@ -> run.yaml).

§ numbers refer to docs/reference.md.

A profile's ``settings.reference`` chooses the source:

* ``published``: the row's published training log (registry ``log``), which ``download@<dataset>``
  fetches into ``downloads/reference_logs/`` and pins (§6.4). Training never downloads: a missing
  file is an error naming that command.
* ``recorded``: ``params/reference_logs/<profile>/<config>.log.json``, a log in the same format
  recorded from one of our own runs (``dnlrepro reflog record RUN``): the smoke profile compares
  its runs with it, so every ``dvc repro`` exercises the reader and the comparison. Until it is
  recorded, training says so and compares nothing.
* ``off``: no comparison.

The plan (:class:`ReferencePlan`, block ``train.reference`` of ``results/<run>/run.yaml``) also
carries the bands: the row's mIoU tolerance (registry, ``tolerance(config, "mIoU", profile)``),
the profile's relative loss band and whether a run below the tolerance stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dnlrepro.core.registry import load_published
from dnlrepro.core.workspace import Workspace

SOURCES: tuple[str, ...] = ("published", "recorded", "off")
RECORDED_DIR = "params/reference_logs"
DEFAULT_MIOU_TOLERANCE = 0.5  # a row whose mIoU tolerance is null (not comparable) gets this


@dataclass(frozen=True)
class ReferenceSettings:
    source: str = "off"  # one of SOURCES
    # Relative band around the published interval-mean loss; leaving it warns (docs/reference.md
    # §6.4: seed and data order move a 50-iteration mean by a few percent, a different loss by far
    # more).
    loss_band: float = 0.3
    stop_if_off_track: bool = False  # mIoU below the tolerance at a published evaluation: stop


@dataclass(frozen=True)
class ReferencePlan:
    source: str  # "published" | "recorded"
    log: str  # workspace-relative path of the reference log
    miou_tolerance: float
    loss_band: float
    stop_if_off_track: bool


def recorded_path(ws: Workspace, profile: str, config: str) -> Path:
    """``params/reference_logs/<profile>/<config>.log.json``."""
    return ws.path(f"{RECORDED_DIR}/{profile}/{config}.log.json")


def plan(
    ws: Workspace, profile: str, settings: ReferenceSettings, config: str
) -> ReferencePlan | None:
    """The reference of one run (None: ``off``)."""
    if settings.source == "off":
        return None
    registry = load_published(ws.registry_file)
    tolerance = registry.tolerance(config, "mIoU", profile).value
    if settings.source == "published":
        name = registry.entry(config).log.rsplit("/", 1)[-1]
        log = ws.relative(ws.downloads / "reference_logs" / name)
    else:
        log = ws.relative(recorded_path(ws, profile, config))
    return ReferencePlan(
        source=settings.source,
        log=log,
        miou_tolerance=DEFAULT_MIOU_TOLERANCE if tolerance is None else tolerance,
        loss_band=settings.loss_band,
        stop_if_off_track=settings.stop_if_off_track,
    )
