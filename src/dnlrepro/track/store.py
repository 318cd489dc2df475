"""The sqlite tracking store: refuse one that exists but is damaged, never recreate over it.

sqlite would take an empty file for a new database and MLflow would migrate it, and a truncated
one would only cost a WARNING: either way every run recorded so far would be gone without a word.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

logger = logging.getLogger(__name__)


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


class StoreError(RuntimeError):
    """The sqlite tracking store exists but is damaged; it is never recreated over."""


def check_store(uri: str) -> None:
    """Refuse a sqlite store that exists but is empty, truncated or otherwise not a database.

    A missing file is fine (:func:`init_db` creates it); other stores (servers) are not checked.

    Raises:
        StoreError: naming the file and how to recover.
    """
    db = _sqlite_path(uri)
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


def artifact_location(uri: str) -> str | None:
    """Where new experiments keep artifacts: ``mlruns/`` next to a sqlite DB (absolute)."""
    db = _sqlite_path(uri)
    if db is None:
        return None  # a server or other store decides itself
    return (db.parent / "mlruns").resolve().as_uri()


def init_db(uri: str) -> str:
    """Create (or migrate) the tracking store once; returns the URI used.

    Raises:
        StoreError: the sqlite file exists but is empty or damaged (:func:`check_store`).
        RuntimeError: when MLflow cannot open the store (the message names the URI).
    """
    check_store(uri)  # an existing store is migrated, never replaced
    db = _sqlite_path(uri)
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


__all__ = ["StoreError", "artifact_location", "check_store", "init_db"]
