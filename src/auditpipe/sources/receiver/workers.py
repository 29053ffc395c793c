"""``serve --workers N``: the receiver's parsing, reassembly and normalization in N processes.

The HTTP front (aiohttp, auth, limits, body reading) stays in the main process and hands each
body to the worker its sender hashes to (``crc32`` of the sender key: stable across processes and
restarts with the same N), so all records of one sender are reassembled in one place. Each worker
is a :class:`~auditpipe.sources.http_receiver.Receiver` of its own (inflate, decode, parse,
reorder, reassemble, stages, normalize). Where every output is a file, each worker opens the
outputs itself after the fork (``open_outputs``: files that N processes append to, under a lock)
and writes its documents there; only its answer and the state of its outputs come back
(:class:`WorkerOutputs` is the front's view of them). Other outputs (network queues, the lake,
stdout) cannot be shared by N processes: the worker's outputs only *collect* the documents as
encoded lines, and the front writes them to the real outputs before it answers 200. Either way
the delivery guarantee is the one of ``--workers 1``: a body is acknowledged once its documents
are accepted by the outputs (or pending there while they are unavailable; later POSTs get 503).

Protocol: one ``socketpair`` per worker, frames of an 8-byte length and a pickle. The front sends
requests, the worker answers each in order (so the front may have several in flight and matches
answers first in, first out). Requests: ``body``, ``tick``, ``refused``, ``stats``, ``flush``,
``load``, ``drain`` (outputs it owns: write what is pending). An answer is the reply, the
collected documents and raw records, and (outputs it owns) their state. A worker ignores
SIGINT/SIGTERM (the front drains it at shutdown) and exits when its socket closes; a worker
that dies is seen as the end of its socket: what it had in flight is answered 503 (not
acknowledged: the sender sends it again), the front stops acknowledging and ``serve`` exits
non-zero (its supervisor restarts it); the held records of that worker's senders
are lost, as with a SIGKILL of a one-process ``serve``.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import signal
import socket
import struct
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from auditpipe.sinks.encode import dumps_line

__all__ = ["Collector", "WorkerLost", "WorkerOutputs", "WorkerPool", "worker_index"]

log = logging.getLogger("auditpipe.serve")
_LEN = struct.Struct("!Q")


class WorkerLost(Exception):
    """The worker process a request went to is gone."""


def worker_index(key: str, n: int) -> int:
    """The worker of a sender key (``hash()`` is salted per process; crc32 is not)."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % n


class Collector:
    """A worker's outputs: they accept everything, as encoded lines (alerts stay dicts so the
    front's routing by ``documents`` still tells them apart), to be sent to the front."""

    held = False

    def __init__(self, wants_raw: bool = False) -> None:
        self.wants_raw = wants_raw
        self.docs: list = []
        self.raw: list[str] = []

    def write(self, docs: list, raw: list[str] | None = None, date: float | None = None) -> bool:
        from auditpipe.pipeline.stages import is_alert

        self.docs += [d if is_alert(d) else dumps_line(d) for d in docs]
        if raw:
            self.raw += raw
        return True

    def retry(self, force: bool = False) -> bool:
        return True

    def held_cause(self) -> str | None:
        return None

    def pending_documents(self) -> int:
        return 0

    def take(self) -> tuple[list, list[str]]:
        out = self.docs, self.raw
        self.docs, self.raw = [], []
        return out


# ---- the worker process ------------------------------------------------------------------------

def _recv(sock: socket.socket) -> Any:
    head = _recv_exactly(sock, _LEN.size)
    return None if head is None else pickle.loads(_recv_exactly(sock, _LEN.unpack(head)[0]) or b"")


