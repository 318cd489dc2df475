"""The rehearsal's sizes: the paper/published profile at documented factors, structure intact.

§ numbers refer to docs/reference.md.

Every length of a configuration (``data.img_scale``, ``data.crop_size``, ``test.img_scale``,
``test.crop_size``, ``test.stride``) is divided by the dataset's factor, keeping its residue
modulo 8: a multiple of 8 stays one (1024 -> 32), an 8x+1 length stays 8x+1 (769 -> 25, because
``align_corners=True`` is only right for 8x+1 inputs, §4.3). Cityscapes lengths are divided by 32
and ADE20K's by 16, so both keep a 32-pixel test short side; they are the smallest factors that
keep every property below (Cityscapes / 64 leaves one slide window per image at ratio 1).
Nothing else of a configuration changes: whole vs slide inference, the ms ratios and flip,
``align_corners``, ``reduce_zero_label``, SyncBN and the per-GPU batch (``samples_per_gpu``) stay
the paper's. :func:`check_structure` proves it for every row, including, per ms ratio, that a
slide window is larger than the image and that there is more than one window along an axis
exactly when the real run has (769 windows are larger than the image at ratios 0.5 and 0.75).

Besides lengths: images per split, iterations (1; 2 for the training stage the rehearsal kills,
with a checkpoint after the first, so that it has something to resume), torchrun processes
(4 -> ``--nproc``, at least 2) and the benchmark's image counts. :func:`plan` lists every change
as ``(what, real, rehearsal)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from dnlrepro.core import runs
from dnlrepro.core.config import Config, load_config
from dnlrepro.core.profile import SynthADE20K, SynthCityscapes, Synthetic, load_profile
from dnlrepro.core.registry import config_names
from dnlrepro.core.workspace import Workspace
from dnlrepro.data.transforms import rescale_size

FACTORS: dict[str, int] = {"cityscapes": 32, "ade20k": 16}
LENGTH_KEYS: tuple[str, ...] = (
    "data.img_scale",
    "data.crop_size",
    "test.img_scale",
    "test.crop_size",
    "test.stride",
)
# Real frame / typical image sides (docs/reference.md §3.1, §3.2) and the rehearsal's counts.
CITYSCAPES_FRAME = (2048, 1024)  # (w, h) of every Cityscapes image
ADE20K_SIDES = (512, 1024)  # typical ADE20K image sides; the miniatures draw in [min, max] / 16
REAL_COUNTS = {"cityscapes": (2975, 500), "ade20k": (20210, 2000)}
# (train, val) miniature images: one batch per rank of 2 (2 x 2 and 2 x 4 images per GPU); one
# val image, as the 769 rows' ms+flip slide windows cost the same per image as at full size.
COUNTS = {"cityscapes": (4, 1), "ade20k": (8, 1)}
SEED = 0


def schedule(iterations: int) -> dict[str, Any]:
    """Checkpoints after every iteration (what a killed run resumes), evaluation at the end."""
    return {
        "schedule.max_iters": iterations,
        "schedule.checkpoint_interval": 1,
        "schedule.eval_interval": iterations,
        "schedule.log_interval": 1,
    }


# Never changed; check_structure verifies it row by row.
SAME_KEYS: tuple[str, ...] = (
    "model.align_corners",
    "model.norm",
    "test.mode",
    "test.ms_ratios",
    "test.ms_flip",
    "data.reduce_zero_label",
    "data.samples_per_gpu",
    "runtime.gpus",
)
BENCHMARK = {"num_images": 2, "warmup": 1, "train_iters": 1}
REAL_BENCHMARK = {"num_images": 200, "warmup": 5, "train_iters": 5}  # §5.4, §5.5


class ShrinkError(ValueError):
    """A shrunk configuration would lose a structural property; the message names row and key."""


@dataclass
class Plan:
    """What the rehearsal changes in the scratch copy's profile, and why."""

    profile: str
    nproc: int
    victim: str | None  # the row whose training stage is killed once and resumed (2 iterations)
    overrides: dict[str, dict[str, Any]]  # config name -> dotted key -> rehearsal value
    settings: dict[str, Any]  # profile settings replaced in the scratch copy
    synthetic: Synthetic  # sizes of the miniature archives the mirror serves
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (what, real, rehearsal)


