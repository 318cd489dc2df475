"""MLflow as a teammate sees it: a real tiny training and evaluation, read back through a real
``mlflow server``'s REST API (verified with MLflow 3.17.2).

In a scratch git clone (committed after the profile is shrunk, so ``git_dirty`` must be false)
with a private sqlite store: ``dnlrepro mlflow-init``, ``synth`` + ``prepare`` of 2+1 synthetic
Cityscapes images, ``dnlrepro train`` (smoke profile, 2 iterations, one validation) and
``dnlrepro evaluate --ms-flip``. Then ``mlflow server`` on a free port serves that store, and
the checks go through ``/api/2.0/mlflow/...``: one run holding both stages, its name, metric
names (never NaN, each step once), tags, duration and artifacts (docs/pipeline.md, "MLflow"),
and headless chromium shows that run in the experiment's runs table.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from dnlrepro.core.config import load_config
from dnlrepro.core.registry import load_published
from dnlrepro.track import runs

pytestmark = pytest.mark.slow

CFG = "dnl_r50-d8_512x1024_40k_cityscapes"  # the cheapest row on CPU; published batch 4 x 2
NAME = "r50 512x1024 40k s0 smoke"  # what differs first; MLflow shows ~30 characters
SERVER_START_S = 180  # ~17 s on an idle 2-core machine; generous for a loaded CI runner


@dataclass
class Tracked:
    root: Path
    uri: str
    eval_launched: float  # time.time() just before `dnlrepro evaluate` started
    eval_log: str  # its stderr (the log lines)


def cli(root: Path, uri: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DNLREPRO_WORKSPACE", "DVC_ROOT")}
    env.update(MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="2")
    result = subprocess.run(
        [sys.executable, "-m", "dnlrepro.cli", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (
        f"dnlrepro {args}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
    return result


def shrink_row(root: Path) -> None:
    """Half-size images and two ms+flip ratios for CFG in the clone: the CPU time of the
    evaluation is its 12 ms+flip views, and naming, tags and artifacts do not depend on it."""
    path = root / "params" / "profiles.yaml"
    profiles = yaml.safe_load(path.read_text())
    half = {"data.img_scale": [64, 32], "data.crop_size": [32, 32], "test.img_scale": [64, 32]}
    half["test.ms_ratios"] = [0.5, 1.0]
    profiles["smoke"]["overrides"].append({"match": CFG, "set": half})
    path.write_text(yaml.safe_dump(profiles, sort_keys=False))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, clone_repo, shrink_smoke) -> Tracked:
    root = clone_repo(tmp_path_factory.mktemp("mlflow-server") / "clone", git=True)
    shrink_smoke(root, train=2, val=1)
    shrink_row(root)
    # Commit the shrunk profile: the runs must then be tagged with this commit, not dirty.
    subprocess.run(["git", "commit", "-qam", "smaller smoke profile"], cwd=root, check=True)
    uri = f"sqlite:///{root.parent / 'store' / 'mlflow.db'}"
    assert cli(root, uri, "mlflow-init").stdout.strip() == uri
    # the pipeline's places (download@/prepare@cityscapes of the smoke profile)
    archives, data_root = "downloads/cityscapes/synthetic", load_config(CFG, "smoke").data.data_root
    cli(root, uri, "synth", "--dataset", "cityscapes", "--out", archives)
    cli(
        root, uri, "prepare", "--dataset", "cityscapes", "--archives", archives,
        "--data-root", data_root, "--expect-train", "2", "--expect-val", "1",
    )  # fmt: skip
    # 2 iterations, each logged; one validation and one checkpoint, at the end.
    once = [f"schedule.{k}" for k in ("max_iters=2", "log_interval=1", "eval_interval=2")]
    once.append("schedule.checkpoint_interval=2")
    cli(
        root, uri, "train", "--config", CFG, "--profile", "smoke", "--device", "cpu",
        *(a for s in once for a in ("--set", s)), "--work-dir", f"work_dirs/{CFG}",
        "--summary-out", f"results/{CFG}/train_summary.json",
    )  # fmt: skip
    launched = time.time()
    result = cli(
        root, uri, "evaluate", "--config", CFG, "--profile", "smoke", "--device", "cpu",
        "--checkpoint", f"work_dirs/{CFG}/final.pth", "--ms-flip",
        "--out", f"results/{CFG}/eval.json",
    )  # fmt: skip
    return Tracked(root, uri, launched, result.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base: str, route: str, **query: str) -> bytes:
    url = f"{base}{route}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tracked: Tracked) -> str:
    """``mlflow server`` on the scratch store; the base URL. Stopped (whole group) afterwards."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tracked.root.parent / "server.log"
    # Job execution starts seven extra Python processes (huey consumers) that a SIGTERM to the
    # server leaves running; the REST API needs none of them.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracked.uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=tracked.root.parent, env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert proc.poll() is None, f"mlflow server exited {proc.returncode}: {log.read_text()}"
            try:
                if get(base, "/health") == b"OK":
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"not healthy in {SERVER_START_S} s: {log}"
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def experiment(server: str) -> dict:
    experiments = post(server, "/api/2.0/mlflow/experiments/search", {"max_results": 100})
    (exp,) = (e for e in experiments["experiments"] if e["name"] == "cityscapes")
    return exp


