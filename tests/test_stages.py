"""Pipeline stages (``pipeline.stages``): called once per event with its documents, ticked,
closed; and the per-output routing of alerts."""

from __future__ import annotations

from auditpipe.normalize import make_normalizer
from auditpipe.pipeline import Pipeline
from auditpipe.pipeline.stages import Stage, is_alert, route
from auditpipe.reassembly import Reassembler

LINES = [
    'type=SYSCALL msg=audit(1700000000.000:1): arch=c000003e syscall=59 success=yes exit=0 pid=7 '
    'auid=1000 uid=0 comm="id" exe="/usr/bin/id" key="k"',
    "type=EOE msg=audit(1700000000.000:1): ",
    'type=SYSCALL msg=audit(1700000000.000:2): arch=c000003e syscall=59 success=yes exit=0 pid=8 '
    'auid=1000 uid=0 comm="sh" exe="/bin/sh" key="k"',
    "type=EOE msg=audit(1700000000.000:2): ",
]


class Detect:
    """Drops events of pid 7, adds an alert for every event of /bin/sh, a heartbeat per tick."""

    name = "detect"

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []
        self.dropped = 0

    def process(self, event, docs, now):
        self.seen.append((event.serial, now))
        out = []
        for d in docs:
            if d["process"]["pid"] == 7:
                self.dropped += 1
                continue
            out.append(d)
            if d["process"]["executable"] == "/bin/sh":
                out.append({"event": {"kind": "signal"}, "rule": {"name": "shell"}})
        return out

    def tick(self, now):
        return [{"event": {"kind": "event", "dataset": "heartbeat"}, "at": now}]

    def close(self, now):
        return [{"event": {"kind": "signal"}, "rule": {"name": "closing"}}]

    def metrics(self):
        return {"dropped": self.dropped}


def test_stages_see_each_event_once_and_shape_its_documents():
    st = Detect()
    assert isinstance(st, Stage)
    pipe = Pipeline(make_normalizer("ecs"), Reassembler(), stages=[st], clock=lambda: 42.0)
    docs = pipe.feed_lines(LINES)
    assert [s for s, _ in st.seen] == [1, 2] and all(now == 42.0 for _, now in st.seen)
    assert [d["process"]["pid"] for d in docs if not is_alert(d)] == [8]
    assert [d["rule"]["name"] for d in docs if is_alert(d)] == ["shell"]
    assert pipe.tick(100.0)[0]["at"] == 42.0
    assert [d["rule"]["name"] for d in pipe.flush()] == ["closing"]
    assert pipe.stage_metrics() == {"detect.dropped": 1}
    assert pipe.counters.documents == 4  # 2 from events, the heartbeat, the closing alert


def test_route_splits_alerts_from_events():
    docs = [{"event": {"kind": "signal"}}, {"event": {"kind": "event"}}, {"id": 1}, b'{"event":1}\n']
    assert route(docs, "both") == docs
    assert route(docs, "alerts") == docs[:1]
    assert route(docs, "events") == docs[1:]
