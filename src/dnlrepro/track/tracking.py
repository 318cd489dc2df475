"""MLflow tracking: one small adapter, used by training and evaluation (rank 0 only).

Behaviour verified on this machine (MLflow 3.17.2, DVC 3.67.1):

* the tracking URI is always absolute -- ``$MLFLOW_TRACKING_URI``, else
  ``sqlite:///<$DVC_ROOT or the workspace root>/mlflow.db`` -- because MLflow's default
  ``sqlite:///mlflow.db`` is relative to the current directory and DVC stages / queued experiments
  run elsewhere. ``$DVC_ROOT`` names the parent repository even in a queued experiment's copy, so
  every experiment writes to the one shared store (:mod:`dnlrepro.core.workspace`);
* a fresh sqlite DB must be created and migrated once before parallel stages start (concurrent
  first use races in Alembic): ``dnlrepro mlflow-init`` does that;
* only a *missing* DB is ever created: an existing one that is empty, truncated or otherwise
  damaged fails the stage (:class:`StoreError`, :func:`check_store`; why: :mod:`.store`);
* artifacts are stored next to the DB (``<db dir>/mlruns``), never in the current directory;
* MLflow is a view, not the source of truth: every call here catches its exception and logs a
  WARNING once per kind of call, so a tracking failure never ends a multi-day training run
  (a damaged store is checked before the run starts and when it ends, and does fail it);
* ``import mlflow`` takes seconds, so it happens only when a :class:`Tracker` starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from dnlrepro.core import workspace
from dnlrepro.core.config import Config
from dnlrepro.track import runs
from dnlrepro.track.store import StoreError as StoreError  # re-exported: callers import it here
from dnlrepro.track.store import check_store, init_db, sqlite_path, tracking_uri

logger = logging.getLogger(__name__)

PARAM_MAX_CHARS = 500  # the conservative MLflow param value limit (older servers reject more)
_METRIC_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /:]")


# What the pipeline itself writes while it runs: a change there does not make the code dirty
# (the prepare stage rewrites dvc.lock before any training starts).
_OUTPUTS = tuple(f":(exclude){p}" for p in ("dvc.lock", "results", "reports", "timings"))


def git_state(root: Path) -> tuple[str, bool | None]:
    """(commit sha or "unknown", dirty flag or None when git is unavailable) of ``root``.

    Dirty means a tracked file differs from the commit, leaving out the pipeline's own outputs
    (``dvc.lock``, ``results/``, ``reports/``, ``timings/``), so the flag says whether the code
    and parameters that produced the run are the committed ones.
    """

    def git(timeout: int, *args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=timeout, check=True
        )
        return done.stdout.strip()

    try:
        sha = git(10, "rev-parse", "HEAD")
        return sha, bool(
            git(30, "status", "--porcelain", "--untracked-files=no", "--", ".", *_OUTPUTS)
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def metric_key(name: str) -> str:
    """An MLflow-safe metric key (class names may hold characters MLflow rejects)."""
    return _METRIC_KEY_BAD.sub("_", name.strip())


class Tracker:
    """The MLflow run of one (configuration, seed) as a context manager; a no-op when
    ``enabled`` is False (non-zero ranks).

    Args:
        cfg: the resolved config: experiment = ``cfg.data.dataset``, params = ``cfg.flat()``.
        stage: ``"train"`` starts a new run named by :func:`dnlrepro.track.runs.run_name`
            (with ``resume``: goes on in the interrupted one); any other stage
            (``"evaluate"``) joins the newest training run of the same configuration, seed
            and profile (:func:`dnlrepro.track.runs.find_run`), or starts one when there is
            none (a published checkpoint).
        enabled: False on every rank but 0, or when the user turns tracking off.
        resume: the run id that a resumed training's checkpoint recorded. That run goes on (its
            ``train_count`` tag counts the sessions) when this store holds it as the training
            run of the same configuration, seed and profile; else a new run starts (logged).

    Every method swallows its exception and logs one WARNING per method name, so tracking never
    ends a run. When the run cannot be started at all, the tracker disables itself. The one
    exception: a damaged sqlite store (:func:`check_store`), on entry and on a clean exit,
    raises :class:`StoreError`, so the stage fails instead of losing the record.
    """

    def __init__(
        self,
        cfg: Config,
        stage: str,
        enabled: bool = True,
        started: float | None = None,
        resume: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.stage = stage
        self.enabled = enabled
        self.started = started  # time.time() when the work began (default: now)
        self.resume = resume  # run id of the interrupted training this one continues
        self.uri = tracking_uri()
        self.run_id: str | None = None
        # how many times this stage logged into the run before: a re-evaluation logs its
        # metrics at the next step, so no step of a metric's history is logged twice
        self.repeat = 0
        self._client: Any = None
        self._warned: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Tracker:
        if self.enabled:
            check_store(self.uri)
            self._guard("start", self._start)
            if self.run_id is None:
                self.enabled = False
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self.run_id is None:
            return
        status = "FINISHED" if exc_type is None else "FAILED"
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        self._guard("end", lambda: self._client.set_terminated(self.run_id, status=status))
        if exc_type is None:
            check_store(self.uri)  # damaged while the run was logging: its record is gone

    def _start(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        cfg, seed = self.cfg, self.cfg.schedule.seed
        db = sqlite_path(self.uri)  # artifacts in mlruns/ next to a sqlite DB, absolute
        artifacts = None if db is None else (db.parent / "mlruns").resolve().as_uri()
        exp_id = runs.experiment_id(client, cfg.data.dataset, artifacts)
        found = None
        if self.resume:  # a resumed training goes on in the run its checkpoint names
            found = runs.resumed_run(client, self.resume, exp_id, cfg.name, seed, cfg.profile)
        elif self.stage != "train":  # evaluation joins its training's run (one row per run)
            found = runs.find_run(client, exp_id, cfg.name, seed, cfg.profile)
        self._client = client
        stage_tags = {f"dvc.stage.{self.stage}": os.environ.get("DVC_STAGE", "") or "none"}
        if found is not None:
            self._join(found, stage_tags)
        else:
            self._create(exp_id, stage_tags)

    def _join(self, found: Any, stage_tags: dict[str, str]) -> None:
        """Add this stage to the existing run ``found`` (its status is RUNNING until exit)."""
        self.run_id = found.info.run_id
        stages = [x for x in found.data.tags.get("stages", "").split(",") if x]
        stage_tags["stages"] = ",".join(dict.fromkeys([*stages, self.stage]))
        self.repeat = int(found.data.tags.get(f"{self.stage}_count", "0") or 0)
        stage_tags[f"{self.stage}_count"] = str(self.repeat + 1)
        self._client.update_run(self.run_id, status="RUNNING")
        self.set_tags(stage_tags)
        how = "the resumed training goes on in it" if self.resume else f"{self.stage} joins it"
        logger.info("MLflow run %s (%s): %s", self.run_id, found.info.run_name, how)

    def _create(self, exp_id: str, stage_tags: dict[str, str]) -> None:
        """A new run for this (configuration, seed), named and tagged, with the config as params."""
        cfg, seed, client = self.cfg, self.cfg.schedule.seed, self._client
        commit, dirty = git_state(workspace.find().root)
        name = runs.run_name(cfg.name, seed, cfg.profile)
        tags = {
            "config": cfg.name,  # the row: its seeds' runs share it (Group by -> tags.config)
            "seed": str(seed),
            "dataset": cfg.data.dataset,
            "profile": cfg.profile,
            "stages": self.stage,
            f"{self.stage}_count": "1",
            "trained": str(self.stage == "train").lower(),
            "git_commit": commit,
            "git_dirty": str(dirty).lower() if dirty is not None else "unknown",
            **stage_tags,
            "mlflow.runName": name,
        }
        start_ms = int(self.started * 1000) if self.started is not None else None
        run = client.create_run(exp_id, start_time=start_ms, run_name=name, tags=tags)
        self.run_id = run.info.run_id
        logger.info(
            "MLflow run %s (%s) in experiment %r at %s; to browse: mlflow ui --backend-store-uri "
            "%s, then %s",
            self.run_id, name, cfg.data.dataset, self.uri, self.uri,
            runs.view_url("http://127.0.0.1:5000", exp_id),
        )  # fmt: skip
        self.log_params(cfg.flat())

    # -- logging API ----------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        rows = [(k, str(v)[:PARAM_MAX_CHARS]) for k, v in params.items()]
        self._call("log_params", lambda: self._log_batch(params=rows))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call("set_tags", lambda: self._log_batch(tags=[(k, str(v)) for k, v in tags.items()]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        def call() -> None:
            now = int(time.time() * 1000)
            rows = [(metric_key(k), float(v), now, step or 0) for k, v in metrics.items()]
            self._log_batch(metrics=rows)

        self._call("log_metrics", call)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._call(
            "log_artifact",
            lambda: self._client.log_artifact(self.run_id, str(path), artifact_path),
        )

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """JSON, or YAML when ``artifact_file`` ends in .yaml/.yml (MLflow decides by suffix)."""
        self._call("log_dict", lambda: self._client.log_dict(self.run_id, obj, artifact_file))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", lambda: self._client.log_text(self.run_id, text, artifact_file))

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        self._call("log_figure", lambda: self._client.log_figure(self.run_id, fig, artifact_file))

    def log_plot(self, kind: str, data: Any, artifact_file: str) -> None:
        """A PNG of :mod:`dnlrepro.track.figures` (``kind``: ``training_curves`` or
        ``per_class_iou``) titled with the run's name; nothing is drawn when tracking is off."""

        def call() -> None:
            from dnlrepro.track import figures

            title = runs.run_name(self.cfg.name, self.cfg.schedule.seed, self.cfg.profile)
            fig = getattr(figures, kind)(data, title)
            try:
                self._client.log_figure(self.run_id, fig, artifact_file)
            finally:
                figures.close(fig)

        self._call("log_plot", call)

    # -- internals ------------------------------------------------------------------------
    def _log_batch(self, **rows: list[tuple[Any, ...]]) -> None:
        from mlflow import entities

        kinds = {"params": entities.Param, "tags": entities.RunTag, "metrics": entities.Metric}
        batch = {k: [kinds[k](*row) for row in v] for k, v in rows.items()}
        self._client.log_batch(self.run_id, **batch)

    def _call(self, kind: str, fn: Any) -> None:
        if not self.enabled or self.run_id is None:
            return
        self._guard(kind, fn)

    def _guard(self, kind: str, fn: Any) -> None:
        try:
            fn()
        except Exception as e:  # tracking must never end a run
            if kind not in self._warned:
                self._warned.add(kind)
                logger.warning(
                    "MLflow %s failed (%s: %s) at %s; training continues without it "
                    "(further %s failures are logged at DEBUG level)",
                    kind,
                    type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "",
                    self.uri,
                    kind,
                )
            else:
                logger.debug("MLflow %s failed again: %s", kind, e)


# -- `dnlrepro mlflow-init` -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--uri",
        default=None,
        help="tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<workspace>/mlflow.db)",
    )


def main(args: argparse.Namespace) -> int:
    uri = init_db(args.uri)
    logger.info("MLflow tracking store ready: %s", uri)
    print(uri)
    return 0