@pytest.fixture(scope="module")
def run(server: str, experiment: dict) -> dict:
    """The one run of the 'cityscapes' experiment: training and evaluation of (CFG, seed 0)."""
    body = {"experiment_ids": [experiment["experiment_id"]], "order_by": ["metrics.mIoU DESC"]}
    (found,) = post(server, "/api/2.0/mlflow/runs/search", body)["runs"]
    tags = {t["key"]: t["value"] for t in found["data"]["tags"]}
    metrics = {m["key"]: m["value"] for m in found["data"].get("metrics", [])}
    return {"info": found["info"], "tags": tags, "metrics": metrics}


def test_experiment_opens_on_the_runs_view(experiment: dict) -> None:
    tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.dnlrepro"])  # runs.view_url opens it
    assert view["orderByKey"] == "metrics.`mIoU`" and view["orderByAsc"] is False
    assert view["selectedColumns"][:3] == [
        f"metrics.`{k}`" for k in ("mIoU", "delta_mIoU", "published_mIoU")
    ]


def test_run_name_tags_and_metric_names(run: dict, tracked: Tracked) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tracked.root, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert run["info"]["run_name"] == NAME and len(NAME) <= 30
    assert run["info"]["status"] == "FINISHED"
    tags = run["tags"]
    assert tags["mlflow.runName"] == NAME and tags["stages"] == "train,evaluate"
    assert (tags["config"], tags["dataset"], tags["profile"]) == (CFG, "cityscapes", "smoke")
    assert tags["seed"] == "0"  # a row's seeds share `config` and differ here
    assert (tags["git_commit"], tags["git_dirty"]) == (commit, "false")
    # the layout and protocol that ran (core/layout.py): smoke's 1 x 2, BN over both images
    assert (tags["layout"], tags["bn_group"]) == ("1x2", "2")
    metrics = run["metrics"]
    assert not [k for k in metrics if k.startswith("IoU")]  # per-class: an artifact
    assert {"train/loss", "train/lr", "val/mIoU", "train_s", "cpu_max_rss_gb"} <= set(metrics)
    assert "mem_gb" not in metrics  # CUDA max_memory_allocated only (§5.5)
    assert {"mAcc", "aAcc", "mAcc_ms_flip", "aAcc_ms_flip", "baseline_mIoU"} <= set(metrics)
    payload = json.loads((tracked.root / "results" / CFG / "eval.json").read_text())
    assert metrics["mIoU"] == payload["single_scale"]["mIoU"]
    assert metrics["mIoU_ms_flip"] == payload["ms_flip"]["mIoU"]
    published = load_published(tracked.root / "params" / "published.yaml").entry(CFG).metrics
    assert published["mIoU"] is not None
    for key in ("mIoU", "mIoU_ms_flip"):
        if published[key] is None:  # a README '-' cell: no number, no delta
            assert f"published_{key}" not in metrics and f"delta_{key}" not in metrics
            continue
        assert metrics[f"published_{key}"] == published[key]
        assert metrics[f"delta_{key}"] == pytest.approx(metrics[key] - published[key], abs=0.01)


