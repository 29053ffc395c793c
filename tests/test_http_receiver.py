import asyncio
import gzip
import json
import os
import shutil
import subprocess
import tracemalloc
import zlib

import httpx
import pytest

from auditpipe.normalize import make_normalizer
from auditpipe.pipeline import Pipeline
from auditpipe.reassembly import Reassembler
from auditpipe.sinks import auth
from auditpipe.sinks.file import FileSink
from auditpipe.sources.http_receiver import (BodyError, Receiver, ReceiverConfig, decode_body, inflate_capped,
                                             make_ssl_context, parse_size, start_site)

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus", "raw-node.log")
if not os.path.exists(CORPUS):
    CORPUS = "/work/shared/corpus/raw-node.log"


def corpus_lines():
    with open(CORPUS, encoding="utf-8", errors="surrogateescape") as f:
        return [ln for ln in f.read().split("\n") if ln]


def factory(fmt="coalesced", wall_timeout=2.0):
    def make(on_reject):
        return Pipeline(make_normalizer(fmt), Reassembler(timeout=2.0, wall_timeout=wall_timeout), on_reject=on_reject)
    return make


class Server:
    """A receiver on an ephemeral loopback port, driven from a test coroutine."""

    def __init__(self, tmp_path, ssl_context=None, **cfg):
        cfg.setdefault("auth", "none")
        self.out = tmp_path / "out.jsonl"
        self.sink = FileSink(self.out)
        self.receiver = Receiver(ReceiverConfig(**cfg), factory(), self.sink)
        self.ssl_context = ssl_context

    async def __aenter__(self):
        self.runner, self.port = await start_site(self.receiver, "127.0.0.1", 0, self.ssl_context)
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()
        self.sink.close()

    def docs(self):
        return read_docs(self.out)


def read_docs(path):
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().split("\n") if x]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def fluent_body(lines):
    return b"".join(json.dumps({"date": 1700000000.123456, "log": ln}).encode() + b"\n" for ln in lines)


def test_parse_size():
    assert parse_size("1MB") == 1 << 20
    assert parse_size("512k") == 512 << 10
    assert parse_size("2MiB") == 2 << 20
    assert parse_size("1000") == 1000
    with pytest.raises(ValueError):
        parse_size("0")


def test_auth_none_must_be_explicit():
    with pytest.raises(TypeError):
        ReceiverConfig()
    with pytest.raises(ValueError):
        ReceiverConfig(auth="bearer")  # no secret


def test_fluent_bit_body_accepted_and_reassembled(tmp_path):
    lines = corpus_lines()

    async def go():
        async with Server(tmp_path) as s, httpx.AsyncClient() as c:
            for i in range(0, len(lines), 1000):
                r = await c.post(s.url + "/", content=fluent_body(lines[i:i + 1000]),
                                 headers={"Content-Type": "application/x-ndjson"})
                assert r.status_code == 200, r.text
                assert r.json()["rejected"] == 0
            h = await c.get(s.url + "/healthz")
            assert h.json()["status"] == "ok"
            m = await c.get(s.url + "/metrics")
            assert "auditpipe_receiver_records_total 5215.0" in m.text
        return s

    s = run(go())
    # the same lines through one Pipeline give the same events
    p = Pipeline(make_normalizer("coalesced"), Reassembler())
    expect = p.feed_lines(lines) + p.flush()
    got = s.docs()
    assert len(got) == len(expect) > 900
    assert sorted(d["id"] for d in got) == sorted(d["id"] for d in expect)


def test_event_split_across_requests(tmp_path):
    lines = [ln for ln in corpus_lines() if ":34917)" in ln]
    assert len(lines) >= 2

    async def go():
        async with Server(tmp_path) as s, httpx.AsyncClient() as c:
            for ln in lines:
                r = await c.post(s.url, content=ln.encode(), headers={"Content-Type": "text/plain"})
                assert r.json()["records"] == 1
        return s

    s = run(go())
    docs = [d for d in s.docs() if d["id"].endswith(":34917")]
    assert len(docs) == 1 and len(docs[0]["records"]) == len(lines)


def test_wall_timeout_closes_open_events(tmp_path):
    line = next(ln for ln in corpus_lines() if "type=SYSCALL" in ln)

    async def go():
        async with Server(tmp_path, wall_timeout=0.2, tick_interval=0.05) as s, httpx.AsyncClient() as c:
            await c.post(s.url, content=line.encode(), headers={"Content-Type": "text/plain"})
            for _ in range(100):
                await asyncio.sleep(0.05)
                if s.out.exists() and s.out.stat().st_size:
                    return True
        return False

    assert run(go())


