"""Typed, strict configuration: one complete YAML per mmseg 0.x configuration.

§ numbers refer to docs/reference.md.

Every file in ``params/`` holds *all* numbers of one row of the DNLNet table (docs/reference.md
§4.3); there is no inheritance. The loader turns it into frozen dataclasses
and refuses anything it does not understand:

* an unknown key        -> ``ConfigError`` naming the file, the dotted key and the allowed keys;
* a missing key         -> ``ConfigError`` naming the file and the dotted key;
* a wrong type          -> ``ConfigError`` naming the file, the dotted key, the expected type;
* a value out of range  -> ``ConfigError`` naming the file, the dotted key, the value and the
  allowed range (:data:`RANGES`: a negative crop or iteration count, a zero lr, ...).

Profiles (:mod:`dnlrepro.core.profile`, ``params/profiles.yaml``) are documented sets of dotted-key
overrides applied on top of the paper values. They go through the same checks, so a typo in a
profile fails exactly like a typo in a config, naming the profile block (or ``--set``). Files are
looked up in the workspace (:mod:`dnlrepro.core.workspace`), never next to the installed package.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dnlrepro.core import workspace
from dnlrepro.core.files import write_bytes_atomic
from dnlrepro.core.profile import DEFAULT_PROFILE, PROFILES, Profile, load_profile
from dnlrepro.core.schema import (
    ConfigError,
    build,
    check_value,
    field_types,
    flatten,
    read_yaml,
    to_plain,
)
from dnlrepro.core.workspace import Workspace

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Schema. Field order is the order of the YAML files. Tuples are (h, w) unless said otherwise;
# ``img_scale`` keeps mmcv's (long, short) convention, e.g. (2048, 1024).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneConfig:
    depth: int  # 50 or 101 (ResNetV1c, §2.1)
    strides: tuple[int, int, int, int]  # (1, 2, 1, 1) for D8
    dilations: tuple[int, int, int, int]  # (1, 1, 2, 4) for D8
    contract_dilation: bool  # first block of a dilated stage uses dilation/2
    pretrained: str | None  # "resnet50_v1c" | "resnet101_v1c" | None (random init)


@dataclass(frozen=True)
class DecodeHeadConfig:
    in_channels: int  # 2048, layer4
    in_index: int  # 3
    channels: int  # 512
    dropout_ratio: float  # 0.1
    reduction: int  # C' = channels / reduction = 256
    use_scale: bool  # divide pairwise logits by sqrt(C')
    temperature: float  # 0.05 (class default, not set in the mmseg config)
    mode: str  # "embedded_gaussian"
    loss_weight: float  # 1.0


@dataclass(frozen=True)
class AuxHeadConfig:
    in_channels: int  # 1024, layer3
    in_index: int  # 2
    channels: int  # 256
    num_convs: int  # 1
    concat_input: bool  # False
    dropout_ratio: float  # 0.1
    loss_weight: float  # 0.4


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int  # 19 Cityscapes, 150 ADE20K
    align_corners: bool  # True only for the 769x769 (8x+1) configs (§4.3)
    ignore_index: int  # 255
    norm: str  # "SyncBN" (converted to BN when not distributed)
    backbone: BackboneConfig
    decode_head: DecodeHeadConfig
    auxiliary_head: AuxHeadConfig


@dataclass(frozen=True)
class PhotometricConfig:
    brightness_delta: int  # 32
    contrast_range: tuple[float, float]  # (0.5, 1.5)
    saturation_range: tuple[float, float]  # (0.5, 1.5)
    hue_delta: int  # 18


@dataclass(frozen=True)
class DataConfig:
    dataset: str  # "cityscapes" | "ade20k"
    data_root: str  # relative to the repository root unless absolute
    train_split: str  # "train" (Cityscapes) | "training" (ADE20K)
    val_split: str  # "val" | "validation"
    reduce_zero_label: bool  # True for ADE20K (§3.2)
    img_scale: tuple[int, int]  # train resize base scale, mmcv (long, short)
    ratio_range: tuple[float, float]  # (0.5, 2.0)
    crop_size: tuple[int, int]  # (h, w)
    cat_max_ratio: float  # 0.75
    flip_prob: float  # 0.5
    photometric: PhotometricConfig
    mean: tuple[float, float, float]  # RGB
    std: tuple[float, float, float]  # RGB
    to_rgb: bool  # True: BGR -> RGB before normalising
    # Images per GPU of the published run (2 Cityscapes, 4 ADE20K): with runtime.gpus it fixes
    # the protocol's global batch; a run's own layout splits that batch (core/layout.py).
    samples_per_gpu: int
    workers_per_gpu: int  # 2 Cityscapes, 4 ADE20K


@dataclass(frozen=True)
class ScheduleConfig:
    max_iters: int  # 40000 | 80000 | 160000
    lr: float  # 0.01
    momentum: float  # 0.9
    weight_decay: float  # 5e-4, on every parameter (§4.2)
    power: float  # 0.9
    min_lr: float  # 1e-4
    checkpoint_interval: int  # 4000 | 8000 | 16000
    eval_interval: int  # same as the checkpoint interval
    log_interval: int  # 50
    seed: int  # our choice: mmseg's default seed is None (random)


@dataclass(frozen=True)
class TestConfig:
    mode: str  # "whole" | "slide"
    crop_size: tuple[int, int] | None  # slide window (h, w); None for whole
    stride: tuple[int, int] | None  # slide stride (h, w); None for whole
    img_scale: tuple[int, int]  # test resize scale, mmcv (long, short)
    ms_ratios: tuple[float, ...]  # (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    ms_flip: bool  # the ms+flip protocol also flips every scale
    # Slide windows larger than the (ms-resized) image, §5.2: "unpadded" feeds the smaller patch
    # (mmseg >= PR #133); "pad" zero-pads it to crop_size and crops the logits back (v0.5.0).
    small_window: str


@dataclass(frozen=True)
class RuntimeConfig:
    # GPUs of the published run (4): global batch = gpus x data.samples_per_gpu. Not how many
    # GPUs a run uses: that is the profile setting `gpus` (core/layout.py).
    gpus: int
    amp: str  # "none" | "bf16" | "fp16"
    channels_last: bool
    cudnn_benchmark: bool  # mmseg's default_runtime sets it True
    # TF32 for cuDNN convolutions and CUDA matmuls on Ampere+ (§5.7); False: the fp32 of the
    # published V100 runs (PyTorch enables it for convolutions by default).
    allow_tf32: bool


@dataclass(frozen=True)
class Config:
    name: str
    model: ModelConfig
    data: DataConfig
    schedule: ScheduleConfig
    test: TestConfig
    runtime: RuntimeConfig
    profile: str = "paper"  # which profile's overrides were applied (not a YAML key)

    # -- helpers ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists) -- what the YAML file would hold."""
        return to_plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, e.g. ``{"model.backbone.depth": 50, ...}`` (MLflow params)."""
        return flatten(self.to_dict())

    def digest(self) -> str:
        """sha256 of the resolved config; a checkpoint is only resumed by the same digest."""
        payload = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    @property
    def global_batch(self) -> int:
        """Images per iteration over all GPUs: the protocol's batch (core/layout.py)."""
        return self.runtime.gpus * self.data.samples_per_gpu

    def replace(self, overrides: Mapping[str, Any], source: str = "<overrides>") -> Config:
        """A new Config with dotted-key overrides applied and re-validated."""
        raw = self.to_dict()
        profile = raw.pop("profile")
        _apply_overrides(raw, overrides, source)
        return build(Config, raw, source, prefix="", extra={"profile": profile}, **_STRICT)


