"""Service throughput benchmark (issue 5): requests per second and latency of ``POST /v1/compress``.

Starts ``pocsdk serve`` as a real process on loopback (auth off, loopback only), once batched
(``--batch-window-ms 5``) and once unbatched (``--batch-window-ms 0``: every request runs on its
own in a worker pool), and drives it with an asyncio + httpx client at a few concurrency levels.
Each request is one context of about ``--words`` words (synthetic prose, deterministic) and a
query, at keep rate ``--keep-rate``. Reports throughput (requests/s), p50 and p99 latency (ms),
the server's mean batch size and, as a floor, the in-process ``Compressor.compress`` time.

The default compressor is CPU-only; for a model-backed compressor on a GPU, pass
``--compressor NAME --model PATH --device cuda`` (needs torch with CUDA and that compressor
registered; not run on the CPU-only machine that produced the committed numbers)::

    python benchmarks/service_throughput.py                          # about 2 minutes
    python benchmarks/service_throughput.py --concurrency 1 8 32 --requests 300
    python benchmarks/service_throughput.py --compressor llmlingua2 --model /models/llmlingua-2 --device cuda
    python benchmarks/service_throughput.py --out /tmp/RESULTS.md   # write the section elsewhere
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pocsdk.compressor import DEFAULT_COMPRESSOR, Compressor  # noqa: E402
from pocsdk.testing.results import process_cpu_s, write_section  # noqa: E402

SECTION = "## Service throughput (issue 5)"
WORDS = ("the council approved a budget for river repairs while the museum opened a new wing and farmers "
         "reported an early harvest as markets rose on hopes of lower rates and the football club signed "
         "two players before the election debate on schools housing and transport").split()


def make_context(words: int, seed: int) -> str:
    """Deterministic prose-like text: sentences of 8 to 20 words."""
    out: list[str] = []
    i, state = 0, seed * 7919 + 17
    while i < words:
        state = (state * 1103515245 + 12345) % (2**31)
        n = 8 + state % 13
        sent = []
        for _ in range(n):
            state = (state * 1103515245 + 12345) % (2**31)
            sent.append(WORDS[state % len(WORDS)])
        out.append(" ".join(sent).capitalize() + ".")
        i += n
    return " ".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Level:
    mode: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    mean_batch: float
    cpu_ms_per_request: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def start_server(args: argparse.Namespace, window_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-c", "from pocsdk.cli import main; main()", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--no-auth", "--compressor", args.compressor, "--device", args.device,
           "--batch-window-ms", str(window_ms), "--max-batch", str(args.max_batch), "--max-queue", "100000",
           "--log-level", "warning"]
    if args.model:
        cmd += ["--model", args.model]
    env = {**os.environ}
    env.pop("POCSDK_API_KEY", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start in time")




def batch_stats(url: str, compressor: str) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    text = httpx.get(url + "/metrics", timeout=10).text

    def value(name: str) -> float:
        m = re.search(rf'^{name}{{compressor="{re.escape(compressor)}"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    return value("pocsdk_batch_size_sum"), value("pocsdk_batch_size_count")


async def drive(url: str, bodies: list[dict[str, Any]], concurrency: int, n: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    next_i = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def worker() -> None:
            nonlocal next_i, errors
            while next_i < n:
                body = bodies[next_i % len(bodies)]
                next_i += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/compress", json=body)
                except httpx.TransportError as exc:  # counted, never silently lost
                    print(f"  transport error: {type(exc).__name__}: {exc}", file=sys.stderr)
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000.0)
                if r.status_code != 200:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, latencies, errors


def run_mode(args: argparse.Namespace, mode: str, window_ms: float, bodies: list[dict[str, Any]]) -> list[Level]:
    proc, url = start_server(args, window_ms)
    levels: list[Level] = []
    try:
        asyncio.run(drive(url, bodies, 4, args.warmup))
        for c in args.concurrency:
            s0, n0 = batch_stats(url, args.compressor)
            cpu0 = process_cpu_s(proc.pid)
            seconds, lat, errors = asyncio.run(drive(url, bodies, c, args.requests))
            cpu1 = process_cpu_s(proc.pid)
            s1, n1 = batch_stats(url, args.compressor)
            mean_batch = (s1 - s0) / (n1 - n0) if n1 > n0 else float("nan")
            cpu_ms = (cpu1 - cpu0) * 1000.0 / args.requests
            levels.append(Level(mode, c, args.requests, errors, seconds, lat, mean_batch, cpu_ms))
            lv = levels[-1]
            print(f"{mode:>10} c={c:<4} {lv.rps:8.1f} req/s  p50 {lv.pct(0.5):8.1f} ms  p99 {lv.pct(0.99):8.1f} ms"
                  f"  batch {mean_batch:5.2f}  server CPU {cpu_ms:6.1f} ms/req  errors {errors}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return levels


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def section(args: argparse.Namespace, levels: list[Level], local_ms: float, tokens: int, load: str) -> str:
    cmd = " ".join(["python benchmarks/service_throughput.py", *(shlex.quote(a) for a in args.argv)])
    rows = ["| mode | concurrency | requests/s | p50 ms | p99 ms | server CPU ms / request | mean batch | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in sorted(levels, key=lambda x: (x.concurrency, x.mode)):
        rows.append(f"| {lv.mode} | {lv.concurrency} | {lv.rps:.1f} | {lv.pct(0.5):.1f} | {lv.pct(0.99):.1f} | "
                    f"{lv.cpu_ms_per_request:.1f} | {lv.mean_batch:.2f} | {lv.errors} |")
    return "\n".join([
        SECTION,
        "",
        f"`POST /v1/compress` on loopback, compressor `{args.compressor}` on `{args.device}`, keep rate "
        f"{args.keep_rate}, one context of about {tokens} tokens (heuristic counter; synthetic prose, "
        f"{args.distinct} distinct inputs) plus a query per request; "
        f"{args.requests} requests per level after {args.warmup} warm-up requests. *batched*: "
        f"`--batch-window-ms {args.window_ms:g} --max-batch {args.max_batch}` (a compressor without "
        "`score_batch`, as the CPU ones, runs one input at a time in one worker thread, each answered when done); "
        "*unbatched*: "
        "`--batch-window-ms 0` (each request in a 4-thread pool). In-process `Compressor.compress` on the same "
        f"inputs: median {local_ms:.1f} ms. Client and server share the machine.",
        "",
        *rows,
        "",
        f"Machine: {machine()}; load average before the run {load} (a shared machine: other jobs ran too, so "
        "treat the numbers as a lower bound). GPU: a model-backed compressor on CUDA is supported "
        "(`--compressor NAME --model PATH --device cuda`) but was not measured: no GPU here.",
        "",
        f"Command: `{cmd}` ({dt.date.today().isoformat()}).",
        "",
    ])




def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compressor", default=DEFAULT_COMPRESSOR)
    ap.add_argument("--model", default=None, help="model for a model-backed compressor")
    ap.add_argument("--device", default="cpu", help="auto, cuda or cpu")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=200, help="timed requests per concurrency level")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--words", type=int, default=1500, help="words per context")
    ap.add_argument("--distinct", type=int, default=32, help="distinct contexts, cycled")
    ap.add_argument("--keep-rate", type=float, default=0.3)
    ap.add_argument("--window-ms", type=float, default=5.0, help="batch window of the batched run")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--modes", nargs="+", default=["batched", "unbatched"], choices=["batched", "unbatched"])
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())

    queries = ["river repairs", "football players", "early harvest", "election debate"]
    bodies = [{"context": make_context(args.words, i), "query": queries[i % len(queries)],
               "keep_rate": args.keep_rate} for i in range(args.distinct)]
    local = Compressor(compressor=args.compressor, keep_rate=args.keep_rate) if not args.model else None
    local_ms = float("nan")
    tokens = 0
    if local is not None:
        times = []
        for b in bodies:
            t0 = time.perf_counter()
            res = local.compress(b["context"], b["query"])
            times.append((time.perf_counter() - t0) * 1000.0)
            tokens = res.original_tokens
        local_ms = statistics.median(times)
        print(f"in-process compress: median {local_ms:.1f} ms, ~{tokens} tokens per context", flush=True)

    levels: list[Level] = []
    for mode in args.modes:
        levels += run_mode(args, mode, args.window_ms if mode == "batched" else 0.0, bodies)
    text = section(args, levels, local_ms, tokens, load)
    print("\n" + text)
    if not args.no_write:
        write_section(args.out, SECTION, text)
        print(f"wrote {SECTION!r} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
