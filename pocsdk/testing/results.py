"""What every benchmark in ``benchmarks/`` needs to report: its section of RESULTS.md, and CPU time.

Each benchmark owns one ``## `` section of ``benchmarks/RESULTS.md`` and rewrites only that one,
so benchmarks run at different times leave each other's results alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

RESULTS_HEADER = "# Benchmark results\n\nOne `##` section per benchmark; each says how it was produced.\n"


def write_section(path: Path, heading: str, block: str) -> None:
    """Replace the section that starts with ``heading`` (up to the next ``## ``), or append it."""
    text = path.read_text(encoding="utf-8") if path.exists() else RESULTS_HEADER
    block = block.rstrip("\n") + "\n\n"
    pattern = re.compile(re.escape(heading) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its threads (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")
