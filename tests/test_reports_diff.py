"""Tolerance verdicts, the missing-entry error, the smoke baseline and the CI check."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pytest

from dnlrepro.core.registry import PublishedError, config_names, load_published
from dnlrepro.reports import check, diff
from dnlrepro.reports.outputs import ReportWriteError
from dnlrepro.reports.results import ResultsError, load_measured

NAME = "dnl_r50-d8_769x769_40k_cityscapes"  # published: mIoU 78.44, ms+flip 80.27
NAME_512 = "dnl_r50-d8_512x1024_80k_cityscapes"  # published: mIoU 79.33, ms+flip '-'
REPO = Path(__file__).resolve().parents[1]
HERE = {"cpu": "Test CPU", "isa": ["avx2"], "cpu_capability": "AVX2", "torch": "2", "threads": 2}
ELSEWHERE = {**HERE, "isa": ["avx512f", "avx2"], "cpu_capability": "AVX512"}


def write_results(
    root: Path,
    name: str,
    miou: float,
    ms: float | None,
    digest: str = "d" * 64,
    memory_kind: str = "cuda_max_memory_allocated",
    const: float | None = None,
    machine: dict | None = HERE,
) -> None:
    d, t = root / name, root.parent / "timings" / name  # root: a test's own results/
    d.mkdir(parents=True, exist_ok=True)
    t.mkdir(parents=True, exist_ok=True)
    block = {"mIoU": miou, "mAcc": miou + 5, "aAcc": 90.0}
    if const is not None:
        block["majority_baseline"] = {"class": "road", "mIoU": const, "mAcc": 5.0, "aAcc": 40.0}
    ms_block = None if ms is None else {"mIoU": ms, "mAcc": ms + 5, "aAcc": 91.0}
    (d / "eval.json").write_text(
        json.dumps(
            {
                "single_scale": block,
                "ms_flip": ms_block,
                "protocol": {
                    "split": "val",
                    "mode": "slide",
                    "world_size": 1,
                    "image_count": 500,
                    "machine": machine,
                },
            }
        )
    )
    summary = {
        "world_size": 1, "layout": "1x8", "global_batch": 8, "bn_group": 8, "machine": machine
    }  # fmt: skip
    (d / "train_summary.json").write_text(json.dumps(summary))
    (t / "train.json").write_text(json.dumps({"max_memory_gb": 9.0, "memory_kind": memory_kind}))
    (t / "benchmark.json").write_text(json.dumps({"fps": 1.4, "mem_gb": None, "device": "cuda"}))
    (d / "run.json").write_text(json.dumps({"config": name, "config_digest": digest}))


def rows_of(report: dict, name: str, reference: str = "published") -> dict[str, dict]:
    return {
        r["metric"]: r
        for r in report["rows"]
        if r["config"] == name and r["reference"] == reference
    }


@pytest.mark.parametrize(
    ("published", "reproduced", "tolerance", "expected"),
    [
        (78.44, 78.44, 0.5, ("pass", 0.0)),
        (78.44, 77.94, 0.5, ("pass", -0.5)),  # the boundary is inside
        (78.44, 78.95, 0.5, ("fail", 0.51)),
        (78.44, 77.43, 1.0, ("fail", -1.01)),
        (78.44, None, 0.5, ("missing", None)),
        (None, 78.0, 0.5, ("not comparable", None)),  # README '-'
        (7.3, 9.0, None, ("not comparable", None)),  # hardware-dependent
    ],
)
def test_verdict(published, reproduced, tolerance, expected):
    assert diff.verdict(published, reproduced, tolerance) == expected


def test_paper_profile_verdicts_and_tolerances(tmp_path: Path):
    write_results(
        tmp_path / "results", NAME, miou=77.60, ms=80.90
    )  # -0.84 (40k: ±1.0), +0.63 (±1.0)
    write_results(
        tmp_path / "results", NAME_512, miou=78.70, ms=80.0
    )  # -0.63 with the default ±0.5
    names = [NAME, NAME_512]
    report = diff.build_diff(
        names, load_published(), {n: load_measured(n, tmp_path / "results") for n in names}, "paper"
    )
    r = rows_of(report, NAME)
    assert (r["mIoU"]["verdict"], r["mIoU"]["tolerance"], r["mIoU"]["delta"]) == (
        "pass",
        1.0,
        -0.84,
    )
    assert "run to run" in r["mIoU"]["tolerance_reason"]
    assert r["mIoU_ms_flip"]["verdict"] == "pass"
    assert r["mem_gb"]["verdict"] == r["fps"]["verdict"] == "not comparable"
    r512 = rows_of(report, NAME_512)
    assert (r512["mIoU"]["verdict"], r512["mIoU"]["tolerance"]) == ("fail", 0.5)
    assert r512["mIoU_ms_flip"]["verdict"] == "not comparable"
    assert "'-'" in r512["mIoU_ms_flip"]["note"]  # the README '-' is said, not hidden
    assert report["summary"]["fail"] == 1
    # published profile: the same checkpoint-level numbers keep the 0.5 default
    report = diff.build_diff(
        [NAME], load_published(), {NAME: load_measured(NAME, tmp_path / "results")}, "published"
    )
    assert rows_of(report, NAME)["mIoU"]["verdict"] == "fail"
    assert report["protocols"][NAME]["published"]["batch"] == 8
    assert report["protocols"][NAME]["ours"]["train.layout"] == "1x8"
    # one GPU x 8 images: the published 4 x 2 protocol (global batch 8, BN group 8)
    assert report["protocols"][NAME]["match"].startswith("same protocol as published")
    assert rows_of(report, NAME)["mIoU"]["protocol"] == "same"


def test_a_layout_that_changes_the_protocol_is_labelled_next_to_its_verdict(tmp_path: Path):
    write_results(tmp_path / "results", NAME, miou=78.61, ms=None)
    path = tmp_path / "results" / NAME / "train_summary.json"
    train = json.loads(path.read_text())
    path.write_text(json.dumps({**train, "layout": "1x2", "global_batch": 2, "bn_group": 2}))
    report = diff.build_diff(
        [NAME], load_published(), {NAME: load_measured(NAME, tmp_path / "results")}, "paper"
    )
    row = rows_of(report, NAME)["mIoU"]
    assert (row["verdict"], row["protocol"]) == ("pass", "different")
    assert "different protocol: global batch 2, BN group 2" in report["protocols"][NAME]["match"]
    markdown = diff.render_markdown(report)
    assert "| pass (different protocol) |" in markdown


def test_missing_results_are_missing_not_skipped(tmp_path: Path):
    report = diff.build_diff(
        [NAME], load_published(), {NAME: load_measured(NAME, tmp_path / "results")}, "paper"
    )
    assert rows_of(report, NAME)["mIoU"]["verdict"] == "missing"


def test_missing_published_entry_is_an_error(tmp_path: Path):
    published = load_published()
    del published.configs[NAME]
    with pytest.raises(PublishedError, match=f"no published entry for configuration '{NAME}'"):
        diff.build_diff(
            [NAME], published, {NAME: load_measured(NAME, tmp_path / "results")}, "paper"
        )


def test_published_file_without_a_config_is_an_error(tmp_path: Path):
    text = (Path(load_published().path)).read_text()
    start = text.index(f"  {NAME}:")
    end = text.index("  dnl_r101-d8_769x769_40k_cityscapes:")
    path = tmp_path / "published.yaml"
    path.write_text(text[:start] + text[end:])
    args = argparse.Namespace(
        results=str(tmp_path / "results"),
        published=str(path),
        baseline="none",
        out=str(tmp_path / "out"),
        profile="paper",
        configs=list(config_names()),
        update_baseline=False,
    )
    with pytest.raises(PublishedError, match=NAME):
        diff.main(args)


def test_null_published_number_needs_a_note(tmp_path: Path):
    text = load_published().path.read_text().replace("mIoU: 78.44", "mIoU: null", 1)
    path = tmp_path / "published.yaml"
    path.write_text(text)
    with pytest.raises(PublishedError, match=f"configs.{NAME}.notes.mIoU"):
        load_published(path)


def test_smoke_baseline_round_trip_and_staleness(tmp_path: Path):
    results, baseline = tmp_path / "results", tmp_path / "baseline.json"
    write_results(results, NAME, miou=3.21, ms=4.56)
    measured = {NAME: load_measured(NAME, results)}
    diff.update_baseline([measured[NAME]], baseline)
    report = diff.build_diff(
        [NAME], load_published(), measured, "smoke", diff.load_baseline(baseline)
    )
    base = rows_of(report, NAME, "smoke baseline")
    assert {r["verdict"] for r in base.values()} == {"pass"}
    assert {r["verdict"] for r in rows_of(report, NAME).values()} == {"not comparable"}
    # a regression beyond the smoke tolerance fails
    write_results(results, NAME, miou=3.50, ms=4.56)
    measured = {NAME: load_measured(NAME, results)}
    report = diff.build_diff(
        [NAME], load_published(), measured, "smoke", diff.load_baseline(baseline)
    )
    assert rows_of(report, NAME, "smoke baseline")["mIoU"]["verdict"] == "fail"
    # results of another resolved config: the baseline is stale, which fails loudly
    write_results(results, NAME, miou=3.21, ms=4.56, digest="e" * 64)
    measured = {NAME: load_measured(NAME, results)}
    report = diff.build_diff(
        [NAME], load_published(), measured, "smoke", diff.load_baseline(baseline)
    )
    row = rows_of(report, NAME, "smoke baseline")["mIoU"]
    assert row["verdict"] == "fail" and "stale baseline" in row["note"]
    # no baseline at all: missing, with the command that fixes it
    report = diff.build_diff([NAME], load_published(), measured, "smoke", None)
    row = rows_of(report, NAME, "smoke baseline")["mIoU"]
    assert row["verdict"] == "missing" and "--update-baseline" in row["note"]


def test_update_baseline_refuses_missing_results(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=NAME):
        diff.update_baseline([load_measured(NAME, tmp_path / "results")], tmp_path / "b.json")


def test_cpu_memory_is_not_reported_as_mmseg_mem(tmp_path: Path):
    write_results(tmp_path / "results", NAME, 1.0, 1.0, memory_kind="cpu_max_rss")
    assert load_measured(NAME, tmp_path / "results").metrics["mem_gb"] is None


def test_malformed_results_name_the_file(tmp_path: Path):
    (tmp_path / "results" / NAME).mkdir(parents=True)
    (tmp_path / "results" / NAME / "eval.json").write_text("{not json")
    with pytest.raises(ResultsError, match=r"eval\.json"):
        load_measured(NAME, tmp_path / "results")


def test_malformed_memory_names_the_timing_file(tmp_path: Path):
    """Mem comes from timings/<run>/train.json: a bad value there is reported there."""
    (tmp_path / "results" / NAME).mkdir(parents=True)
    (tmp_path / "results" / NAME / "train_summary.json").write_text("{}")
    timing = tmp_path / "timings" / NAME / "train.json"
    timing.parent.mkdir(parents=True)
    timing.write_text(
        json.dumps({"max_memory_gb": "3 GB", "memory_kind": "cuda_max_memory_allocated"})
    )
    with pytest.raises(ResultsError, match=r"timings/.*/train\.json: key 'max_memory_gb'"):
        load_measured(NAME, tmp_path / "results")


def run_check(path: Path, allow_missing: bool = False) -> int:
    return check.main(argparse.Namespace(report=str(path), allow_missing=allow_missing))


def save(path: Path, report: dict) -> Path:
    """Write ``report`` with its summary recounted, as ``dnlrepro diff`` would."""
    summary = {v: sum(r["verdict"] == v for r in report["rows"]) for v in diff.VERDICTS}
    path.write_text(json.dumps({**report, "summary": summary}))
    return path


COMMITTED = Path(__file__).resolve().parents[1] / "reports" / "diff.json"
SEEDED = "dnl_r50-d8_512x1024_40k_cityscapes"  # the smoke profile trains it with seeds 0 and 1


@pytest.fixture(scope="module")
def paper_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A paper-profile diff of every registry row, each reproducing its published numbers."""
    results = tmp_path_factory.mktemp("paper") / "results"
    published = load_published()
    for name, entry in published.configs.items():
        write_results(results, name, entry.metrics["mIoU"], entry.metrics["mIoU_ms_flip"])
    names = list(published.configs)
    measured = {n: load_measured(n, results) for n in names}
    return diff.build_diff(names, published, measured, "paper")


