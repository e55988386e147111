"""An httpx.AsyncClient per event loop, for async twins that outlive one ``asyncio.run``.

An httpx.AsyncClient's pooled connections belong to the loop that opened them: reused from
another loop they fail with "Event loop is closed". Scripts that call ``asyncio.run`` per request,
Celery tasks, per-test loops and threads each running a loop all do that, so a long-lived async
client keeps one per loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator, Callable

import httpx


class LoopBoundClient:
    """Makes (with ``factory``) and hands out the running loop's ``httpx.AsyncClient``.

    A client made for a loop is closed when that loop shuts down (``asyncio.run`` closes the async
    generators it has seen), so each loop gives its sockets back, and loops in other threads keep
    theirs meanwhile. ``owns_transport=False`` (a transport the caller passed in, shared by every
    loop's client) skips that close; such a transport must itself work across loops.
    """

    def __init__(self, factory: Callable[[], httpx.AsyncClient], *, owns_transport: bool = True) -> None:
        self._factory = factory
        self._owns_transport = owns_transport
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = \
            weakref.WeakKeyDictionary()
        self._closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._closed: httpx.AsyncClient | None = None

    async def get(self) -> httpx.AsyncClient:
        if self._closed is not None:
            return self._closed  # after aclose() httpx refuses to send, as the sync twin's client does
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is not None:
                return client
            for gone in [old for old in self._clients if old.is_closed()]:  # loops closed without
                del self._clients[gone]  # shutdown_asyncgens (run_until_complete, then close): their
                self._closers.pop(gone, None)  # clients' sockets go with the objects
            client = self._clients[loop] = self._factory()
        if self._owns_transport:
            closer = self._lifetime(loop, client)
            self._closers[loop] = closer  # held for the loop's life: dropping it would close the client
            await anext(closer)
        return client

    async def _lifetime(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
        """:func:`close_with_loop`, and then forget the loop: the generator's finalizer refers to its
        loop, so an entry left behind would keep every finished loop (and its client) alive."""
        try:
            yield
        finally:
            with self._lock:
                if self._clients.get(loop) is client:
                    del self._clients[loop]
                self._closers.pop(loop, None)
            await client.aclose()

    async def aclose(self) -> None:
        """Close the running loop's client (the others close with their loops); later calls fail."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.pop(loop, None) or self._factory()
            self._closers.pop(loop, None)
            self._closed = client
        await client.aclose()


async def close_with_loop(client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    """Suspended for the life of the event loop; the loop's ``shutdown_asyncgens`` closes it, and the client."""
    try:
        yield
    finally:
        await client.aclose()
