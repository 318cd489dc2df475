"""Seeds: the (configuration, seed) runs of a profile, the profile switch that writes them, a
row's mean +- std, and the diff's rule for judging a published number against several seeds."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from dnlrepro.core import runs
from dnlrepro.core.config import ConfigError
from dnlrepro.core.profile import load_profile, read_params
from dnlrepro.core.registry import PublishedError, config_names, load_published
from dnlrepro.core.workspace import Workspace
from dnlrepro.reports import diff, seeds
from dnlrepro.reports.results import load_measured, load_row, with_spread

REPO = Path(__file__).resolve().parents[1]
TWO = "dnl_r50-d8_512x1024_40k_cityscapes"  # the smoke profile's two-seed row
ROW = "dnl_r50-d8_769x769_40k_cityscapes"  # published mIoU 78.44 (paper tolerance 1.0)


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    """A workspace with this checkout's params/, params.yaml and dvc.yaml."""
    shutil.copytree(REPO / "params", tmp_path / "params")
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    return Workspace(tmp_path)


def set_seeds(ws: Workspace, profile: str, blocks: list[dict]) -> None:
    profiles = yaml.safe_load(ws.profiles_file.read_text())
    profiles[profile]["seeds"] = blocks
    ws.profiles_file.write_text(yaml.safe_dump(profiles, sort_keys=False))


def test_committed_runs_file_is_the_smoke_profiles_and_current():
    ws = Workspace(REPO)
    assert read_params(ws).name == "smoke"
    plan = runs.check(ws, read_params(ws))  # raises when params/runs.yaml is stale
    assert [r.key for r in plan.values() if r.config == TWO] == [TWO, f"{TWO}-seed1"]
    assert [r.seed for r in plan.values() if r.config == TWO] == [0, 1]
    assert len(plan) == len(config_names(ws)) + 1  # one row has two seeds, the others one
    assert (ws.runs_file.read_text()) == runs.render(read_params(ws), plan)


def test_paper_and_published_train_one_seed_per_row_named_as_mmseg(ws: Workspace):
    for name in ("paper", "published"):
        plan = runs.plan(load_profile(name, ws), ws)
        assert list(plan) == list(config_names(ws))
        assert {r.seed for r in plan.values()} == {0}


def test_last_matching_block_wins_and_first_seed_keeps_the_config_name(ws: Workspace):
    set_seeds(
        ws, "paper", [{"match": "*", "seeds": [0, 1, 2]}, {"match": "*_ade20k", "seeds": [5]}]
    )
    plan = runs.plan(load_profile("paper", ws), ws)
    assert [k for k, r in plan.items() if r.config == ROW] == [ROW, f"{ROW}-seed1", f"{ROW}-seed2"]
    ade = [r for r in plan.values() if r.dataset == "ade20k"]
    assert [(r.key == r.config, r.seed) for r in ade] == [(True, 5)] * 4
    assert runs.config_of(f"{ROW}-seed2") == ROW and runs.config_of(ROW) == ROW
    assert runs.select(plan, [ROW, "dnl_r50-d8_512x512_80k_ade20k"]) == [
        ROW,
        f"{ROW}-seed1",
        f"{ROW}-seed2",
        "dnl_r50-d8_512x512_80k_ade20k",
    ]
    assert runs.select(plan, [f"{ROW}-seed2"]) == [f"{ROW}-seed2"]
    with pytest.raises(
        ConfigError, match=rf"unknown configuration\(s\) or run\(s\) \['x'\].*{ROW}"
    ):
        runs.select(plan, ["x"])


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ([{"match": "*", "seeds": []}], r"paper.seeds\[0\].seeds: list one or more"),
        ([{"match": "*", "seeds": [1, 1]}], r"distinct seeds, got \[1, 1\]"),
        ([{"match": "*", "seeds": [-1]}], r"seeds are >= 0"),
        ([{"match": "*", "seeds": [0], "n": 3}], r"unknown key 'seeds\[0\].n'"),
        ([{"match": "*", "seeds": "0"}], r"'seeds\[0\].seeds' must be a list"),
    ],
)
def test_bad_seed_settings_name_the_key(ws: Workspace, blocks, message):
    set_seeds(ws, "paper", blocks)
    with pytest.raises(ConfigError, match=message):
        load_profile("paper", ws)


def test_published_profile_refuses_more_than_one_seed(ws: Workspace):
    set_seeds(ws, "published", [{"match": "*", "seeds": [0, 1]}])
    with pytest.raises(ConfigError, match=r"does not train .* one run per row"):
        load_profile("published", ws)


