"""Runs: the (configuration, seed) pairs the pipeline trains and evaluates, one DVC stage each.

The published rows are single runs, and 40k attention-head rows vary by about +-1 mIoU from run
to run (docs/reference.md §8), so a profile lists the seeds each row trains
(``seeds`` of its block in ``params/profiles.yaml``: blocks of ``match`` (fnmatch over configuration
names) and ``seeds``; the last matching block wins). Each seed is one run with its own
``train@<run>`` / ``evaluate@<run>`` stages, work dir and results folder; the tables and the
diff aggregate a row's runs (mean, std, n).

A run is named by its configuration for the row's first seed (so a single-seed profile names
everything exactly as mmseg names the configuration) and ``<configuration>-seed<k>`` for each
further seed ``k``.

DVC cannot compute a stage list from a setting (``foreach``/``matrix`` take a literal list or a
``vars`` file, and ``vars`` paths cannot be interpolated), so the runs of the active profile are
written to ``params/runs.yaml`` by ``dnlrepro profile NAME`` (which also sets ``params.yaml``) and
``dvc.yaml`` iterates over that file. Every stage checks the file against the profile
(:func:`check`) and, if they disagree, fails naming the command that fixes it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from dnlrepro.core import workspace
from dnlrepro.core.files import write_bytes_atomic
from dnlrepro.core.profile import Profile, load_profile
from dnlrepro.core.registry import DATASETS as DATASETS
from dnlrepro.core.registry import load_published
from dnlrepro.core.schema import ConfigError, read_yaml
from dnlrepro.core.workspace import Workspace

# The stages of dvc.yaml, in DAG order: per dataset, per run, then once. Code that builds or
# parses a stage name goes through stage() / parse_stage().
DATASET_STAGES: tuple[str, ...] = ("download", "prepare")
RUN_STAGES: tuple[str, ...] = ("resolve", "train", "evaluate")
REPORT_STAGES: tuple[str, ...] = ("tables", "diff", "report")


def stage(kind: str, key: str | None = None) -> str:
    """``train@<run>``, ``prepare@<dataset>``, or ``tables`` as dvc.yaml names them."""
    known = DATASET_STAGES + RUN_STAGES + REPORT_STAGES
    if kind not in known or (key is None) != (kind in REPORT_STAGES):
        raise ValueError(f"no stage {kind!r} with key {key!r}; stages: {', '.join(known)}")
    return kind if key is None else f"{kind}@{key}"


def parse_stage(name: str) -> tuple[str, str | None]:
    """``train@X`` -> ``("train", "X")``; ``tables`` -> ``("tables", None)``."""
    kind, sep, key = name.partition("@")
    return kind, (key if sep else None)


HEADER = """\
# The (configuration, seed) runs of profile {profile}: one train@<run> and one evaluate@<run>
# stage each (dvc.yaml iterates over `runs`). WRITTEN BY `dnlrepro profile {profile}` from
# params/profiles.yaml ({profile}.seeds); do not edit: change the seeds there and run
# `dnlrepro profile {profile}` again. Every stage checks this file against the profile.
"""


@dataclass(frozen=True)
class Run:
    key: str  # the stage key: the configuration, or <configuration>-seed<k>
    config: str
    dataset: str
    seed: int


def run_key(config: str, seed: int, first_seed: int) -> str:
    """``config`` for the row's first seed, ``<config>-seed<k>`` for the others."""
    return config if seed == first_seed else f"{config}-seed{seed}"


def config_of(key: str) -> str:
    """The configuration of run ``key`` (``X-seed1`` -> ``X``; ``X`` -> ``X``)."""
    return re.sub(r"-seed\d+$", "", key)


def seeds_for(profile: Profile, config: str) -> tuple[int, ...]:
    """The seeds ``profile`` trains for ``config`` (the last matching block; none: ``(0,)``)."""
    seeds: tuple[int, ...] = (0,)
    for block in profile.seeds:
        if fnmatch.fnmatch(config, block.match):
            seeds = block.seeds
    return seeds


def plan(profile: Profile, ws: Workspace | None = None) -> dict[str, Run]:
    """Every run of ``profile``: registry (README) order, each row's seeds in the listed order."""
    ws = ws or workspace.find()
    runs: dict[str, Run] = {}
    for name, entry in load_published(ws.registry_file).configs.items():
        seeds = seeds_for(profile, name)
        for seed in seeds:
            run = Run(run_key(name, seed, seeds[0]), name, entry.dataset, seed)
            runs[run.key] = run
    return runs


