"""SIGINT and SIGTERM during training: stop after the current batch, checkpoint, exit.

Schedulers and `docker stop` send SIGTERM, a user presses Ctrl-C: both ask the run to stop at
the next batch end, after which `pretrain` saves a checkpoint and raises `Interrupted` (exit
code 130 or 143). A second signal is handled the default way, at once: every file a run writes
is written to a temporary name and renamed, so stopping anywhere corrupts nothing.
"""

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Context manager routing the first SIGINT/SIGTERM to `interrupt.request()`.

    Args:
        interrupt: an object with `request()` (the run's `Interrupt` callback).

    Attributes:
        signum: the signal received, or None.

    Examples:

    >>> import os, signal
    >>> class Flag:
    ...     requested = False
    ...     def request(self):
    ...         self.requested = True
    >>> flag = Flag()
    >>> with GracefulStop(flag) as stop:
    ...     os.kill(os.getpid(), signal.SIGTERM)
    >>> flag.requested, stop.signum == signal.SIGTERM
    (True, True)
    """

    def __init__(self, interrupt):
        self.interrupt = interrupt
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        self.interrupt.request()
        self._restore()  # the next signal acts at once

    def _restore(self):
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()
