"""The results table of ``postprocessing/04_results_table.py``: one row per run (or per group of seeds).

Each row: the run, the split, its t2a metrics from ``<run>/eval/<split>_metrics.json`` with their 95% intervals
(for a group: the mean and standard deviation over its seeds), the epochs and training time from
``metrics.jsonl``, the device from ``run_info.json``, and what differs: the config keys whose values differ from
the reference run's (``run.*`` and, for groups, ``train.seed`` left out). Output: Markdown and CSV.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils import runs
from utils.base.config import to_dict
from utils.base.errors import PipelineError, warn

SEED_RUN = re.compile(r"^(?P<base>.+)-seed(?P<seed>\d+)$")  # main.py --seeds names
IGNORED_KEYS = ("run.",)  # never a difference worth a column


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, float]  # t2a metric -> value
    ci95: dict[str, list[float]]  # t2a metric -> [lo, hi]
    config: dict[str, object]  # flattened dotted keys
    epochs: int | None = None
    train_time_s: float | None = None
    device: str = "-"


@dataclass
class Row:
    name: str
    results: list[RunResult] = field(default_factory=list)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _device(run_dir: Path) -> str:
    path = runs.run_file(run_dir, "run_info")
    if not path.is_file():
        return "-"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return "-"
    if isinstance(info, dict) and isinstance(info.get("history"), list) and info["history"]:
        info = info["history"][-1]  # a run record that keeps one entry per start or resume
    elif isinstance(info, list) and info:
        info = info[-1]
    return str(info.get("device", "-")) if isinstance(info, dict) else "-"


def read_result(run_dir: Path, split: str) -> RunResult | None:
    """A run's numbers on ``split``, or None (with a warning) when it has no metrics file for it."""
    path = runs.eval_file(run_dir, split, "metrics")
    if not path.is_file():
        warn(f"skipping {run_dir}: no {path.name} (run postprocessing/01 and 02 on it first)")
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if "t2a" not in data:
        warn(f"skipping {run_dir}: {path} has no t2a metrics")
        return None
    result = RunResult(run_dir, data["t2a"], data.get("ci95", {}).get("t2a", {}),
                       flatten(to_dict(runs.load_run_config(run_dir))), device=_device(run_dir))
    members = runs.ensemble_members(run_dir)
    if members is not None:
        result.config["ensemble"] = ", ".join(m.name for m in members)
    history = runs.run_file(run_dir, "metrics")
    if history.is_file():
        records = [json.loads(line) for line in history.read_text(encoding="utf-8").splitlines() if line.strip()]
        result.epochs = len(records)
        result.train_time_s = float(sum(r.get("epoch_time_s", 0.0) for r in records))
    return result


def group_rows(results: list[RunResult], by_seed: bool) -> list[Row]:
    """One row per run, or (``by_seed``) one per ``<name>-seed<k>`` group, in the order first seen."""
    rows: dict[str, Row] = {}
    for r in results:
        match = SEED_RUN.match(r.run_dir.name) if by_seed else None
        name = f"{match['base']}-seed*" if match else r.run_dir.name
        rows.setdefault(name, Row(name)).results.append(r)
    return list(rows.values())


def differences(config: dict, reference: dict, ignore_seed: bool, is_reference: bool = False) -> str:
    """``key=value`` for every config key that differs from ``reference`` (``run.*`` left out)."""
    keys = sorted(set(config) | set(reference))
    out = [f"{k}={config.get(k, '-')}" for k in keys if config.get(k) != reference.get(k)
           and not k.startswith(IGNORED_KEYS) and not (ignore_seed and k == "train.seed")]
    if not out:
        return "(reference)" if is_reference else "-"
    return "; ".join(out)


def _cell(row: Row, metric: str) -> str:
    values = [r.metrics[metric] for r in row.results if metric in r.metrics]
    if not values:
        return "-"
    if len(row.results) > 1:
        return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
    lo, hi = row.results[0].ci95.get(metric, [None, None])
    return f"{values[0]:.4f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")


def table_rows(rows: list[Row], split: str, reference: RunResult) -> tuple[list[str], list[list[str]]]:
    """The header and the cells of the table."""
    metrics = list(dict.fromkeys(m for row in rows for r in row.results for m in r.metrics))
    header = ["run", "split", *metrics, "epochs", "training time", "device", "what differs"]
    cells = []
    for row in rows:
        first = row.results[0]
        epochs = [r.epochs for r in row.results if r.epochs is not None]
        times = [r.train_time_s for r in row.results if r.train_time_s is not None]
        name = row.name + (f" ({len(row.results)} seeds)" if len(row.results) > 1 else "")
        cells.append([name, split, *(_cell(row, m) for m in metrics),
                      "/".join(map(str, epochs)) or "-", f"{np.mean(times) / 60:.1f} min" if times else "-",
                      first.device, differences(first.config, reference.config, len(row.results) > 1,
                                                any(r.run_dir.resolve() == reference.run_dir.resolve()
                                                    for r in row.results))])
    return header, cells


def to_markdown(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], cells: list[list[str]]) -> str:
    stream = io.StringIO()
    writer = csv.writer(stream)
    writer.writerow(header)
    writer.writerows(cells)
    return stream.getvalue()


def results_table(run_dirs: list[Path], split: str, reference: Path | None = None,
                  by_seed: bool = False) -> tuple[list[str], list[list[str]]]:
    """Read every run and build the table; the reference is ``reference`` or the first run with metrics."""
    for d in run_dirs:
        if not d.exists():
            warn(f"skipping {d}: no such run directory")
    results = [r for r in (read_result(d, split) for d in run_dirs if runs.config_file(d).is_file()) if r]
    if not results:
        raise PipelineError(f"none of the {len(run_dirs)} folders given has {split} metrics: run "
                            "postprocessing/01_xmodal_scores.py and 02_xmodal_retrieval.py on them first")
    ref = results[0]
    if reference is not None:
        ref = read_result(Path(reference), split)
        if ref is None:
            raise PipelineError(f"--reference {reference} has no {split} metrics")
    return table_rows(group_rows(results, by_seed), split, ref)
