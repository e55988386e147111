"""Proxy latency benchmark (issue 4): what ``pocsdk proxy`` adds over calling the upstream directly.

Starts a fake OpenAI-compatible upstream (answers after a fixed ``--upstream-ms``) and the
proxy in front of it, each as its own process on loopback. This process is the load
generator: ``N`` simulated clients, each on its own keep-alive connection, send
pre-serialised chat requests back to back with a minimal HTTP/1.1 client on asyncio
streams (an ``httpx`` client cost about ten times more CPU per request than the proxy's
added work, and on 2 cores that CPU is taken from the servers being measured). For each
scenario and client count the same load goes to the upstream directly and through the
proxy in alternating rounds (direct, proxy, proxy, direct, ...), so both see the same
machine; the report gives p50 / p99 latency of each, the difference (the proxy's *added*
latency), the CPU time per request of the proxy, the upstream and this client, and the
proxy's run-queue time per request: how long its threads were ready to run but waited for
a core, which on a shared machine is where added latency beyond the proxy's CPU goes (all
from ``/proc``, Linux only).

The proxy runs as ``pocsdk proxy`` does by default (floor 0.9, 64 requests in flight,
prompt cache of 256); ``--keep-rate`` measures a fixed rate instead. Scenarios:

* ``8k cold``: every request carries a different ~8k-token tool message (nothing cached:
  each one is compressed, the default compressor);
* ``8k repeat``: the same ~8k-token request every time (the proxy's prompt cache answers);
* ``short``: a one-line prompt under the compression threshold (pure proxy overhead).

    python benchmarks/proxy_latency.py                     # about 2 minutes on 2 cores
    python benchmarks/proxy_latency.py --concurrency 1 50 --requests 300 1000 --cold-requests 60 250
    python benchmarks/proxy_latency.py --out /tmp/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import random
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocsdk.testing.results import process_cpu_s, write_section

HERE = Path(__file__).resolve().parent
SECTION = "## Proxy latency (issue 4)"
WORDS = ("river castle engine orchard harbor glacier violin comet market forest bridge lantern meadow "
         "signal copper thunder garden velvet marble canyon").split()
QUESTION = "Which harbor is mentioned near the copper bridge?"
SCENARIOS = ("8k cold", "8k repeat", "short")


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

    uvicorn.run(upstream_app(args.upstream_ms), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], port: int, path: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("POCSDK_PROXY_API_KEY", "POCSDK_UPSTREAM_API_KEY")}
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            status = asyncio.run(_get(port, path))
            if status == 200:
                return proc
        except (OSError, EOFError, ValueError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``pocsdk proxy --workers N`` serves from child processes; Linux ``/proc``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo.extend(int(x) for x in Path(f"/proc/{p}/task/{p}/children").read_text().split())
        except (OSError, ValueError):
            pass
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its descendants (see :func:`process_tree`); one that ended meanwhile counts 0."""
    return _finite_sum(process_cpu_s(p) for p in process_tree(pid))


def tree_runqueue_s(pid: int) -> float:
    return _finite_sum(process_runqueue_s(p) for p in process_tree(pid))


def _finite_sum(values: Iterable[float]) -> float:
    got = [v for v in values if math.isfinite(v)]
    return sum(got) if got else float("nan")


def process_runqueue_s(pid: int) -> float:
    """Seconds the threads of a process were ready to run but waited for a core (Linux
    ``/proc/<pid>/task/*/schedstat``, nanoseconds; NaN elsewhere)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return float("nan")
    total = 0
    for task in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended between the listing and the read
    return total / 1e9




# -- a minimal HTTP/1.1 client -------------------------------------------------------------
class Connection:
    """One keep-alive connection; requests are pre-formatted bytes, responses need Content-Length
    or chunked framing (what uvicorn sends)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def ready(self) -> None:
        """Connect, or reconnect if the server closed the idle connection (uvicorn does after 5 s)."""
        if self.reader is not None and self.reader.at_eof():
            self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, data: bytes) -> int:
        await self.ready()
        assert self.reader is not None and self.writer is not None
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked = False
        for line in head.lower().split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line[15:])
            elif line.startswith(b"transfer-encoding:") and b"chunked" in line:
                chunked = True
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        if b"connection: close" in head.lower():
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _get(port: int, path: str) -> int:
    conn = Connection(port)
    try:
        return await asyncio.wait_for(
            conn.request(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode()), 2.0)
    finally:
        conn.close()


def post(port: int, body: bytes) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


