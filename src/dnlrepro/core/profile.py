"""Profiles: the one switch between the paper run, the published checkpoints and the smoke run.

``params/profiles.yaml`` defines each profile: a description, the seeds each row trains, an
optional ``miniature`` (:mod:`dnlrepro.core.miniature`: the paper configurations at documented
factors), dotted-key ``overrides`` applied on top of matching configurations, and typed
``settings`` that are not part of a configuration (where the data comes from, whether to train,
the GPU layout, evaluation and benchmark sizes). :func:`load_profile` reads it strictly into
a frozen :class:`Profile`: an unknown or mistyped key fails naming the key and the allowed ones,
exactly like a configuration.

``params.yaml: profile`` selects the profile of the DVC pipeline (:func:`read_params`). A command
run by hand without ``--profile`` uses :data:`DEFAULT_PROFILE` (``paper``: the configuration's
own, published values), never the pipeline switch, and says so in its first log line.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dnlrepro.core import workspace
from dnlrepro.core.miniature import Miniature
from dnlrepro.core.reference import SOURCES, ReferenceSettings
from dnlrepro.core.schema import ConfigError, build, read_yaml
from dnlrepro.core.workspace import Workspace

PROFILES: tuple[str, ...] = ("smoke", "paper", "published")
# A configuration named without a profile runs with its own values: those of the published run.
DEFAULT_PROFILE = "paper"

# Allowed values of the string settings (dotted key -> choices), listed in errors.
SETTING_CHOICES: dict[str, tuple[Any, ...]] = {
    "settings.data_source": ("synthetic", "real"),
    "settings.reference.source": SOURCES,
}
_HINT = "each profile in params/profiles.yaml spells out every setting"


@dataclass(frozen=True)
class OverrideBlock:
    match: str  # fnmatch pattern over configuration names, e.g. "*_cityscapes"
    set: dict[str, Any]  # dotted config key -> value, checked by the config loader


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
    # "synthetic": archives written locally in the real formats at the miniature's sizes;
    # "real": downloaded (or linked from DNLREPRO_LOCAL_DATA)
    data_source: str
    train: bool  # False: the published checkpoints are downloaded instead of trained
    # The run's layout (core/layout.py): training processes, one per GPU, over all nodes; must
    # divide each row's global batch. 1 trains in the stage's process, more through torchrun.
    gpus: int
    nnodes: int  # torchrun --nnodes; gpus / nnodes processes per node
    eval_max_images: int | None  # evaluate only the first N validation images (None: all)
    benchmark: Benchmark = field(default_factory=Benchmark)
    # Slide rows: ms+flip also with the other test.small_window mode (docs/reference.md §5.2),
    # so the diff can say which one reproduces the published number.
    eval_small_window_alt: bool = False
    # The diff fails a row whose mIoU is below this multiple of its majority-class baseline
    # (a constant prediction); None: no such check (the real profiles compare with the paper).
    learned_factor: float | None = None
    # The trajectory each run compares itself with while training (core.reference).
    reference: ReferenceSettings = field(default_factory=ReferenceSettings)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    overrides: tuple[OverrideBlock, ...]
    settings: Settings
    # The seeds each row trains (docs/pipeline.md#seeds): one run per seed, tables show mean +- std.
    seeds: tuple[SeedBlock, ...] = (SeedBlock("*", (0,)),)
    miniature: Miniature | None = None  # None: the paper's sizes

    def overrides_for(self, config_name: str, raw: Mapping[str, Any]) -> list[tuple[str, dict]]:
        """The (source, overrides) steps that resolve configuration ``config_name`` (its file's
        values ``raw``): the miniature's lengths first, then every matching block, in order."""
        steps: list[tuple[str, dict[str, Any]]] = []
        if self.miniature is not None:
            source = f"params/profiles.yaml: {self.name}.miniature"
            steps.append((source, self.miniature.overrides(raw)))
        steps += [
            (f"params/profiles.yaml: {self.name}.overrides[{i}]", dict(block.set))
            for i, block in enumerate(self.overrides)
            if fnmatch.fnmatch(config_name, block.match)
        ]
        return steps

    def expected_counts(self, dataset: str) -> tuple[int, int] | None:
        """(train, val) images prepare expects: the miniature's, or None (the real ones)."""
        return None if self.miniature is None else tuple(self.miniature.counts.of(dataset))


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
    profile = build(
        Profile,
        {"name": name, **(raw[name] or {})},
        f"{path}: {name}",
        prefix="",
        choices=SETTING_CHOICES,
        hint=_HINT,
    )
    if profile.settings.data_source == "synthetic" and profile.miniature is None:
        raise ConfigError(
            f"{path}: profile {name!r} has data_source 'synthetic' but no 'miniature' block "
            "(factors and counts: the sizes of the synthetic archives)"
        )
    _check_seeds(profile, path)
    return profile


def _check_seeds(profile: Profile, path: object) -> None:
    for i, block in enumerate(profile.seeds):
        key = f"{path}: {profile.name}.seeds[{i}].seeds"
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
