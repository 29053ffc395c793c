"""The Elasticsearch transport through the official client against the loopback bulk server
(tests/es_server.py): request format and headers, per-item results, whole-request failures,
429 storms and server restarts with nothing lost and nothing duplicated."""

from __future__ import annotations

import orjson
import pytest
from es_server import BulkState, ServerThread, free_port

from auditpipe.sinks.elasticsearch import (
    ElasticsearchOutput,
    ElasticsearchTransport,
    item_outcome,
    split_id,
)
from auditpipe.sinks.transport import PermanentError, TransientError


def payload(i: int, **extra) -> bytes:
    doc = {"_id": f"id{i:05d}", "@timestamp": "2026-01-01T00:00:00.000Z",
           "event": {"sequence": i, "outcome": "fail"}, "auditd": {"data": {"a-b": "1"}}, **extra}
    return orjson.dumps(doc)


@pytest.fixture
def server():
    s = ServerThread()
    yield s
    s.stop()


def transport(url: str, **kw) -> ElasticsearchTransport:
    return ElasticsearchTransport(ElasticsearchOutput(hosts=[url], **kw))


def test_bulk_creates_into_the_data_stream_with_compat_8_gzip_and_ids(server):
    t = transport(server.url, namespace="prod")
    out = t.send([payload(i) for i in range(3)])
    assert out.retry == [] and out.refused == []
    st = server.state
    assert st.violations == []
    assert sorted(st.docs) == ["id00000", "id00001", "id00002"]
    h = st.headers[-1]
    assert h["content-type"] == "application/vnd.elasticsearch+x-ndjson; compatible-with=8"
    assert h["accept"] == "application/vnd.elasticsearch+json; compatible-with=8"
    assert h["content-encoding"] == "gzip"
    doc = st.docs["id00001"]
    # the indexed shape: as the integration's pipeline leaves it
    assert doc["event"] == {"sequence": 1, "outcome": "failure"}
    assert doc["auditd"] == {"data": {"a_b": "1"}} and doc["ecs"] == {"version": "8.11.0"}
    assert "_id" not in doc
    assert t.committed() == 1 and t.stats()["created"] == 3


def test_pipeline_shape_is_sent_as_given_without_the_id(server):
    t = transport(server.url, shape="pipeline", compression="none", pipeline="my-pipe")
    t.send([payload(7)])
    doc = server.state.docs["id00007"]
    assert doc == {k: v for k, v in orjson.loads(payload(7)).items() if k != "_id"}
    assert "content-encoding" not in server.state.headers[-1]


def test_per_item_results(server):
    t = transport(server.url)
    server.state.script.item_429 = 2
    server.state.script.item_500 = 1
    server.state.script.refuse_marker = "poison"
    batch = [payload(i) for i in range(5)] + [payload(5, note="poison")]
    out = t.send(batch)
    assert out.retry == [0, 1, 2]
    assert len(out.refused) == 1 and out.refused[0][0] == 5
    assert "document_parsing_exception" in out.refused[0][1] and out.refused[0][1].startswith("400")
    # the whole batch again: what is there is a 409 conflict = delivered
    server.state.script.refuse_marker = None
    out = t.send(batch)
    assert out.retry == [] and out.refused == []
    assert t.stats()["duplicates"] == 2 and len(server.state.docs) == 6
    assert t.committed() == 2


@pytest.mark.parametrize("status,error", [(429, TransientError), (503, TransientError),
                                          (401, TransientError), (400, PermanentError),
                                          (413, PermanentError)])
def test_whole_request_failures(server, status, error):
    t = transport(server.url)
    server.state.script.request_status = [status]
    with pytest.raises(error, match=f"HTTP {status}"):
        t.send([payload(1)])
    assert t.committed() == 0 and server.state.docs == {}
    t.send([payload(1)])
    assert t.committed() == 1 and list(server.state.docs) == ["id00001"]


