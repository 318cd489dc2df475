"""``dnlrepro report``: the static HTML page (rows, verdict colours, plots, errors, determinism),
and the page in a real headless browser (Debian's chromium + chromedriver through selenium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dnlrepro import cli
from dnlrepro.core import workspace
from dnlrepro.core.profile import load_profile
from dnlrepro.core.registry import load_published, names_of
from dnlrepro.core.runs import plan
from dnlrepro.reports import charts, diff, html
from dnlrepro.reports.outputs import ReportWriteError

REPO = Path(__file__).resolve().parents[1]
CITYSCAPES, ADE20K = names_of("cityscapes"), names_of("ade20k")
CS, ADE = CITYSCAPES[2], ADE20K[0]  # a slide (769x769) row and a whole-image row
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # without these, chromium's own connections are refused on a closed network and logged
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture()
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> workspace.Workspace:
    """A workspace with the repository's params but no results and no reports yet."""
    root = tmp_path / "ws"
    shutil.copytree(REPO / "params", root / "params")
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy2(REPO / name, root / name)
    (root / "results").mkdir()
    (root / "reports").mkdir()
    monkeypatch.setenv(workspace.ENV_VAR, str(root))  # restored after the test
    return workspace.find()


def write_metrics(ws: workspace.Workspace, name: str, miou: float, ms: float | None) -> None:
    folder = ws.results / name
    folder.mkdir(parents=True, exist_ok=True)
    protocol = {"mode": "slide", "crop_size": [65, 65], "stride": [43, 43], "img_scale": [129, 65]}
    protocol |= {"split": "val", "image_count": 2, "scales": [0.5, 1.0], "flip": True}
    payload = {
        "single_scale": {"mIoU": miou, "mAcc": 10.0, "aAcc": 20.0},
        "ms_flip": None if ms is None else {"mIoU": ms, "mAcc": 10.0, "aAcc": 20.0},
        "protocol": protocol,
    }
    (folder / "eval.json").write_text(json.dumps(payload), encoding="utf-8")
    timings = ws.timings / name
    timings.mkdir(parents=True, exist_ok=True)
    (timings / "benchmark.json").write_text(json.dumps({"fps": 1.25, "device": "cpu"}))


def write_csv(path: Path, header: str, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join((header, *lines)) + "\n", encoding="utf-8")
    return path


def write_plots(ws: workspace.Workspace, name: str) -> None:
    folder = ws.results / name
    write_csv(folder / "train_curve.csv", "iter,loss,lr", "1,3.5,0.01", "2,3.1,0.005", "3,2.9,")
    write_csv(folder / "val_curve.csv", "iter,mIoU", "2,10.5", "3,")
    write_csv(folder / "per_class.csv", "class,IoU,IoU_ms_flip", "road,50.0,52.5", "zebra class,,")


def table_rows(page: str, dataset: str) -> list[str]:
    table = re.search(rf'<table class="results" id="table-{dataset}">(.*?)</table>', page, re.S)
    assert table, f"no table for {dataset}"
    body = re.search(r"<tbody>(.*?)</tbody>", table.group(1), re.S).group(1)
    return re.findall(r'<tr class="row" id="row-([^"]+)">', body)


def render(ws: workspace.Workspace, profile: str = "paper") -> str:
    return html.render_page(ws, load_profile(profile, ws), ws.reports / "index.html")


def test_tables_have_every_registry_row_in_readme_order(ws):
    page = render(ws, "smoke")
    assert table_rows(page, "cityscapes") == list(CITYSCAPES) and len(CITYSCAPES) == 8
    assert table_rows(page, "ade20k") == list(ADE20K) and len(ADE20K) == 4
    assert "Smoke profile: synthetic data" in page  # the header says what the numbers are
    assert "No reports/diff.json yet" in page