def test_check_passes_the_committed_smoke_report(capsys):
    assert run_check(COMMITTED) == 0, capsys.readouterr().out


def test_check_fails_rows_absent_from_the_report(tmp_path: Path, capsys):
    """Every registry row and every judged metric must be in the report; failures name runs."""
    report = json.loads(COMMITTED.read_text())
    without = [r for r in report["rows"] if r["config"] != SEEDED]
    path = save(tmp_path / "diff.json", {**report, "rows": without})
    assert run_check(path) == 1
    out = capsys.readouterr().out
    assert f"MISSING: {SEEDED} seeds 0, 1 mIoU vs published: absent from the report" in out
    assert f"MISSING: {SEEDED} seed 1 (run {SEEDED}-seed1) aAcc vs smoke baseline: absent" in out
    assert "13 expected row(s) absent" in out
    assert run_check(path, allow_missing=True) == 0
    one_less = [r for r in report["rows"] if (r["config"], r["metric"]) != (NAME, "fps")]
    assert run_check(save(path, {**report, "rows": one_less})) == 1
    assert f"MISSING: {NAME} seed 0 fps vs published" in capsys.readouterr().out


@pytest.mark.parametrize("profile", ["paper", "published"])
def test_check_judges_paper_and_published_against_the_registry(
    profile: str, paper_report: dict, tmp_path: Path, capsys
):
    report = {**paper_report, "profile": profile}
    assert run_check(save(tmp_path / "diff.json", report)) == 0
    rows = [dict(r) for r in report["rows"]]
    (row,) = [r for r in rows if (r["config"], r["metric"]) == (NAME, "mIoU")]
    row.update(verdict="fail", reproduced=70.0, delta=-8.44)
    assert run_check(save(tmp_path / "diff.json", {**report, "rows": rows})) == 1
    assert f"FAIL: {NAME} seed 0 mIoU vs published: reference 78.44" in capsys.readouterr().out
    row.update(verdict="missing", reproduced=None, delta=None)
    assert run_check(save(tmp_path / "diff.json", {**report, "rows": rows})) == 1
    assert run_check(tmp_path / "diff.json", allow_missing=True) == 0
    # a published number with a tolerance left 'not comparable' is no pass
    row.update(verdict="not comparable")
    assert run_check(save(tmp_path / "diff.json", {**report, "rows": rows})) == 1
    assert f"NOT JUDGED: {NAME} seed 0 mIoU vs published" in capsys.readouterr().out


