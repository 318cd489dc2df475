"""A miniature of the paper run: the same configurations at documented factors, structure intact.

§ numbers refer to docs/reference.md. One definition serves both miniatures of the project: the
``smoke`` profile (``miniature:`` in ``params/profiles.yaml``, every ``dvc repro``) and
``dnlrepro rehearse`` (which writes a ``miniature:`` block into its scratch copy's profile).

Every length of a configuration (:data:`LENGTH_KEYS`) is divided by its dataset's factor keeping
its residue modulo 8: a multiple of 8 stays one (1024 -> 64 at /16), an 8x+1 length stays 8x+1
(769 -> 49), because ``align_corners=True`` is only right for 8x+1 inputs (§4.3). Nothing else of
a configuration changes here: whole vs slide inference, ms ratios and flip, ``align_corners``,
``reduce_zero_label``, SyncBN and the per-GPU batch stay the paper's; :func:`check_structure`
also checks, per ms ratio, that a slide window is larger than the image and that there is more
than one window along an axis exactly when the real run has. Besides lengths: the number of
images per split (the synthetic archives are drawn at the real frame / factor) and, optionally,
the training iterations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dnlrepro.core.geometry import rescale_size

LENGTH_KEYS: tuple[str, ...] = (
    "data.img_scale",
    "data.crop_size",
    "test.img_scale",
    "test.crop_size",
    "test.stride",
)
# Never changed by a miniature; check_structure verifies it row by row.
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
# The real datasets (§3.1, §3.2): (train, val) images, the Cityscapes frame (w, h) and the
# typical ADE20K image sides, which the miniature archives draw at 1 / factor.
REAL_COUNTS: dict[str, tuple[int, int]] = {"cityscapes": (2975, 500), "ade20k": (20210, 2000)}
CITYSCAPES_FRAME = (2048, 1024)
ADE20K_SIDES = (512, 1024)
SYNTHETIC_SEED = 0  # the synthetic archives are a fixed draw


@dataclass(frozen=True)
class PerDataset:
    cityscapes: Any
    ade20k: Any

    def of(self, dataset: str) -> Any:
        return {"cityscapes": self.cityscapes, "ade20k": self.ade20k}[dataset]


@dataclass(frozen=True)
class Factors(PerDataset):
    cityscapes: int  # lengths / 16 in the smoke profile, / 32 in the rehearsal
    ade20k: int


@dataclass(frozen=True)
class Counts(PerDataset):
    cityscapes: tuple[int, int]  # (train, val) images of the miniature archives
    ade20k: tuple[int, int]


@dataclass(frozen=True)
class Miniature:
    factors: Factors
    counts: Counts
    iterations: int | None = None  # schedule.max_iters of every row (None: the paper's)

    def overrides(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The dotted-key overrides of one configuration file's values (``raw``, as parsed)."""
        factor = self.factors.of(raw["data"]["dataset"])
        out: dict[str, Any] = {}
        for key in LENGTH_KEYS:
            section, name = key.split(".")
            value = raw[section][name]
            if value is not None:
                out[key] = [shrink_length(int(v), factor) for v in value]
        if self.iterations is not None:
            out["schedule.max_iters"] = self.iterations
        return out

    def synthetic(self) -> Synthetic:
        """The sizes of the archives a miniature run reads (real frame / factor)."""
        cs, ade = self.factors.cityscapes, self.factors.ade20k
        w, h = image_size("cityscapes", cs)
        return Synthetic(
            seed=SYNTHETIC_SEED,
            cityscapes=SynthCityscapes(*self.counts.cityscapes, width=w, height=h),
            ade20k=SynthADE20K(*self.counts.ade20k, *(s // ade for s in ADE20K_SIDES)),
        )


@dataclass(frozen=True)
class SynthCityscapes:
    train: int
    val: int
    width: int  # 2048 in the real data
    height: int  # 1024


@dataclass(frozen=True)
class SynthADE20K:
    train: int
    val: int
    min_size: int  # sides drawn in [min_size, max_size], as ADE20K's varied image sizes
    max_size: int


@dataclass(frozen=True)
class Synthetic:
    seed: int
    cityscapes: SynthCityscapes
    ade20k: SynthADE20K


def shrink_length(n: int, factor: int) -> int:
    """``n / factor`` keeping ``n mod 8`` when it is 0 or 1 (8x -> 8y, 8x+1 -> 8y+1, y >= 1)."""
    if n % 8 in (0, 1):
        base = n - n % 8
        return max(1, round(base / (8 * factor))) * 8 + n % 8
    return max(1, round(n / factor))


def image_size(dataset: str, factor: int = 1) -> tuple[int, int]:
    """(w, h) of a (miniature) image the structure check reasons about."""
    if dataset == "cityscapes":
        return CITYSCAPES_FRAME[0] // factor, CITYSCAPES_FRAME[1] // factor
    side = ADE20K_SIDES[0] // factor
    return side * 4 // 3, side  # 4:3 landscape, as benchmark.random_image_shape


def _get(cfg: Any, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def windows(cfg: Any, image: tuple[int, int]) -> list[tuple[bool, bool, bool]]:
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


def check_structure(real: Any, mini: Any, factor: int) -> list[str]:
    """Structural properties of config ``real`` that its miniature ``mini`` lost (empty: none)."""
    problems = []
    for key in LENGTH_KEYS:
        a, b = _get(real, key), _get(mini, key)
        if (a is None) != (b is None) or (a is not None and _residues(a) != _residues(b)):
            problems.append(f"{key}: {a} -> {b} changes the 8x / 8x+1 structure")
    for key in SAME_KEYS:
        if _get(real, key) != _get(mini, key):
            problems.append(f"{key}: {_get(real, key)} -> {_get(mini, key)}")
    big = windows(real, image_size(real.data.dataset))
    small = windows(mini, image_size(mini.data.dataset, factor))
    if big != small:
        problems.append(
            f"slide windows per ms ratio {list(real.test.ms_ratios)} as (larger than the image, "
            f"several down, several across): real {big}, miniature {small}"
        )
    return [f"{real.name}: {p}" for p in problems]