_HINT = "every configuration file is complete; copy the value from a sibling file in params/"

# Allowed values for string fields: plain dicts/tuples so an error can list the choices.
CHOICES: dict[str, tuple[Any, ...]] = {
    "model.norm": ("SyncBN", "BN"),
    "model.backbone.depth": (50, 101),
    "model.backbone.pretrained": ("resnet50_v1c", "resnet101_v1c", None),
    "model.decode_head.mode": ("embedded_gaussian",),
    "data.dataset": ("cityscapes", "ade20k"),
    "test.mode": ("whole", "slide"),
    "test.small_window": ("unpadded", "pad"),
    "runtime.amp": ("none", "bf16", "fp16"),
}


@dataclass(frozen=True)
class Range:
    """The numbers a key allows: ``lo <= x <= hi``, with ``<`` on an open end; None: unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, x: float) -> bool:
        above = self.lo is None or (x > self.lo if self.lo_open else x >= self.lo)
        below = self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)
        return above and below

    def __str__(self) -> str:  # "x >= 1", "x > 0", "0 <= x < 1"
        if self.hi is None:
            return f"x {'>' if self.lo_open else '>='} {self.lo:g}"
        low = "" if self.lo is None else f"{self.lo:g} {'<' if self.lo_open else '<='} "
        return f"{low}x {'<' if self.hi_open else '<='} {self.hi:g}"


POSITIVE, NON_NEGATIVE, AT_LEAST_1 = Range(0, lo_open=True), Range(0), Range(1)
FRACTION = Range(0, 1)  # a probability or ratio, both ends allowed
# Numeric ranges, checked where the types are: any value where a sign or zero is meaningless. A
# list-valued key (crop_size, ratios, ...) is checked element by element (``data.crop_size[0]``).
RANGES: dict[str, Range] = {
    "model.num_classes": AT_LEAST_1,
    "model.ignore_index": Range(0, 255),  # labels are uint8 PNGs
    "model.backbone.strides": AT_LEAST_1,
    "model.backbone.dilations": AT_LEAST_1,
    "model.decode_head.in_channels": AT_LEAST_1,
    "model.decode_head.in_index": Range(0, 3),  # the four ResNet stages
    "model.decode_head.channels": AT_LEAST_1,
    "model.decode_head.dropout_ratio": Range(0, 1, hi_open=True),
    "model.decode_head.reduction": AT_LEAST_1,
    "model.decode_head.temperature": POSITIVE,
    "model.decode_head.loss_weight": POSITIVE,  # the head whose output is the prediction
    "model.auxiliary_head.in_channels": AT_LEAST_1,
    "model.auxiliary_head.in_index": Range(0, 3),
    "model.auxiliary_head.channels": AT_LEAST_1,
    "model.auxiliary_head.num_convs": AT_LEAST_1,
    "model.auxiliary_head.dropout_ratio": Range(0, 1, hi_open=True),
    "model.auxiliary_head.loss_weight": NON_NEGATIVE,  # 0: no auxiliary loss
    "data.img_scale": AT_LEAST_1,
    "data.ratio_range": POSITIVE,
    "data.crop_size": AT_LEAST_1,
    "data.cat_max_ratio": Range(0, 1, lo_open=True),
    "data.flip_prob": FRACTION,
    "data.photometric.brightness_delta": Range(0, 255),
    "data.photometric.contrast_range": NON_NEGATIVE,
    "data.photometric.saturation_range": NON_NEGATIVE,
    "data.photometric.hue_delta": Range(0, 180),  # OpenCV hue: 0..179
    "data.std": POSITIVE,
    "data.samples_per_gpu": AT_LEAST_1,
    "data.workers_per_gpu": NON_NEGATIVE,
    "schedule.max_iters": AT_LEAST_1,
    "schedule.lr": POSITIVE,
    "schedule.momentum": Range(0, 1, hi_open=True),
    "schedule.weight_decay": NON_NEGATIVE,
    "schedule.power": NON_NEGATIVE,
    "schedule.min_lr": NON_NEGATIVE,
    "schedule.checkpoint_interval": AT_LEAST_1,
    "schedule.eval_interval": AT_LEAST_1,
    "schedule.log_interval": AT_LEAST_1,
    "schedule.seed": NON_NEGATIVE,
    "test.crop_size": AT_LEAST_1,
    "test.stride": AT_LEAST_1,
    "test.img_scale": AT_LEAST_1,
    "test.ms_ratios": POSITIVE,
    "runtime.gpus": AT_LEAST_1,
}
_STRICT: dict[str, Any] = {"choices": CHOICES, "ranges": RANGES, "hint": _HINT}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def config_path(name_or_path: str | Path, ws: Workspace | None = None) -> Path:
    """Resolve a config name (``dnl_r50-d8_512x1024_40k_cityscapes``) or a YAML path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    params_dir = (ws or workspace.find()).params_dir
    candidate = params_dir / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(sorted(q.stem for q in params_dir.glob("dnl_*.yaml")))
        raise ConfigError(
            f"unknown config {str(name_or_path)!r}: no {candidate}. Known configs: {known}"
        )
    return candidate