def test_switch_writes_both_files_and_a_hand_edit_is_caught(ws: Workspace):
    comments = ws.params_yaml.read_text().splitlines()[:-1]
    plan = runs.switch(ws, "paper")
    assert ws.params_yaml.read_text().splitlines() == [*comments, "profile: paper"]
    assert runs.read(ws) == plan == runs.check(ws, read_params(ws))
    assert "dnlrepro profile paper" in ws.runs_file.read_text()
    # the documented mistake: params.yaml edited by hand, params/runs.yaml left behind
    ws.params_yaml.write_text(
        ws.params_yaml.read_text().replace("profile: paper", "profile: smoke")
    )
    with pytest.raises(ConfigError, match=rf"missing: \['{TWO}-seed1'\].*`dnlrepro profile smoke`"):
        runs.resolve(ws, read_params(ws), TWO)
    runs.switch(ws, "smoke")
    assert runs.resolve(ws, read_params(ws), f"{TWO}-seed1").seed == 1
    with pytest.raises(ConfigError, match=f"'nope' is not a run of profile 'smoke'; runs: {TWO}"):
        runs.resolve(ws, read_params(ws), "nope")
    before = (ws.params_yaml.read_bytes(), ws.runs_file.read_bytes())
    with pytest.raises(ConfigError, match="unknown profile 'papr'"):
        runs.switch(ws, "papr")
    assert (ws.params_yaml.read_bytes(), ws.runs_file.read_bytes()) == before  # nothing written
    registry = ws.registry_file.read_text()
    ws.registry_file.write_text(registry.replace("dataset: ade20k", "dataset: ade", 1))
    with pytest.raises(PublishedError, match=r"'configs.dnl_r50-d8_512x512_80k_ade20k.dataset'"):
        runs.switch(ws, "paper")  # a broken registry: neither file is touched
    assert (ws.params_yaml.read_bytes(), ws.runs_file.read_bytes()) == before
    ws.registry_file.write_text(registry)
    ws.runs_file.unlink()
    with pytest.raises(ConfigError, match=r"does not exist.*dnlrepro profile smoke"):
        runs.check(ws, read_params(ws))


def write_eval(results: Path, key: str, miou: float, ms: float, seed: int) -> None:
    (results / key).mkdir(parents=True, exist_ok=True)
    ss = {"mIoU": miou, "mAcc": miou + 5, "aAcc": 90.0}
    evaluation = {"single_scale": ss, "ms_flip": {"mIoU": ms, "mAcc": ms + 5, "aAcc": 91.0}}
    (results / key / "eval.json").write_text(json.dumps(evaluation))
    run = {"config": ROW, "seed": seed, "config_digest": "d" * 64}
    (results / key / "run.json").write_text(json.dumps(run))


def three_seeds(results: Path, mious: list[float]) -> list[tuple[str, int]]:
    keys = [(ROW, 0), (f"{ROW}-seed1", 1), (f"{ROW}-seed2", 2)]
    for (key, seed), miou in zip(keys, mious, strict=True):
        write_eval(results, key, miou, miou + 1.5, seed)
    return keys


def test_a_row_is_its_seeds_mean_with_spread(tmp_path: Path):
    results = tmp_path / "results"
    row = load_row(ROW, three_seeds(results, [77.0, 78.0, 79.5]), results)
    spread = row.spread["mIoU"]
    assert (spread.n, spread.seeds, spread.planned) == (3, (0, 1, 2), 3)
    assert row.metrics["mIoU"] == spread.mean == round(statistics.fmean([77.0, 78.0, 79.5]), 4)
    assert spread.std == round(statistics.stdev([77.0, 78.0, 79.5]), 4)
    assert row.metrics["mIoU_ms_flip"] == round(statistics.fmean([78.5, 79.5, 81.0]), 4)
    assert row.runs == (ROW, f"{ROW}-seed1", f"{ROW}-seed2")
    assert with_spread(row, "mIoU") == "78.17 ± 1.26 (n=3)"
    # one seed: the run's own number, no spread; a seed not evaluated yet is said so
    assert with_spread(load_row(ROW, [(ROW, 0)], results), "mIoU") == "77.00"
    keys = [*three_seeds(results, [77.0, 78.0, 79.5])[:2], ("gone", 2)]
    partial = load_row(ROW, keys, results)
    assert with_spread(partial, "mIoU") == "77.50 ± 0.71 (n=2) (2 of 3 seeds evaluated)"


def test_diff_judges_the_mean_within_max_tolerance_and_k_std(tmp_path: Path):
    published = load_published(REPO / "params" / "published.yaml")  # ROW: mIoU 78.44, tol 1.0
    results = tmp_path / "results"

    def verdict(mious: list[float]) -> dict:
        keys = three_seeds(results, mious)
        row = load_row(ROW, keys, results)
        per_run = {ROW: [load_measured(k, results) for k, _ in keys]}
        report = diff.build_diff([ROW], published, {ROW: row}, "paper", per_run=per_run)
        (out,) = [r for r in report["rows"] if r["metric"] == "mIoU"]
        return out

    # tight seeds: the tolerance (1.0) is the floor; mean 76.9 is 1.54 away -> fail
    tight = verdict([76.8, 76.9, 77.0])
    assert (tight["n"], tight["std"], tight["allowed"], tight["verdict"]) == (3, 0.1, 1.0, "fail")
    # spread seeds: 2 x std = 2.0 widens it; the same mean now passes
    wide = verdict([75.9, 76.9, 77.9])
    assert (wide["std"], wide["allowed"], wide["verdict"]) == (1.0, 2.0, "pass")
    assert wide["seeds"] == {"0": 75.9, "1": 76.9, "2": 77.9}
    assert wide["rule"] == seeds.SEED_RULE and "2 x std" in seeds.SEED_RULE
    assert seeds.tolerance_text(wide) == "±2.00 (max of ±1.00, 2 x std 1.00; n=3)"
    assert seeds.reproduced_text(wide).startswith("76.90 (mean; seed 0: 75.90, seed 1: 76.90")
    # a single seed keeps the plain rule
    one = load_row(ROW, [(ROW, 0)], results)
    report = diff.build_diff([ROW], published, {ROW: one}, "paper")
    (single,) = [r for r in report["rows"] if r["metric"] == "mIoU"]
    assert (single["n"], single["allowed"], single["rule"]) == (1, 1.0, "|delta| <= tolerance")