def of_rows(runs: dict[str, Run], configs: list[str] | tuple[str, ...]) -> dict[str, list[Run]]:
    """``configs`` -> their runs (first seed first)."""
    return {c: [r for r in runs.values() if r.config == c] for c in configs}


def select(runs: dict[str, Run], chosen: list[str] | tuple[str, ...]) -> list[str]:
    """The run keys of ``chosen`` rows (all their seeds) or runs, in plan order.

    Raises:
        ConfigError: a name is neither a row nor a run; the message lists the runs.
    """
    rows = {r.config for r in runs.values()}
    unknown = [c for c in chosen if c not in rows and c not in runs]
    if unknown:
        raise ConfigError(
            f"unknown configuration(s) or run(s) {unknown}; choose from {', '.join(runs)}"
        )
    return [r.key for r in runs.values() if r.config in chosen or r.key in chosen]


def render(profile: Profile, runs: dict[str, Run]) -> str:
    """The text of ``params/runs.yaml`` (one flow mapping per run: a diff shows whole runs)."""
    lines = [HEADER.format(profile=profile.name).rstrip("\n"), "runs:"]
    for run in runs.values():
        lines.append(
            f"  {run.key}: {{config: {run.config}, dataset: {run.dataset}, seed: {run.seed}}}"
        )
    return "\n".join(lines) + "\n"


def write(ws: Workspace, profile: Profile) -> Path:
    """Write ``params/runs.yaml`` for ``profile``."""
    runs = plan(profile, ws)
    write_bytes_atomic(ws.runs_file, render(profile, runs).encode())
    return ws.runs_file


def read(ws: Workspace) -> dict[str, Run]:
    """``params/runs.yaml`` as written (no check against the profile)."""
    path = ws.runs_file
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; write it with `dnlrepro profile NAME`")
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("runs"), dict):
        raise ConfigError(f"{path}: expected the key 'runs'; rewrite it with `dnlrepro profile`")
    return {k: Run(k, **v) for k, v in raw["runs"].items()}


def check(ws: Workspace, profile: Profile) -> dict[str, Run]:
    """The runs of ``profile``, after checking that ``params/runs.yaml`` lists exactly them.

    Raises:
        ConfigError: the file is missing or lists other runs (e.g. ``params.yaml`` was edited by
            hand, or the profile's seeds changed); the message names the fixing command.
    """
    wanted = plan(profile, ws)
    try:
        have = read(ws)
    except (TypeError, ConfigError) as e:
        raise ConfigError(f"{e}; run `dnlrepro profile {profile.name}`") from e
    if have != wanted:
        extra, missing = sorted(set(have) - set(wanted)), sorted(set(wanted) - set(have))
        raise ConfigError(
            f"{ws.runs_file} does not list the runs of profile {profile.name!r} (extra: "
            f"{extra or 'none'}; missing: {missing or 'none'}; or seeds differ). Switch profiles "
            f"and seeds with `dnlrepro profile {profile.name}`, which rewrites it"
        )
    return wanted


def resolve(ws: Workspace, profile: Profile, key: str) -> Run:
    """The run of stage key ``key`` (checked against the profile)."""
    runs = check(ws, profile)
    if key not in runs:
        raise ConfigError(
            f"{key!r} is not a run of profile {profile.name!r}; runs: {', '.join(runs)}"
        )
    return runs[key]


def switch(ws: Workspace, name: str) -> dict[str, Run]:
    """Select profile ``name``: write ``params.yaml`` and ``params/runs.yaml``."""
    # Everything that can fail (unknown name, a bad profile or registry) runs before either
    # file is written, so a failed switch leaves both as they were.
    profile = load_profile(name, ws)
    runs = plan(profile, ws)
    params, listing = _params_text(ws, name), render(profile, runs)
    write_bytes_atomic(ws.params_yaml, params.encode())
    write_bytes_atomic(ws.runs_file, listing.encode())
    return runs


def _params_text(ws: Workspace, name: str) -> str:
    """``params.yaml`` with its ``profile:`` line replaced (its comments kept)."""
    path = ws.params_yaml
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    out = [f"profile: {name}" if ln.startswith("profile:") else ln for ln in lines]
    if not any(ln.startswith("profile:") for ln in lines):
        out.append(f"profile: {name}")
    return "\n".join(out) + "\n"