def shrink_length(n: int, factor: int) -> int:
    """``n / factor`` keeping ``n mod 8`` when it is 0 or 1 (8x -> 8y, 8x+1 -> 8y+1, y >= 1)."""
    if n % 8 in (0, 1):
        base = n - n % 8
        return max(1, round(base / (8 * factor))) * 8 + n % 8
    return max(1, round(n / factor))


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def config_overrides(cfg: Config, iterations: int | None) -> dict[str, Any]:
    """The dotted-key overrides of one paper configuration (``iterations``: None = no training)."""
    factor = FACTORS[cfg.data.dataset]
    out: dict[str, Any] = {}
    for key in LENGTH_KEYS:
        value = _get(cfg, key)
        if value is not None:
            out[key] = [shrink_length(int(v), factor) for v in value]
    if iterations is not None:
        out.update(schedule(iterations))
    return out


def image_size(dataset: str, factor: int = 1) -> tuple[int, int]:
    """(w, h) of a (miniature) image the structure check reasons about."""
    if dataset == "cityscapes":
        return CITYSCAPES_FRAME[0] // factor, CITYSCAPES_FRAME[1] // factor
    side = ADE20K_SIDES[0] // factor
    return side * 4 // 3, side  # 4:3 landscape, as benchmark.random_image_shape


def windows(cfg: Config, image: tuple[int, int]) -> list[tuple[bool, bool, bool]]:
    """Per ms ratio (slide mode): (window larger than the image, > 1 window down, > 1 across)."""
    if cfg.test.mode != "slide":
        return []
    long_side, short_side = cfg.test.img_scale
    (ch, cw), (sh, sw) = cfg.test.crop_size, cfg.test.stride
    out = []
    for r in cfg.test.ms_ratios:
        w, h = rescale_size(image[0], image[1], (int(long_side * r), int(short_side * r)))
        rows = max(h - ch + sh - 1, 0) // sh + 1  # mmseg slide_inference's grid
        cols = max(w - cw + sw - 1, 0) // sw + 1
        out.append((ch > h or cw > w, rows > 1, cols > 1))
    return out


def _residues(value: Any) -> list[int | None]:
    """Per length: 0 (8x), 1 (8x+1) or None (neither)."""
    return [v % 8 if v % 8 in (0, 1) else None for v in value]


def check_structure(real: Config, mini: Config) -> list[str]:
    """Structural properties of ``real`` that ``mini`` lost (empty: all kept)."""
    problems = []
    for key in LENGTH_KEYS:
        a, b = _get(real, key), _get(mini, key)
        if (a is None) != (b is None) or (a is not None and _residues(a) != _residues(b)):
            problems.append(f"{key}: {a} -> {b} changes the 8x / 8x+1 structure")
    for key in SAME_KEYS:
        if _get(real, key) != _get(mini, key):
            problems.append(f"{key}: {_get(real, key)} -> {_get(mini, key)}")
    factor = FACTORS[real.data.dataset]
    big = windows(real, image_size(real.data.dataset))
    small = windows(mini, image_size(mini.data.dataset, factor))
    if big != small:
        problems.append(
            f"slide windows per ms ratio {list(real.test.ms_ratios)} as (larger than the image, "
            f"several down, several across): real {big}, rehearsal {small}"
        )
    return [f"{real.name}: {p}" for p in problems]


