"""``resolve@<run>``: everything one run computes with, in the two files its stages depend on.

A run's result depends on its configuration *as resolved* (the file in ``params/`` after the
active profile's miniature and overrides, plus the run's seed) and on a few run-level settings:
how training is launched and where its checkpoint comes from, how evaluation and the benchmark
are sized. ``resolve@<run>`` writes them down:

* ``results/<run>/config.yaml`` -- the complete resolved configuration, loadable by the strict
  loader (``dnlrepro train --config results/<run>/config.yaml``); its key ``profile`` records the
  profile that resolved it, so it is never resolved twice;
* ``results/<run>/run.yaml`` -- :class:`RunPlan`: block ``train`` (source, checkpoint, GPU
  layout) and block ``evaluate`` (image limit, small-window modes, benchmark sizes).

``train@<run>`` depends on ``config.yaml`` and ``run.yaml:train``, ``evaluate@<run>`` on
``config.yaml`` and ``run.yaml:evaluate`` (``dvc.yaml``). So a change re-runs a run's training or
evaluation exactly when what it computes changes: rewording a profile's description, adding a
seed to another row or editing a published number re-runs ``resolve@`` at most (cheap: no torch),
whose unchanged output DVC then recognises. docs/pipeline.md, "What re-runs when".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from dnlrepro.core import reference
from dnlrepro.core.config import Config, flatten, load_config, write_resolved
from dnlrepro.core.files import write_bytes_atomic
from dnlrepro.core.layout import layout_for
from dnlrepro.core.miniature import check_structure
from dnlrepro.core.profile import Benchmark, Profile
from dnlrepro.core.reference import ReferencePlan
from dnlrepro.core.registry import load_published
from dnlrepro.core.runs import Run, stage
from dnlrepro.core.schema import ConfigError, build, read_yaml
from dnlrepro.core.workspace import Workspace

CONFIG_FILE = "config.yaml"
PLAN_FILE = "run.yaml"
_HEADER = (
    "# Written by resolve@{key} (dnlrepro.core.resolve); do not edit: change params/ and run\n"
    "# `dvc repro`. train@{key} depends on block `train`, evaluate@{key} on block `evaluate`.\n"
)


@dataclass(frozen=True)
class TrainPlan:
    source: str  # "train", or "published": copy the downloaded published checkpoint
    checkpoint: str | None  # published: its URL (registry) ...
    checkpoint_file: str | None  # ... and where download@<dataset> keeps it (workspace-relative)
    gpus: int  # the layout (core/layout.py): 1 trains in the stage's process; more: torchrun
    nnodes: int
    per_gpu_batch: int  # the configuration's global batch / gpus
    val_max_images: int | None  # in-training validation on the first N images (None: all)
    reference: ReferencePlan | None = None  # the trajectory to compare with (core.reference)


@dataclass(frozen=True)
class EvalPlan:
    max_images: int | None  # the first N validation images only (None: all)
    small_window_alt: bool  # slide rows: ms+flip with both test.small_window modes
    benchmark: Benchmark
    real_images: bool  # benchmark times the config's test split (else random images)


@dataclass(frozen=True)
class RunPlan:
    run: str  # the stage key
    config: str  # the configuration (row)
    dataset: str
    seed: int
    train: TrainPlan
    evaluate: EvalPlan


def resolve_run(ws: Workspace, profile: Profile, run: Run) -> tuple[Config, RunPlan]:
    """The resolved configuration and plan of ``run`` under ``profile`` (nothing written).

    Raises:
        ConfigError: a configuration or the profile is invalid, or the miniature would lose a
            structural property of the row (named).
    """
    cfg = load_config(run.config, profile, {"schedule.seed": run.seed}, ws=ws)
    if profile.miniature is not None:
        # the file's own values: not "paper", whose block a rehearsal gives a miniature too
        paper = load_config(run.config, replace(profile, overrides=(), miniature=None), ws=ws)
        mini = paper.replace(profile.miniature.overrides(paper.to_dict()), "miniature")
        problems = check_structure(paper, mini, profile.miniature.factors.of(cfg.data.dataset))
        if problems:
            where = f"params/profiles.yaml: {profile.name}.miniature"
            raise ConfigError(f"{where}: " + "; ".join(problems))
    s = profile.settings
    checkpoint = file = None
    if not s.train:
        checkpoint = load_published(ws.registry_file).configs[run.config].checkpoint
        file = ws.relative(ws.downloads / "checkpoints" / Path(checkpoint).name)
    source = "train" if s.train else "published"
    where = f"params/profiles.yaml: {profile.name}.settings.gpus"
    layout = layout_for(cfg, s.gpus, s.nnodes, where)
    ref = reference.plan(ws, profile.name, s.reference, run.config) if s.train else None
    train = TrainPlan(
        source, checkpoint, file, s.gpus, s.nnodes, layout.per_gpu_batch, s.eval_max_images, ref
    )
    small_window_alt = s.eval_small_window_alt and cfg.test.mode == "slide"
    evaluate = EvalPlan(s.eval_max_images, small_window_alt, s.benchmark, s.data_source == "real")
    return cfg, RunPlan(run.key, run.config, run.dataset, run.seed, train, evaluate)


def write(ws: Workspace, profile: Profile, run: Run) -> list[str]:
    """Write ``results/<run>/config.yaml`` + ``run.yaml``; returns what the log should say."""
    cfg, plan = resolve_run(ws, profile, run)
    folder = ws.results / run.key
    before = {p: p.read_bytes() for p in (folder / CONFIG_FILE, folder / PLAN_FILE) if p.is_file()}
    notes = overridden(ws, profile, cfg)
    write_resolved(cfg, folder / CONFIG_FILE)
    text = _HEADER.format(key=run.key) + yaml.safe_dump(asdict(plan), sort_keys=False)
    write_bytes_atomic(folder / PLAN_FILE, text.encode())
    after = {p: p.read_bytes() for p in before}
    if before and before == after:
        notes.append(
            f"the resolved configuration and plan of {run.key} are unchanged: "
            f"{stage('train', run.key)} and {stage('evaluate', run.key)} stay up to date"
        )
    return notes


def overridden(ws: Workspace, profile: Profile, cfg: Config) -> list[str]:
    """One line naming the values of ``params/<config>.yaml`` that the profile sets (its
    miniature and override blocks): an edit there changes nothing while the profile sets them."""
    path = ws.params_dir / f"{cfg.name}.yaml"
    raw = read_yaml(path) or {}
    file_values, resolved = flatten(raw), cfg.flat()
    keys = [k for _, step in profile.overrides_for(cfg.name, raw) for k in step]
    shown = [
        f"{k} {_plain(file_values.get(k))} -> {_plain(resolved[k])}" for k in dict.fromkeys(keys)
    ]
    if not shown:
        return []
    return [
        f"{path.name}: profile {profile.name} sets {len(shown)} of its values (an edit of them "
        f"there changes nothing): {'; '.join(shown)}"
    ]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def read(ws: Workspace, key: str) -> tuple[Config, RunPlan]:
    """What ``resolve@<key>`` wrote, strictly (the stages ``train@`` / ``evaluate@`` read this).

    Raises:
        ConfigError: a file is missing (``dvc repro resolve@<key>`` writes it) or invalid.
    """
    folder = ws.results / key
    path = folder / PLAN_FILE
    if not path.is_file() or not (folder / CONFIG_FILE).is_file():
        raise ConfigError(
            f"{folder}: no resolved {CONFIG_FILE} / {PLAN_FILE}; "
            f"`dvc repro {stage('resolve', key)}` writes them"
        )
    plan = build(RunPlan, read_yaml(path), str(path), prefix="", hint="rewrite it: dvc repro")
    if plan.run != key:
        raise ConfigError(f"{path}: key 'run' is {plan.run!r}, expected {key!r}")
    cfg = load_config(folder / CONFIG_FILE, ws=ws)
    if cfg.name != plan.config or cfg.schedule.seed != plan.seed:
        raise ConfigError(
            f"{folder}: {CONFIG_FILE} ({cfg.name}, seed {cfg.schedule.seed}) does not match "
            f"{PLAN_FILE} ({plan.config}, seed {plan.seed}); rewrite both: "
            f"dvc repro {stage('resolve', key)}"
        )
    return cfg, plan