def test_plain_text_array_and_normalized_passthrough(tmp_path):
    lines = corpus_lines()[:40]

    async def go():
        async with Server(tmp_path) as s, httpx.AsyncClient() as c:
            r1 = await c.post(s.url, content="\n".join(lines[:20]).encode(), headers={"Content-Type": "text/plain"})
            arr = [{"date": 1.5, "log": ln} for ln in lines[20:30]] + lines[30:40]
            r2 = await c.post(s.url, content=json.dumps(arr).encode(), headers={"Content-Type": "application/json"})
            ev = [{"id": "1.000:1", "records": []}, {"id": "1.000:2", "note": "b\udcff"}]
            body = "\n".join(json.dumps(e) for e in ev).encode()
            r3 = await c.post(s.url + "/ingest", content=body, headers={"Content-Type": "application/x-ndjson"})
            return r1.json(), r2.json(), r3.json()

    j1, j2, j3 = run(go())
    assert j1["records"] == 20 and j2["records"] == 20 and j3["events"] == 2
    docs = read_docs(tmp_path / "out.jsonl")
    assert {"id": "1.000:1", "records": []} in docs
    assert any(d.get("note") == "b\udcff" for d in docs)  # non-UTF-8 escape kept exactly


def test_bad_lines_counted_and_reported(tmp_path):
    good = corpus_lines()[:3]
    body = fluent_body([good[0], "this is not audit", good[1]]) + b"{broken json\n" + fluent_body([good[2]])

    async def go():
        async with Server(tmp_path) as s, httpx.AsyncClient() as c:
            r = await c.post(s.url, content=body)
            return r.status_code, r.json()

    status, j = run(go())
    assert status == 200
    assert j["rejected"] == 2 and j["records"] == 4 and j["accepted"] == 3
    reasons = " ".join(e["reason"] for e in j["errors"])
    assert "not JSON" in reasons


def test_parser_exception_costs_one_line(tmp_path, monkeypatch):
    good = corpus_lines()[:3]

    async def go():
        async with Server(tmp_path) as s, httpx.AsyncClient() as c:
            def make(on_reject):
                p = factory()(on_reject)
                real = p.feed_line

                def feed_line(line, where="-", now=None):
                    if "BOOM" in line:
                        raise ValueError("parser bug")
                    return real(line, where, now)
                p.feed_line = feed_line
                return p
            s.receiver.pipeline_factory = make
            r = await c.post(s.url, content=fluent_body([good[0], "BOOM", good[1], good[2]]))
            return r.status_code, r.json()

    status, j = run(go())
    assert status == 200 and j["rejected"] == 1 and j["accepted"] == 3
    assert "parser bug" in j["errors"][0]["reason"]


@pytest.mark.parametrize("body,ctype,why", [
    (b"[1, 2", "application/json", "array"),
    (b"{nope\n{also nope", "application/x-ndjson", "JSON"),
    (b"hello", "application/json", "start"),
])
def test_undecodable_bodies_400(tmp_path, body, ctype, why):
    async def go():
        async with Server(tmp_path) as s, httpx.AsyncClient() as c:
            return await c.post(s.url, content=body, headers={"Content-Type": ctype})

    r = run(go())
    assert r.status_code == 400 and why in r.json()["error"]


def test_bad_gzip_400_and_unknown_encoding_415(tmp_path):
    async def go():
        async with Server(tmp_path) as s, httpx.AsyncClient() as c:
            r1 = await c.post(s.url, content=b"\x1f\x8b\x08garbage", headers={"Content-Encoding": "gzip"})
            r2 = await c.post(s.url, content=gzip.compress(b"abc")[:-6], headers={"Content-Encoding": "gzip"})
            r3 = await c.post(s.url, content=b"x", headers={"Content-Encoding": "br"})
            return r1.status_code, r2.status_code, r3.status_code

    assert run(go()) == (400, 400, 415)


@pytest.mark.parametrize("scheme,secret,header", [
    ("shared-secret", "s3cret", None), ("shared-secret", "s3cret", "X-Panther-Secret"),
    ("bearer", "tok", None), ("basic", "user:pw", None), ("hmac", "k3y", None), ("hmac", "k3y", "X-Sig"),
])
def test_auth_good_bad_missing(tmp_path, scheme, secret, header):
    line = corpus_lines()[0]
    body = gzip.compress(fluent_body([line]))

    async def go():
        async with Server(tmp_path, auth=scheme, secret=secret, auth_header=header) as s, \
                httpx.AsyncClient() as c:
            base = {"Content-Encoding": "gzip"}
            good = auth.client_headers(scheme, secret, body, header)
            bad = auth.client_headers(scheme, secret + "x" if scheme != "basic" else "user:px", body, header)
            r_ok = await c.post(s.url, content=body, headers={**base, **good})
            r_bad = await c.post(s.url, content=body, headers={**base, **bad})
            r_none = await c.post(s.url, content=body, headers=base)
            res = [r_ok.status_code, r_bad.status_code, r_none.status_code]
            if scheme == "hmac":  # signature of another body
                r_tamper = await c.post(s.url, content=gzip.compress(b"x"), headers={**base, **good})
                res.append(r_tamper.status_code)
            return res

    res = run(go())
    assert res[:3] == [200, 401, 401]
    if scheme == "hmac":
        assert res[3] == 401


