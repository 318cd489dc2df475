"""MLflow as a teammate sees it: a real tiny training and evaluation, read back through a real
``mlflow server``'s REST API (verified with MLflow 3.17.2).

In a scratch git clone (committed after the profile is shrunk, so ``git_dirty`` must be false)
with a private sqlite store: ``dnlrepro mlflow-init``, ``synth`` + ``prepare`` of 2+1 synthetic
Cityscapes images, ``dnlrepro train`` (smoke profile, 2 iterations, one validation) and
``dnlrepro evaluate --ms-flip``. Then ``mlflow server`` on a free port serves that store, and
the checks go through ``/api/2.0/mlflow/...`` only: run names, metric names (never NaN), tags,
the evaluate run's duration, and the artifacts (docs/pipeline.md, "MLflow").
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
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from dnlrepro.core.config import load_config

pytestmark = pytest.mark.slow

CFG = "dnl_r50-d8_512x1024_40k_cityscapes"  # the cheapest row on CPU; published batch 4 x 2
SHORT = "r50-d8_512x1024_40k_cityscapes"
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
def runs(server: str) -> dict[str, dict]:
    """The runs of the 'cityscapes' experiment, by stage tag (exactly one each)."""
    experiments = post(server, "/api/2.0/mlflow/experiments/search", {"max_results": 100})
    (exp,) = (e for e in experiments["experiments"] if e["name"] == "cityscapes")
    found = post(server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})
    by_stage: dict[str, dict] = {}
    for run in found["runs"]:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
        assert tags["stage"] not in by_stage, f"two {tags['stage']} runs"
        by_stage[tags["stage"]] = {"info": run["info"], "tags": tags, "metrics": metrics}
    assert set(by_stage) == {"train", "evaluate"}
    return by_stage


def test_run_names_tags_and_metric_names(runs: dict[str, dict], tracked: Tracked) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tracked.root, capture_output=True, text=True, check=True
    ).stdout.strip()
    for stage, run in runs.items():
        assert run["info"]["run_name"] == f"{SHORT} seed0 {stage} (smoke)"
        assert run["info"]["status"] == "FINISHED"
        tags = run["tags"]
        assert tags["mlflow.runName"] == run["info"]["run_name"]
        assert (tags["config"], tags["dataset"], tags["profile"]) == (CFG, "cityscapes", "smoke")
        assert tags["seed"] == "0"  # a row's seeds share `config` and differ here
        assert (tags["git_commit"], tags["git_dirty"]) == (commit, "false")
        assert {"mIoU", "mAcc", "aAcc"} <= set(run["metrics"])
        assert not [k for k in run["metrics"] if k.startswith("IoU")]  # per-class: an artifact
    train, evaluate = runs["train"], runs["evaluate"]
    # the layout and protocol that ran (core/layout.py): smoke's 1 x 2, BN over both images
    assert (train["tags"]["layout"], train["tags"]["bn_group"]) == ("1x2", "2")
    assert {"train/loss", "train/lr", "train_s", "cpu_max_rss_gb"} <= set(train["metrics"])
    assert "mem_gb" not in train["metrics"]  # CUDA max_memory_allocated only (§5.5)
    ms_flip = {"mIoU_ms_flip", "mAcc_ms_flip", "aAcc_ms_flip", "baseline_mIoU"}
    assert ms_flip <= set(evaluate["metrics"])
    payload = json.loads((tracked.root / "results" / CFG / "eval.json").read_text())
    assert evaluate["metrics"]["mIoU"] == payload["single_scale"]["mIoU"]
    assert evaluate["metrics"]["mIoU_ms_flip"] == payload["ms_flip"]["mIoU"]


def test_no_metric_is_ever_nan(server: str, runs: dict[str, dict]) -> None:
    """Every logged value of every metric, the whole history (runs/search has the last only)."""
    for stage, run in runs.items():
        for key in run["metrics"]:
            history = get(
                server, "/api/2.0/mlflow/metrics/get-history", run_id=run["info"]["run_id"],
                metric_key=key,
            )  # fmt: skip
            values = [m["value"] for m in json.loads(history)["metrics"]]
            assert values, f"{stage}: {key} has no history"
            assert not [v for v in values if not math.isfinite(float(v))], f"{stage}: {key}"
    steps = get(
        server, "/api/2.0/mlflow/metrics/get-history", run_id=runs["train"]["info"]["run_id"],
        metric_key="train/loss",
    )  # fmt: skip
    assert [m["step"] for m in json.loads(steps)["metrics"]] == [1, 2]  # log_interval 1


def log_time(log: str, needle: str, near: float) -> float:
    """The epoch time of the first log line holding ``needle`` (``HH:MM:SS``, local time)."""
    (line,) = [line for line in log.splitlines() if needle in line][:1]
    hms = datetime.strptime(line[:8], "%H:%M:%S").time()
    stamp = datetime.combine(datetime.fromtimestamp(near).date(), hms)
    if stamp.timestamp() < near - 1:  # the evaluation crossed midnight
        stamp += timedelta(days=1)
    return stamp.timestamp()


def test_evaluate_run_spans_the_evaluation(runs: dict[str, dict], tracked: Tracked) -> None:
    """The run is created after the evaluation but starts when the evaluation began."""
    info = runs["evaluate"]["info"]
    start, end = int(info["start_time"]) / 1000, int(info["end_time"]) / 1000
    written = (tracked.root / "results" / CFG / "eval.json").stat().st_mtime
    assert tracked.eval_launched <= start < written <= end
    # Log lines have 1 s resolution: the run started no later than the checkpoint was loaded.
    assert start <= log_time(tracked.eval_log, "loaded checkpoint", tracked.eval_launched) + 1
    assert end - start >= written - log_time(tracked.eval_log, "evaluating", start) - 1


def test_artifacts(server: str, runs: dict[str, dict], tracked: Tracked) -> None:
    def listing(run: dict) -> set[str]:
        found = get(server, "/api/2.0/mlflow/artifacts/list", run_id=run["info"]["run_id"])
        return {f["path"] for f in json.loads(found)["files"]}

    def fetch(run: dict, path: str) -> bytes:
        return get(server, "/get-artifact", path=path, run_uuid=run["info"]["run_id"])

    train, evaluate = runs["train"], runs["evaluate"]
    assert {"config.yaml", "per_class_iou.json", "train_summary.json"} <= listing(train)
    assert {"eval.json", "per_class.csv"} <= listing(evaluate)

    summary = json.loads((tracked.root / "results" / CFG / "train_summary.json").read_text())
    assert json.loads(fetch(train, "train_summary.json")) == summary
    per_class = json.loads(fetch(train, "per_class_iou.json"))
    measured = {k: v for k, v in summary["last_validation"]["IoU"].items() if v is not None}
    assert dict(zip(per_class["class"], per_class["IoU"], strict=True)) == measured
    config = yaml.safe_load(fetch(train, "config.yaml"))  # the resolved config, --set applied
    assert (config["name"], config["schedule"]["max_iters"]) == (CFG, 2)

    payload = json.loads((tracked.root / "results" / CFG / "eval.json").read_text())
    assert json.loads(fetch(evaluate, "eval.json")) == payload
    rows = fetch(evaluate, "per_class.csv").decode().splitlines()
    assert rows[0].startswith("class,IoU,Acc,IoU (ms+flip)")
    assert [r.split(",")[0] for r in rows[1:]] == list(payload["single_scale"]["IoU"])