def without_metric(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "metric"}


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda r: {"rows": [], "summary": {}}, "rows"),
        (lambda r: {**r, "rows": []}, "rows"),
        (lambda r: [r], "not a diff report"),
        (lambda r: {**r, "profile": "fast"}, "profile"),
        (lambda r: {**r, "summary": []}, "summary"),
        (lambda r: {**r, "summary": {**r["summary"], "pass": 0}}, "summary"),
        (lambda r: {**r, "rows": [{"verdict": "pass"}, *r["rows"][1:]]}, r"rows\[0\]\.config"),
        (lambda r: {**r, "rows": [without_metric(x) for x in r["rows"]]}, r"rows\[0\]\.metric"),
        (lambda r: {**r, "rows": [{**r["rows"][0], "verdict": "maybe"}]}, r"rows\[0\]"),
        (lambda r: {**r, "rows": [{**r["rows"][0], "config": 7}]}, r"rows\[0\]\.config"),
        (lambda r: {**r, "rows": ["pass"]}, r"rows\[0\]"),
    ],
)
def test_check_malformed_reports_are_errors_naming_file_and_key(tmp_path: Path, edit, key):
    path = tmp_path / "diff.json"
    path.write_text(json.dumps(edit(json.loads(COMMITTED.read_text()))))
    with pytest.raises(check.ReportError, match=key) as err:
        run_check(path)
    assert str(path) in str(err.value)


