"""The `auditpipe run` configuration: a TOML file, validated once at load time.

Every option has a default, so an empty file (or none at all) is a working configuration. A
mistake fails fast with :class:`ConfigError`, whose ``str()`` is ``FILE:LINE: [table] key: what is
wrong``. See ``docs/config.md`` for the options and what each does.

The schema is a tree of msgspec ``Struct`` s; :func:`load_config` parses the TOML with
``tomllib`` (syntax errors carry their line), converts it with ``msgspec.convert`` (type errors
carry a ``$.table.key`` path) and maps that path back to the line that holds the key.
"""

from __future__ import annotations

import glob
import os
import re
import tomllib
from typing import Any, Literal

import msgspec

from auditpipe.detect.config import DetectConfig
from auditpipe.lake.config import LakeOutput
from auditpipe.metrics.config import HeartbeatConfig, MetricsConfig, split_listen
from auditpipe.process.config import FilterConfig, ProcessConfig, config_problems
from auditpipe.sources.receiver.config import ServeConfig

__all__ = [
    "DEFAULT_CONFIG_PATHS",
    "DEFAULT_OUTPUT",
    "DEFAULT_RULES_GLOB",
    "DEFAULT_STATUS_FILE",
    "FAILURE_MODES",
    "Config",
    "ConfigError",
    "FileOutput",
    "HttpOutput",
    "KernelConfig",
    "OutputConfig",
    "StateConfig",
    "NormalizeConfig",
    "ReassemblyConfig",
    "RulesConfig",
    "SourceConfig",
    "StatusConfig",
    "StdoutOutput",
    "default_config",
    "load_config",
    "rule_files",
]

#: looked for, in order, when no --config is given; none of them needs to exist
DEFAULT_CONFIG_PATHS = ("/etc/auditpipe/auditpipe.toml",)
DEFAULT_RULES_GLOB = "/etc/audit/rules.d/*.rules"
DEFAULT_OUTPUT = "./auditpipe-events.jsonl"
DEFAULT_STATUS_FILE = "/run/auditpipe/status.json"
DEFAULT_BACKLOG_LIMIT = 8192
DEFAULT_STATE_DIR = "/var/lib/auditpipe"
DEFAULT_QUEUE_DIR = "/var/lib/auditpipe/queue"
#: the smallest durable queue that holds one largest record (a kernel message is at most 8970
#: bytes; an ECS document of it with raw and argv can be several times that)
MIN_QUEUE_BYTES = 64 << 10

#: failure_mode names → the kernel's AUDIT_FAIL_* values (auditctl -f)
FAILURE_MODES = {"silent": 0, "printk": 1, "log": 1, "panic": 2}


