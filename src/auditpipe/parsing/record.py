"""One audit line → one `Record`.

The header is one compiled match. Bodies take the fast path when every space-separated token is
one `key=value`: the dict is built by `str.split` alone (in C), then only quoted and hex-encoded
values are touched. Anything else — quoted values with spaces, AVC `{ perms }`, words outside
key=value — goes through the careful tokenizer; the nested `msg='…'` of user-space records is
cut out by position first. Bodies and ENRICHED parts that repeat event after event are parsed
once (memoized; the dicts are shared and read-only). No regular expression runs per field.

Non-UTF-8 bytes travel as lone surrogates (`surrogateescape`), so every value round-trips to
the exact bytes the kernel wrote.
"""

from __future__ import annotations

import re
from itertools import repeat

from auditpipe import tables

__all__ = ["Parser", "Record", "ParseError", "parse_line", "parse_header", "parse_kernel", "parse_body", "MAX_LINE"]

# The kernel caps one audit message at MAX_AUDIT_MESSAGE_LENGTH (8970) bytes; auditd then adds
# `node=…` and the ENRICHED part. Longer lines are not rejected for their length alone, but a line
# this long cannot be an audit record at all and is refused before any work is done on it.
MAX_LINE = 1 << 20

GS = "\x1d"  # separates RAW fields from the ENRICHED interpretations
_HEXDIGITS = frozenset("0123456789ABCDEFabcdef")
_ENRICHED_SPLIT = re.compile(r" (?=[A-Z][A-Z0-9_-]*=)")


