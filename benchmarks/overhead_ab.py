"""Two builds side by side: ``score`` + ``select`` CPU time of the CPU compressors on the Overhead texts.

For checking that a change costs nothing measurable. Each run is its own process, alternating
between the builds, so both meet the same machine state:

    mkdir -p /tmp/old && git archive <commit> pocsdk | tar -x -C /tmp/old
    python benchmarks/overhead_ab.py --old /tmp/old --rounds 6

Each run starts in its build's folder (``python -c`` puts the working directory first on ``sys.path``,
so a run started in this checkout would import this build whatever ``PYTHONPATH`` says) and reports
where it imported pocsdk from; a run that imported the wrong build stops the script.

Prints, per compressor and size, the median (min) over the runs of each run's median of
``--calls`` calls, CPU ms, one core (``taskset -c 0`` when available).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ONE_RUN = """
import json, statistics, sys, time
import pocsdk  # first: the build on PYTHONPATH (overhead.py puts the repository on sys.path)
sys.path.insert(0, {bench!r})
import overhead
from pocsdk.compressors import get_compressor
from pocsdk.text.tokens import get_token_counter
corpus, query, _ = overhead.load_corpus()
counter = get_token_counter("tiktoken:cl100k_base")
out = {{"__file__": pocsdk.__file__}}
for n in {sizes!r}:
    text = overhead.cut_to_tokens(corpus, n, counter)
    for name in {compressors!r}:
        comp = get_compressor(name)
        comp.select(comp.score(text, query), 0.5)
        times = []
        for _ in range({calls}):
            t = time.process_time()
            comp.select(comp.score(text, query), 0.5)
            times.append((time.process_time() - t) * 1000)
        out[f"{{name}} {{n}}"] = statistics.median(times)
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--old", type=Path, required=True, help="folder holding the other build's pocsdk package")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=15)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 16000])
    ap.add_argument("--compressors", nargs="+", default=["skim", "extractive"])
    args = ap.parse_args(argv)
    code = ONE_RUN.format(bench=str(REPO / "benchmarks"), sizes=args.sizes, compressors=args.compressors,
                          calls=args.calls)
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    # the old build looks for the data next to its own folder: tell it where this build found them
    from pocsdk.testing.peers import shared_data_dir

    data = shared_data_dir()
    if data is None:
        ap.error("real data not found: set POCSDK_DATA to the shared/data folder")
    old_tree = args.old.resolve()
    if not (old_tree / "pocsdk" / "__init__.py").is_file():
        ap.error(f"--old {args.old} holds no pocsdk package")
    for _ in range(args.rounds):
        for build, path in (("old", old_tree), ("new", REPO)):
            env = {**os.environ, "PYTHONPATH": str(path), "HF_HUB_OFFLINE": "1", "POCSDK_DATA": str(data)}
            done = subprocess.run([*pin, sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                  cwd=path)
            if done.returncode:
                raise SystemExit(f"the {build} run failed:\n{done.stderr[-3000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            imported = Path(run.pop("__file__")).resolve()
            if path not in imported.parents:
                raise SystemExit(f"the {build} run imported pocsdk from {imported}, not from {path}")
            runs[build].append(run)
    for key in runs["old"][0]:
        old = [r[key] for r in runs["old"]]
        new = [r[key] for r in runs["new"]]
        print(f"{key}: {statistics.median(old):.2f} ({min(old):.2f}) -> {statistics.median(new):.2f} "
              f"({min(new):.2f}) ms CPU, {statistics.median(new) / statistics.median(old):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
