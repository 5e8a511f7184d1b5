"""A TCP proxy on 127.0.0.1 that injects network faults between the operator and the API server.

Passes bytes through untouched (TLS ends at the API server, whose certificate names 127.0.0.1),
and on command adds latency to every chunk, resets every open connection, or blackholes: holds
connections open and forwards nothing for a while, as a partitioned network does. Runs its own
event loop in a thread, so a benchmark drives it from ordinary code.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time


class FaultProxy:
    """Listens on 127.0.0.1:``port`` (free if 0) and forwards to 127.0.0.1:``target``."""

    def __init__(self, target: int, port: int = 0) -> None:
        self.target = target
        self.port = port
        self.latency = 0.0
        self.blackhole_until = 0.0
        self.connections: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fault-proxy")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.connections |= {writer, upstream_writer}
        await asyncio.gather(self._pipe(reader, upstream_writer),
                             self._pipe(upstream_reader, writer), return_exceptions=True)
        for end in (writer, upstream_writer):
            self.connections.discard(end)
            end.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            while time.monotonic() < self.blackhole_until:
                await asyncio.sleep(0.05)
            if self.latency:
                await asyncio.sleep(self.latency)
            writer.write(chunk)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    def reset(self) -> int:
        """Reset every open connection now (as a load balancer or NAT would); how many."""
        def abort() -> int:
            count = len(self.connections)
            for writer in list(self.connections):
                writer.transport.abort()
            return count

        return self._call(abort)

    def blackhole(self, seconds: float) -> None:
        """Forward nothing, on old or new connections, for ``seconds``."""
        self.blackhole_until = time.monotonic() + seconds

    def slow(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` (0 to stop)."""
        self.latency = seconds

    def _call(self, function: object) -> int:
        future: asyncio.Future[int] = asyncio.run_coroutine_threadsafe(
            self._in_loop(function), self._loop)  # type: ignore[assignment]
        return future.result(10)

    @staticmethod
    async def _in_loop(function: object) -> int:
        return int(function())  # type: ignore[operator]

    def close(self) -> None:
        """Stop the proxy's loop."""
        self._loop.call_soon_threadsafe(self._loop.stop)