def test_numbers_sit_next_to_the_published_ones_with_their_protocol(ws):
    write_metrics(ws, CS, 12.345, 13.5)
    page = render(ws)
    row = re.search(rf'<tr class="row" id="row-{CS}">(.*?)</tr>', page, re.S).group(1)
    cells = re.findall(r'<td class="num (pub|ours)[^"]*" title="([^"]*)">([^<]*)', row)
    shown = [(kind, text) for kind, _, text in cells]
    published = load_published(ws.registry_file).entry(CS).metrics
    assert shown[:4] == [
        ("pub", f"{published['mIoU']:.2f}"),
        ("ours", "12.35"),  # rounded as the tables round
        ("pub", f"{published['mIoU_ms_flip']:.2f}"),
        ("ours", "13.50"),
    ]
    titles = [title for _, title, _ in cells]
    assert "Single-scale mIoU" in titles[0] and "slide 769x769" in titles[0]
    assert titles[1].startswith("single scale; test slide 65x65, stride 43x43 @ 129x65")
    assert "ms+flip: ratios [0.5, 1.0], flip True" in titles[3]
    assert "not benchmarked" not in titles[7] and "cpu" in titles[7]  # our fps: where measured
    # Mem and fps say where they were measured, or why there is no number, in the cell itself
    machines = re.findall(r'<div class="machine">([^<]*)</div>', row)
    assert shown[5] == ("ours", "-") and machines[0] == "not trained yet"  # Mem
    assert shown[7] == ("ours", "-") and machines[1] == "CPU run: not comparable"
    assert f"not the V100 figure (timings/{CS}/speed.json)" in titles[7]
    protocol = re.search(rf'<tr class="protocol" id="protocol-{CS}">(.*?)</tr>', page, re.S)
    assert "slide 65x65" in protocol.group(1)  # under the row, not a column of its own


