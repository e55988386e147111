"""``pocsdk.testing.results``: each benchmark rewrites only its own section of RESULTS.md."""

from __future__ import annotations

import os
from pathlib import Path

from pocsdk.testing.results import RESULTS_HEADER, process_cpu_s, write_section

DOC = "# Benchmark results\n\n## A (issue 1)\n\nold a\n\n## B (issue 2)\n\nold b\n| x |\n\n## C (issue 3)\n\nold c\n"


def test_replaces_only_its_section(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(DOC)
    write_section(path, "## B (issue 2)", "## B (issue 2)\n\nnew b\n")
    assert path.read_text() == DOC.replace("old b\n| x |\n", "new b\n")
    write_section(path, "## C (issue 3)", "## C (issue 3)\n\nnew c")  # the last section, no trailing newline
    assert path.read_text().endswith("## C (issue 3)\n\nnew c\n")
    assert "old a" in path.read_text() and "new b" in path.read_text()


def test_appends_a_new_section_and_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    write_section(path, "## D (issue 4)", "## D (issue 4)\n\nd\n")
    assert path.read_text() == RESULTS_HEADER + "\n## D (issue 4)\n\nd\n"
    write_section(path, "## A (issue 1)", "## A (issue 1)\n\na\n")
    assert path.read_text().endswith("## D (issue 4)\n\nd\n\n## A (issue 1)\n\na\n")


def test_a_heading_that_prefixes_another_is_not_confused(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# R\n\n## Overhead (issue 2) extra\n\nkeep\n")
    write_section(path, "## Overhead (issue 2)", "## Overhead (issue 2)\n\nnew\n")
    assert "keep" in path.read_text() and path.read_text().endswith("## Overhead (issue 2)\n\nnew\n")


def test_process_cpu_s_counts_this_process() -> None:
    before = process_cpu_s(os.getpid())
    sum(i * i for i in range(300_000))
    assert process_cpu_s(os.getpid()) >= before >= 0.0
    assert process_cpu_s(2**22 + 12345) != process_cpu_s(2**22 + 12345)  # NaN for a process that does not exist