def _recv_exactly(sock: socket.socket, n: int) -> bytearray | None:
    """``n`` bytes, or None at the end of the stream (unpickled in place: no copy to bytes)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return buf


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


def _worker_main(sock: socket.socket, inherited: list[socket.socket], make_receiver: Callable[[Any], Any],
                 open_outputs: Callable[[], Any] | None) -> None:
    for s in inherited:  # the front's ends (ours too): their EOF must not wait for this process
        s.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    outputs: Any = Collector() if open_outputs is None else open_outputs()
    rx = make_receiver(outputs)
    rx.log_outputs = open_outputs is None
    try:
        _serve_front(sock, rx, outputs)
    finally:
        if open_outputs is not None:
            outputs.close()


def _serve_front(sock: socket.socket, rx: Any, outputs: Any) -> None:
    """Answer the front's requests until it closes the socket."""
    collector = outputs if isinstance(outputs, Collector) else None
    while True:
        msg = _recv(sock)
        if msg is None:
            return
        try:
            reply = _handle(rx, collector, msg)
        except Exception as e:  # noqa: BLE001 -- a bug answers this request 500, the worker goes on
            log.exception("worker: %s request failed", msg[0])
            reply = ("crash", f"{type(e).__name__}: {e}")
        if collector is not None:
            sock.sendall(_frame((reply, *collector.take(), None)))
        else:
            sock.sendall(_frame((reply, [], [], rx.output_state())))


def _handle(rx: Any, collector: Collector | None, msg: tuple) -> tuple:
    from auditpipe.sources.http_receiver import _Unavailable
    from auditpipe.sources.receiver.body import BodyError

    kind = msg[0]
    if kind == "body":
        before = rx.inflated_bytes
        try:
            return "ok", rx._process(*msg[1:]), rx.inflated_bytes - before
        except BodyError as e:
            return "err", (e.status, e.reason), rx.inflated_bytes - before
        except _Unavailable:  # the outputs it owns hold documents they could not write
            return "unavailable", rx.unavailable, rx.inflated_bytes - before
    if kind == "tick":
        rx.tick(msg[1])
        return "ok", rx.snapshot()
    if kind == "refused":
        rx.refused(msg[1], msg[2])
        return ("ok",)
    if kind == "stats":
        return "ok", rx.snapshot()
    if kind == "flush":
        state = rx.flush_senders(keep_state=msg[1])
        if collector is None:
            rx._finish_outputs()
        return "ok", state
    if kind == "load":
        return "ok", rx.load_senders(msg[1])
    if kind == "drain":
        return "ok", rx._drain_pending(force=msg[1])
    if kind == "init":
        if collector is not None:
            collector.wants_raw = msg[1]
        return ("ok",)
    raise ValueError(f"unknown request {kind!r}")


# ---- the front ---------------------------------------------------------------------------------

class _Worker:
    __slots__ = ("answered", "dead", "index", "inflight", "outputs", "proc", "reader", "snapshot", "sock", "tasks",
                 "writer")

    def __init__(self, index: int, proc: Any, sock: socket.socket) -> None:
        self.index, self.proc, self.sock = index, proc, sock
        self.inflight: deque[asyncio.Future] = deque()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.answered: asyncio.Queue[tuple[asyncio.Future, tuple, list, list[str]]] = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        self.snapshot: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}  # the state of the outputs it owns, as of its last answer
        self.dead: str | None = None