def test_verdicts_are_coloured_by_class(ws):
    entry = load_published(ws.registry_file).entry(CS)
    write_metrics(ws, CS, entry.metrics["mIoU"], entry.metrics["mIoU_ms_flip"] + 5.0)
    diff.run(ws, "paper")  # the real diff: pass, fail, missing and not comparable rows
    page = render(ws)
    row = re.search(rf'<tr class="row" id="row-{CS}">(.*?)</tr>', page, re.S).group(1)
    ours = re.findall(r'<td class="num ours([^"]*)"', row)
    assert [c.strip() for c in ours] == [
        "verdict v-pass",
        "verdict v-fail",
        "verdict v-not-comparable",  # Mem: hardware-dependent
        "verdict v-not-comparable",
    ]
    diff_rows = re.search(r'<table id="diff">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    verdicts = re.findall(r'<td class="verdict v-([a-z-]+)">([a-z ]+)</td>', diff_rows)
    assert {v for v, _ in verdicts} == {"pass", "fail", "missing", "not-comparable"}
    assert all(slug == text.replace(" ", "-") for slug, text in verdicts)
    assert len(verdicts) == len(json.loads((ws.reports / "diff.json").read_text())["rows"])
    assert "<td>|delta| &lt;= tolerance</td>" in diff_rows  # each row names its rule


def test_smoke_rows_name_the_machine_rule(ws):
    rule = "other machine: learned (mIoU >= 2x majority baseline) and within ±7.79 of the baseline"
    row = {"config": CS, "run": CS, "metric": "mIoU", "reference": "smoke baseline",
           "published": 6.59, "reproduced": 9.0, "delta": 2.41, "tolerance": 7.79,
           "rule": rule, "verdict": "pass", "note": ""}  # fmt: skip
    diff_json = {"profile": "smoke", "reference": "smoke baseline", "rows": [row]}
    (ws.reports / "diff.json").write_text(json.dumps(diff_json), encoding="utf-8")
    page = render(ws, "smoke")
    assert f"<td>{rule.replace('>', '&gt;')}</td>" in page  # autoescaped


def test_missing_csv_files_are_a_note_not_an_error(ws):
    write_metrics(ws, CS, 1.0, None)
    page = render(ws)
    assert f"not measured yet (no results/{CS}/train_curve.csv)" in page
    assert f"not measured yet (no results/{ADE}/per_class.csv)" in page
    assert "reports/published_vs_reproduced.csv: not written yet" in page
    assert "<svg" not in page


def test_csv_files_become_inline_svg_plots(ws):
    write_metrics(ws, CS, 1.0, None)
    write_plots(ws, CS)
    write_csv(
        ws.reports / "published_vs_reproduced.csv",
        "config,dataset,metric,published,reproduced",
        f"{CS},cityscapes,mIoU,78.44,1.0",
        f"{ADE},ade20k,mIoU,41.76,",
    )
    page = render(ws)
    details = re.search(rf'<details id="details-{CS}" open>(.*?)</details>', page, re.S).group(1)
    assert details.count("<svg") == 3 and "not measured yet" not in details
    assert "zebra class" in details and ">n/a<" in details  # text stays text (fonttype none)
    assert re.search(r'<section id="comparison">.*?<svg', page, re.S)
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page


def test_every_seed_of_a_row_has_its_plots(ws):
    runs = [r for r in plan(load_profile("smoke", ws), ws).values() if r.config == CITYSCAPES[0]]
    assert [r.seed for r in runs] == [0, 1]  # the smoke profile's two-seed row
    for run in runs:
        write_plots(ws, run.key)
    page = render(ws, "smoke")
    details = re.search(rf'<details id="details-{runs[0].config}" open>(.*?)</details>', page, re.S)
    assert details.group(1).count("<svg") == 6
    for title in ("training curve", "validation curve", "per-class IoU"):
        for seed in (0, 1):
            assert f"<figcaption>{title}, seed {seed}</figcaption>" in details.group(1)


@pytest.mark.parametrize(
    ("filename", "text", "message"),
    [
        ("train_curve.csv", "iter,loss\n1,2.0\n", "missing column(s) lr"),
        ("val_curve.csv", "iter,mIoU\n1,abc\n", "line 2, column 'mIoU': 'abc' is not a number"),
        ("per_class.csv", "class,IoU,IoU_ms_flip\nroad,1,2,3\n", "line 2 does not have as many"),
        ("per_class.csv", "class,IoU,IoU_ms_flip\n,1,2\n", "line 2, column 'class' is empty"),
        ("train_curve.csv", "", "missing column(s) iter, loss, lr"),
    ],
)
def test_malformed_csv_is_an_error_naming_the_file(ws, filename, text, message):
    path = ws.results / CS / filename
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(charts.CsvError) as err:
        render(ws)
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"config": "x"}], "expected a mapping with 'rows'"),
        (
            [{"config": "x", "metric": "mIoU", "reference": "p", "verdict": "pass", "delta": "1"}],
            "'rows[0].delta' must be a number or null, got '1'",
        ),
    ],
)
def test_cli_reports_a_malformed_diff_in_one_line(ws, capsys, rows, message):
    (ws.reports / "diff.json").write_text(json.dumps({"rows": rows}), encoding="utf-8")
    assert cli.main(["report"]) == 1
    err = capsys.readouterr().err
    assert f"dnlrepro report: error: {ws.reports / 'diff.json'}: {message}" in err
    assert not (ws.reports / "index.html").exists()


def test_page_that_cannot_be_written_leaves_no_temporary(ws):
    (ws.reports / "index.html").mkdir()  # a folder in its place: fails for root too
    with pytest.raises(ReportWriteError, match=r"index\.html"):
        html.write_report(profile=load_profile("paper", ws))
    assert [p.name for p in ws.reports.iterdir()] == ["index.html"]


