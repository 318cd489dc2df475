"""``dnlrepro rehearse``: every stage of the paper/published run, in miniature, before GPU-days.

In a scratch copy of the workspace (the files git tracks plus untracked, unignored ones: the code
as it is on disk), ``dvc repro`` runs the profile's exact stage commands. Two things differ, and
both are listed in the output and in the receipt: the sizes (:mod:`~dnlrepro.rehearse.shrink`,
written into the copy's profile block) and where files come from (a mirror on 127.0.0.1,
:mod:`~dnlrepro.rehearse.mirror`). The workspace's own ``results/``, ``reports/``, ``dvc.lock``,
``mlflow.db`` and ``data/`` are never touched; the receipt and DVC's logs go to
``work_dirs/rehearse/<profile>/``.

Profile paper also kills the first training stage once, right after its first checkpoint, and
re-runs ``dvc repro``, which must resume it. Exit 0 only when every stage ran and every check of
:mod:`~dnlrepro.rehearse.checks` holds; otherwise the failing stage, its command and its log.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from configobj import ConfigObj

from dnlrepro.core import workspace
from dnlrepro.core.files import write_json
from dnlrepro.core.runs import config_of, parse_stage, stage
from dnlrepro.core.workspace import Workspace
from dnlrepro.launch.stages import stage_names
from dnlrepro.rehearse import checks, mirror, report, shrink, stages

logger = logging.getLogger(__name__)

PROFILES = ("paper", "published")
# Not copied when the workspace is not a git checkout (build outputs and local state).
_NOT_COPIED = {".git", ".venv", "data", "downloads", "work_dirs", "mlruns", "mlflow.db"}


def copy_workspace(src: Path, dest: Path) -> int:
    """Copy what a clone would hold: git's tracked + untracked-unignored files (as on disk).

    Returns the number of files copied; DVC in the copy is told there is no git (``no_scm``).
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=src, capture_output=True, check=False,
    )  # fmt: skip
    if listed.returncode == 0:
        files = sorted({f for f in listed.stdout.decode().split("\0") if (src / f).is_file()})
    else:  # not a git checkout: everything but local state and caches
        files = [
            str(p.relative_to(src))
            for p in src.rglob("*")
            if p.is_file()
            and p.relative_to(src).parts[0] not in _NOT_COPIED
            and "__pycache__" not in p.parts
            and p.relative_to(src).parts[:2] not in ((".dvc", "cache"), (".dvc", "tmp"))
        ]
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / f, dest / f)
    (dest / ".dvc").mkdir(exist_ok=True)
    config = ConfigObj(str(dest / ".dvc" / "config"))  # DVC's own reader and writer of the file
    config.setdefault("core", {})["no_scm"] = "true"
    config.write()
    venv = src / ".venv"
    if (venv / "bin" / "python").exists():  # pipeline/run.sh then picks it as in the workspace
        (dest / ".venv").symlink_to(venv.resolve(), target_is_directory=True)
    return len(files)


def stage_env(root: Path, served: mirror.Mirror, device: str) -> dict[str, str]:
    """The stages' environment: the workspace's, pointed at the copy and the mirror."""
    env = dict(os.environ)
    for name in ("DNLREPRO_WORKSPACE", "DNLREPRO_LOCAL_DATA", "DVC_ROOT"):
        env.pop(name, None)  # the copy, and the mirror -- never the user's data
    if not (root / ".venv" / "bin" / "python").exists():
        env.setdefault("DNLREPRO_PYTHON", sys.executable)
    # The copy's code runs (what DVC hashed), not an editable install's live folder.
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(root / "src"), env.get("PYTHONPATH")) if x)
    no_proxy = ",".join(x for x in (env.get("no_proxy"), "127.0.0.1", "localhost") if x)
    env.update(
        DNLREPRO_MIRROR=served.url,
        DNLREPRO_EXPECTED_SHA256=str(served.root / mirror.HASHES),
        CITYSCAPES_USERNAME=served.user,
        CITYSCAPES_PASSWORD=served.password,
        # One machine: torchrun picks a free port (the cluster's rendezvous options don't apply).
        DNLREPRO_TORCHRUN_ARGS="--standalone",
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        PYTHONUNBUFFERED="1",
        no_proxy=no_proxy,
        NO_PROXY=no_proxy,
    )
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _stage_device(profile: str, device: str, gpus: int) -> tuple[str, str]:
    """(device the stages use, why) -- NCCL needs one GPU per torchrun process."""
    if device != "cuda":
        return "cpu", "gloo on CPU" if profile == "paper" else "CPU"
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: CUDA is not available here; use --device cpu")
    visible = torch.cuda.device_count()
    if profile == "paper" and visible < gpus:
        return "cpu", (
            f"gloo on CPU: NCCL needs one GPU per process and only {visible} GPU(s) < --gpus "
            f"{gpus} are visible; the cost and fit tables are still measured on CUDA"
        )
    return "cuda", "NCCL on CUDA" if profile == "paper" else "CUDA"


