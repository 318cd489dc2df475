"""Stop a training run cleanly on a scheduler's signal: checkpoint first, then stop.

A batch scheduler warns a job before its time limit (Slurm: ``sbatch --signal``) and preempts or
cancels it with SIGTERM, followed by SIGKILL after a grace period. With
``DNLREPRO_STOP_SIGNALS=USR1,TERM`` in the environment (the job scripts of
``dnlrepro launch --backend slurm`` set it), :func:`dnlrepro.engine.train.train` catches those
signals: the iteration in progress finishes, every rank agrees to stop at the same iteration,
the resume checkpoint is written and :class:`PreemptedError` is raised. The next run of the
stage resumes from that checkpoint (:mod:`dnlrepro.engine.resume`). Without the variable nothing
is installed and the signals keep their default effect.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from dnlrepro.engine import distributed
from dnlrepro.engine.distributed import DistInfo

logger = logging.getLogger(__name__)

ENV_VAR = "DNLREPRO_STOP_SIGNALS"


class PreemptedError(RuntimeError):
    """Training stopped on a signal after saving its resume checkpoint; re-running resumes."""


def parse_signals(text: str) -> list[signal.Signals]:
    """``"USR1,TERM"`` -> ``[SIGUSR1, SIGTERM]`` (names with or without the ``SIG`` prefix)."""
    out = []
    for name in filter(None, (part.strip().upper() for part in text.split(","))):
        try:
            out.append(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
        except KeyError:
            raise ValueError(
                f"{ENV_VAR}={text!r}: {name!r} is not a signal name; write e.g. USR1,TERM"
            ) from None
    return out


class StopOnSignal:
    """Context manager: while active, the signals in ``$DNLREPRO_STOP_SIGNALS`` set a flag.

    :meth:`requested` is a collective when the run is distributed (all ranks call it once per
    iteration), so ranks that received the signal at different iterations still stop together.
    """

    def __init__(self, signals: list[signal.Signals] | None = None) -> None:
        if signals is None:
            signals = parse_signals(os.environ.get(ENV_VAR, ""))
        # Handlers can only be installed from the main thread (e.g. not in a test's worker).
        self.signals = signals if threading.current_thread() is threading.main_thread() else []
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            logger.warning(
                "%s received: stopping after this iteration", signal.Signals(signum).name
            )
        self.received = signal.Signals(signum)

    def __enter__(self) -> StopOnSignal:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def requested(self, info: DistInfo) -> bool:
        """True on every rank once any rank received one of the signals."""
        if not self.signals:
            return False
        return distributed.reduce_max(float(self.received is not None), info) > 0

    def error(self, iteration: int, max_iters: int) -> PreemptedError:
        name = self.received.name if self.received else "a signal of another rank"
        return PreemptedError(
            f"stopped by {name} at iteration {iteration}/{max_iters} after writing the resume "
            "checkpoint; run the stage again to resume from it"
        )
