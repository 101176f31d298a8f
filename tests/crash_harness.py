"""Kill a script with SIGKILL at its N-th file rename, then rerun it: the fault injection of tests/test_faults.py.

    PYTHONPATH=. python tests/crash_harness.py RESULT_JSON N1:CONF1:RUN_DIR1 N2:CONF2:RUN_DIR2 ...

For each ``N:CONF:RUN_DIR``: a forked child runs ``main.py --conf CONF`` with ``os.replace``/``os.rename`` patched to
SIGKILL the process just before its N-th call; then a second child reruns ``main.py`` to completion, and a
third runs ``postprocessing/01_xmodal_scores.py`` on the run. The heavy imports happen once, here, before any
fork. RESULT_JSON gets ``[{"n", "killed", "rerun_rc", "score_rc"}, ...]``.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
from pathlib import Path

import torch  # noqa: F401  (imported once before forking: the children start fast)

import utils.runs  # noqa: F401
import utils.scoring  # noqa: F401
import utils.train_utils  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def _kill_at(n: int) -> None:
    calls = {"n": 0}
    for name in ("replace", "rename"):
        real = getattr(os, name)

        def patched(src, dst, *args, _real=real, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(src, dst, *args, **kwargs)

        setattr(os, name, patched)


def _in_child(script: str, argv: list[str], kill_at: int = 0) -> int:
    """Run ``script`` in a forked child; its exit status, or -signal when a signal ended it."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
            if kill_at:
                _kill_at(kill_at)
            sys.argv = [script, *argv]
            runpy.run_path(str(ROOT / script), run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def main() -> None:
    out, *cases = sys.argv[1:]
    results = []
    for case in cases:
        n, conf, run_dir = case.split(":", 2)
        killed = _in_child("main.py", ["--conf", conf], int(n)) == -signal.SIGKILL
        rerun = _in_child("main.py", ["--conf", conf])
        score = _in_child("postprocessing/01_xmodal_scores.py", ["--conf", conf, "--run", run_dir])
        results.append({"n": int(n), "killed": killed, "rerun_rc": rerun, "score_rc": score})
    Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