def test_each_step_is_logged_once_and_never_nan(server: str, run: dict) -> None:
    """Every logged value of every metric, the whole history (runs/search has the last only)."""
    for key in run["metrics"]:
        history = get(
            server, "/api/2.0/mlflow/metrics/get-history", run_id=run["info"]["run_id"],
            metric_key=key,
        )  # fmt: skip
        points = json.loads(history)["metrics"]
        assert points, f"{key} has no history"
        assert not [p for p in points if not math.isfinite(float(p["value"]))], key
        steps = [int(p.get("step", 0)) for p in points]
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {steps}"
        if key == "train/loss":
            assert steps == [1, 2]  # log_interval 1
        if key == "val/mIoU":
            assert steps == [2]  # one validation, at the end; not again by the final summary


def test_run_spans_training_and_evaluation(run: dict, tracked: Tracked) -> None:
    info = run["info"]
    start, end = int(info["start_time"]) / 1000, int(info["end_time"]) / 1000
    trained = (tracked.root / "results" / CFG / "train_summary.json").stat().st_mtime
    written = (tracked.root / "results" / CFG / "eval.json").stat().st_mtime
    assert start < trained < tracked.eval_launched < written <= end


def test_artifacts(server: str, run: dict, tracked: Tracked) -> None:
    found = get(server, "/api/2.0/mlflow/artifacts/list", run_id=run["info"]["run_id"])
    listing = {f["path"] for f in json.loads(found)["files"]}

    def fetch(path: str) -> bytes:
        return get(server, "/get-artifact", path=path, run_uuid=run["info"]["run_id"])

    assert {"config.yaml", "val_per_class_iou.json", "train_summary.json"} <= listing
    assert {"eval.json", "per_class.csv", "training_curves.png", "per_class_iou.png"} <= listing
    for png in ("training_curves.png", "per_class_iou.png"):
        assert fetch(png).startswith(b"\x89PNG\r\n"), png

    summary = json.loads((tracked.root / "results" / CFG / "train_summary.json").read_text())
    assert json.loads(fetch("train_summary.json")) == summary
    per_class = json.loads(fetch("val_per_class_iou.json"))
    measured = {k: v for k, v in summary["last_validation"]["IoU"].items() if v is not None}
    assert dict(zip(per_class["class"], per_class["IoU"], strict=True)) == measured
    config = yaml.safe_load(fetch("config.yaml"))  # the resolved config, --set applied
    assert (config["name"], config["schedule"]["max_iters"]) == (CFG, 2)

    payload = json.loads((tracked.root / "results" / CFG / "eval.json").read_text())
    assert json.loads(fetch("eval.json")) == payload
    rows = fetch("per_class.csv").decode().splitlines()
    assert rows[0].startswith("class,IoU,Acc,IoU (ms+flip)")
    assert [r.split(",")[0] for r in rows[1:]] == list(payload["single_scale"]["IoU"])


def test_runs_view_in_headless_chromium(server: str, experiment: dict, run: dict, tmp_path):
    """What the link the training log prints opens: the runs table (not MLflow 3's GenAI
    overview, which lists traces and no run), one row, mIoU and its delta as columns."""
    from test_reports_html import BROWSER_FLAGS, CHROMEDRIVER, CHROMIUM, browser_or_skip

    webdriver = browser_or_skip()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={tmp_path}", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    miou = f"{run['metrics']['mIoU']:g}"
    try:
        driver.get(runs.view_url(server, experiment["experiment_id"]))
        text = lambda d: d.find_element("tag name", "body").text  # noqa: E731
        WebDriverWait(driver, 90).until(lambda d: NAME in text(d) and "delta_mIoU" in text(d))
        lines = text(driver).splitlines()
        assert lines.count(NAME) == 1 and "1 matching run" in lines, lines
        assert "Sort: mIoU" in lines and "Overview" not in lines, lines  # not the GenAI page
        header = lines[lines.index("Run Name") : lines.index("Pin run")]
        row = lines[lines.index(NAME) :]
        assert {"mIoU", "delta_mIoU"} <= set(header), header  # further ones scroll
        assert miou in row, (miou, row)
    finally:
        driver.quit()
