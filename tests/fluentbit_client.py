"""A test client that posts audit lines the way Fluent Bit's ``out_http`` does (Fluent Bit itself
cannot be installed here). What it reproduces, from Fluent Bit's documentation
(docs.fluentbit.io/manual/pipeline/outputs/http, .../administration/scheduling-and-retries):

* records are ``{"date": <double>, "log": "<line>"}`` (``json_date_key date``, ``json_date_format
  double``); ``format json_lines`` posts one JSON object per line, ``format json`` a JSON array,
  ``format msgpack`` (the plugin's default) msgpack; ``compress gzip`` gzips the body;
* records are cut into chunks (~2 MB of msgpack, ~2.2 MB as JSON) and ready chunks are flushed
  in parallel over several connections (``workers``; one keep-alive connection each);
* a chunk that fails (connection error, timeout, 5xx) is retried later by the scheduler, after
  newer chunks went out (out of order); a 4xx (413 included) drops the chunk;
* extra headers come from ``header`` entries (the Panther-style shared secret, and here the
  receiver's ``X-Auditpipe-Sender``).
"""

from __future__ import annotations

import gzip
import json
import random
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Chunk:
    n: int
    records: list[dict]
    attempts: int = 0
    not_before: float = 0.0


@dataclass
class FluentBitLike:
    url: str
    fmt: str = "json_lines"  # json_lines | json | msgpack
    compress: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    chunk_bytes: int = 2_200_000
    workers: int = 3
    retry_base: float = 1.0  # Fluent Bit: scheduler.base 5 s; shorter here to keep tests short
    timeout: float = 10.0
    seed: int = 1
    delivered: int = 0
    dropped: list[tuple[int, int]] = field(default_factory=list)  # (chunk, status) dropped on a 4xx
    retries: int = 0
    statuses: list[int] = field(default_factory=list)

    def chunks(self, lines: list[str], date0: float | None = None) -> list[Chunk]:
        """Records with increasing read times, cut into chunks of about ``chunk_bytes``."""
        t_us = int((time.time() if date0 is None else date0) * 1e6)
        out: list[Chunk] = []
        cur: list[dict] = []
        size = 0
        for line in lines:
            t_us += 1  # in_tail stamps each record as it reads it (ns clock; µs in the JSON double)
            rec = {"date": t_us / 1e6, "log": line}
            cur.append(rec)
            size += len(line) + 40
            if size >= self.chunk_bytes:
                out.append(Chunk(len(out), cur))
                cur, size = [], 0
        if cur:
            out.append(Chunk(len(out), cur))
        return out

    def body(self, chunk: Chunk) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if self.fmt == "json_lines":
            data = b"".join(json.dumps(r).encode() + b"\n" for r in chunk.records)
            headers["Content-Type"] = "application/json"
        elif self.fmt == "json":
            data = json.dumps(chunk.records).encode()
            headers["Content-Type"] = "application/json"
        else:  # msgpack: a fixarray header is enough for the receiver to know what it is
            data = b"\x92" + b"\x00" * 16
            headers["Content-Type"] = "application/msgpack"
        if self.compress:
            data = gzip.compress(data)
            headers["Content-Encoding"] = "gzip"
        return data, headers

    def send(self, chunks: list[Chunk], shuffle: int = 4, deadline: float = 300.0) -> None:
        """Flush every chunk: ``workers`` at a time, in parallel (so they complete out of order),
        the ready chunks taken in a shuffled order within runs of ``shuffle`` (the engine's
        queue is roughly in creation order), failed ones retried later, after newer ones."""
        rnd = random.Random(self.seed)
        todo: list[Chunk] = []
        for i in range(0, len(chunks), max(1, shuffle)):
            run = chunks[i:i + max(1, shuffle)]
            rnd.shuffle(run)
            todo += run
        lock = threading.Lock()
        end = time.monotonic() + deadline

        def take() -> Chunk | None:
            while time.monotonic() < end:
                with lock:
                    if not todo:
                        return None
                    now = time.monotonic()
                    ready = [c for c in todo if c.not_before <= now]
                    if ready:
                        todo.remove(ready[0])
                        return ready[0]
                time.sleep(0.02)
            return None

        def worker() -> None:
            with httpx.Client(timeout=self.timeout) as client:
                while (c := take()) is not None:
                    data, headers = self.body(c)
                    status = 0
                    try:
                        status = client.post(self.url, content=data, headers=headers).status_code
                    except httpx.HTTPError:
                        pass
                    with lock:
                        self.statuses.append(status)
                        if 200 <= status < 300:
                            self.delivered += 1
                        elif 400 <= status < 500 and status not in (408, 429):
                            self.dropped.append((c.n, status))  # Fluent Bit does not retry a 4xx
                        else:
                            c.attempts += 1
                            self.retries += 1
                            c.not_before = time.monotonic() + self.retry_base * (1 + rnd.random()) * c.attempts
                            todo.append(c)

        threads = [threading.Thread(target=worker) for _ in range(self.workers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