def load_config(
    name_or_path: str | Path,
    profile: str | Profile | None = None,
    overrides: Mapping[str, Any] | None = None,
    ws: Workspace | None = None,
) -> Config:
    """Load one configuration, strictly.

    Args:
        name_or_path: an mmseg config name (looked up in the workspace's ``params/``) or a path
            to a YAML file: a configuration file, or a *resolved* one (``results/<run>/
            config.yaml``, written by ``resolve@<run>``), which records the profile that resolved
            it under the key ``profile`` and is never resolved again.
        profile: a :class:`~dnlrepro.core.profile.Profile` or its name (default: ``"paper"``,
            which applies no override: the file's own values, i.e. the published run's; for a
            resolved file, the profile it records).
        overrides: extra dotted-key overrides, applied last (e.g. ``{"schedule.max_iters": 10}``).
        ws: the workspace (default: :func:`dnlrepro.core.workspace.find`).

    Returns:
        A frozen :class:`Config`.
    """
    ws = ws or workspace.find()
    path = config_path(name_or_path, ws)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    resolved_by = raw.pop("profile", None)
    if resolved_by is not None:
        name = _resolved_profile(path, resolved_by, profile)
    else:
        prof = (
            profile
            if isinstance(profile, Profile)
            else load_profile(profile or DEFAULT_PROFILE, ws)
        )
        name = prof.name
        for source, ov in prof.overrides_for(str(raw.get("name")), raw):
            _apply_overrides(raw, ov, source)
    if overrides:
        _apply_overrides(raw, overrides, "overrides (--set)")
    cfg = build(Config, raw, str(path), prefix="", extra={"profile": name}, **_STRICT)
    if path.parent == ws.params_dir and cfg.name != path.stem:
        raise ConfigError(f"{path}: key 'name' is {cfg.name!r} but the file is named {path.stem!r}")
    return cfg


