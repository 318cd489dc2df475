"""The Slurm backend of ``dnlrepro launch``: plan and scripts on their own, then a real Slurm.

The tests marked ``slurm`` need a running Slurm (``sudo .ci/slurm-local.sh start``: one node, this
machine's CPUs). Without one they skip with the reason; with ``DNLREPRO_REQUIRE_SLURM=1`` (set by
``.ci/run``) they fail instead, so CI cannot pass without them.

The end-to-end test submits the smoke profile's twelve configurations (shrunk to one iteration,
except the one that gets cancelled) in a scratch copy, cancels one training job mid-run with
``scancel``, and checks that the failure is reported with its log, that its dependants were
cancelled, and that the same launch command resubmits only what is left; that training resumes
from the checkpoint written on the cancellation, is sent the time-limit signal (USR1), writes a
checkpoint, requeues itself and resumes again; and that everything ends up done for DVC.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import keep_rows
from dnlrepro.core.profile import load_profile
from dnlrepro.core.workspace import Workspace
from dnlrepro.engine.distributed import DistInfo
from dnlrepro.engine.preempt import StopOnSignal, parse_signals
from dnlrepro.launch.slurm import cli, plan, queue

CANCELLED = "dnl_r50-d8_512x1024_40k_cityscapes"  # trains 8 iterations; the others 1
# One row per family (512x1024 whole, 769x769 slide, ADE20K): every kind of job, a third of the
# CPU time of all twelve (the twelve rows' stages themselves run in the rehearsals and dvc repro)
ROWS = (CANCELLED, "dnl_r50-d8_769x769_40k_cityscapes", "dnl_r50-d8_512x512_80k_ade20k")
ITERS = 8
FINAL = ("tables", "diff")
LAUNCHES: list[subprocess.Popen] = []  # started by the Slurm test; killed if it fails
SINGLE = DistInfo(rank=0, local_rank=0, world_size=1, device=None, backend=None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Without Slurm: the plan, the scripts, the status report, the signal hook
# ---------------------------------------------------------------------------------------------


def test_plan_submits_only_stale_stages_with_dependencies():
    configs = ["a", "b", "c"]
    res = plan.Resources(partition="gpu", time="1:00:00", extra=("--qos=high",))
    jobs, skipped = plan.plan_jobs(configs, "all", {"train@a", "evaluate@b", "diff"}, res, FINAL)
    by_name = {j.name: j for j in jobs}
    assert list(by_name) == ["train@a", "evaluate@a", "evaluate@b", "reports"]
    assert by_name["evaluate@a"].after == ["train@a"]  # evaluates the new training
    assert by_name["evaluate@b"].after == []  # train@b is up to date
    assert by_name["reports"].after == ["train@a", "evaluate@a", "evaluate@b"]
    assert skipped == ["train@b", "train@c", "evaluate@c"]
    assert by_name["train@a"].command[-4:] == ["--wait-for-lock", "repro", "-s", "train@a"]
    assert by_name["reports"].command[-3:] == ["-s", "tables", "diff"]
    assert by_name["train@a"].training and not by_name["evaluate@a"].training
    for job in jobs:
        assert {"--partition=gpu", "--time=1:00:00", "--qos=high"} <= set(job.options)

    # a stale shared stage of a launched dataset: prepare first, every configuration after it
    prepare = ("prepare@ade20k",)  # launch.shared_stages of ADE20K rows
    jobs, skipped = plan.plan_jobs(configs, "train", {"download@ade20k"}, res, FINAL, prepare)
    assert [j.name for j in jobs] == ["prepare", "train@a", "train@b", "train@c"]
    assert all(j.after == ["prepare"] for j in jobs[1:]) and skipped == []
    assert jobs[0].command[-2:] == ["repro", "prepare@ade20k"]
    # another dataset's stale download (no Cityscapes login) does not hold ADE20K rows back
    jobs, _ = plan.plan_jobs(
        configs, "train", {"download@cityscapes", "train@a"}, res, FINAL, prepare
    )
    assert [j.name for j in jobs] == ["train@a"] and jobs[0].after == []
    everything = [f"{stage}@{c}" for c in configs for stage in ("train", "evaluate")]
    assert plan.plan_jobs(configs, "all", set(), res, FINAL) == ([], everything)


def test_resources_follow_the_profile_and_refuse_mismatches():
    paper, smoke = load_profile("paper"), load_profile("smoke")

    def args(**kw: Any) -> argparse.Namespace:
        base = dict(partition=None, account=None, time=None, nodes=None, gpus_per_node=None,
                    cpus_per_task=None, signal_seconds=300, sbatch_arg=[])  # fmt: skip
        return argparse.Namespace(**{**base, **kw})

    two_nodes = replace(paper, settings=replace(paper.settings, gpus=8, nnodes=2))
    res = cli.resources(args(), two_nodes)
    train = plan.options("train", res)
    assert {"--nodes=2", "--gpus-per-node=4", "--cpus-per-task=20", "--requeue"} <= set(train)
    assert "--signal=B:USR1@300" in train
    assert {"--nodes=1", "--gpus-per-node=1", "--cpus-per-task=5"} <= set(
        plan.options("evaluate", res)
    )
    assert not any("gpu" in o for o in plan.options("reports", res))
    cpu = plan.options("train", cli.resources(args(), smoke))
    assert "--cpus-per-task=1" in cpu and not any("gpu" in o for o in cpu)
    with pytest.raises(ValueError, match="4 processes per node"):
        cli.resources(args(gpus_per_node=2), paper)
    with pytest.raises(ValueError, match="change gpus / nnodes"):
        cli.resources(args(nodes=2), paper)  # the layout is the profile's, not the job's
    with pytest.raises(ValueError, match="trains in one process"):
        cli.resources(args(nodes=2), smoke)


def test_scripts_are_valid_bash_and_run_the_dvc_command(tmp_path: Path, capsys):
    res = plan.Resources(gpus_per_node=4, nodes=2, time="2-00:00:00")
    jobs, _ = plan.plan_jobs(["a"], "all", {"prepare"}, res, FINAL)
    scripts = plan.write_scripts(jobs, tmp_path / "launch", tmp_path)
    assert sorted(p.name for p in (tmp_path / "launch").iterdir()) == [
        "evaluate@a.sbatch", "logs", "prepare.sbatch", "reports.sbatch", "torchrun-node.sh",
        "train@a.sbatch",
    ]  # fmt: skip
    for path in [*scripts.values(), tmp_path / "launch" / "torchrun-node.sh"]:
        check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, f"{path}: {check.stderr}"
    train = scripts["train@a"].read_text()
    directives = [line for line in train.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --job-name=train@a" in directives
    assert "#SBATCH --gpus-per-node=4" in directives and "#SBATCH --requeue" in directives
    assert f"#SBATCH --chdir={tmp_path}" in directives
    assert "repro -s train@a" in train and "DNLREPRO_STOP_SIGNALS=USR1,TERM" in train
    # every #SBATCH line precedes the first command (sbatch stops reading at it)
    lines = train.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert max(i for i, line in enumerate(lines) if line.startswith("#SBATCH")) < first_command
    assert "DNLREPRO_STOP_SIGNALS" not in scripts["evaluate@a"].read_text()
    cli.print_plan(jobs, scripts, Workspace(tmp_path))  # what --dry-run prints
    assert capsys.readouterr().out.splitlines() == [
        "sbatch launch/prepare.sbatch",
        "sbatch launch/train@a.sbatch  (afterok: prepare)",
        "sbatch launch/evaluate@a.sbatch  (afterok: train@a)",
        "sbatch launch/reports.sbatch  (afterok: 3 jobs)",
        "dry run: 4 job scripts written to launch, none submitted",
    ]


def test_status_tells_failures_from_the_jobs_slurm_cancelled_after_them(tmp_path: Path):
    def record(name: str, state: str, after: list[str]) -> dict[str, Any]:
        log = str(tmp_path / f"{name}.out")
        return {"name": name, "job_id": str(len(name)), "after": after, "state": state,
                "exit_code": "0:15", "reason": None, "log": log}  # fmt: skip

    jobs = [
        record("train@a", "CANCELLED", []),
        record("evaluate@a", "CANCELLED", ["train@a"]),
        record("train@b", "COMPLETED", []),
        record("evaluate@b", "TIMEOUT", ["train@b"]),
        record("reports", "CANCELLED", ["train@a", "evaluate@a", "train@b", "evaluate@b"]),
    ]
    failed, cancelled = queue.failures(jobs)
    assert [r["name"] for r in failed] == ["train@a", "evaluate@b"]
    assert [r["name"] for r in cancelled] == ["evaluate@a", "reports"]
    (tmp_path / "train@a.out").write_text("log")
    table = cli.status_table({"launch": "x", "profile": "smoke", "jobs": jobs}, Workspace(tmp_path))
    assert "FAILED: train@a (job 7) CANCELLED (exit 0:15); log train@a.out" in table
    assert "FAILED: evaluate@b" in table and "1/5 completed, 2 failed, 2 not run" in table


def test_stop_signal_sets_a_flag_and_restores_the_handler():
    assert parse_signals("USR1, sigterm") == [signal.SIGUSR1, signal.SIGTERM]
    with pytest.raises(ValueError, match="DNLREPRO_STOP_SIGNALS"):
        parse_signals("USR1,NOPE")
    before = signal.getsignal(signal.SIGUSR1)
    with StopOnSignal([signal.SIGUSR1]) as stop:
        assert not stop.requested(SINGLE)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested(SINGLE)
        assert "stopped by SIGUSR1 at iteration 3/8" in str(stop.error(3, 8))
    assert signal.getsignal(signal.SIGUSR1) == before
    assert not StopOnSignal([]).requested(SINGLE)  # nothing installed: never stops


# ---------------------------------------------------------------------------------------------
# A real Slurm
# ---------------------------------------------------------------------------------------------


def slurm_missing() -> str | None:
    """Why Slurm cannot run a job here, or None."""
    hint = "start one with `sudo .ci/slurm-local.sh start`"
    for tool in ("sbatch", "srun", "squeue", "sacct", "scancel", "scontrol"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed; {hint}"
    try:
        probe = subprocess.run(["srun", "-N1", "-n1", "true"], capture_output=True, text=True,
                               timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"`srun true` did not finish in 60 s; {hint}"
    if probe.returncode != 0:
        return f"`srun true` failed ({probe.stderr.strip()}); {hint}"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = slurm_missing()
    if reason is None:
        return
    if os.environ.get("DNLREPRO_REQUIRE_SLURM") == "1":
        pytest.fail(f"DNLREPRO_REQUIRE_SLURM=1 but no usable Slurm: {reason}", pytrace=False)
    pytest.skip(f"no usable Slurm: {reason}")


@pytest.fixture(scope="module")
def workspace(slurm, tmp_path_factory, clone_repo, shrink_smoke) -> Iterator[Path]:
    repo = clone_repo(tmp_path_factory.mktemp("slurm") / "ws")
    shrink_smoke(repo, train=4, val=1)
    path = repo / "params" / "profiles.yaml"
    profiles = yaml.safe_load(path.read_text())
    longer = {f"schedule.{k}": ITERS for k in ("max_iters", "checkpoint_interval", "eval_interval")}
    longer["schedule.log_interval"] = 1  # the test follows the iterations in the job's log
    profiles["smoke"]["overrides"].append({"match": CANCELLED, "set": longer})
    path.write_text(yaml.safe_dump(profiles, sort_keys=False))
    # That row's 8-iteration schedule is not the one its recorded 20-iteration reference
    # trajectory followed: the comparison would (rightly) stop it at the first lr it logs.
    (repo / "params" / "reference_logs" / "smoke" / f"{CANCELLED}.log.json").unlink()
    keep_rows(repo, ROWS)
    baseline = json.loads((repo / "params" / "smoke_baseline.json").read_text())
    baseline["configs"] = {}  # the shrunk runs have no recorded baseline
    (repo / "params" / "smoke_baseline.json").write_text(json.dumps(baseline))
    yield repo
    # A failed test leaves no launch process and no job behind.
    for proc in LAUNCHES:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    ids = [r["job_id"] for p in (repo / "work_dirs/slurm").glob("*/receipt.json")
           for r in json.loads(p.read_text())["jobs"]]  # fmt: skip
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def start_launch(repo: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "DNLREPRO_WORKSPACE")}  # fmt: skip
    # sbatch exports this environment to the jobs: the clone's code, this interpreter.
    env.update(PYTHONPATH=str(repo / "src"), DNLREPRO_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "dnlrepro.cli", "launch", "--backend", "slurm", "--wait"]
    proc = subprocess.Popen([*cmd, "--poll", "1"], cwd=repo, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    LAUNCHES.append(proc)
    return proc


def wait_for(what: str, probe: Callable[[], Any], proc: subprocess.Popen, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"launch ended before {what}:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"no {what} within {timeout:.0f} s:\n{proc.communicate()[0][-4000:]}")


def receipt_of(repo: Path, jobs: int, newer_than: Path | None = None) -> dict[str, Any] | None:
    """The newest launch's receipt once it lists ``jobs`` jobs (it is saved after each sbatch)."""
    path = cli.newest_receipt(repo / "work_dirs" / "slurm")
    if path is None or path == newer_than:
        return None
    receipt = json.loads(path.read_text())
    return {**receipt, "path": path} if len(receipt["jobs"]) == jobs else None


