"""The rehearsal's sizes: the paper/published profile as a miniature (``core/miniature.py``).

The rehearsal does not shrink configurations itself: it writes a ``miniature`` block (the same
rules as the smoke profile's, at the factors below) and a few overrides into its scratch copy's
profile, and the pipeline resolves them as it resolves the smoke profile (``resolve@<run>``,
which also checks every row's structure). Cityscapes lengths are divided by 32 and ADE20K's by
16, so both keep a 32-pixel test short side; they are the smallest factors that keep every
structural property (Cityscapes / 64 leaves one slide window per image at ratio 1).

Besides sizes: images per split, iterations (1; 2 for the training stage the rehearsal kills,
with a checkpoint after the first, so that it has something to resume), torchrun processes
(4 -> ``--gpus``, at least 2) and the benchmark's image counts. :func:`plan` lists every change
as ``(what, real, rehearsal)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from dnlrepro.core import runs
from dnlrepro.core.config import load_config
from dnlrepro.core.layout import valid_counts
from dnlrepro.core.miniature import (
    ADE20K_SIDES,
    CITYSCAPES_FRAME,
    REAL_COUNTS,
    Counts,
    Factors,
    Miniature,
    check_structure,
    shrink_length,
)
from dnlrepro.core.profile import load_profile
from dnlrepro.core.registry import config_names
from dnlrepro.core.workspace import Workspace

FACTORS = Factors(cityscapes=32, ade20k=16)
# (train, val) miniature images: one global batch (4 published ranks x 2 or x 4 images: every
# GPU count trains the published layout's stream, core/layout.py); one val image, as the 769
# rows' ms+flip slide windows cost the same per image as at full size.
COUNTS = Counts(cityscapes=(8, 1), ade20k=(16, 1))
BENCHMARK = {"num_images": 2, "warmup": 1, "train_iters": 1}
REAL_BENCHMARK = {"num_images": 200, "warmup": 5, "train_iters": 5}  # §5.4, §5.5
# Checkpoints after every iteration (what a killed run resumes), evaluation at the end.
SCHEDULE = {"schedule.checkpoint_interval": 1, "schedule.log_interval": 1}


class ShrinkError(ValueError):
    """A miniature would lose a structural property, or ``--gpus`` is too small."""


@dataclass
class Plan:
    """What the rehearsal writes into the scratch copy's profile, and why."""

    profile: str
    gpus: int
    victim: str | None  # the row whose training stage is killed once and resumed (2 iterations)
    miniature: Miniature
    overrides: list[dict[str, Any]]  # profile override blocks appended (match, set)
    settings: dict[str, Any]  # profile settings replaced in the scratch copy
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (what, real, rehearsal)


