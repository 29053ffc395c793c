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
    assert pipe.tick(100.1) == []  # the stages tick about every second of the wall clock
    assert [d["rule"]["name"] for d in pipe.flush()] == ["closing"]
    assert pipe.stage_metrics() == {"detect.dropped": 1}
    assert pipe.counters.documents == 4  # 2 from events, the heartbeat, the closing alert


def test_stages_added_later_run_after_the_others():
    order: list[str] = []

    class Mark:
        def __init__(self, name):
            self.name = name

        def process(self, event, docs, now):
            order.append(self.name)
            return docs

        def tick(self, now):
            return []

        def close(self, now):
            return []

        def metrics(self):
            return {}

    pipe = Pipeline(make_normalizer("coalesced"), Reassembler())
    pipe.feed_lines(LINES[:2])
    assert order == []
    pipe.add_stages([Mark("a"), Mark("b")])
    pipe.feed_lines(LINES[2:])
    assert order == ["a", "b"]


def test_route_splits_alerts_from_events():
    docs = [{"event": {"kind": "signal"}}, {"event": {"kind": "event"}}, {"id": 1}, b'{"event":1}\n']
    assert route(docs, "both") == docs
    assert route(docs, "alerts") == docs[:1]
    assert route(docs, "events") == docs[1:]


def test_the_runtime_routes_alerts_to_the_outputs_that_take_them(tmp_path, monkeypatch):
    """A stage built by the assembly from the config; outputs with documents = events, alerts
    and both each get their share."""
    import threading

    from auditpipe.config import StdoutOutput, load_config
    from auditpipe.pipeline import assembly
    from auditpipe.pipeline.live import LiveRunner
    from test_live_runner import FakeSource, RecordingSink, execve_event, outputs_of, wait_until

    class Flag:
        name = "flag"

        def process(self, event, docs, now):
            return docs + [{"event": {"kind": "signal"}, "rule": {"name": "exec"}, "of": event.id}]

        def tick(self, now):
            return []

        def close(self, now):
            return []

        def metrics(self):
            return {"alerts": 1}

    monkeypatch.setattr(assembly, "STAGE_BUILDERS", ((lambda cfg: Flag() if cfg.normalize.format == "ecs" else None, ("run",)),))
    cfg = load_config(text=f"""
[normalize]
format = "ecs"
[status]
path = "{tmp_path / 'status.json'}"
""")
    sinks = [RecordingSink(), RecordingSink(), RecordingSink()]
    runner = LiveRunner(cfg, FakeSource(), outputs=outputs_of(
        sinks, [StdoutOutput(documents=d) for d in ("events", "alerts", "both")]))
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    try:
        runner.source.push(execve_event(7))
        assert wait_until(lambda: len(sinks[2].docs) == 2)
    finally:
        runner.request_stop()
        t.join(5)
    import json

    events, alerts, both = ([json.loads(d) for d in s.docs] for s in sinks)  # several outputs: serialized once
    assert [d["event"]["kind"] for d in events] == ["event"]
    assert [d["of"] for d in alerts] == ["1795294192.263:7"]
    assert both == events + alerts
    assert runner.counters()["flag.alerts"] == 1