def _resolved_profile(path: Path, recorded: Any, asked: str | Profile | None) -> str:
    """The profile a resolved file records; asking for another one is an error."""
    if recorded not in PROFILES:
        raise ConfigError(f"{path}: key 'profile' is {recorded!r}; choose one of {PROFILES}")
    asked_name = asked.name if isinstance(asked, Profile) else asked
    if asked_name is not None and asked_name != recorded:
        raise ConfigError(
            f"{path} was resolved by profile {recorded!r} (its key 'profile'), so profile "
            f"{asked_name!r} cannot apply to it; drop --profile, or pass the configuration's name"
        )
    return recorded


def write_resolved(cfg: Config, path: Path) -> None:
    """Write a resolved configuration file: every key, plus the profile that resolved it."""
    write_bytes_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())


# --------------------------------------------------------------------------------------------
# Internals: overrides, type checking
# --------------------------------------------------------------------------------------------


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], source: str) -> None:
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = raw
        cls: Any = Config
        for depth, key in enumerate(parts):
            fields = field_types(cls)
            if key not in fields:
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"{source}: unknown key {where!r}; allowed keys at this level: "
                    f"{', '.join(fields)}"
                )
            if depth == len(parts) - 1:
                if not dataclasses.is_dataclass(fields[key]):  # an error names the override
                    check_value(fields[key], value, source, dotted, **_STRICT)
                node[key] = value
            else:
                node = node.setdefault(key, {})
                cls = fields[key]


# --------------------------------------------------------------------------------------------
# Shared by the commands that take a configuration (train, evaluate, predict, benchmark, ...)
# --------------------------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser, *, overrides: bool = False) -> None:
    parser.add_argument(
        "--config",
        required=True,
        help="config name (params/), a YAML path, or a resolved run's results/<run>/config.yaml",
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help=f"profile whose overrides apply (default: {DEFAULT_PROFILE}, the configuration's "
        "own published values; a resolved file's own profile; params.yaml only selects the DVC "
        "pipeline's profile)",
    )
    if overrides:
        parser.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key (YAML value), e.g. schedule.max_iters=20; changes the "
            "config digest, so it never resumes another run",
        )


def config_from_args(args: argparse.Namespace) -> tuple[Config, Profile | None]:
    """The configuration a command runs with, and the profile loaded for it (None for a
    resolved file, which records its own); the first log line names the profile and why."""
    overrides = parse_overrides(getattr(args, "overrides", []))
    cfg = load_config(args.config, args.profile, overrides)
    resolved = "profile" in (read_yaml(config_path(args.config)) or {})
    why = "default: the configuration's own values"
    if args.profile or resolved:
        why = "--profile" if args.profile else "recorded in the resolved file"
    logger.info("profile: %s (%s)", cfg.profile, why)
    return cfg, None if resolved else load_profile(cfg.profile)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. schedule.max_iters=20")
        out[key.strip()] = yaml.safe_load(value)
    return out