def test_check_refuses_a_stale_report_and_an_absent_file(tmp_path: Path):
    report = json.loads(COMMITTED.read_text())
    report["rows"][0] = {**report["rows"][0], "config": "dnl_r18-d8_512x1024_40k_cityscapes"}
    with pytest.raises(check.ReportError, match="not in the registry"):
        run_check(save(tmp_path / "diff.json", report))
    with pytest.raises(FileNotFoundError, match="dvc repro diff"):
        run_check(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("miou", "const", "expected"),
    [(5.0, 2.5, "pass"), (4.99, 2.5, "fail"), (0.0, 2.5, "fail"), (5.0, None, "missing")],
)
def test_smoke_fails_a_row_that_did_not_learn(tmp_path: Path, miou, const, expected):
    """A constant prediction (a broken data/loss/inference path) fails whatever was recorded."""
    results = tmp_path / "results"
    write_results(results, NAME, miou=miou, ms=miou, const=const)
    measured = {NAME: load_measured(NAME, results)}
    report = diff.build_diff([NAME], load_published(), measured, "smoke", learned_factor=2.0)
    (row,) = [r for r in report["rows"] if r["reference"] == "2 x majority baseline"]
    assert row["verdict"] == expected
    if const is not None:
        assert row["published"] == 2 * const and f"{const:.2f}" in row["note"]


