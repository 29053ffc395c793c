"""Where the receiver meets the network: TLS context, a listening site whose connections pass
through ``ConnectionLimits``, the open-file limit, and the run loop of ``auditpipe serve``."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from auditpipe.sources.receiver.limits import ConnectionLimits

if TYPE_CHECKING:
    from auditpipe.sources.http_receiver import Receiver

__all__ = ["make_ssl_context", "raise_fd_limit", "serve", "start_site"]


def make_ssl_context(cert: str, key: str | None = None, client_ca: str | None = None) -> ssl.SSLContext:
    """Server TLS context; with ``client_ca`` a client certificate is required (mutual TLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _GuardedSite(web.BaseSite):
    """A TCP site whose connections pass through the receiver's ``ConnectionLimits``."""

    __slots__ = ("_host", "_limits", "_port", "_queue")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limits: ConnectionLimits,
                 ssl_context: ssl.SSLContext | None = None, backlog: int = 64, queue: int = 4096) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port, self._limits, self._queue = host, port, limits, queue

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        # asyncio accepts up to ``backlog`` connections per loop iteration before it reads from
        # any of them: a small batch lets a health check's request be read before a flood of newer
        # connections could push it out; the kernel's accept queue is then made deep again
        self._server = await asyncio.get_running_loop().create_server(
            self._limits.factory(server), self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=True)
        for sock in self._server.sockets:
            with socket.socket(fileno=os.dup(sock.fileno())) as same:  # the same socket, another fd
                same.listen(self._queue)
        self._port = self._server.sockets[0].getsockname()[1]


async def start_site(receiver: Receiver, host: str, port: int, ssl_context: ssl.SSLContext | None = None
                     ) -> tuple[web.AppRunner, int]:
    """Start listening; returns the runner (``await runner.cleanup()`` to stop) and the bound port.

    ``auto_decompress=False``: the handler must see the wire bytes (size cap, HMAC) and inflate
    with its own cap.
    """
    limits = receiver.cfg.limits
    assert limits is not None
    runner = web.AppRunner(receiver.app(), auto_decompress=False, access_log=None,
                           keepalive_timeout=limits.keepalive_timeout)
    await runner.setup()
    site = _GuardedSite(runner, host, port, receiver.limits, ssl_context)
    await site.start()
    return runner, site._port


def raise_fd_limit() -> int:
    """Raise this process' open-file limit to its hard limit (a server holds a socket per
    connection); returns the soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def serve(receiver: Receiver, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
          ready: Callable[[int], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM (or a worker process dies: ``receiver.fatal`` says why); held
    events are flushed to the sink on the way out."""
    import signal

    async def main() -> None:
        receiver.load_state()
        runner, bound = await start_site(receiver, host, port, ssl_context)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        receiver.on_fatal = stop.set  # a worker process died: drain the others and exit non-zero
        if ready:
            ready(bound)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
