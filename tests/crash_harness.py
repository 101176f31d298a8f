"""Kill a script with SIGKILL at a chosen file rename, then rerun it: the fault injection of tests/pipeline/test_faults.py.

    PYTHONPATH=. python tests/crash_harness.py RESULT_JSON NAME@K:CONF:RUN_DIR ... [--score RUN_DIR CONF]

For each ``NAME@K:CONF:RUN_DIR``: a forked child runs ``main.py --conf CONF`` with ``os.replace``/``os.rename``
patched to SIGKILL the process just before its K-th rename onto a file called NAME (``last.pt@2``: the
second epoch's ``last.pt``); then a second child reruns ``main.py`` to completion. ``--score`` runs
``postprocessing/01_xmodal_scores.py`` on one run at the end. The heavy imports happen once, here, before any
fork. RESULT_JSON gets ``{"cases": [{"case", "killed", "rerun_rc"}, ...], "score_rc": int | null}``.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
from pathlib import Path

import torch  # noqa: F401  (imported once before forking: the children start fast)
import torch._dynamo  # noqa: F401  (the first optimizer imports it: about 3 s in every child otherwise)
from forking import in_forked_child

import utils.evaluation.scoring  # noqa: F401
import utils.runs  # noqa: F401
import utils.training.loop  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def _kill_at(name: str, k: int) -> None:
    """SIGKILL this process just before its ``k``-th rename whose destination is called ``name``."""
    calls = {"n": 0}
    for func in ("replace", "rename"):
        real = getattr(os, func)

        def patched(src, dst, *args, _real=real, **kwargs):
            if Path(dst).name == name:
                calls["n"] += 1
                if calls["n"] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
            return _real(src, dst, *args, **kwargs)

        setattr(os, func, patched)


def _in_child(script: str, argv: list[str], kill_at: tuple[str, int] | None = None) -> int:
    """Run ``script`` in a forked child; its exit status, or -signal when a signal ended it."""
    def body() -> int:
        if kill_at:
            _kill_at(*kill_at)
        sys.argv = [script, *argv]
        runpy.run_path(str(ROOT / script), run_name="__main__")
        return 0

    return in_forked_child(body)


def main() -> None:
    args = sys.argv[1:]
    score = None
    if "--score" in args:
        at = args.index("--score")
        score, args = args[at + 1:at + 3], args[:at] + args[at + 3:]
    out, *cases = args
    results = []
    for case in cases:
        target, conf, _ = case.split(":", 2)
        name, k = target.rsplit("@", 1)
        killed = _in_child("main.py", ["--conf", conf], (name, int(k))) == -signal.SIGKILL
        rerun = _in_child("main.py", ["--conf", conf])
        results.append({"case": target, "killed": killed, "rerun_rc": rerun})
    score_rc = None
    if score:
        run_dir, conf = score
        score_rc = _in_child("postprocessing/01_xmodal_scores.py", ["--conf", conf, "--run", run_dir])
    Path(out).write_text(json.dumps({"cases": results, "score_rc": score_rc}))


if __name__ == "__main__":
    main()