def job(receipt: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in receipt["jobs"] if r["name"] == name)


def log_match(record: dict[str, Any], pattern: str) -> re.Match | None:
    path = Path(record["log"])
    return re.search(pattern, path.read_text()) if path.exists() else None


def finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"launch did not finish in {timeout:.0f} s:\n{proc.communicate()[0][-4000:]}")


@pytest.mark.slurm
@pytest.mark.slow
def test_three_rows_on_slurm_cancel_relaunch_requeue(workspace: Path):
    repo, train = workspace, f"train@{CANCELLED}"
    configs = list(yaml.safe_load((repo / "params/published.yaml").read_text())["configs"])
    started = time.time()

    # 1. every row, one training cancelled mid-run: reported with its log, dependants cancelled
    proc = start_launch(repo)
    # prepare, 3 x (train, evaluate), reports
    first = wait_for("receipt", lambda: receipt_of(repo, 2 * len(configs) + 2), proc, 120)
    victim = job(first, train)
    wait_for(f"iteration 2 in {victim['log']}", lambda: log_match(victim, rf"Iter \[2/{ITERS}\]"),
             proc, 300)  # fmt: skip
    subprocess.run(["scancel", victim["job_id"]], check=True)
    out = finish(proc, 1200)  # ~4 min on an idle 2-core machine; generous for a busy one
    assert proc.returncode == 1, out
    log = str(Path(victim["log"]).relative_to(repo))
    assert f"FAILED: {train} (job {victim['job_id']}) CANCELLED" in out and log in out, out
    assert re.search(rf"not run: .*{CANCELLED}.*reports", out.replace("\n", " ")), out
    first = receipt_of(repo, len(first["jobs"]))
    states = {r["name"]: r["state"] for r in first["jobs"]}
    assert {n for n, s in states.items() if s != "COMPLETED"} == {
        train,
        f"evaluate@{CANCELLED}",
        "reports",
    }, states
    # TERM (scancel) made the training write its checkpoint before it stopped
    stopped = log_match(victim, rf"stopped by SIGTERM at iteration (\d+)/{ITERS}")
    assert stopped, Path(victim["log"]).read_text()[-3000:]

    # 2. the same command again: only what is not done; training resumes from that checkpoint,
    #    then gets the time-limit signal (USR1), checkpoints, requeues itself and resumes again
    proc = start_launch(repo)
    second = wait_for("second receipt", lambda: receipt_of(repo, 3, first["path"]), proc, 120)
    assert [r["name"] for r in second["jobs"]] == [train, f"evaluate@{CANCELLED}", "reports"]
    rerun = job(second, train)
    resumed = wait_for("resume", lambda: log_match(rerun, r"resumed from .* at iteration (\d+)/"),
                       proc, 180)  # fmt: skip
    assert resumed.group(1) == stopped.group(1)
    after = int(resumed.group(1)) + 1
    wait_for(
        f"iteration {after}", lambda: log_match(rerun, rf"Iter \[{after}/{ITERS}\]"), proc, 120
    )
    subprocess.run(["scancel", "--batch", "--signal=USR1", rerun["job_id"]], check=True)

    def requeued() -> bool:
        state = subprocess.run(["squeue", "-h", "-j", rerun["job_id"], "-o", "%T %r"],
                               capture_output=True, text=True).stdout  # fmt: skip
        return state.strip() == "PENDING BeginTime"  # Slurm holds a requeued job ~2 min

    wait_for("requeue", requeued, proc, 120)
    # Start it now rather than in ~2 min. Not within the second of the requeue: slurmd refuses a
    # credential issued in the same second as the revoked one ("Job credential revoked").
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={rerun['job_id']}", "StartTime=now"], check=True)
    out = finish(proc, 600)
    assert proc.returncode == 0, out
    text = Path(rerun["log"]).read_text()
    usr1 = re.search(rf"stopped by SIGUSR1 at iteration (\d+)/{ITERS}", text)
    assert usr1 and "requeueing job" in text, text[-3000:]
    assert re.search(rf"resumed from .* at iteration {usr1.group(1)}/{ITERS}", text), text[-3000:]
    assert "training done" in text
    summary = json.loads((repo / "results" / CANCELLED / "train_summary.json").read_text())
    assert summary["resumed_from_iteration"] == int(usr1.group(1))

    # 3. DVC agrees that everything is done; the tables hold this run's numbers
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo,
                            capture_output=True, text=True)  # fmt: skip
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout + status.stderr
    tables = (repo / "reports/cityscapes.md").read_text() + (repo / "reports/ade20k.md").read_text()
    for name in configs:
        metrics = repo / "results" / name / "metrics.json"
        assert metrics.stat().st_mtime > started, f"{metrics} was not rewritten"
        miou = json.loads(metrics.read_text())["mIoU"]
        row = next(line for line in tables.splitlines() if f"params/{name}.yaml" in line)
        assert re.search(rf"\|\s*{re.escape(f'{miou:.2f}')}[\s|]", row), row
