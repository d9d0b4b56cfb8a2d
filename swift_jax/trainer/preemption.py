"""SIGTERM (TPU/cloud preemption): save a checkpoint and stop, within a deadline; a second signal ends at once."""

from __future__ import annotations

import os
import signal
import sys
import threading


class Preemption:
    """Turns the first SIGTERM into a flag the loop checks after each step (it saves and stops). The save gets
    `timeout_s` seconds (a hung collective must not keep a preempted job alive); a second SIGTERM or SIGINT
    after the first ends the process immediately with 128 + the signal number."""

    def __init__(self, timeout_s: float, say=print):
        self.requested = False
        self.timeout_s = timeout_s
        self.say = say
        self._timer: threading.Timer | None = None
        try:
            signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners)
            pass

    def _handle(self, signum, _frame) -> None:
        if self.requested:
            print(f"signal {signum} again while saving: exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.requested = True
        try:
            signal.signal(signal.SIGINT, self._handle)
        except ValueError:
            pass

    def start_deadline(self) -> None:
        """Arm the save deadline: past it the process exits with status 1, naming the deadline."""
        if self._timer is not None or self.timeout_s <= 0:
            return

        def expire():
            print(f"SIGTERM: the checkpoint did not finish within --preemption_save_timeout {self.timeout_s:g}s; exiting",
                  file=sys.stderr, flush=True)
            os._exit(1)

        self._timer = threading.Timer(self.timeout_s, expire)
        self._timer.daemon = True
        self._timer.start()