def test_slide_rows_name_the_small_window_mode_that_reproduces(tmp_path: Path):
    """769 rows evaluated both ways (§5.2): the alt row and the 'reproduced by' note."""
    results = tmp_path / "results"
    published = load_published().entry(NAME).metrics["mIoU_ms_flip"]
    write_results(results, NAME, miou=77.60, ms=published - 3.0)
    payload_path = results / NAME / "eval.json"
    payload = json.loads(payload_path.read_text())
    payload["ms_flip_alt"] = {"small_window": "pad", "mIoU": published + 0.2}
    payload["protocol"]["small_window"] = "unpadded"
    payload_path.write_text(json.dumps(payload))
    report = diff.build_diff(
        [NAME], load_published(), {NAME: load_measured(NAME, results)}, "paper"
    )
    rows = rows_of(report, NAME)
    assert rows["mIoU_ms_flip"]["verdict"] == "fail"
    assert rows["mIoU_ms_flip_alt"]["verdict"] == "pass"
    assert "'pad'" in rows["mIoU_ms_flip_alt"]["note"]
    assert rows["mIoU_ms_flip"]["note"].endswith("reproduced by: 'pad'")


def test_no_learned_check_without_the_profile_setting(tmp_path: Path):
    results = tmp_path / "results"
    write_results(results, NAME, miou=0.5, ms=0.5, const=2.5)
    report = diff.build_diff(
        [NAME], load_published(), {NAME: load_measured(NAME, results)}, "smoke"
    )
    assert not [r for r in report["rows"] if "majority" in r["reference"]]


SEED1 = f"{NAME}-seed1"


def record_two_seeds(tmp_path: Path) -> Path:
    """A baseline made on HERE: two seeds of NAME, 6.59 and 10.26 mIoU (std 2.60: band 7.79)."""
    results, baseline = tmp_path / "results", tmp_path / "baseline.json"
    write_results(results, NAME, miou=6.59, ms=5.5, const=1.0)
    write_results(results, SEED1, miou=10.26, ms=10.78, const=1.0)
    runs = [load_measured(NAME, results), load_measured(SEED1, results)]
    diff.update_baseline(runs, baseline, {NAME: [NAME, SEED1]})
    return baseline


def judge(tmp_path: Path, baseline: Path, miou: float, machine: dict | None, const: float = 1.0):
    """The smoke diff of NAME's first seed with ``miou``, trained and evaluated on ``machine``."""
    write_results(tmp_path / "results", NAME, miou=miou, ms=5.5, const=const, machine=machine)
    meas = load_measured(NAME, tmp_path / "results")
    groups = {NAME: [NAME, SEED1]}
    report = diff.build_diff(
        [NAME], load_published(), {NAME: meas}, "smoke", diff.load_baseline(baseline, groups), 2.0
    )
    base = rows_of(report, NAME, "smoke baseline")["mIoU"]
    return base, rows_of(report, NAME, "2 x majority baseline")["mIoU"], report


def test_baseline_records_the_machine_and_the_seed_spread(tmp_path: Path):
    data = json.loads(record_two_seeds(tmp_path).read_text())
    assert data["machine"] == HERE
    spread = data["other_machine"]
    assert spread["rows"] == {NAME: [NAME, SEED1]} and (spread["k"], spread["floor"]) == (3.0, 1.0)
    assert spread["metrics"]["mIoU"] == {"std": 2.5951, "band": 7.79}  # 3 x stdev(6.59, 10.26)
    assert spread["metrics"]["aAcc"]["band"] == 1.0  # equal seeds: the floor
    assert "max(1, 3 x std)" in spread["rule"]


def test_same_machine_keeps_the_exact_band(tmp_path: Path):
    baseline = record_two_seeds(tmp_path)
    row, _, _ = judge(tmp_path, baseline, 6.59, HERE)
    assert (row["verdict"], row["rule"], row["tolerance"]) == (
        "pass", "same machine: exact band ±0.1", 0.1
    )  # fmt: skip
    row, _, _ = judge(tmp_path, baseline, 6.80, HERE)
    assert row["verdict"] == "fail" and row["delta"] == 0.21


