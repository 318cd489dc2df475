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

import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dnlrepro.core import workspace
from dnlrepro.core.workspace import Workspace

if TYPE_CHECKING:
    from dnlrepro.core.profile import Profile

PROFILES: tuple[str, ...] = ("smoke", "paper", "published")
# A configuration named without a profile runs with its own values: those of the published run.
DEFAULT_PROFILE = "paper"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says where and how to fix it."""


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
    samples_per_gpu: int  # 2 Cityscapes, 4 ADE20K
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
    gpus: int  # GPUs of the published run (4); the effective batch is gpus * samples_per_gpu
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
        return _to_plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, e.g. ``{"model.backbone.depth": 50, ...}`` (MLflow params)."""
        return flatten(self.to_dict())

    def digest(self) -> str:
        """sha256 of the resolved config; a checkpoint is only resumed by the same digest."""
        payload = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    @property
    def published_batch(self) -> int:
        return self.runtime.gpus * self.data.samples_per_gpu

    def replace(self, overrides: Mapping[str, Any], source: str = "<overrides>") -> Config:
        """A new Config with dotted-key overrides applied and re-validated."""
        raw = self.to_dict()
        profile = raw.pop("profile")
        _apply_overrides(raw, overrides, source)
        return _build(Config, raw, source, prefix="", extra={"profile": profile})


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
_INDEX = re.compile(r"\[\d+\]$")


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


def read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e


def load_config(
    name_or_path: str | Path,
    profile: str | Profile = DEFAULT_PROFILE,
    overrides: Mapping[str, Any] | None = None,
    ws: Workspace | None = None,
) -> Config:
    """Load one configuration, strictly.

    Args:
        name_or_path: an mmseg config name (looked up in the workspace's ``params/``) or a path
            to a YAML file.
        profile: a :class:`~dnlrepro.core.profile.Profile` or its name. ``"paper"`` (the default)
            applies no override: the file's own values, i.e. the published run's.
        overrides: extra dotted-key overrides, applied last (e.g. ``{"schedule.max_iters": 10}``).
        ws: the workspace (default: :func:`dnlrepro.core.workspace.find`).

    Returns:
        A frozen :class:`Config`.
    """
    from dnlrepro.core.profile import load_profile

    ws = ws or workspace.find()
    path = config_path(name_or_path, ws)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    prof = profile if not isinstance(profile, str) else load_profile(profile, ws)
    for source, ov in prof.overrides_for(str(raw.get("name"))):
        _apply_overrides(raw, ov, source)
    if overrides:
        _apply_overrides(raw, overrides, "overrides (--set)")
    cfg = _build(Config, raw, str(path), prefix="", extra={"profile": prof.name})
    if path.parent == ws.params_dir and cfg.name != path.stem:
        raise ConfigError(f"{path}: key 'name' is {cfg.name!r} but the file is named {path.stem!r}")
    return cfg


# --------------------------------------------------------------------------------------------
# Internals: overrides, type checking
# --------------------------------------------------------------------------------------------


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], source: str) -> None:
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = raw
        cls: Any = Config
        for depth, key in enumerate(parts):
            fields = _field_types(cls)
            if key not in fields:
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"{source}: unknown key {where!r}; allowed keys at this level: "
                    f"{', '.join(fields)}"
                )
            if depth == len(parts) - 1:
                if not dataclasses.is_dataclass(fields[key]):  # an error names the override
                    _check(fields[key], value, source, dotted)
                node[key] = value
            else:
                node = node.setdefault(key, {})
                cls = fields[key]


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "profile"}


_CONFIG_HINT = "every configuration file is complete; copy the value from a sibling file in params/"


def _build(
    cls: type,
    raw: Any,
    source: str,
    prefix: str,
    extra: dict | None = None,
    choices: Mapping[str, tuple[Any, ...]] = CHOICES,
    hint: str = _CONFIG_HINT,
) -> Any:
    """``cls(**raw)`` after checking every key and type (recursively); errors name the key."""
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: key {where!r} must be a mapping, got {raw!r}")
    fields = _field_types(cls)
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix + str(unknown[0])!r}; allowed keys here: "
            f"{', '.join(fields)}"
        )
    optional = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    missing = [k for k in fields if k not in raw and k not in optional]
    if missing:
        raise ConfigError(f"{source}: missing key {prefix + missing[0]!r} ({hint})")
    kwargs = {
        k: _check(tp, raw[k], source, prefix + k, choices, hint)
        for k, tp in fields.items()
        if k in raw
    }
    kwargs.update(extra or {})
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check(
    tp: Any,
    value: Any,
    source: str,
    key: str,
    choices: Mapping[str, tuple[Any, ...]] = CHOICES,
    hint: str = _CONFIG_HINT,
) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: key {key!r} must be {expected}, got {value!r}")

    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key + ".", choices=choices, hint=hint)
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            out = None
        else:
            inner = [a for a in args if a is not type(None)]
            out = _check(inner[0], value, source, key, choices, hint)
    elif origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise fail(f"a list of {_type_name(args[0])}")
        if len(args) == 2 and args[1] is Ellipsis:
            out = tuple(
                _check(args[0], v, source, f"{key}[{i}]", choices, hint)
                for i, v in enumerate(value)
            )
        else:
            if len(value) != len(args):
                raise fail(f"a list of {len(args)} values")
            out = tuple(
                _check(a, v, source, f"{key}[{i}]", choices, hint)
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
    elif tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        out = value
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        out = value
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("a number")
        out = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        out = value
    elif tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        out = dict(value)
    else:  # pragma: no cover - schema error, not user error
        raise TypeError(f"unsupported type {tp} for {key}")
    allowed = choices.get(key)
    if allowed is not None and out not in allowed:
        raise ConfigError(
            f"{source}: key {key!r} is {value!r}; choose one of "
            f"{', '.join(repr(c) for c in allowed)}"
        )
    bounds = RANGES.get(_INDEX.sub("", key))
    if bounds is not None and isinstance(out, int | float) and out not in bounds:
        raise ConfigError(f"{source}: key {key!r} is {value!r}; allowed: {bounds}")
    return out


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    return obj


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