@dataclass
class Block:
    """Latencies and CPU of every request sent to one target at one level."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    requests: int = 0
    proxy_cpu_s: float = 0.0
    proxy_runqueue_s: float = 0.0
    upstream_cpu_s: float = 0.0
    client_cpu_s: float = 0.0


async def run_block(conns: list[Connection], bodies: list[bytes], out: Block) -> None:
    """Send ``bodies``, one client per connection, each client back to back."""
    queue = list(reversed(bodies))

    async def client(conn: Connection) -> None:
        while queue:
            data = queue.pop()
            await conn.ready()  # (re)connecting is not part of the request's latency
            t0 = time.perf_counter()
            try:
                status = await conn.request(data)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                print(f"  {type(exc).__name__}: {exc}", file=sys.stderr)
                conn.close()
                status = 0
            out.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
            out.requests += 1
            if status != 200:
                out.errors += 1

    await asyncio.gather(*(client(c) for c in conns))


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
            {"role": "user", "content": QUESTION}]}
    return json.dumps(body).encode()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))] if s else float("nan")


@dataclass
class Row:
    scenario: str
    clients: int
    direct: Block
    proxy: Block

    def added(self, q: float) -> float:
        return pct(self.proxy.latencies_ms, q) - pct(self.direct.latencies_ms, q)

    @staticmethod
    def per_request_ms(cpu_s: float, block: Block) -> float:
        return cpu_s * 1000.0 / block.requests if block.requests else float("nan")


def measure(args: argparse.Namespace, ports: dict[str, int], pids: dict[str, int], scenario: str, clients: int,
            n: int, seed: int) -> Row:
    """Warm up both targets, then ``args.rounds`` alternating rounds of ``n / rounds`` requests each."""
    rounds = max(1, args.rounds)
    per_round = max(clients, n // rounds)
    warm = max(10, 2 * clients)
    total = warm + per_round * rounds
    if scenario == "8k cold":  # the proxy must never see a context twice; the upstream does not care
        proxy_bodies = [request(context(seed + i, args.tokens)) for i in range(total)]
        direct_bodies = proxy_bodies
    elif scenario == "8k repeat":
        proxy_bodies = direct_bodies = [request(context(0, args.tokens))] * total
    else:
        proxy_bodies = direct_bodies = [request(None)] * total
    requests = {"direct": [post(ports["direct"], b) for b in direct_bodies],
                "proxy": [post(ports["proxy"], b) for b in proxy_bodies]}
    del proxy_bodies, direct_bodies
    conns = {name: [Connection(ports[name]) for _ in range(clients)] for name in ports}
    blocks = {name: Block() for name in ports}

    async def run() -> None:
        for name in ports:  # warm-up: open the connections, fill the prompt cache (repeat)
            await run_block(conns[name], requests[name][:warm], Block())
        pos = warm
        for r in range(rounds):
            order = ("direct", "proxy") if r % 2 == 0 else ("proxy", "direct")
            for name in order:
                chunk = requests[name][pos:pos + per_round]
                b = blocks[name]
                p0, u0, c0 = tree_cpu_s(pids["proxy"]), process_cpu_s(pids["upstream"]), time.process_time()
                q0 = tree_runqueue_s(pids["proxy"])
                await run_block(conns[name], chunk, b)
                b.proxy_runqueue_s += tree_runqueue_s(pids["proxy"]) - q0
                b.proxy_cpu_s += tree_cpu_s(pids["proxy"]) - p0
                b.upstream_cpu_s += process_cpu_s(pids["upstream"]) - u0
                b.client_cpu_s += time.process_time() - c0
            pos += per_round
        for cs in conns.values():
            for c in cs:
                c.close()

    asyncio.run(run())
    return Row(scenario, clients, blocks["direct"], blocks["proxy"])


def server_stack() -> str:
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn with {loop} and {http}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--serve", choices=["upstream"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--upstream-ms", type=float, default=2.0, help="fake upstream latency (ms)")
    ap.add_argument("--tokens", type=int, default=8000, help="context size in tokens")
    ap.add_argument("--floor", type=float, default=None, help="performance floor (default 0.9, as the proxy)")
    ap.add_argument("--keep-rate", type=float, default=None, help="a fixed keep rate instead of a floor")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 50], help="simulated clients per level")
    ap.add_argument("--requests", type=int, nargs="+", default=[300, 600, 1500],
                    help="timed requests per level and target (short, 8k repeat)")
    ap.add_argument("--cold-requests", type=int, nargs="+", default=[60, 120, 300],
                    help="timed requests per level and target (8k cold: each context is generated and compressed)")
    ap.add_argument("--rounds", type=int, default=4, help="alternating direct/proxy rounds per level")
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    ap.add_argument("--workers", type=int, default=1, help="`pocsdk proxy --workers N` (worker processes)")
    ap.add_argument("--proxy-command", default=None,
                    help="serve some other proxy instead of `pocsdk proxy` (a command with {upstream} and {port}; "
                         "it must answer GET /healthz); the report says so")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    if args.floor is None and args.keep_rate is None:
        args.floor = 0.9
    if args.serve:
        serve(args)
        return
    if not len(args.requests) == len(args.cold_requests) == len(args.concurrency):
        ap.error("give one --requests and one --cold-requests value per --concurrency value")
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    ports = {"direct": free_port(), "proxy": free_port()}
    mode = ["--floor", str(args.floor)] if args.floor is not None else ["--keep-rate", str(args.keep_rate)]
    me = [sys.executable, str(Path(__file__).resolve())]
    procs = [start([*me, "--serve", "upstream", "--port", str(ports["direct"]), "--upstream-ms", str(args.upstream_ms)],
                   ports["direct"], "/v1/models")]
    rows: list[Row] = []
    upstream_url = f"http://127.0.0.1:{ports['direct']}/v1"
    if args.proxy_command:  # another proxy build (e.g. an older one) to compare
        proxy_cmd = shlex.split(args.proxy_command.format(upstream=upstream_url, port=ports["proxy"]))
    else:  # the proxy exactly as users run it: the CLI with its defaults
        proxy_cmd = [sys.executable, "-c", "from pocsdk.cli import main; main()", "proxy", "--upstream", upstream_url,
                     "--port", str(ports["proxy"]), *mode, "--log-level", "warning", "--workers", str(args.workers)]
    try:
        procs.append(start(proxy_cmd, ports["proxy"], "/healthz"))
        pids = {"upstream": procs[0].pid, "proxy": procs[1].pid}
        seed = 1
        for scenario in args.scenarios:
            counts = args.cold_requests if scenario == "8k cold" else args.requests
            for clients, n in zip(args.concurrency, counts, strict=True):
                row = measure(args, ports, pids, scenario, clients, n, seed)
                seed += 100_000
                rows.append(row)
                d, p = row.direct, row.proxy
                print(f"{scenario:<10} c={clients:<3} direct p50 {pct(d.latencies_ms, 50):7.1f}  proxy p50 "
                      f"{pct(p.latencies_ms, 50):7.1f}  added p50 {row.added(50):7.1f} p99 {row.added(99):7.1f} ms  "
                      f"proxy CPU {Row.per_request_ms(p.proxy_cpu_s, p):5.2f} ms/req  "
                      f"proxy run-queue {Row.per_request_ms(p.proxy_runqueue_s, p):5.2f} ms/req  "
                      f"client CPU {Row.per_request_ms(p.client_cpu_s, p):5.2f} ms/req  errors {d.errors + p.errors}",
                      flush=True)
    finally:
        for proc in procs:
            stop(proc)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)

    # In-process compression of one context, on the now quiet machine: the floor under "8k cold".
    from pocsdk import Compressor
    from pocsdk.text.tokens import get_token_counter

    sample = context(0, args.tokens)
    n_tokens = get_token_counter().count(sample)
    comp = Compressor(**({"floor": args.floor} if args.floor is not None else {"keep_rate": args.keep_rate}))
    comp.compress(sample, QUESTION)
    inproc = []
    for i in range(7):
        ctx = context(900_000 + i, args.tokens)
        t0 = time.process_time()
        comp.compress(ctx, QUESTION)
        inproc.append((time.process_time() - t0) * 1000.0)
    text = section(args, rows, n_tokens, statistics.median(inproc), load_before, load_after)
    print("\n" + text)
    if not args.no_write:
        write_section(args.out, SECTION, text)
        print(f"wrote {SECTION!r} to {args.out}")


def section(args: argparse.Namespace, rows: list[Row], n_tokens: int, inproc_ms: float,
            load: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    from pocsdk.compressors import DEFAULT_COMPRESSOR
    mode = f"--floor {args.floor}" if args.floor is not None else f"--keep-rate {args.keep_rate}"
    cores = os.cpu_count() or 1
    lines = [
        SECTION,
        "",
        (f"`{args.proxy_command}`" if args.proxy_command else
         f"`pocsdk proxy --upstream URL {mode}"
         + (f" --workers {args.workers}" if args.workers > 1 else "")
         + f"` (compressor `{DEFAULT_COMPRESSOR}`, otherwise the CLI's "
         "defaults: 64 in flight, prompt cache 256, floor predictor loaded at start-up, no access log)") + " in "
        f"front of a fake upstream answering after {args.upstream_ms:g} ms, each its own process on loopback "
        f"({server_stack()}). The load generator is a third process: *clients* simulated clients, each on its own "
        "keep-alive connection sending pre-serialised requests back to back (a minimal HTTP/1.1 client on asyncio "
        "streams). Each level sends the same requests to the upstream directly and through the proxy in "
        f"{args.rounds} alternating rounds after a warm-up; *added* = proxy minus direct. CPU columns: CPU time "
        "per proxied request of the proxy process (all threads, and its worker processes), of the upstream and "
        "of the load generator "
        "(`/proc`, 10 ms ticks summed over the level); *proxy run-queue*: time per proxied request the proxy's "
        "threads were ready to run but waited for a core (`/proc/<pid>/task/*/schedstat`), the part of the added "
        "latency that is neither the proxy's work nor its I/O but other processes holding the cores. "
        f"*8k cold*: each request a different tool message of {n_tokens} tokens (heuristic counter) plus a "
        "question, so every one is compressed; *8k repeat*: one such request repeated (the proxy's prompt cache "
        "answers); *short*: a one-line prompt (no compression, pure proxy overhead). "
        f"In-process `Compressor.compress` of one such context: median {inproc_ms:.1f} ms CPU.",
        "",
        "| scenario | clients | requests | direct p50 ms | proxy p50 ms | added p50 ms | direct p99 ms | proxy p99 ms "
        "| added p99 ms | proxy CPU ms/req | proxy run-queue ms/req | upstream CPU ms/req | client CPU ms/req "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d, p = r.direct, r.proxy
        lines.append(
            f"| {r.scenario} | {r.clients} | {p.requests} | {pct(d.latencies_ms, 50):.1f} | "
            f"{pct(p.latencies_ms, 50):.1f} | {r.added(50):.1f} | {pct(d.latencies_ms, 99):.1f} | "
            f"{pct(p.latencies_ms, 99):.1f} | {r.added(99):.1f} | {Row.per_request_ms(p.proxy_cpu_s, p):.2f} | "
            f"{Row.per_request_ms(p.proxy_runqueue_s, p):.2f} | "
            f"{Row.per_request_ms(p.upstream_cpu_s, p):.2f} | {Row.per_request_ms(p.client_cpu_s, p):.2f} | "
            f"{d.errors + p.errors} |")
    verdicts = []
    for r in rows:
        if r.clients >= 50:
            added = r.added(50)
            verdict = "**met**" if added < 5 else "**not met**"
            cpu = Row.per_request_ms(r.proxy.proxy_cpu_s, r.proxy)
            verdicts.append(f"{r.scenario}: {added:.1f} ms, {verdict} (proxy CPU {cpu:.2f} ms/request; "
                            f"{r.clients} × {cpu:.2f} / {cores} cores = {r.clients * cpu / cores:.0f} ms)")
    one = {r.scenario: r for r in rows if r.clients == 1}
    at_one = []
    for scenario, what in (("short", "a short prompt (no compression: parsing, forwarding and one more loopback "
                                     "exchange)"),
                           ("8k repeat", "a repeated 8k context (a cache hit)"),
                           ("8k cold", "an 8k cold context")):
        if scenario in one:
            r = one[scenario]
            at_one.append(f"{r.added(50):.1f} ms p50 to {what}, against "
                          f"{Row.per_request_ms(r.proxy.proxy_cpu_s, r.proxy):.1f} ms of proxy CPU and "
                          f"{Row.per_request_ms(r.proxy.proxy_runqueue_s, r.proxy):.1f} ms of its threads waiting "
                          "for a core")
    upstream_cpu = [Row.per_request_ms(r.proxy.upstream_cpu_s, r.proxy) for r in rows if r.scenario == "short"]
    lines += [
        "",
        "Target < 5 ms p50 added at 50 clients, 8k contexts, default compressor: "
        + ("; ".join(verdicts) or "no level of 50 clients run") + ". "
        + (f"At 1 client the proxy adds {'; '.join(at_one)}. " if at_one else "")
        + "Why not at 50 clients: the clients send back to back with no pause, so above a few clients every level "
        "saturates the machine and measures queueing rather than the proxy's own work. Client, upstream and proxy "
        f"share {cores} cores, and each proxied request costs the proxy the CPU time in the *proxy CPU* column, so "
        "with *N* clients in line a request waits at least *N* × (proxy CPU per request) / cores longer than "
        "without the proxy (the bound in brackets; the measured gap is larger: the proxy's event loop is one "
        "thread, the GIL limits its compression threads, and other jobs on the machine took CPU too). For cold 8k "
        "contexts that CPU is nearly all compression; 5 ms at 50 clients would need under "
        f"{5 * cores / 50:.2f} ms of proxy CPU per request on {cores} cores"
        + (f", less than the do-nothing upstream spends on one request ({min(upstream_cpu):.2f} ms)"
           if upstream_cpu else "")
        + ", or the compression on cores that the clients and the upstream do not use.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {cores} cores, Python "
        f"{platform.python_version()}; load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} before the run, "
        f"{load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} after (client, proxy and upstream share "
        "the machine).",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/proxy_latency.py', *sys.argv[1:]])}` "
        f"({dt.date.today().isoformat()}).",
        "",
    ]
    return "\n".join(lines)




if __name__ == "__main__":
    main()