class ParseError(ValueError):
    """A line that is not an audit record; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Record:
    """One audit record. See docs/design.md for the meaning of each attribute."""

    __slots__ = ("node", "type", "type_num", "time", "sec", "msec", "serial", "fields", "enriched", "raw")

    def __init__(self, node: str | None, type_: str, type_num: int, time: str, sec: int, msec: int, serial: int,
                 fields: dict, enriched: dict | None, raw: str) -> None:
        self.node = node
        self.type = type_
        self.type_num = type_num
        self.time = time
        self.sec = sec
        self.msec = msec
        self.serial = serial
        self.fields = fields
        self.enriched = enriched
        self.raw = raw

    def __repr__(self) -> str:
        return f"Record({self.type} {self.time}:{self.serial} {self.fields!r})"


_TYPE_NUMBERS = tables.RECORD_TYPE_NUMBERS
_TYPE_NAMES = tables.RECORD_TYPE_NAMES
_ENCODED = tables.ENCODED_FIELDS
_EXECVE = _TYPE_NUMBERS.get("EXECVE", 1309)
_PROCTITLE = _TYPE_NUMBERS.get("PROCTITLE", 1327)
_LOGIN = _TYPE_NUMBERS.get("LOGIN", 1006)
_SYSCALL = _TYPE_NUMBERS.get("SYSCALL", 1300)


def _type_of(name: str) -> tuple[str, int]:
    num = _TYPE_NUMBERS.get(name)
    if num is not None:
        return name, num
    if name.startswith("UNKNOWN[") and name.endswith("]") and name[8:-1].isascii() and name[8:-1].isdigit():
        num = int(name[8:-1])
        return _TYPE_NAMES.get(num, name), num
    if not name or not name.replace("_", "").isalnum():
        raise ParseError(f"bad record type {name[:40]!r}")
    return name, 0  # a type newer than our tables: keep it, the name is what auditd wrote


#: longest ``SEC.MSEC:SERIAL`` accepted (the kernel's is about 25 characters)
_MAX_STAMP = 64


def _header_stamp(stamp: str) -> tuple[str, int, int, int]:
    """`SEC.MSEC:SERIAL` → (time text, sec, msec, serial). Bounded in length: ``int()`` of more
    than 4,300 digits raises ValueError, which would stop the stream instead of rejecting a line."""
    time, colon, serial = stamp.partition(":")
    sec, dot, msec = time.partition(".")
    if not (colon and dot and len(stamp) <= _MAX_STAMP and stamp.isascii() and sec.isdigit()
            and msec.isdigit() and serial.isdigit()):
        raise ParseError(f"bad timestamp {stamp[:40]!r}")
    return time, int(sec), int(msec), int(serial)


#: The header of a log line, as :func:`_split_header` reads it (kept to document and test it).
_HEADER = re.compile(r"(?:node=([^ ]*) )?type=([^ ]+) msg=audit\((([0-9]+)\.([0-9]+)):([0-9]+)\):? ?")

Header = tuple["str | None", str, str, int, int, int, int]


def _split_header(line: str, memo: Parser | None = None) -> Header | None:
    """``_HEADER.match`` by string methods (a third of the cost of the regex, compiled): (node,
    type, time text, sec, msec, serial, where the body starts), or None where the regex fails
    (or the stamp is longer than ``_MAX_STAMP``). The records of one event share their
    ``time:serial`` text: with a parser, the last one's numbers are reused (three int() and two
    partitions were a fifth of parsing a line)."""
    node = None
    pos = 0
    if line.startswith("node="):
        pos = line.find(" ") + 1
        if pos == 0:
            return None
        node = line[5 : pos - 1]
    # slices, not startswith(prefix, pos): compiled, a slice is a primitive and that is a method call
    if line[pos : pos + 5] != "type=":
        return None
    sp = line.find(" ", pos + 5)
    if sp <= pos + 5 or line[sp : sp + 11] != " msg=audit(":
        return None
    start = sp + 11
    close = line.find(")", start)
    if close < 0:
        return None
    stamp = line[start:close]
    if memo is not None and stamp == memo.last_stamp:
        time, nsec, nmsec, nserial = memo.last_time
    else:
        try:
            parsed = _header_stamp(stamp)
        except ParseError:
            return None
        time, nsec, nmsec, nserial = parsed
        if memo is not None:
            memo.last_stamp = stamp
            memo.last_time = parsed
    end = close + 1
    if line[end : end + 1] == ":":
        end += 1
    if line[end : end + 1] == " ":
        end += 1
    return node, line[pos + 5 : sp], time, nsec, nmsec, nserial, end


class Parser:
    """A parser with its own memos (see ``_MEMO_TYPES`` and ``_parse_enriched``): one per
    pipeline, so nothing is shared between pipelines and nothing lives at module level. The
    module functions :func:`parse_line` and :func:`parse_kernel` parse without memos."""

    __slots__ = ("body_memo", "enriched_memo", "last_stamp", "last_time")

    def __init__(self) -> None:
        self.body_memo: dict[str, dict] = {}
        self.enriched_memo: dict[str, dict] = {}
        #: the last header's ``time:serial`` text and its (time, sec, msec, serial)
        self.last_stamp: str | None = None
        self.last_time: tuple[str, int, int, int] = ("", 0, 0, 0)

    def parse_line(self, line: str) -> Record:
        return parse_line(line, self)

    def parse_kernel(self, type_num: int, payload: bytes) -> Record:
        return parse_kernel(type_num, payload, self)


def parse_line(line: str, memo: Parser | None = None) -> Record:
    """Parse one audit.log line (with or without `node=` and trailing newline)."""
    if line[-1:] == "\n":
        line = line[:-1]
    raw = line
    if line[-1:] == "\r":  # a log that went through Windows: parsed without the CR, kept in raw
        line = line[:-1]
    node, type_name, num, time, sec, msec, serial, end = _checked_header(line, memo)
    fields, enriched = parse_body(line[end:], num, memo)
    return Record(node, type_name, num, time, sec, msec, serial, fields, enriched, raw)


def parse_header(line: str, memo: Parser | None = None) -> Record:
    """A line's record without its body (no fields, no raw text): all a reassembler reads, at a
    fraction of the cost. It raises exactly where :func:`parse_line` does (the body never
    raises), so both keep the same lines of any input."""
    if line[-1:] == "\n":
        line = line[:-1]
    if line[-1:] == "\r":
        line = line[:-1]
    node, type_name, num, time, sec, msec, serial, _ = _checked_header(line, memo)
    return Record(node, type_name, num, time, sec, msec, serial, {}, None, "")


def _checked_header(line: str, memo: Parser | None) -> tuple[str | None, str, int, str, int, int, int, int]:
    """(node, type name, type number, time text, sec, msec, serial, where the body starts) of a
    line without its newline; ParseError for a line that is not a record."""
    header = _split_header(line, memo)
    if header is None:
        raise ParseError(_header_problem(line))
    if len(line) > MAX_LINE:
        raise ParseError(f"line of {len(line)} characters is too long")
    node, type_name, time, sec, msec, serial, end = header
    num = _TYPE_NUMBERS.get(type_name)
    if num is None:
        type_name, num = _type_of(type_name)
    return node, type_name, num, time, sec, msec, serial, end


def _header_problem(line: str) -> str:
    """Why a line's header did not match: the reason reported with the reject."""
    rest = line
    if rest.startswith("node="):
        sp = rest.find(" ")
        if sp < 0:
            return "node= without a record"
        rest = rest[sp + 1 :]
    if not rest.startswith("type="):
        return "missing type="
    at = rest.find(" msg=audit(", 5)
    if at < 0:
        return "missing msg=audit( header"
    close = rest.find(")", at)
    if close < 0:
        return "unterminated msg=audit( header"
    try:
        _type_of(rest[5:at])
        _header_stamp(rest[at + 11 : close])
    except ParseError as e:
        return e.reason
    return "malformed header"