class WorkerPool:
    """The front's side: forks the workers (:meth:`start`, before the event loop, outputs and
    threads exist), then sends requests and delivers what comes back, in each worker's order.

    ``deliver(docs, raw)`` (run on the receiver's output thread, in the order the answers come)
    writes a worker's documents to the outputs before the request that made them is answered.
    ``on_lost(message)`` is called once when a worker dies. With ``open_outputs`` each worker
    opens the outputs itself (after the fork) and writes its documents there: nothing to deliver.
    """

    def __init__(self, n: int, make_receiver: Callable[[Any], Any],
                 open_outputs: Callable[[], Any] | None = None) -> None:
        self.n = n
        self.make_receiver = make_receiver
        self.open_outputs = open_outputs
        self.workers: list[_Worker] = []
        self.deliver: Callable[[list, list[str]], Awaitable[None]] | None = None
        self.on_lost: Callable[[str], None] | None = None
        self.closing = False

    def start(self) -> None:
        ctx = multiprocessing.get_context("fork")
        fronts: list[socket.socket] = []
        for i in range(self.n):
            front, back = socket.socketpair()
            proc = ctx.Process(target=_worker_main,
                               args=(back, [*fronts, front], self.make_receiver, self.open_outputs),
                               name=f"auditpipe-serve-worker-{i}", daemon=True)
            proc.start()
            back.close()
            fronts.append(front)
            self.workers.append(_Worker(i, proc, front))

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    async def connect(self, wants_raw: bool) -> None:
        for w in self.workers:
            w.reader, w.writer = await asyncio.open_connection(sock=w.sock, limit=1 << 20)
            w.tasks = [asyncio.create_task(self._read(w)), asyncio.create_task(self._deliver(w))]
        await self.gather(("init", wants_raw))

    def index(self, key: str) -> int:
        return worker_index(key, self.n)

    def send(self, i: int, msg: tuple) -> asyncio.Future:
        """Send ``msg`` to worker ``i``; the future gets its answer (WorkerLost if it dies)."""
        w = self.workers[i]
        fut = asyncio.get_running_loop().create_future()
        if w.dead is not None:
            fut.set_exception(WorkerLost(w.dead))
            return fut
        assert w.writer is not None
        w.inflight.append(fut)
        w.writer.write(_frame(msg))
        return fut

    async def call(self, i: int, msg: tuple) -> tuple:
        """``msg``'s answer from worker ``i``; RuntimeError if the request failed there (a bug:
        the worker logged it and goes on), WorkerLost if the worker died."""
        fut = self.send(i, msg)
        w = self.workers[i]
        if w.writer is not None and w.dead is None:
            try:
                await w.writer.drain()
            except (ConnectionError, OSError):
                pass  # the reader sees the worker's end and fails the future
        reply = await fut
        if reply[0] == "crash":
            raise RuntimeError(f"serve worker {i}: {reply[1]}")
        return reply

    async def gather(self, msg: tuple) -> list[tuple[_Worker, tuple | None]]:
        """``msg`` to every live worker at once: (worker, answer or None if it failed)."""
        live = [w for w in self.workers if w.dead is None]
        got = await asyncio.gather(*(self.call(w.index, msg) for w in live), return_exceptions=True)
        return [(w, None if isinstance(r, BaseException) else r) for w, r in zip(live, got, strict=True)]

    async def refresh(self) -> None:
        """Each live worker's counters and gauges, now."""
        await self._snapshots(("stats",))

    async def tick(self, now: float) -> None:
        """Each worker releases what is due and forgets idle senders (and reports its counters)."""
        await self._snapshots(("tick", now))

    async def _snapshots(self, msg: tuple) -> None:
        for w, reply in await self.gather(msg):
            if reply is not None:
                w.snapshot = reply[1]

    def total(self, name: str) -> int:
        return sum(int(w.snapshot.get(name, 0)) for w in self.workers)

    async def _read(self, w: _Worker) -> None:
        assert w.reader is not None
        try:
            while True:
                head = await w.reader.readexactly(_LEN.size)
                reply, docs, raw, outputs = pickle.loads(await w.reader.readexactly(_LEN.unpack(head)[0]))
                if outputs is not None:
                    w.outputs = outputs
                w.answered.put_nowait((w.inflight.popleft(), reply, docs, raw))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self._lost(w)
        except Exception:  # a garbled answer: the worker cannot be trusted any more
            log.exception("reading from serve worker %d failed", w.index)
            w.proc.kill()
            self._lost(w)

    async def _deliver(self, w: _Worker) -> None:
        """Write each answer's documents, then hand the answer over, in the worker's order; apart
        from the reading, so that the worker never waits for the outputs."""
        while True:
            fut, reply, docs, raw = await w.answered.get()
            try:
                if (docs or raw) and self.deliver is not None:
                    await self.deliver(docs, raw)
            except Exception as e:  # noqa: BLE001 -- that request fails (500, not acknowledged)
                log.exception("writing the documents of serve worker %d failed", w.index)
                if not fut.done():
                    fut.set_exception(e)
            if not fut.done():
                fut.set_result(reply)

    def _lost(self, w: _Worker) -> None:
        w.proc.join(timeout=1)
        code = w.proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        w.dead = (f"serve worker {w.index} (pid {w.proc.pid}) died ({how}); the held records of its "
                  f"senders (~{w.snapshot.get('held_records', 0)} at its last report) are lost")
        log.error("%s", w.dead)
        while w.inflight:
            fut = w.inflight.popleft()
            if not fut.done():
                fut.set_exception(WorkerLost(w.dead))
        if self.on_lost is not None and not self.closing:
            self.on_lost(w.dead)

    async def close(self) -> None:
        """Close every worker's socket (it exits) and reap it."""
        self.closing = True
        for w in self.workers:
            if w.writer is not None:
                w.writer.close()
            for task in w.tasks:
                task.cancel()
        loop = asyncio.get_running_loop()
        for w in self.workers:
            await loop.run_in_executor(None, w.proc.join, 10)
            if w.proc.exitcode is None:
                log.error("serve worker %d (pid %s) did not exit; killing it", w.index, w.proc.pid)
                w.proc.kill()
                await loop.run_in_executor(None, w.proc.join, 5)


