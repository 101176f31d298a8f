"""Our text-to-audio result on Clotho evaluation beside the published DCASE 2023 Task 6B baseline.

    print(report_table(read_metrics(run_dir), label="runs/baseline"))

Reads ``<run>/eval/<split>_metrics.json`` as :mod:`utils.evaluation.retrieval` writes it (``{"t2a": {"mAP@10", "R@1",
"R@5", "R@10"}, "a2t": ..., "definitions": ...}``). When the file also holds 95% confidence intervals
(``"ci95": {"t2a": {"mAP@10": [lo, hi], ...}}``), they are printed after each value, with whether the published
value lies inside; without them, just the values.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from utils.base.errors import DataError
from utils.runs import eval_file

# The DCASE 2023 Task 6B baseline's published text-to-audio scores on the Clotho v2.1 evaluation split.
PUBLISHED = {"mAP@10": 0.222, "R@1": 0.130, "R@5": 0.343, "R@10": 0.480}
PUBLISHED_LABEL = "DCASE 2023 baseline (published)"


def read_metrics(run_dir: str | os.PathLike, split: str = "evaluation") -> dict:
    """The metrics JSON of ``split`` in ``run_dir``; DataError naming the file and the step that writes it."""
    path = eval_file(run_dir, split, "metrics")
    if not path.is_file():
        raise DataError(f"{path} not found; run postprocessing/01_xmodal_scores.py and 02_xmodal_retrieval.py "
                        f"with --run {run_dir} first")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); rerun postprocessing/02_xmodal_retrieval.py") from err
    t2a = metrics.get("t2a") if isinstance(metrics, dict) else None
    missing = [k for k in PUBLISHED if not isinstance(t2a, dict) or not _is_number(t2a.get(k))]
    if missing:
        raise DataError(f"{path} lacks t2a {missing}; rerun postprocessing/02_xmodal_retrieval.py with the default "
                        "eval.map_k and eval.recall_ks")
    metrics["source"] = str(path)
    return metrics


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _interval(metrics: dict, name: str) -> tuple[float, float] | None:
    """The t2a 95% interval of ``name`` when the metrics hold a well-formed one."""
    ci = metrics.get("ci95", {})
    pair = ci.get("t2a", {}).get(name) if isinstance(ci, dict) and isinstance(ci.get("t2a"), dict) else None
    if isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_is_number(v) for v in pair):
        return float(pair[0]), float(pair[1])
    return None


def report_table(metrics: dict, label: str = "this run", split: str = "evaluation") -> str:
    """A text table: our t2a values (with 95% intervals when present), the published ones, the difference."""
    names = list(PUBLISHED)
    intervals = {n: _interval(metrics, n) for n in names}
    with_ci = any(intervals.values())
    width = 22 if with_ci else 10
    first = max(len(label), len(PUBLISHED_LABEL), len("difference (ours - published)")) + 2
    lines = [f"Clotho {split}, text -> audio".ljust(first) + "".join(f"{n:>{width}}" for n in names)]

    def cell(n: str) -> str:
        value, ci = f"{metrics['t2a'][n]:.3f}", intervals[n]
        return f"{value} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else value

    lines.append(label.ljust(first) + "".join(f"{cell(n):>{width}}" for n in names))
    lines.append(PUBLISHED_LABEL.ljust(first) + "".join(f"{PUBLISHED[n]:>{width}.3f}" for n in names))
    lines.append("difference (ours - published)".ljust(first)
                 + "".join(f"{metrics['t2a'][n] - PUBLISHED[n]:>+{width}.3f}" for n in names))
    if with_ci:
        inside = ["-" if intervals[n] is None else "yes" if intervals[n][0] <= PUBLISHED[n] <= intervals[n][1]
                  else "no" for n in names]
        lines.append("published inside our 95% CI".ljust(first) + "".join(f"{v:>{width}}" for v in inside))
    else:
        lines.append("(no 95% confidence intervals in the metrics file)")
    if "source" in metrics:
        lines.append(f"from {metrics['source']}")
    return "\n".join(lines)


def report_for_run(run_dir: str | os.PathLike, split: str = "evaluation") -> str:
    return report_table(read_metrics(run_dir, split), label=str(Path(run_dir)), split=split)