def parse_kernel(type_num: int, payload: bytes, memo: Parser | None = None) -> Record:
    """Parse a netlink message: `type_num` from nlmsghdr, payload `audit(SEC.MSEC:SERIAL): body`."""
    text = payload.rstrip(b"\0\n").decode("utf-8", "surrogateescape")
    if not text.startswith("audit("):
        raise ParseError("kernel message without audit( header")
    close = text.find("):")
    if close < 0:
        raise ParseError("unterminated audit( header")
    time, sec, msec, serial = _header_stamp(text[6:close])
    name = _TYPE_NAMES.get(type_num) or f"UNKNOWN[{type_num}]"
    fields, enriched = parse_body(text[close + 3 :], type_num, memo)
    return Record(None, name, type_num, time, sec, msec, serial, fields, enriched, f"type={name} msg={text}")


def parse_body(body: str, type_num: int = 0, memo: Parser | None = None) -> tuple[dict, dict | None]:
    """Body text → (fields, enriched). Never raises on odd content: odd tokens are kept as text.
    With ``memo``, repeated bodies of ``_MEMO_TYPES`` and enriched parts share one dict (read-only)."""
    enriched = None
    gs = body.find(GS)
    if gs >= 0:
        enriched = _parse_enriched(body[gs + 1 :], memo)
        body = body[:gs]
    # user-space records carry their payload in msg='…'; the payload may itself hold a ' inside
    # double quotes, so its end is the last ' of the body, not the next one.
    if type_num == _SYSCALL:
        fields = _syscall_fields(body)
        if fields is not None:
            return fields, enriched
    if memo is not None and type_num in _MEMO_TYPES:
        bodies = memo.body_memo
        fields = bodies.get(body)
        if fields is None:
            if len(bodies) >= 16384:
                bodies.clear()
            fields = bodies[body] = _parse_fields(body, type_num)
        return fields, enriched
    return _parse_fields(body, type_num), enriched


# The kernel writes every SYSCALL record with the same keys in the same order (`subj=` only
# under an LSM): one match of that shape, values straight into a dict, is a third of the cost
# of the general path. Unquoted values here hold no quote, `=` or space, and `comm`/`exe` are
# matched only quoted, so every value is already what the general path makes of it (hex-encoded
# `comm`/`exe`/`key`, odd values and other shapes take the general path; tests compare both).
_SYSCALL_KEYS = ("arch", "syscall", "success", "exit", "a0", "a1", "a2", "a3", "items", "ppid", "pid", "auid",
                 "uid", "gid", "euid", "suid", "fsuid", "egid", "sgid", "fsgid", "tty", "ses")
_SYSCALL_BODY = re.compile(
    " ".join(f"{k}=([^ \"'=]*)" for k in _SYSCALL_KEYS)
    + r' comm="([^"]*)" exe="([^"]*)"(?: subj=([^ "\'=]*))? key=(\(null\)|"[^"]*")'
)
_SYSCALL_ALL = _SYSCALL_KEYS + ("comm", "exe", "subj", "key")
_SYSCALL_NO_SUBJ = _SYSCALL_KEYS + ("comm", "exe", "key")


