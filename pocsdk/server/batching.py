"""Dynamic batching: collect requests for a few milliseconds, run them as one call.

A model-backed compressor spends most of a request on one forward pass; running the
inputs that arrive within a short window as one batch amortises it. :class:`Batcher` is
generic: it hands ``fn(list_of_items) -> list_of_results_or_exceptions`` to a worker
thread, one batch at a time, so the event loop never blocks and a GPU sees one caller.
Items that arrive while a batch runs form the next one, so under load batches grow by
themselves and the window only costs latency when the server is idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("pocsdk.server")

class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new work."""


class BatchTimeout(TimeoutError):
    """An item was not answered within its timeout."""


def settable(exc: BaseException) -> BaseException:
    """``exc``, or a :class:`RuntimeError` carrying its message where a future refuses it.

    ``Future.set_exception`` raises ``TypeError`` for ``StopIteration`` (and a coroutine turns one raised into
    ``RuntimeError`` without its message); ``StopAsyncIteration`` is wrapped alike. A compressor hits this with
    a bare ``next()`` on an empty iterator: its input must fail, not the dispatch loop that serves every input.
    """
    if isinstance(exc, (StopIteration, StopAsyncIteration)):
        detail = f": {exc}" if str(exc) else ""
        wrapped = RuntimeError(f"{type(exc).__name__} raised while compressing{detail}")
        wrapped.__cause__ = exc
        return wrapped
    return exc


def _call(fn: Callable[[Sequence[T]], Sequence[R | BaseException]],
          items: Sequence[T]) -> Sequence[R | BaseException]:
    """``fn(items)`` in a worker thread; a ``StopIteration`` it raises comes back as a settable error (a
    concurrent future holding one cannot be copied onto the event loop's future, whose waiter then hangs)."""
    try:
        return fn(items)
    except (StopIteration, StopAsyncIteration) as exc:
        raise settable(exc) from exc


@dataclass(eq=False)  # compared by identity: removing a timed-out entry must not compare contexts
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher(Generic[T, R]):
    """Run items through ``fn`` in batches of up to ``max_batch``, gathered for ``window_s``.

    ``fn`` runs in ``executor`` (a private one-thread pool by default) and returns one result
    or exception per item, in order; an exception raised by ``fn`` itself fails the whole
    batch. ``on_batch(size, run_seconds, queue_waits)`` reports each call, for metrics.
    Use from one event loop; call :meth:`start` inside it and :meth:`close` to drain.
    """

    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R | BaseException]],
        *,
        window_s: float = 0.005,
        max_batch: int = 32,
        executor: Executor | None = None,
        name: str = "batcher",
        on_batch: Callable[[int, float, list[float]], None] | None = None,
    ) -> None:
        if max_batch < 1 or window_s < 0:
            raise ValueError("max_batch must be >= 1 and window_s >= 0")
        self.fn = fn
        self.window_s = window_s
        self.max_batch = max_batch
        self.name = name
        self.on_batch = on_batch
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pocsdk-{name}")
        self._items: deque[_Pending[T, R]] = deque()
        self._running = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._full: asyncio.Event | None = None

    @property
    def depth(self) -> int:
        """Items waiting plus items in the running batch."""
        return len(self._items) + self._running

    def start(self) -> None:
        """Start the dispatch loop on the running event loop (again, if the loop changed, as in tests, or if
        it ended, which only a bug can make it do: the items queued are then served by the new loop)."""
        loop = asyncio.get_running_loop()
        if self._task is not None and self._task.get_loop() is not loop and not self._items:
            self._task = None  # the old loop is gone; its events cannot be awaited here
        if self._task is not None and self._task.done() and self._task.get_loop() is loop:
            if not self._task.cancelled() and self._task.exception() is not None:
                log.error("%s: the dispatch loop had stopped; restarting it", self.name,
                          exc_info=self._task.exception())
            self._task = None
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._full = asyncio.Event()
            self._task = loop.create_task(self._loop(), name=f"pocsdk-{self.name}")

    async def submit(self, item: T, timeout: float | None = None) -> R:
        """Queue one item and wait for its result (raises its exception, or :class:`BatchTimeout`)."""
        if self._closing:
            raise BatcherClosed(f"{self.name} is shutting down")
        self.start()
        assert self._wakeup is not None and self._full is not None
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        pending = _Pending(item, fut)
        self._items.append(pending)
        self._wakeup.set()
        if len(self._items) >= self.max_batch:
            self._full.set()
        try:
            return await asyncio.wait_for(fut, timeout)  # cancels fut on timeout
        except asyncio.TimeoutError:
            self._forget(pending)
            raise BatchTimeout(f"no result within {timeout:g} s") from None
        except asyncio.CancelledError:
            self._forget(pending)
            raise

    def _forget(self, pending: _Pending[T, R]) -> None:
        """Take an entry nobody waits for out of the queue now: it held its input (and a place in the depth that
        admission reads) until the loop reached it, so the queue grew past ``max_queue`` behind a slow batch."""
        try:
            self._items.remove(pending)
        except ValueError:  # already taken into a batch
            pass

    async def close(self) -> None:
        """Take no new items, finish everything queued, stop the loop."""
        self._closing = True
        if self._task is not None:
            if self._task.done() and self._items:
                self.start()  # a loop that ended still owes the queued items their answers
            assert self._wakeup is not None
            self._wakeup.set()
            try:
                await self._task
            except Exception:  # already logged where it can be: closing goes on
                log.exception("%s: the dispatch loop failed", self.name)
        if self._own_executor:
            self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        assert self._wakeup is not None and self._full is not None
        while True:
            while not self._items:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.window_s > 0 and len(self._items) < self.max_batch and not self._closing:
                left = self.window_s - (time.perf_counter() - self._items[0].enqueued)
                if left > 0:
                    self._full.clear()
                    try:
                        await asyncio.wait_for(self._full.wait(), left)
                    except asyncio.TimeoutError:
                        pass
            batch: list[_Pending[T, R]] = []
            while self._items and len(batch) < self.max_batch:
                p = self._items.popleft()
                if not p.future.done():  # timed out or cancelled while waiting: skip
                    batch.append(p)
            if batch:
                try:
                    await self._dispatch(batch)
                except Exception as exc:  # never end the loop over one batch: later items would wait forever
                    log.error("%s: dispatching a batch failed", self.name, exc_info=exc)
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(RuntimeError(f"dispatching the batch failed: {exc}"))

    async def _dispatch(self, batch: list[_Pending[T, R]]) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        waits = [t0 - p.enqueued for p in batch]
        self._running = len(batch)
        try:
            results: Sequence[R | BaseException] = await loop.run_in_executor(
                self._executor, _call, self.fn, [p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        except Exception as exc:
            results = [exc] * len(batch)
        finally:
            self._running = 0
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), time.perf_counter() - t0, waits)
            except Exception:  # metrics must not fail the answers
                log.exception("%s: on_batch failed", self.name)
        for p, res in zip(batch, results, strict=True):
            if p.future.done():
                continue
            if isinstance(res, BaseException):
                p.future.set_exception(settable(res))
            else:
                p.future.set_result(res)