class WorkerOutputs:
    """The front's view of outputs the workers own (``WorkerPool(open_outputs=…)``), in the
    shape of ``pipeline.outputs.Outputs`` that the receiver reads: from the state each worker
    sends with every answer. :meth:`drain` asks the workers holding documents to write them."""

    wants_raw = False

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def _states(self) -> list[dict[str, Any]]:
        return [w.outputs for w in self.pool.workers if w.dead is None]

    @property
    def held(self) -> bool:
        return any(st.get("pending") for st in self._states())

    def write(self, docs: list, raw: list[str] | None = None, date: float | None = None) -> bool:
        assert not docs and not raw, "the workers write their own documents"
        return not self.held

    def retry(self, force: bool = False) -> bool:
        """What the workers last said (only :meth:`drain` asks them)."""
        return not self.held

    async def drain(self, force: bool = True) -> bool:
        """Each worker holding documents writes them now (``force``: whatever its backoff)."""
        held = [w for w in self.pool.workers if w.dead is None and w.outputs.get("pending")]
        await asyncio.gather(*(self.pool.call(w.index, ("drain", force)) for w in held), return_exceptions=True)
        return not self.held

    def held_cause(self) -> str | None:
        causes = {st["cause"] for st in self._states() if st.get("pending") and st.get("cause")}
        return "; ".join(sorted(causes)) or None

    def pending_documents(self) -> int:
        return sum(int(st.get("pending", 0)) for st in self._states())

    @property
    def documents(self) -> int:
        """Documents the workers handed to their outputs, in all."""
        return sum(int(w.outputs.get("documents", 0)) for w in self.pool.workers)

    @property
    def write_failures(self) -> int:
        return sum(int(w.outputs.get("write_failures", 0)) for w in self.pool.workers)

    @property
    def held_seconds(self) -> float:
        """The longest of the workers' (they write the same files: one outage holds them all)."""
        return max((float(w.outputs.get("held_seconds", 0.0)) for w in self.pool.workers), default=0.0)

    def status(self) -> list[dict[str, Any]]:
        """Per output: the first worker's description, pending summed over the workers."""
        merged: list[dict[str, Any]] = []
        for st in self._states():
            for i, o in enumerate(st.get("status", [])):
                if i == len(merged):
                    merged.append({**o, "pending": 0})
                merged[i]["pending"] += o["pending"]
        return merged

    def flush(self) -> None:
        """Nothing here: each worker makes its outputs durable when it is flushed."""

    def close(self) -> None:
        """Nothing here: each worker closes its outputs when it exits."""