def test_connection_refused_is_transient():
    t = transport(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(TransientError, match="ConnectionError"):
        t.send([payload(1)])
    assert t.committed() == 0


def test_not_elasticsearch_is_transient(aiohttp_free_server):
    t = transport(aiohttp_free_server)
    with pytest.raises(TransientError, match="not Elasticsearch"):
        t.send([payload(1)])


@pytest.fixture
def aiohttp_free_server():
    """A server that answers bulk like Elasticsearch but without the product header."""
    import es_server as es
    from aiohttp import web

    class Plain(es.ServerThread):
        def _run(self):
            import asyncio

            async def bulk(request):
                return web.json_response({"errors": False, "items": []})

            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_post("/{index}/_bulk", bulk)
            runner = web.AppRunner(app)
            self._loop.run_until_complete(runner.setup())
            self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            self._ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(runner.cleanup())

    s = Plain()
    yield s.url
    s.stop()


def deliver(t: ElasticsearchTransport, payloads: list[bytes], on_try=None) -> int:
    """What a shipper does with Outcomes, reduced to its core: resend retried positions and
    whole batches that failed transiently; refused ones are set aside. Returns the tries."""
    pending, tries = list(payloads), 0
    while pending:
        tries += 1
        assert tries < 200, "never delivered"
        if on_try:
            on_try(tries)
        try:
            out = t.send(pending)
        except TransientError:
            continue
        pending = [pending[i] for i in out.retry]
    return tries


def test_429_storm_loses_nothing_and_duplicates_nothing(server):
    t = transport(server.url, compression="gzip")
    server.state.script.item_429 = 450
    server.state.script.request_status = [429, 503, 429]
    payloads = [payload(i) for i in range(300)]
    tries = deliver(t, payloads)
    assert tries >= 4
    assert sorted(server.state.docs) == [f"id{i:05d}" for i in range(300)]
    assert server.state.violations == []


def test_server_restarts_lose_nothing(tmp_path):
    store = str(tmp_path / "docs.jsonl")
    port = free_port()
    box = {"server": ServerThread(BulkState(store), port)}
    t = transport(f"http://127.0.0.1:{port}", timeout=2)
    batches = [[payload(b * 50 + i) for i in range(50)] for b in range(6)]

    def restart_on(tries):
        if tries == 1:  # the server dies before the first try of this batch; back at the third
            box["server"].stop()
        if tries == 3:
            box["server"] = ServerThread(BulkState(store), port)

    try:
        for n, batch in enumerate(batches):
            deliver(t, batch, restart_on if n in (2, 4) else None)
        state = BulkState(store)  # what a fresh process finds on disk
        assert sorted(state.docs) == [f"id{i:05d}" for i in range(300)]
    finally:
        box["server"].stop()


def test_item_outcome_reads_the_documented_shapes():
    assert item_outcome({"create": {"status": 201}}) == ("ok", None)
    assert item_outcome({"create": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}}) \
        == ("duplicate", None)
    assert item_outcome({"create": {"status": 409, "error": {"type": "other"}}})[0] == "refused"
    assert item_outcome({"create": {"status": 503, "error": {"type": "x", "reason": "y"}}}) == ("retry", "503 x: y")
    assert item_outcome({"create": {"status": 400, "error": {"type": "mapper_parsing_exception",
                                                             "reason": "bad"}}}) \
        == ("refused", "400 mapper_parsing_exception: bad")


def test_split_id():
    assert split_id(b'{"_id":"abc","a":1}') == ("abc", b'{"a":1}')
    assert split_id(b'{"_id":"abc"}') == ("abc", b"{}")
    doc_id, body = split_id(b'{"a":1}')
    assert body == b'{"a":1}' and doc_id == split_id(b'{"a":1}')[0] and len(doc_id) == 30


def test_prepared_bodies_go_out_as_they_are():
    """The client's NDJSON serializer would append a newline to our (gzip) bytes."""
    from auditpipe.sinks.elasticsearch import COMPAT_HEADERS, build_client

    c = build_client(ElasticsearchOutput(hosts=["http://127.0.0.1:9"]))
    ser = c.transport.serializers.get_serializer(COMPAT_HEADERS["content-type"])
    assert ser.dumps(b"\x1f\x8bxyz") == b"\x1f\x8bxyz"
    assert ser.dumps([{"a": 1}]) == b'{"a":1}\n'


def test_config_checks():
    with pytest.raises(ValueError, match="one of"):
        ElasticsearchOutput(api_key="k", username="u", password="p")
    with pytest.raises(ValueError, match="go together"):
        ElasticsearchOutput(username="u")
    with pytest.raises(ValueError, match="data stream name"):
        ElasticsearchOutput(namespace="Prod-1")
    with pytest.raises(ValueError, match="http"):
        ElasticsearchOutput(hosts=["localhost:9200"])
