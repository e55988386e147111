"""Proxy latency benchmark (issue 4): what ``pocsdk proxy`` adds over calling the upstream directly.

Starts a fake OpenAI-compatible upstream (answers after a fixed ``--upstream-ms``) and the
proxy in front of it, each as its own process on loopback, then sends the same chat requests
to both with an asyncio + httpx client at each concurrency level and reports p50 / p99
latency and the difference (the proxy's added latency). Scenarios, side by side:

The proxy runs as ``pocsdk proxy`` does by default (floor 0.9, 64 requests in flight,
prompt cache of 256); ``--keep-rate`` measures a fixed rate instead.

* ``8k cold``: every request carries a different ~8k-token tool message (nothing cached:
  each one is compressed, default compressor ``extractive``);
* ``8k repeat``: the same ~8k-token request every time (the proxy's prompt cache answers);
* ``short``: a one-line prompt under the compression threshold (pure proxy overhead).

    python benchmarks/proxy_latency.py                     # about 2 minutes on 2 busy cores
    python benchmarks/proxy_latency.py --concurrency 1 50 --requests 40 200
    python benchmarks/proxy_latency.py --out /tmp/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
SECTION = "## Proxy latency (issue 4)"
JSON = {"content-type": "application/json"}
WORDS = ("river castle engine orchard harbor glacier violin comet market forest bridge lantern meadow "
         "signal copper thunder garden velvet marble canyon").split()


# -- servers (run in child processes) ------------------------------------------------------
def upstream_app(latency_ms: float) -> Any:
    """A minimal ASGI upstream: reads the body, waits ``latency_ms``, answers a fixed completion."""
    body = (b'{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench",'
            b'"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}')

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            msg = await receive()
            more = msg.get("more_body", False)
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000.0)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    if args.serve == "upstream":
        app = upstream_app(args.upstream_ms)
    else:
        from pocsdk.server.proxy import ProxySettings, create_proxy_app

        mode = {"floor": args.floor} if args.floor is not None else {"keep_rate": args.keep_rate}
        app = create_proxy_app(ProxySettings(upstream=args.upstream, **mode))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(argv: list[str], url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}") from None
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("server did not start")


# -- load ----------------------------------------------------------------------------------
def context(seed: int, tokens: int) -> str:
    """Synthetic prose of about ``tokens`` tokens (heuristic counter), different for each seed."""
    rng = random.Random(seed)
    sents: list[str] = []
    n = 0
    while n < tokens:
        k = rng.randint(8, 18)
        sents.append(" ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + f" {seed}-{len(sents)}.")
        n += k + 4
    return " ".join(sents)


def request(ctx: str | None) -> bytes:
    """One chat request body, serialised up front so the client spends no time on JSON."""
    if ctx is None:
        body: dict[str, Any] = {"model": "bench", "messages": [{"role": "user", "content": "Say hi."}],
                                "max_tokens": 4}
    else:
        body = {"model": "bench", "max_tokens": 4, "messages": [
            {"role": "system", "content": "Answer from the tool output."},
            {"role": "tool", "tool_call_id": "call_1", "content": ctx},
            {"role": "user", "content": "Which harbor is mentioned near the copper bridge?"}]}
    return json.dumps(body).encode()


async def run_level(url: str, bodies: list[bytes], concurrency: int) -> tuple[list[float], int]:
    """Latencies (ms) of all requests, ``concurrency`` in flight at a time; and the non-200 count."""
    latencies: list[float] = []
    errors = 0
    queue = list(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
        async def worker() -> None:
            nonlocal errors
            while queue:
                body = queue.pop()
                t0 = time.perf_counter()
                r = await client.post(url + "/v1/chat/completions", content=body, headers=JSON)
                latencies.append((time.perf_counter() - t0) * 1000.0)
                if r.status_code != 200:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--serve", choices=["upstream", "proxy"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--upstream", default="", help=argparse.SUPPRESS)
    ap.add_argument("--upstream-ms", type=float, default=2.0, help="fake upstream latency (ms)")
    ap.add_argument("--tokens", type=int, default=8000, help="context size in tokens")
    ap.add_argument("--floor", type=float, default=None, help="performance floor (default 0.9, as the proxy)")
    ap.add_argument("--keep-rate", type=float, default=None, help="a fixed keep rate instead of a floor")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    ap.add_argument("--requests", type=int, nargs="+", default=[30, 150], help="requests per concurrency level")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()
    if args.floor is None and args.keep_rate is None:
        args.floor = 0.9
    if args.serve:
        serve(args)
        return
    if len(args.requests) != len(args.concurrency):
        ap.error("give one --requests value per --concurrency value")
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    up_port, px_port = free_port(), free_port()
    up_url, px_url = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{px_port}"
    mode = ["--floor", str(args.floor)] if args.floor is not None else ["--keep-rate", str(args.keep_rate)]
    procs = [start(["--serve", "upstream", "--port", str(up_port), "--upstream-ms", str(args.upstream_ms)],
                   up_url + "/v1/models")]
    try:
        procs.append(start(["--serve", "proxy", "--port", str(px_port), "--upstream", up_url + "/v1", *mode],
                           px_url + "/healthz"))
        from pocsdk import Compressor
        from pocsdk.text.tokens import get_token_counter

        sample = context(0, args.tokens)
        n_tokens = get_token_counter().count(sample)
        comp = Compressor(**({"floor": args.floor} if args.floor is not None else {"keep_rate": args.keep_rate}))
        inproc = []
        for _ in range(5):
            t0 = time.perf_counter()
            comp.compress(sample, "Which harbor is mentioned near the copper bridge?")
            inproc.append((time.perf_counter() - t0) * 1000.0)
        rows: list[tuple[str, int, dict[str, float], int]] = []
        seed = 1
        for scenario in ("8k cold", "8k repeat", "short"):
            for conc, n in zip(args.concurrency, args.requests, strict=True):
                if scenario == "8k cold":
                    bodies = [request(context(seed + i, args.tokens)) for i in range(n + 10)]
                    seed += n + 10
                elif scenario == "8k repeat":
                    bodies = [request(sample)] * (n + 10)
                else:
                    bodies = [request(None)] * (n + 10)
                result: dict[str, float] = {}
                errors = 0
                for name, url in (("direct", up_url), ("proxy", px_url)):
                    asyncio.run(run_level(url, bodies[:10], min(conc, 10)))  # warm-up (and fill the cache)
                    lat, err = asyncio.run(run_level(url, bodies[10:], conc))
                    errors += err
                    result[f"{name}_p50"] = pct(lat, 50)
                    result[f"{name}_p99"] = pct(lat, 99)
                rows.append((scenario, conc, result, errors))
                print(f"{scenario:<10} c={conc:<3} direct p50 {result['direct_p50']:7.1f}  proxy p50 "
                      f"{result['proxy_p50']:7.1f}  added p50 {result['proxy_p50'] - result['direct_p50']:7.1f} "
                      f"p99 {result['proxy_p99'] - result['direct_p99']:7.1f} ms  errors {errors}", flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    write_section(args, rows, n_tokens, statistics.median(inproc), load_before)


def write_section(args: argparse.Namespace, rows: list[tuple[str, int, dict[str, float], int]], n_tokens: int,
                  inproc_ms: float, load: tuple[float, float, float]) -> None:
    mode = f"floor {args.floor}" if args.floor is not None else f"keep rate {args.keep_rate}"
    lines = [
        SECTION,
        "",
        f"`pocsdk proxy` (compressor `extractive`, {mode}, otherwise default settings: 64 in flight, prompt cache "
        "256, floor predictor loaded at start-up) in "
        f"front of a fake upstream answering after {args.upstream_ms:g} ms, both separate processes on loopback; "
        "the same requests sent to the upstream directly and through the proxy, *added* = proxy minus direct. "
        f"*8k cold*: each request a different tool message of {n_tokens} tokens (heuristic counter) plus a "
        "question, so every one is compressed; *8k repeat*: one such request repeated (the proxy's prompt cache "
        "answers); *short*: a one-line prompt (no compression, pure proxy overhead). "
        f"In-process `Compressor.compress` of one {n_tokens}-token context: median {inproc_ms:.1f} ms.",
        "",
        "| scenario | clients | direct p50 ms | proxy p50 ms | added p50 ms | direct p99 ms | proxy p99 ms "
        "| added p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, conc, r, errors in rows:
        lines.append(
            f"| {scenario} | {conc} | {r['direct_p50']:.1f} | {r['proxy_p50']:.1f} | "
            f"{r['proxy_p50'] - r['direct_p50']:.1f} | {r['direct_p99']:.1f} | {r['proxy_p99']:.1f} | "
            f"{r['proxy_p99'] - r['direct_p99']:.1f} | {errors} |")
    verdicts = []
    for scenario, conc, r, _ in rows:
        if conc >= 50:
            added = r["proxy_p50"] - r["direct_p50"]
            verdict = "not met" if added >= 5 else "met" if added >= 0 else "below the noise (negative)"
            verdicts.append(f"{scenario}: {added:.1f} ms ({verdict})")
    slowest_direct = max((r["direct_p50"] for _, _, r, _ in rows), default=0.0)
    lines += [
        "",
        "Target < 5 ms p50 added at 50 clients: " + ("; ".join(verdicts) or "no level of 50 clients run") + ". "
        f"The direct p50 reaches {slowest_direct:.0f} ms against an upstream that answers in "
        f"{args.upstream_ms:g} ms, so the client itself queues; with cold 8k contexts the proxy's cost is the "
        "compression (CPU, in a worker pool sized to the cores), which queues behind itself at 50 clients.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average before the run {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} "
        "(client, proxy and upstream share the machine).",
        "",
        f"Command: `python benchmarks/proxy_latency.py {shlex.join(sys.argv[1:])}` ({dt.date.today().isoformat()}).",
        "",
    ]
    text = args.out.read_text() if args.out.exists() else "# Benchmark results\n\n"
    block = "\n".join(lines)
    pattern = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    args.out.write_text(text)
    print(f"wrote {SECTION!r} to {args.out}")


if __name__ == "__main__":
    main()
