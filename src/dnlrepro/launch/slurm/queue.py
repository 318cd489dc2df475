"""Talk to Slurm: ``sbatch`` the jobs of a launch, read their states from ``squeue`` / ``sacct``.

The receipt (``work_dirs/slurm/<launch>/receipt.json``) records per job its name, Slurm job id,
script, log, dependencies and the sbatch command line; :func:`refresh` adds the current state and
exit code. ``squeue`` answers for the jobs the controller still holds (pending, running,
requeued, recently finished); ``sacct`` for the others. Without accounting storage (``slurmdbd``)
``sacct`` falls back to the job-completion log (``sacct --completion``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dnlrepro.launch.slurm.plan import JobSpec, log_pattern

logger = logging.getLogger(__name__)

RECEIPT = "receipt.json"
DONE = "COMPLETED"
ACTIVE = {
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
    "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
}  # fmt: skip
# Anything else is a failure: FAILED, CANCELLED, TIMEOUT, NODE_FAIL, PREEMPTED, OUT_OF_MEMORY,
# BOOT_FAIL, DEADLINE, ... and UNKNOWN (neither squeue nor sacct knows the job any more).


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise RuntimeError(
            f"`{cmd[0]}` is not installed here: run `dnlrepro launch --backend slurm` on a machine "
            "with the Slurm client commands (a login node), or try .ci/slurm-local.sh start"
        ) from e


def submit(
    jobs: list[JobSpec], scripts: dict[str, Path], root: Path, save: Callable[[list], None]
) -> list[dict[str, Any]]:
    """``sbatch`` every job in order, dependants with ``afterok`` on their jobs of this launch.

    ``--kill-on-invalid-dep=yes``: Slurm cancels a job whose dependency failed, so a failed
    training also cancels its evaluation and the reports. ``save`` is called after every
    submission, so the receipt names what was submitted even if a later sbatch fails.
    """
    records: list[dict[str, Any]] = []
    ids: dict[str, str] = {}
    for job in jobs:
        cmd = ["sbatch", "--parsable"]
        after = [ids[name] for name in job.after]
        if after:
            cmd += [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"]
        cmd.append(str(scripts[job.name]))
        result = _run(cmd, cwd=root)
        if result.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(cmd)}` failed: {result.stderr.strip()}; fix the option (see the "
                f"script) and run the same launch command again once the jobs already "
                f"submitted ({', '.join(ids) or 'none'}) have ended or were cancelled"
            )
        job_id = result.stdout.strip().split(";")[0]  # "<id>[;<cluster>]"
        ids[job.name] = job_id
        log = str(log_pattern(scripts[job.name].parent, job.name)).replace("%j", job_id)
        records.append(
            {"name": job.name, "job_id": job_id, "after": job.after, "log": log,
             "script": str(scripts[job.name]), "sbatch": cmd, "command": job.command,
             "state": "PENDING", "exit_code": None}
        )  # fmt: skip
        logger.info("submitted %s as job %s%s", job.name, job_id,
                    f" (after {', '.join(job.after)})" if job.after else "")  # fmt: skip
        save(records)
    return records


def query(job_ids: list[str]) -> dict[str, dict[str, str | None]]:
    """``{job id: {"state", "exit_code", "reason"}}`` for the jobs Slurm knows about."""
    if not job_ids:
        return {}
    found: dict[str, dict[str, str | None]] = {}
    ids = ",".join(job_ids)
    for line in _lines(["sacct", "-n", "-P", "-X", "-j", ids, "-o", "JobID,State,ExitCode"]):
        job_id, state, exit_code = line.split("|")[:3]
        # The last record wins (a requeued job has one per run); "CANCELLED by 0" -> CANCELLED
        found[job_id] = {"state": state.split()[0], "exit_code": exit_code, "reason": None}
    squeue = ["squeue", "-h", "--states=all", "-j", ids, "-o", "%i|%T|%r"]
    for line in _lines(squeue):
        job_id, state, reason = line.split("|")[:3]
        previous = found.get(job_id, {})
        found[job_id] = {"state": state, "exit_code": previous.get("exit_code"),
                         "reason": None if reason in ("None", "") else reason}  # fmt: skip
    return found


def _lines(cmd: list[str]) -> list[str]:
    result = _run(cmd)
    if result.returncode != 0 and cmd[0] == "sacct":
        # No slurmdbd (e.g. .ci/slurm-local.sh): the job-completion log has the finished jobs.
        result = _run([cmd[0], "--completion", *cmd[1:]])
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:  # squeue: none of them is in the controller
            return []
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {result.stderr.strip()}")
    return [line for line in result.stdout.splitlines() if line.strip()]


def refresh(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Update every record's state, exit code and reason from Slurm (in place)."""
    states = query([r["job_id"] for r in records])
    for record in records:
        record.update(states.get(record["job_id"], {"state": "UNKNOWN", "reason": None}))
    return records


def wait(
    records: list[dict[str, Any]], save: Callable[[list], None], poll_s: float = 30.0
) -> list[dict[str, Any]]:
    """Poll until no job is active; log every change of state and save the receipt."""
    seen: dict[str, str] = {}
    while True:
        refresh(records)
        save(records)
        for r in records:
            if seen.get(r["name"]) != r["state"]:
                seen[r["name"]] = r["state"]
                logger.info("%s (job %s): %s", r["name"], r["job_id"], describe(r))
        if not any(r["state"] in ACTIVE for r in records):
            return records
        time.sleep(poll_s)


def describe(record: dict[str, Any]) -> str:
    text = record["state"]
    if record.get("exit_code") not in (None, "0:0"):
        text += f" (exit {record['exit_code']})"
    if record.get("reason"):
        text += f" [{record['reason']}]"
    return text


def failures(records: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(jobs that failed, jobs cancelled because a job they depend on did not complete).

    The second kind is what ``--kill-on-invalid-dep=yes`` cancels; it is told apart by the
    receipt's dependencies, since sacct does not keep Slurm's reason.
    """
    state = {r["name"]: r["state"] for r in records}
    ended = [r for r in records if r["state"] not in ACTIVE and r["state"] != DONE]
    knock_on = [
        r for r in ended if r["state"] == "CANCELLED" and any(state[a] != DONE for a in r["after"])
    ]
    return [r for r in ended if r not in knock_on], knock_on


def read_receipt(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RuntimeError(f"cannot read the launch receipt {path}: {e}") from e