def _syscall_fields(body: str) -> dict | None:
    """The fields of a SYSCALL body of the kernel's usual shape, or None for the general path."""
    m = _SYSCALL_BODY.fullmatch(body)
    if m is None:
        return None
    values = m.groups()
    key = values[-1]
    if key[0] == '"':
        values = values[:-1] + (key[1:-1],)
    if values[-2] is None:
        values = values[:-2] + values[-1:]
        keys: tuple[str, ...] = _SYSCALL_NO_SUBJ
    else:
        keys = _SYSCALL_ALL
    # a comprehension, not dict(zip(...)): compiled, it sets the items directly (dict(zip) makes a
    # tuple per item); the regex has exactly one group per key
    return {keys[i]: values[i] for i in range(len(keys))}


def _parse_fields(body: str, type_num: int) -> dict:
    m = body.find("msg='")
    if m >= 0 and (m == 0 or body[m - 1] == " "):
        end = body.rfind("'")
        if end > m + 4:
            fields: dict = {}
            _parse_tokens(body[:m], fields, type_num)
            _put(fields, "msg", _parse_pairs(body[m + 5 : end], type_num))
            _parse_tokens(body[end + 1 :], fields, type_num)
            return fields
    return _parse_pairs(body, type_num)


# Bodies of these types repeat from event to event (the same binary and loader in PATH, the same
# working directory, the same capability sets in BPRM_FCAPS): a Parser memoizes their parses and
# the fields dict is shared between records with the same body — read-only, like `enriched`.
# (A body of one of them holds no type-dependent encoding, so the body text alone is the key.)
_MEMO_TYPES = frozenset(_TYPE_NUMBERS[n] for n in ("PATH", "CWD", "BPRM_FCAPS") if n in _TYPE_NUMBERS)


def _put(fields: dict, key: str, value) -> None:
    if key in fields:  # a repeated key (LOGIN, broken lines) is kept, not overwritten
        n = 2
        while f"{key}#{n}" in fields:
            n += 1
        key = f"{key}#{n}"
    fields[key] = value


_split = str.split


def _is_encoded(key: str, type_num: int) -> bool:
    """Whether the kernel hex-encodes this field when its value needs it (by field type; EXECVE
    arguments and PROCTITLE by record type)."""
    if key in _ENCODED:
        return True
    if type_num == _EXECVE:
        return key[0] == "a" and key != "argc" and not key.endswith("_len")
    return type_num == _PROCTITLE and key == "proctitle"


def _parse_pairs(text: str, type_num: int) -> dict:
    """`k=v k="v" …` → dict.

    Fast path, all in C: when every space-separated token is exactly one key=value (as many `=`
    as tokens; a token without one makes dict() fail), str.split builds the dict; then only
    encoded and quoted values are touched. Anything else takes the careful tokenizer.
    """
    if " " not in text:  # one field (PROCTITLE, CWD, …): no tokenizing at all
        key, eq, val = text.partition("=")
        if eq and key and "=" not in val:
            if val[:1] == '"':
                if len(val) >= 2 and val[-1] == '"':
                    return {key: val[1:-1]}
            elif _is_encoded(key, type_num):
                return {key: decode_hex_value(val)}
            else:
                return {key: val}
    elif type_num not in _AVC_TYPES:
        tokens = text.split(" ")
        if text.count("=") == len(tokens):
            try:
                d = dict(map(_split, tokens, repeat("="), repeat(1)))
            except ValueError:
                d = None
            if d is not None and len(d) == len(tokens) and "" not in d:
                if type_num == _EXECVE:
                    for k, v in d.items():
                        if k[0] == "a" and k != "argc" and v[:1] != '"' and not k.endswith("_len"):
                            d[k] = decode_hex_value(v)
                else:
                    for k in d.keys() & _ENCODED:
                        v = d[k]
                        if v[:1] != '"':
                            d[k] = decode_hex_value(v)
                    if type_num == _PROCTITLE:
                        title = d.get("proctitle")
                        if title is not None and title[:1] != '"':
                            d["proctitle"] = decode_hex_value(title)
                q = text.find('="')
                while q >= 0:  # one "= per quoted value here: strip only those
                    k = text[text.rfind(" ", 0, q) + 1 : q]
                    v = d[k]
                    if len(v) >= 2 and v[-1] == '"':
                        d[k] = v[1:-1]
                    q = text.find('="', q + 2)
                return d
    fields: dict = {}
    _parse_tokens(text, fields, type_num)
    return fields


