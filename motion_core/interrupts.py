"""Ctrl-C and SIGTERM in the CLI, handled as the node's Cancel button.

A training run checks its ``cancel`` callback before every step. While :class:`StopSignals` is active, the
first SIGINT (Ctrl-C) or SIGTERM only sets a flag that callback reads, so the run stops at the next step
boundary, checkpoints the last finished step and saves the adapter so far; a second signal aborts at once
(``KeyboardInterrupt``). :func:`stopped_training_report` then says where both are and prints the exact
command that resumes the run.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from typing import Any, Sequence

__all__ = ["StopSignals", "resume_command", "stopped_training_report"]


class StopSignals:
    """Context manager: SIGINT / SIGTERM ask the running job to stop at its next step (call the object: it
    is the job's ``cancel`` check); a second signal raises ``KeyboardInterrupt``. The previous handlers are
    restored on exit. Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.received: str | None = None
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.received is not None

    @property
    def exit_code(self) -> int:
        """The shell's code for a job stopped by a signal: 128 + its number (130 Ctrl-C, 143 SIGTERM)."""
        return 128 + int(self.signum or signal.SIGINT)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.signum = int(signum)
        self.received = signal.Signals(signum).name
        note = (f"\n{self.received} received: stopping after the current step; the last finished step is "
                "checkpointed and the adapter so far is saved. Press Ctrl-C again to abort at once (only what is "
                "already saved is kept).\n")
        try:  # not print(): the handler may run while the progress line is being written
            os.write(2, note.encode("utf-8", "replace"))
        except OSError:
            pass

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name, None)
                if number is None:
                    continue
                try:
                    self._previous[number] = signal.signal(number, self._handle)
                except (ValueError, OSError):
                    pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def resume_command(argv: Sequence[str] | None, run_dir: str | os.PathLike) -> str:
    """The command line that continues a stopped training: the same options and ``--resume <run folder>``
    (an earlier ``--resume`` replaced)."""
    kept: list[str] = []
    skip = False
    for item in argv if argv is not None else ["train"]:
        item = str(item)
        if skip:
            skip = False
        elif item == "--resume":
            skip = True
        elif not item.startswith("--resume="):
            kept.append(item)
    return shlex.join([sys.executable, "-m", "motion_core", *kept, "--resume", os.fspath(run_dir)])


def stopped_training_report(result: Any, stop: StopSignals, argv: Sequence[str] | None) -> str:
    """What a training stopped by a signal kept (checkpoint, adapter) and the command that continues it."""
    lines = [f"stopped by {stop.received or 'a signal'} after step {result.steps} of {result.total_steps}; the work "
             "so far is kept:"]
    if result.checkpoint:
        lines.append(f"  checkpoint: {result.checkpoint}")
    if result.adapter_path:
        lines.append(f"  adapter:    {result.adapter_path} ({result.steps} steps trained; usable as it is)")
    lines.append(f"to continue to step {result.total_steps}, run:")
    lines.append(f"  {resume_command(argv, result.run_dir)}")
    return "\n".join(lines)
