"""What every benchmark reports about the machine it ran on, and where it writes its records."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


RESULTS = Path(__file__).resolve().parent / "results"  # every benchmark's JSON records


def save_result(stem: str, report: dict) -> Path:
    """Write ``report`` to ``benchmarks/results/<stem>_<date-time>.json`` and say where."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{stem}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"\nwrote {out}")
    return out
