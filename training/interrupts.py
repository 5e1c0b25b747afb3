"""SIGINT (Ctrl-C) and SIGTERM (what SLURM sends before it kills a job) while a run is on.

What a signal does depends on what the run is doing (:attr:`Signals.phase`):

- ``setup``: stop at once (nothing has been written yet).
- ``train``: finish the step under way, write a checkpoint inside the epoch, stop. A second
  signal stops at once: the steps since the last checkpoint are lost.
- ``test`` (a training epoch's test pass): stop before the next test batch, write the epoch's
  trained weights as a checkpoint inside the epoch (its test pass runs again on resume), stop.
  Further signals change nothing: the weights are saved first.
- ``save`` (a checkpoint being written): noted; the run stops once the file is written.
- ``evaluate`` (``--evaluate``): stop before the next test batch; a second signal stops at once.
- ``finish`` (every epoch is saved; the table, curves and statistics follow): stop at once.

The handler itself only notes the signal, or raises :class:`Interrupted` where the list says
"at once"; the engine looks at :attr:`Signals.signum` after each training step, before each
test batch and after each epoch's checkpoint, and under DDP takes the maximum over all
processes, so that all stop at the same step.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

# After how many signals a phase stops at once (None: never; the run stops where it may).
_AT_ONCE = {"setup": 1, "train": 2, "test": None, "save": None, "evaluate": 2, "finish": 1}


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run. ``status`` is the exit status of a process killed by
    that signal (130, 143); ``message`` says where it stopped and how to resume (empty when the
    signal stopped the run at once: the engine words it from the phase)."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or signal.Signals(signum).name)
        self.status, self.message = 128 + signum, message


class Signals:
    """The signals a run has received: ``signum`` is the first one's number (0: none yet),
    ``phase`` what the run is doing (see the module's list)."""

    def __init__(self) -> None:
        self.signum = self.received = 0
        self.phase = "setup"

    def _handle(self, signum: int, frame: object) -> None:
        self.received += 1
        self.signum = self.signum or signum
        limit = _AT_ONCE[self.phase]
        if limit is not None and self.received >= limit:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def catching(self) -> Iterator[None]:
        """SIGINT and SIGTERM go to this object while the block runs (only the main thread can
        set signal handlers; elsewhere the block runs with the handlers it has)."""
        main_thread = threading.current_thread() is threading.main_thread()
        signums = (signal.SIGINT, signal.SIGTERM) if main_thread else ()
        previous = {signum: signal.signal(signum, self._handle) for signum in signums}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextlib.contextmanager
    def during(self, phase: str) -> Iterator[None]:
        """``phase`` while the block runs, then the phase before it."""
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before
