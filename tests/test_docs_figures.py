"""The figures README.md and docs/ state are the ones of the files that define them.

Each check finds a sentence by a pattern, takes the numbers it states and compares them with the
source: the smoke profile (iterations, size factors, seeds), the rehearsal's miniature, the
registry (row count, schedules) and the DAG (stage and run counts of ``dvc.yaml`` over
``params/runs.yaml``). A pattern that no longer matches fails too, naming the file, so a
rewritten sentence is re-checked rather than silently skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dnlrepro.core.profile import load_profile
from dnlrepro.core.registry import load_published
from dnlrepro.core.runs import seeds_for
from dnlrepro.rehearse.shrink import COUNTS, FACTORS

REPO = Path(__file__).resolve().parents[1]
SEEDED = "dnl_r50-d8_512x1024_40k_cityscapes"


def text(name: str) -> str:
    return (REPO / name).read_text(encoding="utf-8")


def stated(name: str, pattern: str) -> list[tuple[str, ...]]:
    """Every match of ``pattern`` (whitespace-tolerant) in file ``name``; at least one."""
    found = re.findall(pattern.replace(" ", r"\s+"), text(name))
    assert found, f"{name}: no sentence matches {pattern!r} any more; update this test"
    return [f if isinstance(f, tuple) else (f,) for f in found]


def smoke() -> dict:
    return yaml.safe_load(text("params/profiles.yaml"))["smoke"]


def smoke_iterations() -> tuple[int, int]:
    """(Cityscapes, ADE20K) training iterations of the smoke profile."""
    profile = smoke()
    ade = [o["set"]["schedule.max_iters"] for o in profile["overrides"]
           if o["match"] == "*_ade20k" and "schedule.max_iters" in o["set"]]  # fmt: skip
    base = profile["miniature"]["iterations"]
    return base, ade[-1] if ade else base


def test_smoke_iterations() -> None:
    cityscapes, ade20k = smoke_iterations()
    assert stated("docs/pipeline.md", r"A smoke run trains (\d+) iterations") == [
        (str(cityscapes),)
    ]
    for ade, other in stated("README.md", r"ADE20K rows' (\d+) iterations \(instead of (\d+)\)"):
        assert (int(ade), int(other)) == (ade20k, cityscapes)
    for cs, ade in stated("params/profiles.yaml", r"(\d+) \(ADE20K: (\d+)\) iterations"):
        assert (int(cs), int(ade)) == (cityscapes, ade20k)


def test_smoke_size_factors() -> None:
    factors = smoke()["miniature"]["factors"]
    (found,) = stated(
        "params/profiles.yaml", r"divided by (\d+) \(Cityscapes\) or (\d+) \(ADE20K\)"
    )
    assert (int(found[0]), int(found[1])) == (factors["cityscapes"], factors["ade20k"])


def test_rehearsal_miniature() -> None:
    """README: "every length / 32 for Cityscapes and / 16 for ADE20K ... 4 + 1 / 8 + 1"."""
    (f,) = stated("README.md", r"every length / (\d+) for Cityscapes and / (\d+) for ADE20K")
    assert (int(f[0]), int(f[1])) == (FACTORS.cityscapes, FACTORS.ade20k)
    (c,) = stated("README.md", r"(\d+) \+ (\d+) / (\d+) \+ (\d+) train \+ val images")
    assert tuple(map(int, c)) == (*COUNTS.cityscapes, *COUNTS.ade20k)
    (cs,) = stated("docs/pipeline.md", r"2048x1024 -> \d+x\d+ \((\d+) \+ (\d+)\) \|")
    (ade,) = stated("docs/pipeline.md", r"sides 512-1024 -> [\d-]+ \((\d+) \+ (\d+)\) \|")
    assert tuple(map(int, cs + ade)) == (*COUNTS.cityscapes, *COUNTS.ade20k)


def test_seeds() -> None:
    profile = load_profile("smoke")
    published = load_published()
    seeds = {name: seeds_for(profile, name) for name in published.configs}
    assert {name: s for name, s in seeds.items() if len(s) > 1} == {SEEDED: (0, 1)}
    for (row,) in stated("docs/pipeline.md", r"trains two seeds of `([^`]+)`"):
        assert row == SEEDED
    assert stated("README.md", r"The smoke profile trains (two) seeds of one row")


def runs_and_stages() -> tuple[int, int]:
    """(runs, stages) of the DAG: foreach stages expand over their dict, the others count 1."""
    dag = yaml.safe_load(text("dvc.yaml"))
    runs = yaml.safe_load(text("params/runs.yaml"))["runs"]
    datasets = next(v["datasets"] for v in dag["vars"] if isinstance(v, dict) and "datasets" in v)
    sizes = {"${runs}": len(runs), "${datasets}": len(datasets)}
    stages = sum(sizes[s["foreach"]] if "foreach" in s else 1 for s in dag["stages"].values())
    return len(runs), stages


def test_stage_and_run_counts() -> None:
    assert yaml.safe_load(text("params.yaml"))["profile"] == "smoke"  # what the README times
    runs, stages = runs_and_stages()
    (found,) = stated("README.md", r"Of the (\d+) stages \((\d+) runs\)")
    assert (int(found[0]), int(found[1])) == (stages, runs)


def test_registry_rows_and_schedules() -> None:
    published = load_published()
    (found,) = stated("README.md", r"all (\d+) configs")
    assert int(found[0]) == len(published.configs)
    schedules = sorted({e.lr_schd for e in published.configs.values()})
    (found,) = stated("README.md", r"the published schedules \(([\dk/]+) iterations\)")
    assert found[0] == "/".join(f"{s // 1000}k" for s in schedules)


@pytest.mark.parametrize("name", ["README.md", "docs/pipeline.md"])
def test_no_stale_smoke_iteration_count(name: str) -> None:
    """A smoke run's length is the profile's; an old count must not linger in the prose."""
    cityscapes, ade20k = smoke_iterations()
    for count in re.findall(r"smoke[^.]{0,80}?\b(\d+) iterations", text(name)):
        assert int(count) in (cityscapes, ade20k), f"{name}: smoke ... {count} iterations"
