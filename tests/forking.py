"""Run a body of code in a forked child, as a real kill would find it: used by the crash harness and the
download tests. No project imports, so the crash harness (a script) can use it too."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def in_forked_child(body: Callable[[], int]) -> int:
    """Run ``body()`` in a forked child with its output discarded; its exit status, or -signal when a signal
    ended it. ``SystemExit`` inside ``body`` becomes the exit status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
            code = body()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