def plan(ws: Workspace, profile: str, gpus: int) -> Plan:
    """The rehearsal's miniature, overrides and settings for ``profile`` (paper or published).

    Raises:
        ShrinkError: a row would lose a structural property (named), or ``gpus`` < 2 for paper.
    """
    base = load_profile(profile, ws)
    train = base.settings.train
    if train and gpus < 2:
        raise ShrinkError(f"--gpus {gpus}: SyncBN across ranks needs at least 2 processes")
    names = config_names(ws)
    victim = names[0] if train else None
    mini = Miniature(FACTORS, COUNTS, 1 if train else None)
    overrides = [{"match": "*", "set": {**SCHEDULE, "schedule.eval_interval": 1}}] if train else []
    if victim:
        victim_schedule = {"schedule.max_iters": 2, "schedule.eval_interval": 2}
        overrides.append({"match": victim, "set": victim_schedule})
    changes: list[tuple[str, Any, Any]] = []
    problems: list[str] = []
    for name in names:
        real = load_config(name, base, ws=ws)
        shrunk = mini.overrides(real.to_dict())
        if train:  # as the overrides above set them
            iterations = 2 if name == victim else 1
            shrunk.update({**SCHEDULE, "schedule.max_iters": iterations})
            shrunk["schedule.eval_interval"] = iterations
        problems += check_structure(real, real.replace(shrunk), FACTORS.of(real.data.dataset))
        if train and real.global_batch % gpus:
            counts = ", ".join(map(str, valid_counts(real.global_batch)))
            problems.append(
                f"--gpus {gpus} does not divide the global batch {real.global_batch} of {name} "
                f"(core/layout.py); use one of {counts}"
            )
        changes += [(f"{name}: {k}", real.flat()[k], v) for k, v in shrunk.items()]
    if problems:
        raise ShrinkError("; ".join(problems))
    settings = dataclasses.asdict(base.settings)
    changes.append(("benchmark (images, warm-up, memory iterations)", REAL_BENCHMARK, BENCHMARK))
    settings["benchmark"] = dict(BENCHMARK)
    for dataset in ("cityscapes", "ade20k"):
        changes.append((f"{dataset} (train, val) images", REAL_COUNTS[dataset], COUNTS.of(dataset)))
    if train:
        changes.append(("GPUs, torchrun processes (gpus)", settings["gpus"], gpus))
        settings["gpus"] = gpus
    syn = mini.synthetic()
    changes.append(
        ("cityscapes image (w, h)", CITYSCAPES_FRAME, (syn.cityscapes.width, syn.cityscapes.height))
    )
    changes.append(
        ("ade20k image sides (min, max)", ADE20K_SIDES, (syn.ade20k.min_size, syn.ade20k.max_size))
    )
    return Plan(profile, gpus, victim, mini, overrides, settings, changes)


def apply(ws: Workspace, p: Plan) -> None:
    """Select ``p.profile`` in the copy's ``params.yaml`` (and its runs in
    ``params/runs.yaml``) and write the miniature, overrides and settings into its block.

    Only the scratch copy is written; its ``params/profiles.yaml`` loses its comments.
    """
    ws.params_yaml.write_text(f"profile: {p.profile}\n", encoding="utf-8")
    profiles = yaml.safe_load(ws.profiles_file.read_text(encoding="utf-8"))
    block = profiles[p.profile]
    block["miniature"] = {
        "factors": dataclasses.asdict(p.miniature.factors),
        "counts": {d: list(c) for d, c in dataclasses.asdict(p.miniature.counts).items()},
        "iterations": p.miniature.iterations,
    }
    block["overrides"] = list(block.get("overrides") or []) + p.overrides
    block["settings"] = p.settings
    ws.profiles_file.write_text(yaml.safe_dump(profiles, sort_keys=False), encoding="utf-8")
    runs.write(ws, load_profile(p.profile, ws))  # the strict loader accepts what we wrote


def summary(p: Plan) -> list[str]:
    """The differences in a few lines (the receipt lists every key)."""
    cs, ade = FACTORS.cityscapes, FACTORS.ade20k
    lines = [
        f"lengths (img_scale, crop, test crop/stride): Cityscapes / {cs}, ADE20K / {ade}; 8x "
        f"stays 8x, 8x+1 stays 8x+1 (769 -> {shrink_length(769, cs)}, 2049x1025 -> "
        f"{shrink_length(2049, cs)}x{shrink_length(1025, cs)})",
    ]
    if p.victim:
        lines.append(
            f"iterations 40k/80k/160k -> 1, and 2 for {p.victim} (killed after its first "
            "checkpoint, then resumed); evaluation at the end"
        )
    for what, real, mini in p.changes:
        if ":" not in what:
            sep = "x" if "(w, h)" in what else "/"
            lines.append(f"{what}: {_fmt(real, sep)} -> {_fmt(mini, sep)}")
    return lines


def _fmt(v: Any, sep: str = "/") -> str:
    values = v.values() if isinstance(v, dict) else v if isinstance(v, list | tuple) else [v]
    return sep.join(map(str, values))