def test_page_is_byte_identical_and_self_contained(ws):
    write_metrics(ws, CS, 1.0, 2.0)
    write_plots(ws, CS)
    write_plots(ws, ADE)
    diff.run(ws, "paper")
    out = ws.reports / "index.html"
    assert cli.main(["report"]) == 0
    first = out.read_bytes()
    assert cli.main(["report", "--out", str(out)]) == 0
    assert out.read_bytes() == first  # same inputs, same bytes (no date, fixed svg ids)
    # a CPU fps is machine-dependent (timings/): another measurement leaves the page unchanged
    (ws.timings / CS / "benchmark.json").write_text(json.dumps({"fps": 9.75, "device": "cpu"}))
    assert cli.main(["report", "--out", str(out)]) == 0
    assert out.read_bytes() == first
    page = first.decode("utf-8")
    assert "<metadata" not in page and "<script" not in page.lower()
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "duplicate element ids (svg.hashsalt must differ per plot)"
    links = re.findall(r'(?:href|src)="([^"]*)"', page) + re.findall(r"url\(([^)]*)\)", page)
    external = [u for u in links if re.match(r"[a-z]+:", u) and not u.startswith("data:")]
    assert not external, f"the page must load offline; it links {external}"
    assert not list(out.parent.glob(".index.html.*.tmp"))  # written through a temporary file


# ---------------------------------------------------------------------------- the real browser


def browser_or_skip():
    """selenium's webdriver module, or skip (a failure when DNLREPRO_REQUIRE_BROWSER=1, as CI)."""
    reasons = [f"{p} is missing" for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
        reasons.append("selenium is not installed (pip install -e '.[dev]')")
    if reasons:
        why = "; ".join(reasons) + " (apt-get install chromium chromium-driver)"
        if os.environ.get("DNLREPRO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DNLREPRO_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    return webdriver


def test_missing_browser_skips_but_fails_when_required(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.delenv("DNLREPRO_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="/nonexistent/chromium is missing"):
        browser_or_skip()
    monkeypatch.setenv("DNLREPRO_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="DNLREPRO_REQUIRE_BROWSER=1 but"):
        browser_or_skip()


@pytest.mark.slow
def test_committed_reports_load_in_headless_chromium(tmp_path, monkeypatch):
    webdriver = browser_or_skip()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    root = tmp_path / "ws"  # the repository's committed results, rendered in a copy
    for name in ("results", "reports", "params"):
        shutil.copytree(REPO / name, root / name)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy2(REPO / name, root / name)
    monkeypatch.setenv(workspace.ENV_VAR, str(root))
    assert cli.main(["report"]) == 0
    page = root / "reports" / "index.html"

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    user_dir = f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"
    for flag in (*BROWSER_FLAGS, user_dir, "--window-size=1400,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    start = time.monotonic()
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(page.as_uri())
        assert driver.title.startswith("DNLNet reproduction")
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, f"console errors: {severe}"
        for dataset, count in (("cityscapes", 8), ("ade20k", 4)):
            rows = driver.find_elements(By.CSS_SELECTOR, f"#table-{dataset} > tbody > tr.row")
            assert len(rows) == count, dataset
        # at 1,400 px every table fits: no column behind a horizontal scrollbar
        too_wide = driver.execute_script(
            "const w = document.documentElement.clientWidth;"
            "return [...document.querySelectorAll('table')]"
            ".filter(t => t.getBoundingClientRect().right > w + 1"
            " || t.parentElement.scrollWidth > t.parentElement.clientWidth + 1)"
            ".map(t => t.id || t.className);"
        )
        assert too_wide == [], f"wider than the window: {too_wide}"
        figures = driver.find_elements(By.CSS_SELECTOR, "details[open] figure svg")
        assert figures and all(f.is_displayed() for f in figures)  # plots start open
        cells = driver.find_elements(By.CSS_SELECTOR, "#diff > tbody > tr > td.verdict")
        assert cells and len(cells) == len(driver.find_elements(By.CSS_SELECTOR, "#diff tbody tr"))
        for cell in cells:
            slug = cell.text.strip().replace(" ", "-")
            assert f"v-{slug}" in cell.get_attribute("class").split()
            # the class paints the cell: a background colour, not the table's transparent one
            assert cell.value_of_css_property("background-color") != "rgba(0, 0, 0, 0)"
    finally:
        driver.quit()
    assert time.monotonic() - start < 30, "the browser test has a 30 s budget"
