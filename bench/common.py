"""What the benchmarks share: naming the machine, and writing their JSON."""

from __future__ import annotations

import json
import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_json(out: Path, result: dict) -> None:
    """`result` as indented JSON at `out` (its folder made), and a line saying where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
