"""A loopback stand-in for Elasticsearch's `_bulk` API, as Elastic documents it, for tests and
benchmarks (no Elasticsearch can be installed on these machines).

What it checks on every request (a violation is answered 400 and recorded in ``violations``):
the media types (``application/x-ndjson``/``application/json`` or their
``application/vnd.elasticsearch+…; compatible-with=8|9`` forms, and the same major on Accept and
Content-Type), a gzip body when ``Content-Encoding: gzip`` says so, NDJSON ending in a newline,
action/source line pairs, only ``create`` into a ``logs-*`` data stream (data streams refuse
``index``), an ``_id`` on each action, a JSON object as source with ``@timestamp`` and no ``_id``.

What it answers: ``X-Elastic-Product: Elasticsearch`` on every response (the official client
refuses a server without it); ``GET /`` the info document; ``_bulk`` per-item results in
request order: 201 created, 409 ``version_conflict_engine_exception`` for an ``_id`` it already
holds, or what the test scripted: the next N items 429 or 500, a whole-request status for the
next K requests, a 400 ``document_parsing_exception`` for documents holding a marker string.
Stored documents are appended to a JSON-lines file when one is given, so a killed and restarted
server (``python tests/es_server.py --port P --store F``) still holds them, as a cluster would.

Control (for a server in another process): ``POST /_test/script`` with a JSON object of the
script fields, ``GET /_test/state`` → documents count, ids, requests, violations, headers seen.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PRODUCT = {"X-Elastic-Product": "Elasticsearch"}
_MEDIA = re.compile(r"^application/(?:vnd\.elasticsearch\+)?(json|x-ndjson)(?:;\s*compatible-with=(\d+))?"
                    r"(?:;\s*charset=utf-8)?$", re.IGNORECASE)
VERSION = "8.17.0"


@dataclass
class Script:
    item_429: int = 0  # the next N items answer 429
    item_500: int = 0
    request_status: list[int] = field(default_factory=list)  # statuses for the next requests
    refuse_marker: str | None = None  # documents containing this string: 400 mapping error
    delay: float = 0.0  # seconds before each bulk answer


class BulkState:
    def __init__(self, store: str | None = None, lean: bool = False) -> None:
        self.store = store
        #: benchmarks: source lines are checked by their bytes, not parsed, and not kept
        self.lean = lean
        self.docs: dict[str, dict] = {}
        self.script = Script()
        self.requests = 0
        self.violations: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.policies: dict[str, dict] = {}
        self.templates: dict[str, dict] = {}
        self.lock = threading.Lock()
        if store:
            try:
                with open(store) as f:
                    for line in f:
                        if line.strip():
                            rec = json.loads(line)
                            self.docs[rec["_id"]] = rec["doc"]
            except FileNotFoundError:
                pass

    def keep(self, doc_id: str, index: str, doc: dict) -> None:
        self.docs[doc_id] = {} if self.lean else doc
        if self.store:
            with open(self.store, "a") as f:
                f.write(json.dumps({"_id": doc_id, "_index": index, "doc": doc}) + "\n")

    def snapshot(self) -> dict[str, Any]:
        return {"count": len(self.docs), "ids": sorted(self.docs), "requests": self.requests,
                "violations": list(self.violations), "headers": self.headers[-5:]}


def _error(status: int, etype: str, reason: str) -> web.Response:
    body = {"error": {"root_cause": [{"type": etype, "reason": reason}], "type": etype,
                      "reason": reason}, "status": status}
    return web.json_response(body, status=status, headers=PRODUCT)


def _check_media(request: web.Request, want: str) -> str | None:
    ct = request.headers.get("Content-Type", "")
    accept = request.headers.get("Accept", "")
    m, a = _MEDIA.match(ct), _MEDIA.match(accept)
    if not m or m.group(1).lower() != want:
        return f"Content-Type {ct!r} is not {want}"
    if a is None:
        return f"Accept {accept!r} is not a JSON media type"
    if m.group(2) != a.group(2):
        return f"compatible-with differs between Content-Type {ct!r} and Accept {accept!r}"
    if m.group(2) not in (None, "8", "9"):
        return f"compatible-with={m.group(2)} is not accepted by an {VERSION} cluster"
    return None


def _lean_source(line: bytes) -> dict:
    """Just what the checks read, without parsing the document."""
    ok = line.startswith(b"{") and line.endswith(b"}") and b'"@timestamp"' in line
    return {"@timestamp": 1, **({"_id": 1} if line.startswith(b'{"_id"') else {})} if ok else {}


def _pairs(body: bytes, lean: bool = False) -> tuple[list[tuple[dict, Any]], str | None]:
    if not body.endswith(b"\n"):
        return [], "the bulk request must be terminated by a newline [\\n]"
    lines = body.split(b"\n")[:-1]
    if len(lines) % 2:
        return [], "an action line without its source line"
    out = []
    for i in range(0, len(lines), 2):
        try:
            src = lines[i + 1]
            out.append((json.loads(lines[i]), _lean_source(src) if lean else json.loads(src)))
        except ValueError as e:
            return [], f"line {i + 1}: not JSON: {e}"
    return out, None


def make_app(state: BulkState) -> web.Application:
    async def info(request: web.Request) -> web.Response:
        return web.json_response({"name": "loopback", "cluster_name": "test",
                                  "version": {"number": VERSION, "build_flavor": "default"},
                                  "tagline": "You Know, for Search"}, headers=PRODUCT)

    async def bulk(request: web.Request) -> web.Response:
        raw = await request.read()
        with state.lock:
            state.requests += 1
            state.headers.append({k.lower(): v for k, v in request.headers.items()})
            bad = _check_media(request, "x-ndjson")
            if request.headers.get("Content-Encoding", "").lower() == "gzip":
                # aiohttp inflates a gzip body as it reads it: a body that was not gzip fails
                # there; here only that it was really smaller on the wire
                sent = int(request.headers.get("Content-Length", "0") or 0)
                if raw[:2] == b"\x1f\x8b":
                    raw = gzip.decompress(raw)
                if len(raw) > 200 and not 0 < sent < len(raw):
                    bad = bad or f"Content-Encoding gzip but {sent} bytes sent for {len(raw)}"
            if bad:
                state.violations.append(bad)
                return _error(400, "illegal_argument_exception", bad)
            s = state.script
            if s.request_status:
                status = s.request_status.pop(0)
                return _error(status, "es_rejected_execution_exception" if status == 429 else
                              "unavailable_shards_exception", "scripted whole-request failure")
            delay = s.delay
        if delay:
            await asyncio.sleep(delay)
        pairs, bad = _pairs(raw, state.lean)
        index = request.match_info.get("index")
        with state.lock:
            if bad:
                state.violations.append(bad)
                return _error(400, "illegal_argument_exception", bad)
            items, errors = [], False
            for action, doc in pairs:
                item, failed = _item(state, index, action, doc)
                errors |= failed
                items.append(item)
        return web.json_response({"took": 1, "errors": errors, "items": items}, headers=PRODUCT)

    async def put_policy(request: web.Request) -> web.Response:
        body, bad = await _json_body(request)
        if not bad and not isinstance(body.get("policy", {}).get("phases"), dict):
            bad = "an ILM policy needs policy.phases"
        return _stored(state, state.policies, request.match_info["name"], body, bad)

    async def put_template(request: web.Request) -> web.Response:
        body, bad = await _json_body(request)
        if not bad:
            bad = _template_problem(body)
        return _stored(state, state.templates, request.match_info["name"], body, bad)

    async def set_script(request: web.Request) -> web.Response:
        data = await request.json()
        with state.lock:
            for k, v in data.items():
                setattr(state.script, k, v)
        return web.json_response({"ok": True}, headers=PRODUCT)

    async def get_state(request: web.Request) -> web.Response:
        with state.lock:
            return web.json_response(state.snapshot(), headers=PRODUCT)

    app = web.Application(client_max_size=200 << 20)
    app.router.add_get("/", info)
    app.router.add_post("/_bulk", bulk)
    app.router.add_put("/_bulk", bulk)
    app.router.add_post("/{index}/_bulk", bulk)
    app.router.add_put("/{index}/_bulk", bulk)
    app.router.add_put("/_ilm/policy/{name}", put_policy)
    app.router.add_put("/_index_template/{name}", put_template)
    app.router.add_post("/_test/script", set_script)
    app.router.add_get("/_test/state", get_state)
    return app


async def _json_body(request: web.Request) -> tuple[dict, str | None]:
    bad = _check_media(request, "json")
    try:
        body = json.loads(await request.read())
    except ValueError as e:
        return {}, bad or f"body is not JSON: {e}"
    return (body, bad) if isinstance(body, dict) else ({}, bad or "body is not a JSON object")


def _stored(state: BulkState, where: dict, name: str, body: dict, bad: str | None) -> web.Response:
    with state.lock:
        state.requests += 1
        state.headers.append({})
        if bad:
            state.violations.append(bad)
            return _error(400, "illegal_argument_exception", bad)
        where[name] = body
    return web.json_response({"acknowledged": True}, headers=PRODUCT)


_MAPPING_TYPES = {"keyword", "constant_keyword", "wildcard", "match_only_text", "text", "long", "integer",
                  "short", "byte", "double", "float", "scaled_float", "date", "boolean", "ip", "flattened",
                  "object", "geo_point"}


def _template_problem(body: dict) -> str | None:
    """What Elasticsearch would refuse in a composable template (the parts we send)."""
    if not body.get("index_patterns") or "data_stream" not in body:
        return "a data stream template needs index_patterns and data_stream"
    props = body.get("template", {}).get("mappings", {}).get("properties")
    if not isinstance(props, dict):
        return "template.mappings.properties missing"
    stack = [("", props)]
    while stack:
        prefix, node = stack.pop()
        for k, m in node.items():
            if "properties" in m:
                stack.append((f"{prefix}{k}.", m["properties"]))
            elif m.get("type") not in _MAPPING_TYPES:
                return f"No handler for type [{m.get('type')}] declared on field [{prefix}{k}]"
    return None


def _item(state: BulkState, index: str | None, action: dict, doc: Any) -> tuple[dict, bool]:
    """One action's result; True when it is an error."""
    op, meta = next(iter(action.items())) if len(action) == 1 else ("?", {})
    target = meta.get("_index", index) if isinstance(meta, dict) else index
    doc_id = meta.get("_id") if isinstance(meta, dict) else None

    def res(status: int, etype: str | None = None, reason: str = "") -> tuple[dict, bool]:
        r: dict[str, Any] = {"_index": f".ds-{target}-000001", "_id": doc_id, "status": status}
        if etype:
            r["error"] = {"type": etype, "reason": reason}
        else:
            r.update(result="created", _version=1)
        return {op: r}, etype is not None

    problem = None
    if op != "create":
        problem = f"only create is allowed in data stream [{target}], not {op}"
    elif not target or not str(target).startswith("logs-"):
        problem = f"not a logs-* data stream: {target}"
    elif not doc_id:
        problem = "create without _id"
    elif not isinstance(doc, dict) or "@timestamp" not in doc:
        problem = "data stream documents need @timestamp"
    elif "_id" in doc:
        problem = "Field [_id] is a metadata field and cannot be added inside a document"
    if problem:
        state.violations.append(problem)
        return res(400, "illegal_argument_exception", problem)
    s = state.script
    if s.item_429 > 0:
        s.item_429 -= 1
        return res(429, "es_rejected_execution_exception", "rejected execution of coordinating operation")
    if s.item_500 > 0:
        s.item_500 -= 1
        return res(500, "node_not_connected_exception", "scripted")
    if s.refuse_marker and s.refuse_marker in json.dumps(doc):
        return res(400, "document_parsing_exception", "failed to parse field [process.pid] of type [long]")
    if doc_id in state.docs:
        return res(409, "version_conflict_engine_exception",
                   f"[{doc_id}]: version conflict, document already exists (current version [1])")
    state.keep(doc_id, target, doc)
    return res(201)


class ServerThread:
    """The server on 127.0.0.1 in a thread of this process (``url``, ``state``, ``stop()``)."""

    def __init__(self, state: BulkState | None = None, port: int = 0) -> None:
        self.state = state or BulkState()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("bulk test server did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(make_app(self.state), access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--store", help="JSON-lines file that keeps the documents across restarts")
    ap.add_argument("--lean", action="store_true", help="check sources by their bytes only (benchmarks)")
    a = ap.parse_args()
    web.run_app(make_app(BulkState(a.store, a.lean)), host="127.0.0.1", port=a.port, access_log=None,
                print=lambda *_: print("ready", flush=True))


if __name__ == "__main__":
    main()
