"""The tracking store: where it is, creating it once, and refusing a sqlite one that exists but
is damaged (never recreated over).

sqlite would take an empty file for a new database and MLflow would migrate it, and a truncated
one would only cost a WARNING: either way every run recorded so far would be gone without a word.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from dnlrepro.core import workspace

logger = logging.getLogger(__name__)


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the absolute ``sqlite:///.../mlflow.db`` in ``$DVC_ROOT``
    inside a DVC stage, else in the workspace."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    dvc_root = os.environ.get("DVC_ROOT")
    root = Path(dvc_root).resolve() if dvc_root else workspace.find().root
    return f"sqlite:///{root / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None: another kind of store)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


class StoreError(RuntimeError):
    """The sqlite tracking store exists but is damaged; it is never recreated over."""


def check_store(uri: str) -> None:
    """Refuse a sqlite store that exists but is empty, truncated or otherwise not a database.

    A missing file is fine (:func:`init_db` creates it); other stores (servers) are not checked.

    Raises:
        StoreError: naming the file and how to recover.
    """
    db = sqlite_path(uri)
    if db is None or not db.exists():
        return
    problem = _damage(db)
    if problem is not None:
        raise StoreError(
            f"the MLflow store {db} is {problem}; it is never recreated over, so that the runs "
            f"it recorded are not lost silently. Restore it from a backup, or move it away "
            f"(mv {db} {db}.broken) and run `dnlrepro mlflow-init` to start a new, empty store"
        )


def _damage(db: Path) -> str | None:
    """What is wrong with the existing file ``db``, or None when sqlite reads it intact."""
    if not db.is_file():
        return "not a file"
    if db.stat().st_size == 0:
        return "empty (0 bytes)"
    try:
        # mode=rw: never creates the file, and lets sqlite roll back a crashed writer's journal
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=rw", uri=True, timeout=60)
        try:
            found = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e):  # a writer held it for a minute: busy, not damaged
            logger.warning("could not check the MLflow store %s: %s", db, e)
            return None
        return f"unreadable ({e}; {db.stat().st_size} bytes)"
    except sqlite3.DatabaseError as e:
        return f"damaged or truncated ({e}; {db.stat().st_size} bytes)"
    if found != [("ok",)]:
        return f"damaged (sqlite quick_check: {found[0][0]})"
    return None


def init_db(uri: str | None = None) -> str:
    """Create (or migrate) the store at ``uri`` (default :func:`tracking_uri`) once; its URI.

    Raises:
        StoreError: the sqlite file exists but is empty or damaged (:func:`check_store`).
        RuntimeError: when MLflow cannot open the store (the message names the URI).
    """
    uri = uri or tracking_uri()
    check_store(uri)  # an existing store is migrated, never replaced
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    from mlflow.tracking import MlflowClient

    try:
        # Opening the sqlite store runs the Alembic migrations; a query proves it works.
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:
        raise RuntimeError(
            f"cannot open the MLflow tracking store {uri!r}: {e}. Set MLFLOW_TRACKING_URI to a "
            "writable sqlite:////abs/path/mlflow.db"
        ) from e
    return uri