def rehearse(
    ws: Workspace,
    profile: str,
    *,
    device: str = "cpu",
    gpus: int = 2,
    gpu_memory: float | None = None,
    keep: bool = False,
    out: Path | None = None,
    corrupt: tuple[str, ...] = (),
    timeout: float = 3600.0,
) -> int:
    """Run the rehearsal; print the stage table; write the receipt. Returns the exit code."""
    if profile not in PROFILES:
        raise ValueError(f"--profile {profile!r}: choose one of {', '.join(PROFILES)}")
    started = time.monotonic()
    out = Path(out) if out is not None else ws.work_dirs / "rehearse" / profile
    out.mkdir(parents=True, exist_ok=True)
    for old in [out / "receipt.json", *out.glob("dvc-repro-*.log")]:  # only our own files
        old.unlink(missing_ok=True)
    base = Path(tempfile.mkdtemp(prefix=f"dnlrepro-rehearse-{profile}-"))
    stage_device, device_note = _stage_device(profile, device, gpus)
    rec = report.Receipt(profile, device, stage_device, device_note, gpus, str(ws.root))
    rec.gpu_memory = gpu_memory
    try:
        _run(ws, rec, base, out, corrupt, timeout)
    except (OSError, ValueError, RuntimeError) as e:  # set-up failed before or between stages
        rec.failure = report.setup_failure(e)
    finally:
        rec.seconds = time.monotonic() - started
        rec.scratch = str(base) if keep else None
        write_json(out / "receipt.json", rec.to_dict())
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    print(report.render(rec, out / "receipt.json"))
    return 0 if rec.ok else 1


def _run(
    ws: Workspace, rec: report.Receipt, base: Path, out: Path, corrupt: tuple, timeout: float
) -> None:
    t = time.monotonic()
    root = base / "workspace"
    n = copy_workspace(ws.root, root)
    sws = Workspace(root.resolve())
    plan = shrink.plan(sws, rec.profile, rec.gpus)
    shrink.apply(sws, plan)
    rec.setup("copy workspace + shrink profile", f"{n} files -> {root}", time.monotonic() - t)
    rec.changes, rec.change_summary = plan.changes, shrink.summary(plan)
    t = time.monotonic()
    files = mirror.build(
        base / "mirror", sws, bool(plan.settings["train"]), plan.miniature.synthetic()
    )
    _corrupt(files, corrupt)
    rec.setup("build mirror miniatures", f"{len(files)} files", time.monotonic() - t)
    rec.mirror_files = [report.file_entry(f) for f in files]
    with mirror.serve(base / "mirror") as served:
        env = stage_env(root, served, rec.stage_device)
        rec.mirror_url, rec.environment = served.url, report.env_differences(env)
        expected = stage_names(root, env)
        configs = [k for kind, k in map(parse_stage, expected) if kind == "evaluate"]
        kill = _kill_plan(root, plan.victim) if plan.victim else None
        runs = [stages.run_dvc(root, env, out / "dvc-repro-1.log", 1, kill, timeout)]
        if kill is not None and kill.done:
            runs.append(stages.run_dvc(root, env, out / "dvc-repro-2.log", 2, None, timeout))
        rec.add_runs(runs)
        done = [s for r in runs for s in r.stages]
        rec.checks.append(checks.all_stages_ran(expected, done))
        rec.checks.append(checks.mirror_served(served, files))
    if not rec.checks[0].ok:
        rec.failure = report.failure(runs)
        return
    if kill is not None:
        rec.checks.append(checks.resumed(kill.stage, kill.done, runs[-1].stages))
        rec.checks.append(checks.sync_bn(done, rec.gpus))
    rec.checks.append(checks.verdicts(root))
    rec.checks.append(checks.check_command(root, env))
    rec.checks.append(checks.tables(root, configs))
    rec.checks.append(checks.mlflow_profile(root / "mlflow.db", rec.profile, configs))
    if plan.settings["train"]:  # the reference trajectories (rehearse/checks.py)
        trained = [k for kind, k in map(parse_stage, expected) if kind == "train"]
        rec.checks.append(checks.compared(root, trained))
        config = config_of(trained[0])
        check = checks.wrong_lr_stops(root, env, trained[0], config, rec.stage_device)
        rec.checks.append(check)
    report.add_costs(rec, ws, sws, configs)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _corrupt(files: list[mirror.MirrorFile], names: tuple[str, ...]) -> None:
    for name in names:
        match = [f for f in files if f.name == name]
        if not match:
            known = ", ".join(f.name for f in files)
            raise ValueError(f"--corrupt {name}: not a file of this mirror; choose from {known}")
        mirror.corrupt(match[0])


def _kill_plan(root: Path, config: str) -> stages.Kill:
    """Kill ``train@config`` as soon as its first checkpoint (``iter_1.pth``) exists."""
    scratch = root / "work_dirs" / config / "scratch"
    return stages.Kill(stage("train", config), lambda: any(scratch.glob("*/iter_1.pth")))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", required=True, choices=PROFILES)
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu: stages on CPU (gloo), cost estimated from FLOPs; cuda: stages on the GPUs "
        "(NCCL), cost measured at the real crop and batch",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        default=2,
        help="the layout of profile paper: torchrun processes (>= 2, dividing every row's global "
        "batch); the cost table and the per-GPU memory are for this many GPUs",
    )
    parser.add_argument(
        "--gpu-memory",
        type=float,
        default=None,
        help="without a GPU: the GPU memory (GB) the estimated layouts are judged against "
        "(default 80); with --device cuda the GPU's own",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy and mirror")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="receipt and DVC logs (default: <workspace>/work_dirs/rehearse/<profile>)",
    )
    parser.add_argument(
        "--corrupt",
        action="append",
        default=[],
        metavar="FILE",
        help="self-test: flip one byte of this mirror file after its hash was recorded; the "
        "rehearsal must then fail in the download stage",
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds per dvc repro (default 3600)"
    )


def main(args: argparse.Namespace) -> int:
    ws = workspace.find()
    logger.info("rehearsing profile %s of %s", args.profile, ws.root)
    return rehearse(
        ws,
        args.profile,
        device=args.device,
        gpus=args.gpus,
        gpu_memory=args.gpu_memory,
        keep=args.keep,
        out=args.out,
        corrupt=tuple(args.corrupt),
        timeout=args.timeout,
    )