class _S(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class KernelConfig(_S):
    #: auto: become the audit daemon (unicast), or listen read-only (multicast) when another
    #: daemon is registered
    mode: Literal["auto", "unicast", "multicast"] = "auto"
    #: kernel queue length (auditctl -b); unset: a rules file's -b, else 8192
    backlog_limit: int | None = None
    #: messages per second, 0 = unlimited (auditctl -r); unset: leave the kernel's value
    rate_limit: int | None = None
    #: silent | printk (= log) | panic, or 0/1/2 (auditctl -f); unset: leave the kernel's value
    failure_mode: Literal["silent", "printk", "log", "panic"] | int | None = None
    #: kernel ticks a process waits when the backlog is full (auditctl --backlog_wait_time)
    backlog_wait_time: int | None = None
    #: auto | kernel | userspace | both | none (see docs/config.md)
    backpressure_strategy: Literal["auto", "kernel", "userspace", "both", "none"] = "auto"
    #: lock the configuration (enabled=2) after loading rules: nothing can be restored on exit
    immutable: bool = False
    #: leave the installed rules loaded when auditpipe stops
    keep_rules_on_exit: bool = False
    #: a leading `never` rule on our own pid, so the agent is not audited feeding on itself
    exclude_self: bool = True
    #: messages held between the socket reader thread and the worker
    queue_size: int = 65536
    #: socket receive buffer in bytes
    rcvbuf: int = 8 << 20
    #: seconds the reader lets records gather after each burst (fewer wakeups, less CPU)
    batch_delay: float = 0.02

    def failure_value(self) -> int | None:
        """``failure_mode`` as the kernel's AUDIT_FAIL_* value (None: leave the kernel's)."""
        f = self.failure_mode
        return FAILURE_MODES[f] if isinstance(f, str) else f


class RulesConfig(_S):
    #: rule files or globs in auditctl syntax; unset: /etc/audit/rules.d/*.rules when present;
    #: [] installs no rules and leaves the kernel's rule list alone
    files: list[str] | None = None
    #: delete the loaded rules before installing ours: auto = yes as the audit daemon (unicast),
    #: no in multicast (the other daemon owns the rule list)
    purge: Literal["auto"] | bool = "auto"
    #: seconds between comparisons of the kernel's rule list with ours (0: only after a
    #: CONFIG_CHANGE record about rules); see auditpipe.kernel.drift
    check_interval: float = 10.0
    #: on drift: send an audit-rules-drifted event ("alert"), or also put our rules back
    on_drift: Literal["alert", "reinstall"] = "alert"
    #: where a rule change goes when the kernel is locked (immutable): the next boot's rules
    pending_path: str = "/etc/audit/rules.d/99-auditpipe-pending.rules"


class ReassemblyConfig(_S):
    timeout: float = 2.0
    max_in_flight: int = 4096
    #: live: seconds an event may wait for its last record before it is written anyway
    wall_timeout: float = 1.0


class NormalizeConfig(_S):
    format: Literal["ecs", "panther", "coalesced"] = "ecs"
    resolve_ids: bool = True
    include_raw: bool = False
    #: unset: none, or with host metadata the integration's ["auditd_manager-auditd"]
    tags: list[str] | None = None
    #: ecs: data_stream.*, event.dataset, host.*, agent.* as Elastic Agent adds them (always on
    #: with an elasticsearch output)
    host_metadata: bool = False
    passwd_file: str | None = None
    group_file: str | None = None


#: which documents an output takes: "events", "alerts" (event.kind = signal) or "both"
DocumentClass = Literal["events", "alerts", "both"]


class FileOutput(_S, tag="file", tag_field="type"):
    documents: DocumentClass = "events"
    path: str = DEFAULT_OUTPUT
    max_bytes: int = 100 << 20
    generations: int = 5
    #: octal file mode: 0o600 or "0600"
    mode: int | str = 0o600
    fsync: Literal["never", "batch", "interval"] = "never"
    fsync_interval: float = 1.0


    def file_mode(self) -> int:
        return _mode(self.mode)


class StdoutOutput(_S, tag="stdout", tag_field="type"):
    documents: DocumentClass = "events"


class HttpOutput(_S, tag="http", tag_field="type"):
    """An HTTP shipper behind a durable queue (docs/config.md lists what each option does)."""

    url: str
    documents: DocumentClass = "events"
    #: json_lines (documents), raw (records as Fluent Bit ships them), webhook (each alert as a
    #: Slack/Teams-style incoming-webhook message; documents = "alerts")
    format: Literal["json_lines", "raw", "webhook"] = "json_lines"
    auth: Literal["none", "shared-secret", "hmac", "bearer", "basic"] = "none"
    auth_header: str | None = None
    secret: str | None = None
    gzip: bool = True
    tls: bool = True
    tls_verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    max_events: int = 500
    max_bytes: int = 1_000_000 - 4096
    max_wait: float = 1.0
    timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_retries: int | None = None
    #: a 5xx other than 502/503/504: this many retries, then dead-letter (a body that crashes the
    #: receiver must not block the queue for ever)
    max_retries_5xx: int | None = 10
    dead_letter: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    queue_dir: str = DEFAULT_QUEUE_DIR
    queue_max_bytes: int = 256 << 20
    full_policy: Literal["block", "drop_oldest"] = "block"
    queue_fsync: Literal["batch", "never"] = "batch"
    drain_timeout: float = 5.0


_BAD_NAME_CHARS = set('\\/*?"<>| ,#:-')


class ElasticsearchOutput(_S, tag="elasticsearch", tag_field="type"):
    """``[[outputs]] type = "elasticsearch"`` (docs/outputs.md has worked examples)."""

    hosts: list[str] = msgspec.field(default_factory=lambda: ["https://localhost:9200"])
    #: one of: api_key (the base64 "id:key" Kibana shows), username + password, bearer
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    bearer: str | None = None
    tls_verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    #: target: logs-<dataset>-<namespace>
    dataset: str = "auditd_manager.auditd"
    namespace: str = "default"
    #: an ingest pipeline to run (default: the data stream's own default_pipeline, if any)
    pipeline: str | None = None
    #: "indexed": shaped here as the integration's pipeline shapes them; "pipeline": as Elastic
    #: Agent sends them, for clusters where the integration's pipeline is installed
    shape: Literal["indexed", "pipeline"] = "indexed"
    documents: Literal["events", "alerts", "both"] = "events"
    compression: Literal["gzip", "none"] = "gzip"
    #: 1 (fast) … 9 (small); 3 is as fast as 1 here and compresses bulk bodies ~22:1
    compression_level: int = 3
    max_events: int = 1000
    max_bytes: int = 5_000_000
    max_wait: float = 1.0
    timeout: float = 30.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    #: None: transient failures are retried for ever (the queue holds the events meanwhile)
    max_retries: int | None = None
    #: a 500 for the whole request (not 502/503/504: the cluster coming back) is retried this
    #: many times, then the batch is dead-lettered (a request the cluster cannot take)
    max_retries_5xx: int | None = 10
    #: JSON-lines file for refused documents (mapping errors) with the item's error
    dead_letter: str | None = None
    queue_dir: str = "/var/lib/auditpipe/queue-elasticsearch"
    queue_max_bytes: int = 1 << 30
    #: when the queue is full: "block" the pipeline (nothing lost) or "drop_oldest"
    full_policy: Literal["block", "drop_oldest"] = "block"
    queue_fsync: Literal["batch", "never"] = "batch"
    drain_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ValueError("hosts: at least one http(s):// URL is needed")
        for h in self.hosts:
            if h.split("://", 1)[0].lower() not in ("http", "https") or "://" not in h:
                raise ValueError(f"hosts: {h!r} is not an http(s):// URL")
        given = [n for n, v in (("api_key", self.api_key), ("username", self.username),
                                ("bearer", self.bearer)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"give one of api_key, username+password, bearer (not {' and '.join(given)})")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if (self.client_key is not None) and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        for what, v in (("dataset", self.dataset), ("namespace", self.namespace)):
            if not v or len(v) > 100 or v != v.lower() or _BAD_NAME_CHARS & set(v):
                raise ValueError(f"{what}: {v!r} is not a data stream name part (lowercase, at "
                                 "most 100 characters, none of \\/*?\"<>| ,#:-)")
        if not 1 <= self.compression_level <= 9:
            raise ValueError("compression_level: 1 to 9")
        if self.max_events < 1 or self.max_bytes < 1024 or self.max_wait < 0:
            raise ValueError("max_events ≥ 1, max_bytes ≥ 1024, max_wait ≥ 0")


OutputConfig = FileOutput | StdoutOutput | HttpOutput | ElasticsearchOutput | LakeOutput


class SourceConfig(_S):
    type: Literal["kernel", "file"] = "kernel"
    #: for type = "file": the audit.log to follow
    path: str = "/var/log/audit/audit.log"
    checkpoint: str | None = None
    #: for type = "file", without a checkpoint: "end" (only what is written from now on) or
    #: "head" (the whole file)
    start: Literal["end", "head"] = "end"


class StateConfig(_S):
    #: where `run` keeps what must survive a crash: the kernel state journal (what to put back)
    dir: str = DEFAULT_STATE_DIR


class StatusConfig(_S):
    path: str = DEFAULT_STATUS_FILE
    #: seconds between status file writes (and kernel status polls)
    interval: float = 2.0


class Config(_S):
    kernel: KernelConfig = msgspec.field(default_factory=KernelConfig)
    rules: RulesConfig = msgspec.field(default_factory=RulesConfig)
    reassembly: ReassemblyConfig = msgspec.field(default_factory=ReassemblyConfig)
    normalize: NormalizeConfig = msgspec.field(default_factory=NormalizeConfig)
    #: without [[outputs]]: see :func:`default_outputs`
    outputs: list[OutputConfig] = msgspec.field(default_factory=lambda: default_outputs())
    source: SourceConfig = msgspec.field(default_factory=SourceConfig)
    status: StatusConfig = msgspec.field(default_factory=StatusConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    heartbeat: HeartbeatConfig = msgspec.field(default_factory=HeartbeatConfig)
    process: ProcessConfig = msgspec.field(default_factory=ProcessConfig)
    filter: FilterConfig = msgspec.field(default_factory=FilterConfig)
    detect: DetectConfig = msgspec.field(default_factory=DetectConfig)
    #: `auditpipe serve` only (sources/receiver/config.py)
    serve: ServeConfig = msgspec.field(default_factory=ServeConfig)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: where this configuration came from (None: built-in defaults)
    path: str | None = None

    def failure_value(self) -> int | None:
        return self.kernel.failure_value()


class ConfigError(ValueError):
    """A configuration that cannot be used; ``str()`` says where and what."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 where: str | None = None) -> None:
        self.file, self.line, self.where, self.message = file, line, where, message
        loc = file or "<config>"
        if line:
            loc += f":{line}"
        super().__init__(f"{loc}: {where + ': ' if where else ''}{message}")


def _mode(v: int | str) -> int:
    return v if isinstance(v, int) else int(v, 8)


# ---------------------------------------------------------------------------------- loading
def default_config() -> Config:
    return Config()


def load_config(path: str | None = None, text: str | None = None) -> Config:
    """Load and validate a configuration file (or ``text``). ``path=None`` and no text: the
    first of :data:`DEFAULT_CONFIG_PATHS` that exists, else the built-in defaults."""
    if path is None and text is None:
        for p in DEFAULT_CONFIG_PATHS:
            if os.path.exists(p):
                path = p
                break
        else:
            return Config()
    name = path or "<config>"
    if text is None:
        assert path is not None
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read: {e.strerror}", name) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise ConfigError("not valid UTF-8", name, line) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        if m:
            msg += f" (column {m.group(2)})"
        raise ConfigError(f"TOML syntax: {msg}", name, int(m.group(1)) if m else None) from None
    return config_from_dict(data, name, text)


def config_from_dict(data: dict, name: str = "<config>", text: str = "") -> Config:
    """Validate a parsed configuration; errors are located in ``text`` when it is given."""
    data = dict(data)
    data.pop("path", None)
    outputs = data.get("outputs")
    if isinstance(outputs, list):
        data["outputs"] = [_prepare_output(o, i, name, text) for i, o in enumerate(outputs)]
    try:
        cfg = msgspec.convert(data, Config)
    except msgspec.ValidationError as e:
        raise _located(str(e), name, text) from None
    cfg.path = None if name == "<config>" else name
    if "outputs" not in data:
        cfg.outputs = default_outputs(cfg.normalize.format)
    _check(cfg, name, text)
    return cfg


def default_outputs(fmt: str = "ecs") -> list[OutputConfig]:
    """What `run` writes when no ``[[outputs]]`` are configured: JSON lines, and (ECS or Panther
    documents) a Parquet lake under ./auditpipe-data that ``auditpipe query`` reads."""
    outs: list[OutputConfig] = [FileOutput()]
    if fmt != "coalesced":
        outs.append(LakeOutput())
    return outs


def _prepare_output(o: Any, i: int, name: str, text: str) -> Any:
    """Outputs are a tagged union on ``type``, which defaults to "file"."""
    if not isinstance(o, dict):
        return o
    o = dict(o)
    o.setdefault("type", "file")
    return o


def _check(cfg: Config, name: str, text: str) -> None:
    """Rules that span fields, or that types alone cannot say."""
    k = cfg.kernel

    def fail(path: str, msg: str) -> None:
        raise _located(f"{msg} - at `$.{path}`", name, text)

    for f in ("backlog_limit", "rate_limit", "backlog_wait_time"):
        v = getattr(k, f)
        if v is not None and not 0 <= v <= 0xFFFFFFFF:
            fail(f"kernel.{f}", "must be a whole number from 0 to 4294967295")
    if isinstance(k.failure_mode, int) and k.failure_mode not in (0, 1, 2):
        fail("kernel.failure_mode", "must be silent, printk, panic or 0, 1, 2")
    if k.backpressure_strategy in ("kernel", "both") and k.backlog_wait_time not in (None, 0):
        fail("kernel.backlog_wait_time", f"the {k.backpressure_strategy!r} backpressure strategy "
             "sets backlog_wait_time to 0; remove one of the two")
    if k.queue_size < 1:
        fail("kernel.queue_size", "must be at least 1")
    if k.rcvbuf < 4096:
        fail("kernel.rcvbuf", "must be at least 4096 bytes")
    if not 0 <= k.batch_delay <= 0.5:
        fail("kernel.batch_delay", "must be from 0 to 0.5 seconds")
    r = cfg.reassembly
    if r.timeout <= 0:
        fail("reassembly.timeout", "must be more than 0 seconds")
    if r.max_in_flight < 1:
        fail("reassembly.max_in_flight", "must be at least 1")
    if r.wall_timeout <= 0:
        fail("reassembly.wall_timeout", "must be more than 0 seconds")
    if cfg.status.interval <= 0:
        fail("status.interval", "must be more than 0 seconds")
    if cfg.rules.check_interval < 0:
        fail("rules.check_interval", "must be 0 (check only after a CONFIG_CHANGE) or more")
    if cfg.metrics.listen is not None:
        try:
            split_listen(cfg.metrics.listen)
        except ValueError as e:
            fail("metrics.listen", str(e))
    for i, o in enumerate(cfg.outputs):
        if isinstance(o, FileOutput):
            if not o.path:
                fail(f"outputs[{i}].path", "must not be empty")
            if isinstance(o.mode, str):
                try:
                    m = int(o.mode, 8)
                except ValueError:
                    fail(f"outputs[{i}].mode", f"{o.mode!r} is not an octal file mode like \"0600\"")
                else:
                    if not 0 <= m <= 0o7777:
                        fail(f"outputs[{i}].mode", "must be a file mode from 0 to 0o7777")
            elif not 0 <= o.mode <= 0o7777:
                fail(f"outputs[{i}].mode", "must be a file mode from 0 to 0o7777 (write it 0o600)")
            if o.max_bytes < 0 or o.generations < 0:
                fail(f"outputs[{i}]", "max_bytes and generations must not be negative")
            if o.fsync_interval <= 0:
                fail(f"outputs[{i}].fsync_interval", "must be more than 0 seconds")
    for i, o in enumerate(cfg.outputs):
        if isinstance(o, HttpOutput):
            for path, msg in _http_problems(o):
                fail(f"outputs[{i}]{path}", msg)
    if not cfg.outputs:
        fail("outputs", "at least one output is needed")
    for i, o in enumerate(cfg.outputs):
        if isinstance(o, ElasticsearchOutput) and cfg.normalize.format != "ecs":
            fail(f"outputs[{i}].type", "the elasticsearch output takes ECS documents: [normalize] format = \"ecs\"")
        if isinstance(o, LakeOutput) and cfg.normalize.format == "coalesced":
            fail(f"outputs[{i}]", "the lake stores ecs or panther documents: [normalize] format = \"ecs\"")
    for path, msg in config_problems(cfg.process, cfg.filter):
        fail(path, msg)
    if not cfg.state.dir:
        fail("state.dir", "must not be empty")
    for key, msg in cfg.serve.problems():
        fail(f"serve.{key}", msg)


def _http_problems(o: HttpOutput) -> list[tuple[str, str]]:
    """Options an HTTP output cannot work with (each would never deliver, or drop everything)."""
    out = []
    scheme = o.url.split(":", 1)[0].lower()
    if scheme not in ("http", "https"):
        out.append((".url", f"must be http(s)://, not {o.url!r}"))
    elif scheme == "http" and o.tls:
        out.append((".url", "TLS is on by default: use an https:// url or set tls = false"))
    if o.format == "webhook" and o.documents != "alerts":
        out.append((".documents", 'a webhook output posts alerts: set documents = "alerts"'))
    if o.auth != "none" and not o.secret:
        out.append((".secret", f"auth {o.auth!r} needs a secret"))
    elif o.auth == "basic" and ":" not in (o.secret or ""):
        out.append((".secret", "basic auth secret must be 'user:password'"))
    if o.max_events < 1:
        out.append((".max_events", "must be at least 1 (0 would never send a batch)"))
    if o.max_bytes < 1024:
        out.append((".max_bytes", "must be at least 1024 bytes (a batch holds at least one record)"))
    if o.timeout <= 0:
        out.append((".timeout", "must be more than 0 seconds (0 would never deliver)"))
    if o.max_wait < 0:
        out.append((".max_wait", "must not be negative"))
    if o.backoff_initial <= 0 or o.backoff_max < o.backoff_initial:
        out.append((".backoff_initial", "backoff_initial must be more than 0 and at most backoff_max"))
    if o.max_retries is not None and o.max_retries < 0:
        out.append((".max_retries", "must not be negative"))
    if o.queue_max_bytes < MIN_QUEUE_BYTES:
        out.append((".queue_max_bytes", f"must be at least {MIN_QUEUE_BYTES} bytes (64 KiB): a smaller "
                    "queue cannot hold one large record, and every write would fail"))
    if o.queue_max_bytes < o.max_bytes:
        out.append((".queue_max_bytes", f"must be at least max_bytes ({o.max_bytes}): the queue must "
                    "hold one whole batch"))
    if o.drain_timeout < 0:
        out.append((".drain_timeout", "must not be negative"))
    if not o.queue_dir:
        out.append((".queue_dir", "must not be empty"))
    return out


def rule_files(cfg: Config) -> list[str]:
    """The rule files the configuration names, globs expanded and sorted within each pattern
    (as augenrules orders rules.d). Unset: the default glob when it matches anything."""
    patterns = cfg.rules.files
    if patterns is None:
        return sorted(glob.glob(DEFAULT_RULES_GLOB))
    out: list[str] = []
    for p in patterns:
        p = os.path.expanduser(p)
        if glob.has_magic(p):
            out.extend(sorted(glob.glob(p)))
        else:
            out.append(p)
    return out


# ------------------------------------------------------------------------------ locations
_AT = re.compile(r"\s*-\s*at\s*`\$((?:\.[^.`\[]+|\[\d+\])*)`\s*$")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")


def _located(msg: str, name: str, text: str) -> ConfigError:
    """Turn a msgspec message ``... - at `$.a.b[1].c``` into a ConfigError with a line."""
    m = _AT.search(msg)
    parts: list[str | int] = []
    if m:
        msg = msg[:m.start()]
        for tok in re.findall(r"\.([^.`\[]+)|\[(\d+)\]", m.group(1)):
            parts.append(tok[0] if tok[0] else int(tok[1]))
    u = _UNKNOWN.search(msg)
    if u:
        parts.append(u.group(1))
        msg = f"unknown option `{u.group(1)}`"
    elif (missing := _MISSING.search(msg)) is not None:
        msg = f"missing required option `{missing.group(1)}`"
    msg = msg.replace(" | null", "").replace("Expected", "expected").replace(
        "Invalid enum value", "invalid value").replace("Invalid value", "invalid value")
    msg += _hint(parts)
    line = _find_line(text, parts) if text else None
    return ConfigError(msg, name, line, _where(parts))


def _hint(parts: list) -> str:
    """The allowed values, for the options whose type is a choice."""
    if len(parts) < 2 or not isinstance(parts[-1], str):
        return ""
    if parts[0] == "outputs" and parts[-1] == "type":
        return " (one of: file, stdout, http, elasticsearch, lake)"
    table = {"kernel": KernelConfig, "normalize": NormalizeConfig, "source": SourceConfig,
             "rules": RulesConfig}.get(str(parts[0]))
    if parts[0] == "outputs" and parts[-1] == "documents":
        return " (one of: events, alerts, both)"
    if table is None:
        return ""
    choices = {"mode": "auto, unicast, multicast", "failure_mode": "silent, printk, panic (or 0, 1, 2)",
               "backpressure_strategy": "auto, kernel, userspace, both, none",
               "format": "ecs, panther, coalesced", "type": "kernel, file",
               "purge": "auto, true, false", "start": "end, head"}.get(parts[-1])
    if choices and parts[-1] in table.__struct_fields__:
        return f" (one of: {choices})"
    return ""


def _where(parts: list) -> str | None:
    if not parts:
        return None
    if parts[0] == "outputs" and len(parts) > 1 and isinstance(parts[1], int):
        head, rest = f"[[outputs]] #{parts[1] + 1}", parts[2:]
    elif len(parts) > 1:
        head, rest = f"[{parts[0]}]", parts[1:]
    else:
        return str(parts[0])
    return head + (" " + ".".join(str(p) for p in rest) if rest else "")


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _key_re(key: str) -> re.Pattern[str]:
    k = re.escape(key)
    return re.compile(rf"""^\s*(?:{k}|"{k}"|'{k}')\s*(=|\.)""")


def _find_line(text: str, parts: list) -> int | None:
    """Best effort: the line of the key at ``parts`` (``["kernel", "mode"]``,
    ``["outputs", 1, "path"]``), else the line of its table header."""
    if not parts:
        return None
    lines = text.splitlines()
    table = str(parts[0])
    index = parts[1] if len(parts) > 1 and isinstance(parts[1], int) else None
    keys = [p for p in parts[1:] if isinstance(p, str)]
    if len(parts) > 2 and isinstance(parts[1], str) and isinstance(parts[2], int):
        table, index, keys = f"{table}.{parts[1]}", parts[2], [p for p in parts[3:] if isinstance(p, str)]
    header_line = None
    seen = -1
    current = ""  # the table the line is in
    target_hit = False
    for n, line in enumerate(lines, 1):
        h = _HEADER.match(line)
        if h:
            current = h.group(2).replace('"', "").replace(" ", "")
            if current == table:
                if h.group(1) == "[[":
                    seen += 1
                    target_hit = index is None or seen == index
                else:
                    target_hit = True
                if target_hit and header_line is None:
                    header_line = n
            else:
                target_hit = False
            continue
        if target_hit and keys and _key_re(keys[0]).match(line):
            return n
        if current == "" and _key_re(table).match(line):
            # dotted key at the top level (kernel.mode = ...) or an inline table
            if not keys or re.match(rf"^\s*{re.escape(table)}\s*\.\s*{re.escape(keys[0])}\s*=", line) \
                    or "{" in line:
                if not keys or keys[0] in line:
                    return n
                header_line = header_line or n
    return header_line