def test_oversize_413_declared_and_streamed(tmp_path):
    async def go():
        async with Server(tmp_path, max_body=1000) as s, httpx.AsyncClient() as c:
            r1 = await c.post(s.url, content=b"x" * 1001)

            async def stream():  # chunked: no Content-Length
                for _ in range(100):
                    yield b"y" * 100

            r2 = await c.post(s.url, content=stream())
            r3 = await c.post(s.url, content=b"z" * 1000, headers={"Content-Type": "text/plain"})
            return r1.status_code, r2.status_code, r3.status_code

    assert run(go()) == (413, 413, 200)


def test_gzip_bomb_413_without_inflating(tmp_path):
    # 200 MB of zeros → ~200 KB on the wire, under the 1 MB wire limit
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    bomb = b"".join(comp.compress(block) for _ in range(200)) + comp.flush()
    assert len(bomb) < 1 << 20

    async def go():
        async with Server(tmp_path, max_body=1 << 20) as s, httpx.AsyncClient() as c:
            tracemalloc.start()
            tracemalloc.reset_peak()
            r = await c.post(s.url, content=bomb, headers={"Content-Encoding": "gzip"})
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            return r, peak, s.receiver.inflated_bytes

    r, peak, inflated = run(go())
    assert r.status_code == 413
    assert inflated <= 2 * ((1 << 20) + 1)  # counted: at most cap+1 produced (and recorded once more)
    assert peak < 16 << 20  # far below the 200 MB the bomb would inflate to


def test_inflate_capped_units():
    data = b"a" * 5000
    assert inflate_capped(gzip.compress(data), "gzip", 5000)[0] == data
    two = gzip.compress(b"one\n") + gzip.compress(b"two\n")  # multi-member
    assert inflate_capped(two, "gzip", 100)[0] == b"one\ntwo\n"
    assert inflate_capped(zlib.compress(data), "deflate", 5000)[0] == data
    with pytest.raises(BodyError) as e:
        inflate_capped(gzip.compress(data), "gzip", 4999)
    assert e.value.status == 413


def test_decode_body_shapes():
    raw, ev, err = decode_body(b'{"log":"type=X msg=audit(1.1:1): a=b"}\n{"date":1,"log":"l2"}\n', "")
    assert raw == ["type=X msg=audit(1.1:1): a=b", "l2"] and not ev and not err
    raw, ev, err = decode_body(b'["l1", {"log": "l2"}, 3]', "application/json")
    assert raw == ["l1", "l2"] and err[0][0] == 3
    raw, ev, err = decode_body(b"type=A msg=audit(1.1:1): x=\xff\r\n\n", "text/plain")
    assert raw == ["type=A msg=audit(1.1:1): x=\udcff"]


def test_enriched_text_lines_keep_0x1d(tmp_path):
    enriched = "/work/shared/corpus/enriched.log"
    if not os.path.exists(enriched):
        enriched = CORPUS.replace("raw-node.log", "enriched.log")
    with open(enriched, encoding="utf-8", errors="surrogateescape") as f:
        lines = [ln for ln in f.read().split("\n") if ln][:300]
    assert any("\x1d" in ln for ln in lines)

    async def go():
        async with Server(tmp_path) as s, httpx.AsyncClient() as c:
            r = await c.post(s.url, content="\n".join(lines).encode("utf-8", "surrogateescape"),
                             headers={"Content-Type": "text/plain"})
            return r.json()

    j = run(go())
    assert j["records"] == 300 and j["rejected"] == 0


def _openssl_cert(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return str(cert), str(key)


def test_tls_receiver_verified_client(tmp_path):
    import ssl
    cert, key = _openssl_cert(tmp_path)
    line = corpus_lines()[0]

    async def go():
        async with Server(tmp_path, ssl_context=make_ssl_context(cert, key), auth="bearer", secret="t") as s:
            ctx = ssl.create_default_context(cafile=cert)
            async with httpx.AsyncClient(verify=ctx) as c:
                ok = await c.post(s.url, content=fluent_body([line]), headers={"Authorization": "Bearer t"})
            async with httpx.AsyncClient() as c:  # system CAs do not know this cert
                with pytest.raises(httpx.ConnectError):
                    await c.post(s.url, content=b"x")
            return ok.status_code

    assert run(go()) == 200


def test_event_loop_answers_while_a_large_body_is_parsed(tmp_path):
    """Parsing runs on the receiver's worker thread: /healthz answers before a large body of raw
    records (~6 MB, a few hundred ms of parsing) has been parsed and written."""
    lines = corpus_lines()
    body = fluent_body(lines * 4)

    async def go():
        async with Server(tmp_path, max_body=16 << 20) as s, httpx.AsyncClient(timeout=30) as c:
            ingest = asyncio.create_task(c.post(s.url + "/", content=body, headers={"Content-Type": "application/x-ndjson"}))
            await asyncio.sleep(0.1)  # the body is on its way / being parsed
            health = await c.get(s.url + "/healthz")
            assert health.status_code == 200
            health_done_first = not ingest.done()
            r = await ingest
            assert r.status_code == 200 and r.json()["rejected"] == 0
            return health_done_first

    assert run(go())
