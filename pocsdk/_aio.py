"""An httpx.AsyncClient per event loop, for async twins that outlive one ``asyncio.run``.

An httpx.AsyncClient's pooled connections belong to the loop that opened them: reused from
another loop they fail with "Event loop is closed". Scripts that call ``asyncio.run`` per request,
Celery tasks and per-test loops all do that, so a long-lived async client keeps one per loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

import httpx


class LoopBoundClient:
    """Makes (with ``factory``) and hands out the running loop's ``httpx.AsyncClient``.

    A client made for a loop is closed when that loop shuts down (``asyncio.run`` closes the async
    generators it has seen), so each loop gives its sockets back. ``owns_transport=False`` (a
    transport the caller passed in) skips that close, since the next loop's client shares it.
    """

    def __init__(self, factory: Callable[[], httpx.AsyncClient], *, owns_transport: bool = True) -> None:
        self._factory = factory
        self._owns_transport = owns_transport
        self.client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closer: AsyncGenerator[None, None] | None = None
        self._closed = False

    async def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self.client is not None and (self._loop is loop or self._closed):
            return self.client  # after aclose() httpx refuses to send, as the sync twin's client does
        self.client = self._factory()
        self._loop = loop
        if self._owns_transport:
            self._closer = close_with_loop(self.client)
            await anext(self._closer)
        return self.client

    async def aclose(self) -> None:
        self._closed = True
        if self.client is None:
            self.client = self._factory()  # closed before first use: later calls fail as after a close
        await self.client.aclose()


async def close_with_loop(client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    """Suspended for the life of the event loop; the loop's ``shutdown_asyncgens`` closes it, and the client."""
    try:
        yield
    finally:
        await client.aclose()
