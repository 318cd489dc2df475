"""Profiles: the one switch between the paper run, the published checkpoints and the smoke run.

``params/profiles.yaml`` defines each profile: a description, dotted-key ``overrides`` applied on
top of the paper values of matching configurations, and typed ``settings`` that are not part of a
configuration (where the data comes from, whether to train, how to launch, synthetic sizes).
:func:`load_profile` reads it strictly into a frozen :class:`Profile`: an unknown or mistyped
setting fails naming the key and the allowed ones, exactly like a configuration.

``params.yaml: profile`` selects the profile of the DVC pipeline (:func:`read_params`); DVC stages
always pass it on explicitly. A command run by hand without ``--profile`` uses
:data:`~dnlrepro.core.config.DEFAULT_PROFILE` (``paper``: the configuration's own, published
values),
never the pipeline switch, and says so in its first log line.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any

import yaml

from dnlrepro.core import workspace
from dnlrepro.core.config import (
    DEFAULT_PROFILE,
    PROFILES,
    Config,
    ConfigError,
    _build,
    load_config,
    read_yaml,
)
from dnlrepro.core.workspace import Workspace

logger = logging.getLogger(__name__)

# Allowed values of the string settings (dotted key -> choices), listed in errors.
SETTING_CHOICES: dict[str, tuple[Any, ...]] = {
    "settings.data_source": ("synthetic", "real"),
    "settings.launcher": ("torchrun", "none"),
}
_HINT = "each profile in params/profiles.yaml spells out every setting"


@dataclass(frozen=True)
class OverrideBlock:
    match: str  # fnmatch pattern over configuration names, e.g. "*_cityscapes"
    set: dict[str, Any]  # dotted config key -> value, checked by the config loader


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


@dataclass(frozen=True)
class ExpectedCounts:
    cityscapes: tuple[int, int]  # (train, val) images; the real data has 2975 / 500
    ade20k: tuple[int, int]  # 20210 / 2000


@dataclass(frozen=True)
class Benchmark:
    num_images: int = 200  # mmseg tools/benchmark.py times 200 images ...
    warmup: int = 5  # ... after 5 warm-up images (docs/reference.md §5.4)
    train_iters: int = 5  # training iterations for the Mem column (0: not measured)


@dataclass(frozen=True)
class SeedBlock:
    match: str  # fnmatch pattern over configuration names; the last matching block wins
    seeds: tuple[int, ...]  # one run (train@ + evaluate@ stage) per seed (dnlrepro.core.runs)


@dataclass(frozen=True)
class Settings:
    data_source: str  # "synthetic" archives written by `dnlrepro synth`, or the "real" ones
    train: bool  # False: the published checkpoints are downloaded instead of trained
    launcher: str  # "torchrun" (DDP + SyncBN) or "none" (one process)
    nproc_per_node: int  # torchrun --nproc-per-node
    nnodes: int  # torchrun --nnodes
    eval_max_images: int | None  # evaluate only the first N validation images (None: all)
    benchmark: Benchmark = field(default_factory=Benchmark)
    synthetic: Synthetic | None = None  # required when data_source is "synthetic"
    # Slide rows: ms+flip also with the other test.small_window mode (docs/reference.md §5.2),
    # so the diff can say which one reproduces the published number.
    eval_small_window_alt: bool = False
    # The diff fails a row whose mIoU is below this multiple of its majority-class baseline
    # (a constant prediction); None: no such check (the real profiles compare with the paper).
    learned_factor: float | None = None
    # The seeds each row trains (docs/pipeline.md#seeds): one run per seed, tables show mean +- std.
    seeds: tuple[SeedBlock, ...] = (SeedBlock("*", (0,)),)
    # Real data: the (train, val) counts prepare checks; None = the real datasets' counts.
    # Only `dnlrepro rehearse` sets it, for its miniature archives.
    expected_counts: ExpectedCounts | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    overrides: tuple[OverrideBlock, ...]
    settings: Settings

    def overrides_for(self, config_name: str) -> list[tuple[str, dict[str, Any]]]:
        """The (source, overrides) blocks whose ``match`` fits ``config_name``, in order."""
        return [
            (f"params/profiles.yaml: {self.name}.overrides[{i}]", dict(block.set))
            for i, block in enumerate(self.overrides)
            if fnmatch.fnmatch(config_name, block.match)
        ]

    def synthetic_or_fail(self) -> Synthetic:
        if self.settings.synthetic is None:
            raise ConfigError(
                f"params/profiles.yaml: profile {self.name!r} has data_source 'synthetic' but no "
                "settings.synthetic block (seed, per-dataset counts and sizes)"
            )
        return self.settings.synthetic


def load_profile(name: str, ws: Workspace | None = None) -> Profile:
    """Read profile ``name`` from the workspace's ``params/profiles.yaml``, strictly.

    Raises:
        ConfigError: unknown profile, unknown or mistyped key (named with the allowed ones).
    """
    ws = ws or workspace.find()
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    path = ws.profiles_file
    raw = read_yaml(path) if path.is_file() else None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of profile name -> definition")
    unknown = sorted(set(raw) - set(PROFILES))
    if unknown:
        raise ConfigError(f"{path}: unknown profile(s) {unknown}; allowed: {', '.join(PROFILES)}")
    if name not in raw:
        raise ConfigError(f"{path}: profile {name!r} is not defined")
    profile = _build(
        Profile,
        {"name": name, **(raw[name] or {})},
        f"{path}: {name}",
        prefix="",
        choices=SETTING_CHOICES,
        hint=_HINT,
    )
    if profile.settings.data_source == "synthetic":
        profile.synthetic_or_fail()
    _check_seeds(profile, path)
    return profile


def _check_seeds(profile: Profile, path: object) -> None:
    for i, block in enumerate(profile.settings.seeds):
        key = f"{path}: {profile.name}.settings.seeds[{i}].seeds"
        if not block.seeds or len(set(block.seeds)) != len(block.seeds):
            raise ConfigError(f"{key}: list one or more distinct seeds, got {list(block.seeds)}")
        if min(block.seeds) < 0:
            raise ConfigError(f"{key}: seeds are >= 0, got {list(block.seeds)}")
        if not profile.settings.train and len(block.seeds) > 1:
            # Nothing is trained: every seed would evaluate the same published checkpoint.
            raise ConfigError(
                f"{key}: profile {profile.name!r} does not train (settings.train: false), so "
                f"it has one run per row; list one seed, got {list(block.seeds)}"
            )


def read_params(ws: Workspace | None = None) -> Profile:
    """The profile selected by ``params.yaml: profile`` (the DVC pipeline's switch).

    Raises:
        ConfigError: ``params.yaml`` is missing, holds another key, or names an unknown profile.
    """
    ws = ws or workspace.find()
    path = ws.params_yaml
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; it holds the pipeline's switch 'profile: smoke'")
    raw = read_yaml(path)
    if not isinstance(raw, dict) or set(raw) != {"profile"}:
        keys = sorted(raw) if isinstance(raw, dict) else raw
        raise ConfigError(f"{path}: expected exactly the key 'profile', got {keys!r}")
    if raw["profile"] not in PROFILES:
        raise ConfigError(
            f"{path}: key 'profile' is {raw['profile']!r}; choose one of {', '.join(PROFILES)}"
        )
    return load_profile(raw["profile"], ws)


# ---------------------------------------------------------------------------------------------
# Shared by the commands that take a configuration (train, evaluate, predict, benchmark, ...)
# ---------------------------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser, *, overrides: bool = False) -> None:
    parser.add_argument("--config", required=True, help="config name (params/) or YAML path")
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help=f"profile whose overrides apply (default: {DEFAULT_PROFILE}, the configuration's "
        "own published values; params.yaml only selects the DVC pipeline's profile)",
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


def config_from_args(args: argparse.Namespace) -> tuple[Config, Profile]:
    """The configuration and profile a command runs with; the first log line names the profile."""
    name = args.profile or DEFAULT_PROFILE
    profile = load_profile(name)
    why = "--profile" if args.profile else "default: the configuration's own values"
    logger.info("profile: %s (%s)", name, why)
    cfg = load_config(args.config, profile, parse_overrides(getattr(args, "overrides", [])))
    return cfg, profile


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. schedule.max_iters=20")
        out[key.strip()] = yaml.safe_load(value)
    return out
