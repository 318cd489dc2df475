"""Which MLflow experiment and run a (configuration, seed) logs to, and what the run is called.

One MLflow run per (configuration, seed, profile): training creates it, evaluation of the same
checkpoint finds it by its tags and adds the test-set numbers, so ``mlflow ui``'s runs table has
one sortable row per run instead of a train row and an evaluate row (docs/pipeline.md, "MLflow").

How MLflow 3.17's web UI decides what an experiment page shows (read in the UI bundle of the
wheel, ``mlflow/server/js``, and checked in headless chromium, tests/test_mlflow_server.py):

* the page follows a workflow switch, GenAI (the default: an "Overview" of traces, no runs) or
  "Model training"; the URL parameter ``workflowType=machine_learning`` selects the latter, and
  the switch in the sidebar remembers it in the browser. The experiment tag
  ``mlflow.experimentKind = custom_model_development`` marks a model-training experiment (older
  3.x UIs, and the UI's own inference when the switch is not there); it is set too;
* the runs table shows no metric column until one is chosen, but a *shared view* -- an
  experiment tag ``mlflow.sharedViewState.<key>`` holding the view as JSON, opened with
  ``?viewStateShareKey=<key>`` -- chooses columns and the sort. :func:`view_url` is that link:
  the headline metrics as columns, best mIoU first.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

logger = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
VIEW_KEY = "dnlrepro"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
# The runs table's columns, in this order: what a reader compares first (in a 1,400 px window
# the first four fit beside the name), then the seed; MLflow would sort them alphabetically.
VIEW_METRICS = (
    "mIoU",
    "delta_mIoU",
    "published_mIoU",
    "mIoU_ms_flip",
    "delta_mIoU_ms_flip",
    "baseline_mIoU",
    "train_s",
)
_COLUMNS = [f"metrics.`{m}`" for m in VIEW_METRICS] + ["tags.`seed`"]
VIEW_STATE = {
    "selectedColumns": _COLUMNS,
    "columnOrder": ["tags.`mlflow.runName`", *_COLUMNS],
    "orderByKey": "metrics.`mIoU`",
    "orderByAsc": False,
}
NAME_MAX = 30  # MLflow's runs table shows about this many characters of a run name

# dnl_r50-d8_512x1024_40k_cityscapes -> r50, 512x1024, 40k (the dataset is the experiment)
_CONFIG = re.compile(r"^(?:dnl_)?(?P<backbone>r\d+)-d\d+_(?P<crop>\d+x\d+)_(?P<iters>\d+k)_\w+$")


def run_name(config: str, seed: int, profile: str) -> str:
    """``r50 512x1024 40k s1``, plus `` smoke`` outside the paper profile; at most 30 chars.

    What differs between the rows of one experiment (backbone, crop, schedule) comes first, then
    the seed, so names stay apart where the runs table cuts them.
    """
    m = _CONFIG.match(config)
    head = f"{m['backbone']} {m['crop']} {m['iters']}" if m else config.removeprefix("dnl_")
    tail = f" s{seed}" + ("" if profile == "paper" else f" {profile}")
    return head[: NAME_MAX - len(tail)] + tail


def experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name`` (created when missing), tagged as a model-training one."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id, tags = client.create_experiment(name, artifact_location=artifact_location), {}
        except Exception:
            # Another process created it between our lookup and create (parallel stages).
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp is not None:
        exp_id, tags = exp.experiment_id, exp.tags
    view = json.dumps(VIEW_STATE, separators=(",", ":"))
    # also on experiments created by older versions of this code
    for key, value in ((EXPERIMENT_KIND_TAG, EXPERIMENT_KIND), (VIEW_TAG, view)):
        if tags.get(key) == value:
            continue
        try:
            client.set_experiment_tag(exp_id, key, value)
        except Exception as e:  # parallel stages set the same tag: the run matters, not this
            logger.debug("experiment tag %s of %s not set: %s", key, name, e)
    return exp_id


def view_url(base: str, exp_id: str) -> str:
    """The experiment's runs table as :data:`VIEW_STATE` arranges it, on the MLflow UI at
    ``base`` (e.g. ``http://127.0.0.1:5000`` of ``mlflow ui``)."""
    query = f"viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"
    return f"{base.rstrip('/')}/#/experiments/{exp_id}/runs?{query}"


def find_run(client: Any, exp_id: str, config: str, seed: int, profile: str) -> Any | None:
    """The newest training run of (config, seed, profile) in the experiment, or None."""
    query = (
        f"tags.config = '{config}' and tags.seed = '{seed}' and tags.profile = '{profile}' "
        "and tags.trained = 'true'"
    )
    found = client.search_runs(
        [exp_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"]
    )
    return found[0] if found else None


def resumed_run(
    client: Any, run_id: str, exp_id: str, config: str, seed: int, profile: str
) -> Any | None:
    """The run ``run_id`` if this store holds it as (config, seed, profile)'s training run in
    the experiment, else None (logged: e.g. the checkpoint came from another machine's store)."""
    try:
        run = client.get_run(run_id)
    except Exception as e:  # MLflow raises its own "not found" error
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        logger.info("MLflow run %s of the resumed checkpoint is not in this store (%s): "
                    "a new run starts", run_id, first)  # fmt: skip
        return None
    want = {"config": config, "seed": str(seed), "profile": profile, "trained": "true"}
    got = {k: run.data.tags.get(k) for k in want}
    if run.info.experiment_id != exp_id or got != want:
        logger.info("MLflow run %s of the resumed checkpoint is another run's (%s): a new run "
                    "starts", run_id, got)  # fmt: skip
        return None
    return run