def synthetic_sizes() -> Synthetic:
    """The miniature archives: Cityscapes frames at 1/16, ADE20K sides at 1/8."""
    cs_train, cs_val = COUNTS["cityscapes"]
    ade_train, ade_val = COUNTS["ade20k"]
    w, h = image_size("cityscapes", FACTORS["cityscapes"])
    lo, hi = (s // FACTORS["ade20k"] for s in ADE20K_SIDES)
    return Synthetic(
        seed=SEED,
        cityscapes=SynthCityscapes(train=cs_train, val=cs_val, width=w, height=h),
        ade20k=SynthADE20K(train=ade_train, val=ade_val, min_size=lo, max_size=hi),
    )


def plan(ws: Workspace, profile: str, nproc: int) -> Plan:
    """The rehearsal's overrides and settings for ``profile`` (``paper`` or ``published``).

    Raises:
        ShrinkError: a row would lose a structural property (named), or ``nproc`` < 2 for paper.
    """
    base = load_profile(profile, ws)
    train = base.settings.train
    if train and nproc < 2:
        raise ShrinkError(f"--nproc {nproc}: SyncBN across ranks needs at least 2 processes")
    names = config_names(ws)
    victim = names[0] if train else None
    overrides, problems = {}, []
    changes: list[tuple[str, Any, Any]] = []
    for name in names:
        real = load_config(name, base, ws=ws)
        overrides[name] = config_overrides(real, (2 if name == victim else 1) if train else None)
        mini = real.replace(overrides[name], f"rehearsal overrides of {name}")
        problems += check_structure(real, mini)
        changes += [(f"{name}: {k}", _plain(_get(real, k)), v) for k, v in overrides[name].items()]
    if problems:
        raise ShrinkError("; ".join(problems))
    settings = dataclasses.asdict(base.settings)
    # yaml.safe_dump writes lists, not tuples
    settings["seeds"] = [{"match": b.match, "seeds": list(b.seeds)} for b in base.settings.seeds]
    real_bench = settings.get("benchmark") or REAL_BENCHMARK
    settings["benchmark"] = dict(BENCHMARK)
    settings["expected_counts"] = {d: list(c) for d, c in COUNTS.items()}
    changes.append(("benchmark (images, warm-up, memory iterations)", real_bench, BENCHMARK))
    for dataset, counts in COUNTS.items():
        changes.append((f"{dataset} (train, val) images", REAL_COUNTS[dataset], counts))
    syn = synthetic_sizes()
    changes.append(
        ("cityscapes image (w, h)", CITYSCAPES_FRAME, (syn.cityscapes.width, syn.cityscapes.height))
    )
    changes.append(
        ("ade20k image sides (min, max)", ADE20K_SIDES, (syn.ade20k.min_size, syn.ade20k.max_size))
    )
    if train:
        changes.append(("torchrun processes (nproc_per_node)", settings["nproc_per_node"], nproc))
        settings["nproc_per_node"] = nproc
    return Plan(profile, nproc, victim, overrides, settings, syn, changes)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def apply(ws: Workspace, p: Plan) -> None:
    """Select ``p.profile`` in the copy's ``params.yaml`` (and its runs in
    ``params/runs.yaml``) and write the overrides into its block.

    Only the scratch copy is written; its ``params/profiles.yaml`` loses its comments.
    """
    ws.params_yaml.write_text(f"profile: {p.profile}\n", encoding="utf-8")
    profiles = yaml.safe_load(ws.profiles_file.read_text(encoding="utf-8"))
    block = profiles[p.profile]
    block["overrides"] = list(block.get("overrides") or []) + [
        {"match": name, "set": values} for name, values in p.overrides.items()
    ]
    block["settings"] = p.settings
    ws.profiles_file.write_text(yaml.safe_dump(profiles, sort_keys=False), encoding="utf-8")
    runs.write(ws, load_profile(p.profile, ws))  # the strict loader accepts what we wrote


def summary(p: Plan) -> list[str]:
    """The differences in a few lines (the receipt lists every key)."""
    cs, ade = FACTORS["cityscapes"], FACTORS["ade20k"]
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
    if isinstance(v, dict):
        return sep.join(str(x) for x in v.values())
    if isinstance(v, list | tuple):
        return sep.join(str(x) for x in v)
    return str(v)