def test_other_machine_passes_within_the_seed_spread_and_names_the_rule(tmp_path: Path):
    baseline = record_two_seeds(tmp_path)
    row, learned, report = judge(tmp_path, baseline, 9.0, ELSEWHERE)  # +2.41: chaos, not a bug
    assert row["verdict"] == "pass" and learned["verdict"] == "pass"
    assert row["rule"] == (
        "other machine: learned (mIoU >= 2x majority baseline) and within ±7.79 of the "
        "baseline (seed spread)"
    )
    assert row["tolerance"] == 7.79 and "3 x std" in row["tolerance_reason"]
    assert "| other machine: learned (mIoU >= 2x" in diff.render_markdown(report)
    row, _, _ = judge(tmp_path, baseline, 15.0, ELSEWHERE)  # +8.41: beyond the spread
    assert row["verdict"] == "fail"
    # a run that records no machine (older code): the same rule, said so
    row, _, _ = judge(tmp_path, baseline, 9.0, None)
    assert row["verdict"] == "pass" and row["rule"].startswith("machine unknown (the run")


@pytest.mark.parametrize("machine", [HERE, ELSEWHERE, None])
def test_a_row_that_did_not_learn_fails_on_any_machine(tmp_path: Path, machine):
    baseline = record_two_seeds(tmp_path)
    # mIoU 6.59 as recorded, but the majority class alone scores 4.0: 6.59 < 2 x 4.0
    row, learned, _ = judge(tmp_path, baseline, 6.59, machine, const=4.0)
    assert learned["verdict"] == "fail" and learned["rule"].startswith("any machine")
    if machine is not HERE:
        assert row["verdict"] == "fail" and "did not learn" in row["note"]


def test_baseline_without_a_machine_uses_the_other_machine_rule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """params/smoke_baseline.json as committed before the fingerprint: machine unknown, and the
    band derived from its two recorded seeds."""
    old = json.loads((REPO / "params" / "smoke_baseline.json").read_text())
    for key in ("machine", "other_machine"):  # the older format, whatever is committed now
        old.pop(key, None)
    old["configs"][NAME] = {**old["configs"][NAME], "config_digest": "d" * 64}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    first = "dnl_r50-d8_512x1024_40k_cityscapes"
    seeds = [old["configs"][r]["mIoU"] for r in (first, f"{first}-seed1")]
    with caplog.at_level("WARNING"):
        loaded = diff.load_baseline(path, {first: [first, f"{first}-seed1"]})
    assert "records no machine" in caplog.text and loaded["machine"] is None
    band = round(max(1.0, 3 * statistics.stdev(seeds)), 2)
    assert loaded["other_machine"]["metrics"]["mIoU"]["band"] == band
    recorded = old["configs"][NAME]["mIoU"]
    write_results(tmp_path / "results", NAME, miou=recorded + band - 0.01, ms=1.0, const=1.0)
    meas = load_measured(NAME, tmp_path / "results")
    row = diff.baseline_rows(NAME, loaded, meas, "d" * 64, factor=2.0)[0]
    assert row["verdict"] == "pass"
    assert row["rule"].startswith("machine unknown (the baseline records none): learned")


def test_recording_refuses_runs_without_or_with_different_machines(tmp_path: Path):
    results = tmp_path / "results"
    write_results(results, NAME, miou=6.0, ms=5.0, machine=None)
    with pytest.raises(FileNotFoundError, match=f"results/{NAME}/train_summary.json records no"):
        diff.update_baseline([load_measured(NAME, results)], tmp_path / "b.json")
    write_results(results, NAME, miou=6.0, ms=5.0)
    write_results(results, SEED1, miou=6.0, ms=5.0, machine=ELSEWHERE)
    runs = [load_measured(NAME, results), load_measured(SEED1, results)]
    with pytest.raises(ValueError, match="made on 2 machines"):
        diff.update_baseline(runs, tmp_path / "b.json")


def test_diff_is_written_as_a_set(tmp_path: Path):
    """diff.md that cannot be written (a folder in its place): diff.json keeps its old bytes."""
    write_results(tmp_path / "results", NAME, miou=78.0, ms=80.0)
    report = diff.build_diff(
        [NAME], load_published(), {NAME: load_measured(NAME, tmp_path / "results")}, "paper"
    )
    out = tmp_path / "reports"
    out.mkdir()
    (out / "diff.json").write_text("previous\n")
    (out / "diff.md").mkdir()
    with pytest.raises(ReportWriteError, match=r"diff\.md"):
        diff.write_diff(report, out)
    assert (out / "diff.json").read_text() == "previous\n"
    assert sorted(p.name for p in out.iterdir()) == ["diff.json", "diff.md"]