def _parse_tokens(text: str, fields: dict, type_num: int) -> None:
    tokens = text.split(" ")
    n = len(tokens)
    i = 0
    words: list[str] | None = None
    last_key = None
    while i < n:
        tok = tokens[i]
        i += 1
        if not tok:
            continue
        key, eq, val = tok.partition("=")
        if not eq or not key:
            # words outside key=value: AVC's `{ perms }`, AppArmor's `(enforce)` after subj=,
            # `policy loaded`, `netlabel:`. Kept as text so nothing is lost.
            if tok == "{" and type_num in _AVC_TYPES:
                j = i
                while j < n and tokens[j] != "}":
                    j += 1
                _put(fields, "seperms", ",".join(t for t in tokens[i:j] if t))
                i = j + 1
                continue
            if last_key is not None and tok[0] == "(" and tok[-1] == ")" and isinstance(fields.get(last_key), str):
                fields[last_key] += " " + tok
                continue
            if (tok == "old" or tok == "new") and type_num == _LOGIN and i < n and "=" in tokens[i]:
                # kernels before 3.x: `old auid=… new auid=… old ses=… new ses=…`; read as today's
                # `old-auid=… auid=… old-ses=… ses=…`
                k2, _, v2 = tokens[i].partition("=")
                _put(fields, ("old-" + k2) if tok == "old" else k2, v2)
                last_key = None
                i += 1
                continue
            if words is None:
                words = []
            words.append(tok)
            continue
        first = val[:1]
        if first == '"' or first == "'":
            if len(val) >= 2 and val[-1] == first:
                val = val[1:-1]
            else:  # a quoted value with spaces inside: stitch tokens up to the closing quote
                parts = [val[1:]]
                while i < n:
                    t = tokens[i]
                    i += 1
                    if t.endswith(first):
                        parts.append(t[:-1])
                        break
                    parts.append(t)
                val = " ".join(parts)
        elif _is_encoded(key, type_num):
            val = decode_hex_value(val)
        if words is not None and type_num in _AVC_TYPES and key not in fields:
            _avc_words(words, fields)
            words = None
        _put(fields, key, val)
        last_key = key
    if words:
        if type_num in _AVC_TYPES:
            _avc_words(words, fields)
        else:
            _put(fields, "text", " ".join(words))


def _avc_words(words: list, fields: dict) -> None:
    """`avc:  denied  {…} for` → seresult=denied; other words kept as text."""
    rest = []
    for w in words:
        if w in ("denied", "granted") and "seresult" not in fields:
            fields["seresult"] = w
        elif w not in ("avc:", "for"):
            rest.append(w)
    if rest:
        _put(fields, "text", " ".join(rest))


_AVC_TYPES = frozenset(
    n for n in (_TYPE_NUMBERS.get("AVC"), _TYPE_NUMBERS.get("USER_AVC"), _TYPE_NUMBERS.get("SELINUX_ERR")) if n
)


def decode_hex_value(val: str) -> str:
    """An unquoted value of an encoded field: hex → text. Anything else is returned unchanged
    (`(null)`, `?`, odd-length or non-hex text: the kernel only hex-encodes whole values)."""
    if len(val) & 1 or not val or val[0] not in _HEXDIGITS:
        return val
    try:
        data = bytes.fromhex(val)
    except ValueError:
        return val
    return data.decode("utf-8", "surrogateescape")


def _parse_enriched(text: str, memo: Parser | None) -> dict:
    """The ENRICHED part repeats from record to record (`ARCH=x86_64 SYSCALL=execve UID="root"…`),
    so a Parser memoizes parses: the dict is shared between records and must not be modified."""
    if memo is None:
        return _parse_enriched_text(text)
    seen = memo.enriched_memo
    d = seen.get(text)
    if d is None:
        if len(seen) >= 8192:
            seen.clear()
        d = seen[text] = _parse_enriched_text(text)
    return d


def _parse_enriched_text(text: str) -> dict:
    # Enriched values are names auditd looked up; quotes there are decoration, never encoding.
    if "{" not in text:
        plain = text.replace('"', "")
        tokens = plain.split(" ")
        if plain.count("=") == len(tokens) and "" not in tokens:
            try:
                return dict(map(_split, tokens, repeat("="), repeat(1)))
            except ValueError:
                pass
    out = {}
    for part in _ENRICHED_SPLIT.split(text):
        key, eq, val = part.partition("=")
        if not eq:
            continue
        if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
            val = val[1:-1]
        out[key] = val
    return out
