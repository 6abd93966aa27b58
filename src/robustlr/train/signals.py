"""Graceful stops: SIGINT / SIGTERM become a request the training loop honours at a batch boundary.

While :class:`StopSignals` is active, the first SIGINT or SIGTERM is only recorded; the trainer polls
:attr:`StopSignals.signum` after every batch and every epoch, saves a resumable state and raises
:class:`TrainingInterrupted`. Inside :meth:`StopSignals.immediate` (phases with nothing to save, like the
final evaluation) a signal raises at once. Handlers can only be installed from the main thread; elsewhere the
guard does nothing and signals keep their usual effect.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

__all__ = ["StopSignals", "TrainingInterrupted", "signal_name"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving its state.

    The message says what happened and where the state is, not how to continue: that depends on the caller
    (``robustlr train --resume``, ``train(..., resume=True)``, rerunning the demo), which adds it.

    Attributes:
        signum: the signal's number.
        path: the file or directory holding the state to continue from (``None`` if not given).
    """

    def __init__(self, signum: int, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.signum = signum
        self.path = path


class StopSignals:
    """Context manager that turns SIGINT/SIGTERM into a stop request (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._raise: Callable[[int], BaseException] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in _SIGNALS}
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if self._raise is not None:
            raise self._raise(signum)

    @contextmanager
    def immediate(self, error: Callable[[int], BaseException]) -> Iterator[None]:
        """Within this block a signal (or one already pending) raises ``error(signum)`` at once."""
        if self.signum is not None:
            raise error(self.signum)
        self._raise = error
        try:
            yield
        finally:
            self._raise = None


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15, etc."""
    return signal.Signals(signum).name
