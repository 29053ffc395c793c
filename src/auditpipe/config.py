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
from dataclasses import fields as dc_fields
from typing import Any, Literal

import msgspec

from auditpipe.detect.config import DetectConfig

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


class RulesConfig(_S):
    #: rule files or globs in auditctl syntax; unset: /etc/audit/rules.d/*.rules when present;
    #: [] installs no rules and leaves the kernel's rule list alone
    files: list[str] | None = None
    #: delete the loaded rules before installing ours: auto = yes as the audit daemon (unicast),
    #: no in multicast (the other daemon owns the rule list)
    purge: Literal["auto"] | bool = "auto"


class ReassemblyConfig(_S):
    timeout: float = 2.0
    max_in_flight: int = 4096
    #: live: seconds an event may wait for its last record before it is written anyway
    wall_timeout: float = 1.0


class NormalizeConfig(_S):
    format: Literal["ecs", "panther", "coalesced"] = "ecs"
    resolve_ids: bool = True
    include_raw: bool = False
    tags: list[str] = msgspec.field(default_factory=list)
    passwd_file: str | None = None
    group_file: str | None = None


class FileOutput(_S, tag="file", tag_field="type"):
    path: str = DEFAULT_OUTPUT
    max_bytes: int = 100 << 20
    generations: int = 5
    #: octal file mode: 0o600 or "0600"
    mode: int | str = 0o600
    fsync: Literal["never", "batch", "interval"] = "never"
    fsync_interval: float = 1.0


class StdoutOutput(_S, tag="stdout", tag_field="type"):
    pass


class HttpOutput(_S, tag="http", tag_field="type"):
    """Kept as given: checked against the HTTP shipper's own options at load time."""

    options: dict[str, Any] = msgspec.field(default_factory=dict)


class SourceConfig(_S):
    type: Literal["kernel", "file"] = "kernel"
    #: for type = "file": the audit.log to follow
    path: str = "/var/log/audit/audit.log"
    checkpoint: str | None = None
    #: for type = "file", without a checkpoint: "end" (only what is written from now on) or
    #: "head" (the whole file)
    start: Literal["end", "head"] = "end"


class StatusConfig(_S):
    path: str = DEFAULT_STATUS_FILE
    #: seconds between status file writes (and kernel status polls)
    interval: float = 2.0


class Config(_S):
    kernel: KernelConfig = msgspec.field(default_factory=KernelConfig)
    rules: RulesConfig = msgspec.field(default_factory=RulesConfig)
    reassembly: ReassemblyConfig = msgspec.field(default_factory=ReassemblyConfig)
    normalize: NormalizeConfig = msgspec.field(default_factory=NormalizeConfig)
    outputs: list[FileOutput | StdoutOutput | HttpOutput] = msgspec.field(
        default_factory=lambda: [FileOutput()])
    source: SourceConfig = msgspec.field(default_factory=SourceConfig)
    status: StatusConfig = msgspec.field(default_factory=StatusConfig)
    detect: DetectConfig = msgspec.field(default_factory=DetectConfig)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: where this configuration came from (None: built-in defaults)
    path: str | None = None

    def failure_value(self) -> int | None:
        f = self.kernel.failure_mode
        return FAILURE_MODES[f] if isinstance(f, str) else f

    def output_specs(self) -> list[dict[str, Any]]:
        """The outputs as ``open_sink`` dicts."""
        out = []
        for o in self.outputs:
            if isinstance(o, FileOutput):
                out.append({"type": "file", "path": o.path, "max_bytes": o.max_bytes,
                            "generations": o.generations, "mode": _mode(o.mode),
                            "fsync": o.fsync, "fsync_interval": o.fsync_interval})
            elif isinstance(o, StdoutOutput):
                out.append({"type": "stdout"})
            else:
                out.append({"type": "http", **o.options})
        return out


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
        line = int(m.group(1)) if m else None
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        if m:
            msg += f" (column {m.group(2)})"
        raise ConfigError(f"TOML syntax: {msg}", name, line) from None
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
    _check(cfg, name, text)
    return cfg


def _prepare_output(o: Any, i: int, name: str, text: str) -> Any:
    """Outputs are a tagged union on ``type`` (default "file"); http options are kept whole
    and checked against the shipper's own option names."""
    if not isinstance(o, dict):
        return o
    o = dict(o)
    kind = o.setdefault("type", "file")
    if kind != "http":
        return o
    opts = {k: v for k, v in o.items() if k != "type"}
    try:
        from auditpipe.sinks.http import HttpConfig
    except ImportError:  # pragma: no cover - the sinks package is part of the project
        return {"type": "http", "options": opts}
    known = {f.name for f in dc_fields(HttpConfig)} | {
        "queue_dir", "queue_max_bytes", "full_policy", "queue_fsync", "drain_timeout"}
    for k in opts:
        if k not in known:
            raise _located(f"Object contains unknown field `{k}` - at `$.outputs[{i}]`", name, text)
    if "url" not in opts:
        raise _located(f"Object missing required field `url` - at `$.outputs[{i}]`", name, text)
    hc = {k: v for k, v in opts.items() if k in {f.name for f in dc_fields(HttpConfig)}}
    try:
        msgspec.convert(hc, HttpConfig)
    except (msgspec.ValidationError, ValueError, TypeError) as e:
        msg = str(e)
        if " - at `$" not in msg:
            msg += f" - at `$.outputs[{i}]`"
        msg = msg.replace("`$.", f"`$.outputs[{i}].", 1) if "`$.outputs" not in msg else msg
        raise _located(msg, name, text) from None
    return {"type": "http", "options": opts}


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
    if not cfg.outputs:
        fail("outputs", "at least one output is needed")


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
    elif _MISSING.search(msg):
        msg = f"missing required option `{_MISSING.search(msg).group(1)}`"
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
        return " (one of: file, stdout, http)"
    table = {"kernel": KernelConfig, "normalize": NormalizeConfig, "source": SourceConfig,
             "rules": RulesConfig}.get(str(parts[0]))
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
