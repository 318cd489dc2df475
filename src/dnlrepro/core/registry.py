"""The registry of configurations: ``params/published.yaml``, one entry per row of the table.

§ numbers refer to docs/reference.md.

Each entry names a configuration (its ``params/<name>.yaml`` holds the numbers of the run), its
dataset, the published checkpoint (URL + sha256 prefix) and the published numbers with their
tolerances. Everything that lists the rows derives from here: ``dvc.yaml``'s ``foreach``
(``vars: params/published.yaml``), :func:`config_names`, the checkpoint download table, the tables
and the diff. Adding a row is one params file plus one entry here (docs/pipeline.md).

Every number of the mmseg 0.x DNLNet README (docs/reference.md §6.1) is recorded with its source,
the metric definition and the protocol of the published run. A README ``-`` cell is ``null`` with a
note; it never becomes a number. Tolerances default per metric (0.5 mIoU points, OpenMMLab's
regression range, §7) and may be widened per configuration and profile only with a reason.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dnlrepro.core import workspace
from dnlrepro.core.workspace import Workspace

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("cityscapes", "ade20k")

# The metrics of the README table, in the order the diff report lists them.
METRICS: tuple[str, ...] = ("mIoU", "mIoU_ms_flip", "mem_gb", "fps")
# Per-configuration descriptive keys (the table's first columns).
ROW_KEYS: tuple[str, ...] = ("dataset", "method", "backbone", "crop_size", "lr_schd")

# §2.2: the ImageNet backbones of ``model.backbone.pretrained`` (mmcv v1.7.2
# model_zoo/open_mmlab.json; the v1.1.1 host was openmmlab.oss-accelerate). ``dnlrepro download
# --what pretrained`` fetches them into ``downloads/``, where training looks (pretrained_file).
PRETRAINED_URLS: dict[str, str] = {
    "resnet50_v1c": "https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth",
    "resnet101_v1c": "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth",
}


class PublishedError(ValueError):
    """``params/published.yaml`` is malformed or lacks an entry; the message says where."""


@dataclass(frozen=True)
class Tolerance:
    value: float | None  # absolute, in the metric's unit; None = not comparable
    reason: str


@dataclass(frozen=True)
class PublishedEntry:
    name: str
    dataset: str
    method: str
    backbone: str
    crop_size: str  # "HxW" as the README writes it
    lr_schd: int
    protocol: dict[str, Any]
    metrics: dict[str, float | None]  # None = README '-' (not published)
    notes: dict[str, str]
    checkpoint: str
    sha256_prefix: str
    log: str
    tolerance_overrides: dict[str, dict[str, Tolerance]] = field(default_factory=dict)


@dataclass(frozen=True)
class Published:
    path: Path
    source: dict[str, str]
    definitions: dict[str, str]
    tolerances: dict[str, Tolerance]  # per metric defaults
    configs: dict[str, PublishedEntry]

    def entry(self, name: str) -> PublishedEntry:
        """The entry of ``name``; a missing entry is an error (the diff never skips a row)."""
        if name not in self.configs:
            raise PublishedError(
                f"{self.path}: no published entry for configuration {name!r} (key "
                f"'configs.{name}'); add its README numbers (null for '-' cells) before "
                "comparing it"
            )
        return self.configs[name]

    def tolerance(self, name: str, metric: str, profile: str) -> Tolerance:
        """Tolerance of ``metric`` for ``name`` under ``profile`` (override, else default)."""
        override = self.entry(name).tolerance_overrides.get(profile, {}).get(metric)
        return override if override is not None else self.tolerances[metric]


def _need(mapping: Any, key: str, where: str, path: Path) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise PublishedError(f"{path}: missing key '{where}{key}'")
    return mapping[key]


def _tolerance(raw: Any, where: str, path: Path) -> Tolerance:
    value = _need(raw, "value" if "value" in (raw or {}) else "tolerance", where, path)
    reason = _need(raw, "reason", where, path)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise PublishedError(f"{path}: key '{where}' must be a number or null, got {value!r}")
    if value is not None and value < 0:
        raise PublishedError(f"{path}: key '{where}' must be >= 0, got {value!r}")
    if not isinstance(reason, str) or not reason.strip():
        raise PublishedError(f"{path}: key '{where}reason' must explain the tolerance")
    return Tolerance(None if value is None else float(value), " ".join(reason.split()))


def _entry(name: str, raw: Any, path: Path) -> PublishedEntry:
    where = f"configs.{name}."
    for key in (*ROW_KEYS, "protocol", "metrics", "checkpoint", "sha256_prefix", "log"):
        _need(raw, key, where, path)
    if raw["dataset"] not in DATASETS:
        raise PublishedError(
            f"{path}: '{where}dataset' is {raw['dataset']!r}; choose one of {', '.join(DATASETS)}"
        )
    metrics = raw["metrics"]
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise PublishedError(
            f"{path}: unknown metric(s) {sorted(unknown)} under '{where}metrics'; "
            f"allowed: {', '.join(METRICS)}"
        )
    values: dict[str, float | None] = {}
    notes = dict(raw.get("notes") or {})
    for metric in METRICS:
        value = _need(metrics, metric, f"{where}metrics.", path)
        if value is None and metric not in notes:
            raise PublishedError(
                f"{path}: '{where}metrics.{metric}' is null but '{where}notes.{metric}' does "
                "not say why; write the reason (e.g. README cell '-')"
            )
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise PublishedError(f"{path}: '{where}metrics.{metric}' must be a number or null")
        values[metric] = None if value is None else float(value)
    overrides: dict[str, dict[str, Tolerance]] = {}
    for profile, per_metric in (raw.get("tolerance") or {}).items():
        overrides[profile] = {
            m: _tolerance(t, f"{where}tolerance.{profile}.{m}.", path)
            for m, t in (per_metric or {}).items()
        }
    expected_log = log_url_of(str(raw["checkpoint"]), name)
    if raw["log"] != expected_log:
        raise PublishedError(
            f"{path}: '{where}log' is {raw['log']!r}; the training log of this checkpoint is "
            f"{expected_log!r} (same folder and timestamp, a hyphen before it, docs/reference.md "
            "§6.1)"
        )
    return PublishedEntry(
        name=name,
        dataset=str(raw["dataset"]),
        method=str(raw["method"]),
        backbone=str(raw["backbone"]),
        crop_size=str(raw["crop_size"]),
        lr_schd=int(raw["lr_schd"]),
        protocol=dict(raw["protocol"]),
        metrics=values,
        notes={k: " ".join(str(v).split()) for k, v in notes.items()},
        checkpoint=str(raw["checkpoint"]),
        sha256_prefix=str(raw["sha256_prefix"]),
        log=str(raw["log"]),
        tolerance_overrides=overrides,
    )


def log_url_of(checkpoint: str, name: str) -> str:
    """The training log next to a published checkpoint: ``<dir>/<name>_<stamp>-<hash>.pth`` ->
    ``<dir>/<name>-<stamp>.log.json`` (the same timestamp, a hyphen before it; §6.1)."""
    folder, _, file = checkpoint.rpartition("/")
    match = re.fullmatch(rf"{re.escape(name)}_(\d{{8}}_\d{{6}})-[0-9a-f]{{8}}\.pth", file)
    if match is None:
        raise PublishedError(
            f"checkpoint URL {checkpoint!r} does not end in '{name}_<YYYYMMDD_HHMMSS>-<sha256[:8]>"
            ".pth'; the log URL is derived from its timestamp"
        )
    return f"{folder}/{name}-{match.group(1)}.log.json"


def load_published(path: str | Path | None = None) -> Published:
    """Read and validate the registry (default: the workspace's ``params/published.yaml``).

    Raises:
        FileNotFoundError: the file does not exist.
        PublishedError: a key is missing, a value has the wrong type, or a null has no note.
    """
    path = Path(path) if path is not None else workspace.find().registry_file
    if not path.is_file():
        raise FileNotFoundError(f"published numbers file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PublishedError(f"{path}: not valid YAML: {e}") from e
    metrics_raw = _need(raw, "metrics", "", path)
    tolerances = {}
    definitions = {}
    for metric in METRICS:
        block = _need(metrics_raw, metric, "metrics.", path)
        definitions[metric] = " ".join(
            str(_need(block, "definition", f"metrics.{metric}.", path)).split()
        )
        tolerances[metric] = _tolerance(block, f"metrics.{metric}.", path)
    configs_raw = _need(raw, "configs", "", path)
    configs = {name: _entry(name, body, path) for name, body in configs_raw.items()}
    logger.debug("loaded %d published entries from %s", len(configs), path)
    return Published(
        path=path,
        source={k: str(v) for k, v in _need(raw, "source", "", path).items()},
        definitions=definitions,
        tolerances=tolerances,
        configs=configs,
    )


def pretrained_file(name: str, ws: Workspace | None = None) -> Path:
    """Where the download stage keeps backbone ``name``: ``downloads/resnet50_v1c-2cccc1ad.pth``."""
    if name not in PRETRAINED_URLS:
        raise PublishedError(
            f"unknown pretrained backbone {name!r}; known: {', '.join(PRETRAINED_URLS)}"
        )
    return (ws or workspace.find()).downloads / PRETRAINED_URLS[name].rsplit("/", 1)[-1]


def config_names(ws: Workspace | None = None) -> tuple[str, ...]:
    """The rows, in the README's order (the order of the registry file)."""
    return tuple(load_published((ws or workspace.find()).registry_file).configs)


def names_of(dataset: str, ws: Workspace | None = None) -> tuple[str, ...]:
    """The rows of one dataset, in the README's order."""
    rows = load_published((ws or workspace.find()).registry_file).configs
    return tuple(name for name, row in rows.items() if row.dataset == dataset)