class DirectRunner(Generic[T, R]):
    """The unbatched twin of :class:`Batcher`: each item is its own call, run concurrently in a pool.

    Same ``submit`` / ``close`` / ``depth`` API, so the service switches with one flag.
    """

    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R | BaseException]],
        *,
        workers: int = 4,
        name: str = "direct",
        on_batch: Callable[[int, float, list[float]], None] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.on_batch = on_batch
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"pocsdk-{name}")
        self._depth = 0
        self._closing = False
        self._idle: asyncio.Event | None = None

    @property
    def depth(self) -> int:
        return self._depth

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._idle is None or (self._depth == 0 and getattr(self, "_loop", None) is not loop):
            self._loop = loop
            self._idle = asyncio.Event()
            self._idle.set()

    async def submit(self, item: T, timeout: float | None = None) -> R:
        if self._closing:
            raise BatcherClosed(f"{self.name} is shutting down")
        self.start()
        assert self._idle is not None
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        self._depth += 1
        self._idle.clear()
        started: list[float] = []

        def run(items: list[T]) -> Sequence[R | BaseException]:
            started.append(time.perf_counter())  # when a worker took it: the queue wait ends here
            return _call(self.fn, items)

        def release(_: object) -> None:  # the job is over (done, failed or cancelled before it started)
            try:
                loop.call_soon_threadsafe(self._release)
            except RuntimeError:  # the loop is gone (shutdown): nobody counts any more
                pass

        try:
            job = self._executor.submit(run, [item])
        except BaseException:
            self._release()
            raise
        # The depth counts the job until it is over, not until its caller stops waiting: a timed-out job that
        # has started still holds a worker, and admission must see it.
        job.add_done_callback(release)
        try:
            # Not shielded: on timeout the job is cancelled if it has not started, so work nobody
            # waits for does not pile up in the pool ahead of new requests (a started one finishes).
            results = await asyncio.wait_for(asyncio.wrap_future(job), timeout)
        except asyncio.TimeoutError:
            raise BatchTimeout(f"no result within {timeout:g} s") from None
        if self.on_batch is not None:
            try:
                self.on_batch(1, time.perf_counter() - t0, [started[0] - t0 if started else 0.0])
            except Exception:  # metrics must not fail the answer
                log.exception("%s: on_batch failed", self.name)
        res = results[0]
        if isinstance(res, BaseException):
            raise settable(res)
        return res

    def _release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._idle is not None:
            self._idle.set()

    async def close(self) -> None:
        self._closing = True
        if self._idle is not None:
            await self._idle.wait()  # queued and running jobs, abandoned ones included
        await asyncio.to_thread(self._executor.shutdown, True)  # not on the loop: it waits for the workers
