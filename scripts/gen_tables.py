#!/usr/bin/env python3
"""Regenerate ``src/auditpipe/tables/generated.py`` from what is installed on this machine.

Nothing in the generated module is typed by hand: every number and name comes from

* C headers (``#define``/``enum`` evaluated by the small preprocessor below):
  ``linux/elf-em.h``, ``linux/audit.h`` (linux-libc-dev), ``libaudit.h`` (libaudit-dev),
  ``asm-generic/errno-base.h``, ``asm-generic/errno.h``, ``asm-generic/signal.h``,
  ``linux/capability.h`` (linux-libc-dev);
* ``ausyscall <arch> --dump`` (auditd) for the per-arch syscall tables;
* libaudit's own tables through the python3-audit bindings (record type names as auditd writes
  them, e.g. 1500 -> "APPARMOR"; arch names as ausyscall/auparse print them, e.g. 0x40000028 ->
  "armeb"); run under a Python that can ``import audit`` (``--audit-python``, default: this
  interpreter, then ``/usr/bin/python3``);
* auparse's ``typetab.h`` from the audit-userspace source (``--audit-source DIR`` or
  ``$AUDITPIPE_AUDIT_SRC``; default: the newest ``~/.cache/auditpipe/audit-src/audit-*``, which
  ``--fetch-audit-source`` fills with ``apt-get source --download-only audit``, needs a
  ``deb-src`` line). Without the source, field types are probed from the installed libauparse
  through the python3-audit ``auparse`` bindings over a synthetic record holding every field-like
  string found in ``libauparse.so`` (less complete: no per-record adjustments are visible).

The generated module's header says which of these were used and their package versions, so a
rerun on the same machine reproduces it byte for byte (``--check`` verifies that).

Usage::

    .venv/bin/python scripts/gen_tables.py                # writes src/auditpipe/tables/generated.py
    .venv/bin/python scripts/gen_tables.py --check        # exit 1 if the committed module differs
    .venv/bin/python scripts/gen_tables.py -o /tmp/x.py   # write elsewhere
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pprint
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "src" / "auditpipe" / "tables" / "generated.py"
CACHE_SRC = Path(os.path.expanduser("~/.cache/auditpipe/audit-src"))
COMMAND = "scripts/gen_tables.py"

# auparse interpretation types whose values are hex-encoded untrusted strings (auparse's
# auparse_do_interpretation() sends them through print_escaped*/print_proctitle/print_tty_data,
# which un-hex them). Verified against interpret.c when the source is available.
ENCODED_TYPES = ("escaped", "escaped_file", "escaped_key", "proctitle", "tty_data")
DECODING_PRINTERS = ("print_escaped", "print_escaped_ext", "print_proctitle", "print_tty_data")


class GenError(Exception):
    pass


def warn(msg: str) -> None:
    print(f"gen_tables: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# A small C preprocessor: object-like #define, #undef, #if/#ifdef/#ifndef/#elif/#else/#endif,
# enums; constant expressions with numbers, macros, casts and the usual C operators.
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(0[xX][0-9a-fA-F]+|\d+)[uUlL]*|([A-Za-z_]\w*)|(<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%&|^~!()<>?:]))"
)
_CAST_WORDS = {"unsigned", "signed", "int", "long", "short", "char", "__u32", "__u64", "__s32",
               "__u16", "__u8", "__s64", "u32", "u64", "uint32_t", "uint64_t", "int32_t"}
_BINARY = {  # precedence, function
    "||": (1, lambda a, b: int(bool(a) or bool(b))),
    "&&": (2, lambda a, b: int(bool(a) and bool(b))),
    "|": (3, lambda a, b: a | b),
    "^": (4, lambda a, b: a ^ b),
    "&": (5, lambda a, b: a & b),
    "==": (6, lambda a, b: int(a == b)), "!=": (6, lambda a, b: int(a != b)),
    "<": (7, lambda a, b: int(a < b)), ">": (7, lambda a, b: int(a > b)),
    "<=": (7, lambda a, b: int(a <= b)), ">=": (7, lambda a, b: int(a >= b)),
    "<<": (8, lambda a, b: a << b), ">>": (8, lambda a, b: a >> b),
    "+": (9, lambda a, b: a + b), "-": (9, lambda a, b: a - b),
    "*": (10, lambda a, b: a * b), "/": (10, lambda a, b: int(a / b)),
    "%": (10, lambda a, b: a % b),
}


class Unresolvable(Exception):
    pass


def _tokenize(text: str) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise Unresolvable(f"cannot tokenize {text[pos:]!r}")
        num, ident, op = m.groups()
        if num is not None:
            out.append(("num", int(num, 16) if num[:2].lower() == "0x" else
                        int(num, 8) if len(num) > 1 and num[0] == "0" else int(num)))
        elif ident is not None:
            out.append(("id", ident))
        else:
            out.append(("op", op))
        pos = m.end()
    return out


class Preprocessor:
    """Collects object-like macros (in definition order) and enum constants."""

    def __init__(self) -> None:
        self.macros: dict[str, str] = {}       # name -> body
        self.origin: dict[str, str] = {}       # name -> file it came from
        self.functions: set[str] = set()       # function-like macros (only for #ifdef)
        self.enums: dict[str, int] = {}        # enum constant -> value
        self._cache: dict[str, int] = {}

    # -- expressions ---------------------------------------------------------------------
    def value(self, name: str, _stack: tuple[str, ...] = ()) -> int:
        if name in self._cache:
            return self._cache[name]
        if name in self.enums:
            return self.enums[name]
        if name not in self.macros or name in _stack:
            raise Unresolvable(name)
        body = self.macros[name]
        if not body.strip():
            raise Unresolvable(f"{name} is empty")
        v = self.evaluate(body, _stack + (name,))
        self._cache[name] = v
        return v

    def evaluate(self, text: str, _stack: tuple[str, ...] = (), in_if: bool = False) -> int:
        toks = _tokenize(text)
        pos = 0

        def peek():
            return toks[pos] if pos < len(toks) else ("end", None)

        def take():
            nonlocal pos
            t = peek()
            pos += 1
            return t

        def primary() -> int:
            kind, v = take()
            if kind == "num":
                return v
            if kind == "id":
                if in_if and v == "defined":
                    paren = peek() == ("op", "(")
                    if paren:
                        take()
                    _, name = take()
                    if paren and take() != ("op", ")"):
                        raise Unresolvable("defined(")
                    return int(name in self.macros or name in self.functions
                               or name in self.enums)
                try:
                    return self.value(v, _stack)
                except Unresolvable:
                    if in_if:
                        return 0  # C: unknown identifiers in #if are 0
                    raise
            if (kind, v) == ("op", "("):
                # a cast such as (unsigned int)-1 or (__u32)x
                j = pos
                words = []
                while j < len(toks) and toks[j][0] == "id" and toks[j][1] in _CAST_WORDS:
                    words.append(toks[j][1])
                    j += 1
                if words and j < len(toks) and toks[j] == ("op", ")"):
                    nonlocal_set(j + 1)
                    inner = unary()
                    bits = 64 if ("long" in words and words.count("long") > 1) or "64" in "".join(words) else 32
                    if "unsigned" in words or words[0].startswith(("__u", "u")):
                        return inner & ((1 << bits) - 1)
                    return inner
                val = expr(0)
                if take() != ("op", ")"):
                    raise Unresolvable("missing )")
                return val
            raise Unresolvable(f"unexpected {v!r}")

        def nonlocal_set(p):
            nonlocal pos
            pos = p

        def unary() -> int:
            kind, v = peek()
            if kind == "op" and v in ("-", "+", "~", "!"):
                take()
                x = unary()
                return {"-": -x, "+": x, "~": ~x, "!": int(not x)}[v]
            return primary()

        def expr(min_prec: int) -> int:
            left = unary()
            while True:
                kind, v = peek()
                if kind == "op" and v in _BINARY and _BINARY[v][0] >= min_prec:
                    prec, fn = _BINARY[v]
                    take()
                    left = fn(left, expr(prec + 1))
                elif kind == "op" and v == "?" and min_prec == 0:
                    take()
                    a = expr(0)
                    if take() != ("op", ":"):
                        raise Unresolvable("?: without :")
                    b = expr(0)
                    left = a if left else b
                else:
                    return left

        result = expr(0)
        if pos != len(toks):
            raise Unresolvable(f"trailing tokens in {text!r}")
        return result

    # -- files ---------------------------------------------------------------------------
    @staticmethod
    def _strip_comments(text: str) -> str:
        text = re.sub(r"/\*.*?\*/", lambda m: " " + "\n" * m.group(0).count("\n"), text, flags=re.S)
        text = re.sub(r"//[^\n]*", "", text)
        return text.replace("\\\n", " ")

    def process(self, path: str | Path) -> None:
        path = str(path)
        text = self._strip_comments(Path(path).read_text(encoding="utf-8", errors="replace"))
        stack: list[tuple[bool, bool]] = []   # (this branch active, some branch already taken)
        active_code: list[str] = []

        def active() -> bool:
            return all(a for a, _ in stack)

        for raw in text.split("\n"):
            line = raw.strip()
            m = re.match(r"#\s*(\w+)\s*(.*)", line)
            if not m:
                if active():
                    active_code.append(raw)
                continue
            directive, rest = m.group(1), m.group(2).strip()
            if directive in ("ifdef", "ifndef"):
                name = rest.split()[0]
                known = name in self.macros or name in self.functions
                cond = known if directive == "ifdef" else not known
                stack.append((cond, cond))
            elif directive == "if":
                cond = bool(self.evaluate(rest, in_if=True)) if active() else False
                stack.append((cond, cond))
            elif directive == "elif":
                _, taken = stack.pop()
                cond = (not taken) and bool(self.evaluate(rest, in_if=True))
                stack.append((cond, taken or cond))
            elif directive == "else":
                _, taken = stack.pop()
                stack.append((not taken, True))
            elif directive == "endif":
                stack.pop()
            elif not active():
                continue
            elif directive == "define":
                dm = re.match(r"([A-Za-z_]\w*)(\()?(.*)", rest)
                name, is_func, body = dm.group(1), dm.group(2), dm.group(3).strip()
                if is_func:
                    self.functions.add(name)
                    continue
                if name in self.macros and self.macros[name] != body:
                    try:
                        old, new = self.value(name), self.evaluate(body)
                    except Unresolvable:
                        old, new = self.macros[name], body
                    if old != new:
                        raise GenError(f"{path}: {name} redefined ({old!r} -> {new!r})")
                    continue
                self.macros.setdefault(name, body)
                self.origin.setdefault(name, path)
            elif directive == "undef":
                self.macros.pop(rest.split()[0], None)
                self._cache.clear()
            # #include, #error, #pragma ...: ignored; callers pass the files explicitly
        if stack:
            raise GenError(f"{path}: unbalanced #if")
        self._collect_enums("\n".join(active_code), path)

    def _collect_enums(self, code: str, path: str) -> None:
        for m in re.finditer(r"\benum\b\s*\w*\s*\{(.*?)\}", code, flags=re.S):
            nxt = 0
            for item in m.group(1).split(","):
                item = item.strip()
                if not item:
                    continue
                name, _, expr = item.partition("=")
                name = name.strip()
                if expr.strip():
                    nxt = self.evaluate(expr)
                self.enums[name] = nxt
                self.origin.setdefault(name, path)
                nxt += 1

    def constants(self, pattern: str) -> dict[str, int]:
        """Every macro/enum whose name matches pattern and evaluates to an int, in order."""
        rx = re.compile(pattern)
        out: dict[str, int] = {}
        for name in list(self.macros) + list(self.enums):
            if rx.fullmatch(name) and name not in out:
                try:
                    out[name] = self.value(name)
                except Unresolvable:
                    pass
        return out


# --------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------

def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check,
                          env={**os.environ, "LC_ALL": "C"})


def package_of(path: str) -> str:
    """'pkg version' of the Debian package owning path, or '' when unknown."""
    if not shutil.which("dpkg-query"):
        return ""
    real = os.path.realpath(path)
    candidates = [path, real]
    for p in (path, real):  # merged /usr: dpkg may know the file as /lib/... rather than /usr/lib/...
        if p.startswith("/usr/"):
            candidates.append(p[4:])
    for candidate in dict.fromkeys(candidates):
        r = run(["dpkg-query", "-S", candidate], check=False)
        if r.returncode == 0 and r.stdout.strip():
            pkg = r.stdout.strip().splitlines()[0].split(":")[0].split(",")[0].strip()
            return f"{pkg} {package_version(pkg)}"
    return ""


def package_version(pkg: str) -> str:
    r = run(["dpkg-query", "-W", "-f", "${Version}", pkg], check=False)
    return r.stdout.strip() if r.returncode == 0 else "?"


# --------------------------------------------------------------------------------------------
# libaudit / auparse through the python3-audit bindings (run in a subprocess: the project venv
# usually cannot import the system's binding)
# --------------------------------------------------------------------------------------------

_PROBE = r"""
import json, sys
import audit
req = json.loads(sys.stdin.read())
out = {"msg_types": {}, "arches": {}, "field_types": None, "type_ids": None}
lo, hi = req["msg_range"]
for n in range(lo, hi + 1):
    s = audit.audit_msg_type_to_name(n)
    if s:
        out["msg_types"][str(n)] = s
for v in req["arches"]:
    m = audit.audit_elf_to_machine(v)
    if m >= 0:
        s = audit.audit_machine_to_name(m)
        if s:
            out["arches"][str(v)] = s
if req.get("fields"):
    import auparse
    ids = {}
    for k in dir(auparse):
        if k.startswith("AUPARSE_TYPE_"):
            v = getattr(auparse, k)
            if isinstance(v, int):
                ids[str(v)] = k[len("AUPARSE_TYPE_"):].rstrip(",").lower()
    out["type_ids"] = ids
    names = req["fields"]
    # one synthetic record of a type with no per-record type adjustments in auparse
    line = "type=%s msg=audit(1.000:1): " % req["probe_type"]
    line += " ".join("%s=0" % n for n in names) + "\n"
    au = auparse.AuParser(auparse.AUSOURCE_BUFFER, line)
    types = {}
    au.first_record()
    au.first_field()
    while True:
        types[au.get_field_name()] = au.get_field_type()
        if not au.next_field():
            break
    out["field_types"] = types
print(json.dumps(out))
"""


def find_audit_python(explicit: str | None) -> str | None:
    candidates = [explicit] if explicit else [sys.executable, "/usr/bin/python3"]
    for py in candidates:
        if py and os.path.exists(py):
            r = run([py, "-c", "import audit, auparse"], check=False)
            if r.returncode == 0:
                return py
    return None


def libaudit_probe(py: str | None, msg_range, arches, fields=None, probe_type="SYSCALL"):
    if not py:
        return None
    req = {"msg_range": list(msg_range), "arches": sorted(arches), "fields": fields or [],
           "probe_type": probe_type}
    r = subprocess.run([py, "-c", _PROBE], input=json.dumps(req), capture_output=True, text=True)
    if r.returncode != 0:
        warn(f"python3-audit probe failed: {r.stderr.strip()[-500:]}")
        return None
    return json.loads(r.stdout)


# --------------------------------------------------------------------------------------------
# ausyscall
# --------------------------------------------------------------------------------------------

def ausyscall_dump(ausyscall: str, arch: str) -> tuple[str, dict[int, str]] | None:
    r = run([ausyscall, arch, "--dump"], check=False)
    if r.returncode != 0:
        return None
    lines = r.stdout.splitlines()
    m = re.match(r"Using (\S+) syscall table:", lines[0]) if lines else None
    if not m:
        return None
    table: dict[int, str] = {}
    for line in lines[1:]:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            table[int(parts[0])] = parts[1]
    return m.group(1), table


# --------------------------------------------------------------------------------------------
# audit-userspace source (typetab.h)
# --------------------------------------------------------------------------------------------

def find_audit_source(explicit: str | None) -> Path | None:
    if explicit:
        p = Path(explicit)
        if not (p / "auparse" / "typetab.h").exists():
            raise GenError(f"{p}/auparse/typetab.h not found (--audit-source/$AUDITPIPE_AUDIT_SRC)")
        return p
    found = sorted(glob.glob(str(CACHE_SRC / "audit-*" / "auparse" / "typetab.h")))
    return Path(found[-1]).parent.parent if found else None


def fetch_audit_source() -> Path:
    CACHE_SRC.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(["apt-get", "source", "--download-only", "audit"], cwd=tmp,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise GenError("apt-get source audit failed (is there a deb-src line?):\n" + r.stderr)
        for tarball in sorted(glob.glob(os.path.join(tmp, "audit_*.orig.tar.*"))):
            subprocess.run(["tar", "xf", tarball, "-C", str(CACHE_SRC)], check=True)
        for tarball in sorted(glob.glob(os.path.join(tmp, "audit_*.debian.tar.*"))):
            tops = sorted(glob.glob(str(CACHE_SRC / "audit-*")))
            subprocess.run(["tar", "xf", tarball, "-C", tops[-1]], check=True)
    src = find_audit_source(None)
    if not src:
        raise GenError("fetched the audit source but found no auparse/typetab.h in it")
    return src


def source_version(src: Path) -> str:
    changelog = src / "debian" / "changelog"
    if changelog.exists():
        m = re.match(r"(\S+) \(([^)]+)\)", changelog.read_text().splitlines()[0])
        if m:
            return f"Debian source package {m.group(1)} {m.group(2)}"
    return f"audit-userspace source {src.name}"


def parse_s_entries(path: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """libaudit's ``_S(KEY, "name")`` table files -> [(KEY, name, enclosing #ifdef conditions)]
    in file order; commented-out entries are left out."""
    text = Preprocessor._strip_comments(path.read_text(encoding="utf-8", errors="replace"))
    entries: list[tuple[str, str, tuple[str, ...]]] = []
    stack: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if m := re.match(r"#\s*if(n?)def\s+(\w+)", line):
            stack.append(("!" if m.group(1) else "") + m.group(2))
        elif re.match(r"#\s*else", line):
            stack[-1] = stack[-1][1:] if stack[-1].startswith("!") else "!" + stack[-1]
        elif re.match(r"#\s*endif", line):
            stack.pop()
        elif re.match(r"#\s*if", line):
            raise GenError(f"{path.name}: cannot handle {line!r}")
        elif m := re.match(r'_S\(\s*(\w+)\s*,\s*"([^"]+)"\s*\)', line):
            entries.append((m.group(1), m.group(2), tuple(stack)))
    return entries


def parse_typetab(src: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """typetab.h: _S(AUPARSE_TYPE_X, "name") -> [(name, "x", enclosing #ifdef conditions)]."""
    return [(name, key[len("AUPARSE_TYPE_"):].lower(), conds)
            for key, name, conds in parse_s_entries(src / "auparse" / "typetab.h")
            if key.startswith("AUPARSE_TYPE_")]


def check_interpret_c(src: Path) -> None:
    """Make sure ENCODED_TYPES are exactly the types auparse decodes from hex."""
    path = src / "auparse" / "interpret.c"
    if not path.exists():
        return
    text = path.read_text(errors="replace")
    body = text[text.index("char *auparse_do_interpretation("):]
    body = body[body.index("switch(type)"):]
    body = body[: body.index("escape_mode != AUPARSE_ESC_RAW")]
    decoded: set[str] = set()
    pending: list[str] = []
    for m in re.finditer(r"case AUPARSE_TYPE_(\w+):|out = (\w+)\(", body):
        if m.group(1):
            pending.append(m.group(1).lower())
        else:
            if m.group(2) in DECODING_PRINTERS:
                decoded.update(pending)
            pending = []
    if decoded != set(ENCODED_TYPES):
        raise GenError(f"interpret.c decodes {sorted(decoded)}, ENCODED_TYPES says {ENCODED_TYPES}")


def auparse_type_ids(inc: Path, py: str | None) -> tuple[dict[int, str], str]:
    """AUPARSE_TYPE_* enum value -> lower-cased name, from auparse-defs.h (libauparse-dev), else
    from the python3-audit auparse module's constants (which miss AUPARSE_TYPE_A3 in 3.0.9)."""
    defs = inc / "auparse-defs.h"
    if defs.exists():
        pp = Preprocessor()
        pp.process(defs)
        ids = {v: k[len("AUPARSE_TYPE_"):].lower()
               for k, v in pp.constants(r"AUPARSE_TYPE_\w+").items()}
        return ids, f"{defs} ({package_of(str(defs))}): AUPARSE_TYPE_* enum values"
    if py:
        r = libaudit_probe(py, (0, -1), [], fields=["x"])
        if r and r.get("type_ids"):
            return ({int(k): v for k, v in r["type_ids"].items()},
                    "python3-audit auparse module: AUPARSE_TYPE_* values (auparse-defs.h absent)")
    return {}, ""


def libauparse_field_candidates() -> tuple[list[str], str]:
    """Field-like strings in the installed libauparse (its typetab strings are in .rodata)."""
    libs = sorted(glob.glob("/usr/lib/*/libauparse.so.*") + glob.glob("/usr/lib*/libauparse.so.*"))
    libs = [p for p in libs if not os.path.islink(p)] or libs
    if not libs:
        return [], ""
    data = Path(libs[0]).read_bytes()
    names = set()
    for m in re.finditer(rb"(?<=\x00)([a-z][a-z0-9_-]{0,31})(?=\x00)", data):
        names.add(m.group(1).decode())
    return sorted(names), libs[0]


# --------------------------------------------------------------------------------------------
# libaudit's current tables (audit-userspace lib/*.h, read in place from the shared folder)
# --------------------------------------------------------------------------------------------

def find_tables_src(explicit: str | None) -> Path | None:
    """audit-userspace table tree: --tables-src, $AUDITPIPE_TABLES_SRC, else
    tables-src/audit-userspace in the shared folder ($AUDITPIPE_SHARED or ../shared next to the
    repository). An explicit path that is not such a tree is an error."""
    if explicit:
        p = Path(explicit)
        if not (p / "lib" / "x86_64_table.h").exists():
            raise GenError(f"{p}/lib/x86_64_table.h not found (--tables-src/$AUDITPIPE_TABLES_SRC)")
        return p
    shared = Path(os.environ.get("AUDITPIPE_SHARED") or ROOT.parent / "shared")
    default = shared / "tables-src" / "audit-userspace"
    return default if (default / "lib" / "x86_64_table.h").exists() else None


def tables_src_version(tree: Path) -> str:
    """'audit-userspace at commit X (date)' from the README next to the tree, if it says."""
    readme = tree.parent / "README.md"
    text = readme.read_text() if readme.exists() else ""
    m = re.search(r"commit\s+([0-9a-f]{7,40})\s*(\([^)]*\))?", text)
    return f"audit-userspace {m.group(1)} {m.group(2) or ''}".strip() if m else \
        f"audit-userspace tree {tree}"


def newest(what: str, candidates: list[tuple[str, dict]], notes: list[str]) -> tuple[str, dict]:
    """Pick the newest of several versions of one table: the one that knows the most entries
    (libaudit's tables only grow; a number never changes meaning). Disagreements are noted."""
    have = [(label, table) for label, table in candidates if table]
    if not have:
        raise GenError(f"no source for {what}")
    label, best = max(have, key=lambda lt: len(lt[1]))  # max() keeps the first on ties
    for other_label, other in have:
        clash = sorted(k for k in other.keys() & best.keys() if other[k] != best[k])
        if clash:
            notes.append(f"{what}: {label} and {other_label} disagree on "
                         + ", ".join(f"{k!r} ({best[k]!r} vs {other[k]!r})" for k in clash[:8])
                         + f"; {label} kept")
    return label, best


def machine_groups(tree: Path) -> dict[str, list[str]]:
    """machinetab.h: MACH_* -> its uname spellings in order (the first is the table's name as
    ausyscall prints it, e.g. MACH_ARM -> armeb, arm, armv5tejl, ...)."""
    groups: dict[str, list[str]] = {}
    for key, name, _ in parse_s_entries(tree / "lib" / "machinetab.h"):
        groups.setdefault(key, []).append(name)
    return groups


def shared_syscall_tables(tree: Path, groups: dict[str, list[str]]) -> tuple[dict[str, dict[int, str]], list[str]]:
    """lib/<stem>_table.h -> {arch table name: {number: syscall}}. A machine without a file of
    its own (ppc64, ppc64le) uses the file whose stem prefixes its name, as libaudit does."""
    files = {p.name[: -len("_table.h")]: p for p in sorted((tree / "lib").glob("*_table.h"))
             if not p.name.startswith("uringop")}
    tables: dict[str, dict[int, str]] = {}
    shared_notes: list[str] = []
    for key, names in groups.items():
        if key == "MACH_IO_URING":
            continue
        stem = next((n for n in names if n in files), None)
        if stem is None:
            prefixes = [s for s in files if names[0].startswith(s)]
            if not prefixes:
                continue
            stem = max(prefixes, key=len)
            shared_notes.append(f"{names[0]}: no {names[0]}_table.h, uses {stem}_table.h")
        tables[names[0]] = {int(num, 0): name for num, name, _ in parse_s_entries(files[stem])}
    return tables, shared_notes


def resolve_entries(entries, pp: Preprocessor) -> tuple[dict[str, int], list[str]]:
    """[(AUDIT_X, name, conds)] -> {name: value} for the symbols the headers define; the rest
    are returned by symbol (a source newer than the headers)."""
    out: dict[str, int] = {}
    unknown: list[str] = []
    for sym, name, _ in entries:
        try:
            out.setdefault(name, pp.value(sym))
        except Unresolvable:
            unknown.append(sym)
    return out, unknown


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------

def build(args) -> str:
    inc = Path(args.include_dir)
    sources: list[str] = []      # provenance lines for the header
    notes: list[str] = []

    def src_line(path: Path | str, what: str) -> None:
        pkg = package_of(str(path))
        sources.append(f"{path} ({pkg or 'package unknown'}): {what}")

    # ---- audit headers ----------------------------------------------------------------
    audit_h, libaudit_h, elf_em = inc / "linux" / "audit.h", inc / "libaudit.h", inc / "linux" / "elf-em.h"
    for p in (elf_em, audit_h, libaudit_h):
        if not p.exists():
            raise GenError(f"{p} is missing (install linux-libc-dev and libaudit-dev)")
    pp = Preprocessor()
    pp.process(elf_em)
    pp.process(audit_h)
    pp.process(libaudit_h)
    src_line(elf_em, "EM_* machine numbers used by AUDIT_ARCH_*")
    src_line(audit_h, "AUDIT_* constants: message types, rule fields/ops/filters, arches, ...")
    src_line(libaudit_h, "AUDIT_* constants only libaudit defines (user-space types, ranges)")
    consts = pp.constants(r"_*AUDIT_\w+")
    consts = {k: v for k, v in consts.items() if pp.origin.get(k) in (str(audit_h), str(libaudit_h))}

    # ---- record types -----------------------------------------------------------------
    lo, hi = consts["AUDIT_GET"], consts["AUDIT_LAST_USER_MSG2"]
    header_types: dict[str, int] = {}
    for name, v in consts.items():
        if (name.startswith("AUDIT_") and lo <= v <= hi
                and not re.search(r"(^|_)(FIRST|LAST)(_|$)", name[6:])):
            header_types[name[6:]] = v

    arch_consts = {k: v for k, v in consts.items() if k.startswith("AUDIT_ARCH_")}
    py = find_audit_python(args.audit_python)
    probe = libaudit_probe(py, (lo, hi), arch_consts.values())
    if probe:
        sources.append(f"python3 -c 'import audit' (python3-audit {package_version('python3-audit')}, "
                       f"libaudit1 {package_version('libaudit1')}): audit_msg_type_to_name() "
                       f"{lo}..{hi}, audit_machine_to_name(audit_elf_to_machine(AUDIT_ARCH_*))")
    else:
        notes.append("python3-audit unavailable: record type and arch names are the header names")

    tree = find_tables_src(args.tables_src or os.environ.get("AUDITPIPE_TABLES_SRC"))
    tree_label = tables_src_version(tree) if tree else ""
    if tree:
        sources.append(f"shared tables-src/audit-userspace ({tree_label}): libaudit's current "
                       "tables lib/*_table.h, "
                       "msg_typetab.h, fieldtab.h, machinetab.h, fstypetab.h, uringop_table.h, "
                       "auparse/typetab.h")
    else:
        notes.append("no audit-userspace tables tree (--tables-src / $AUDITPIPE_TABLES_SRC / "
                     "../shared/tables-src/audit-userspace): only installed sources used")
    won: dict[str, str] = {}   # table -> the source it came from

    libaudit_label = f"libaudit1 {package_version('libaudit1')} (python3-audit)"
    name_sources = [(libaudit_label, {int(k): v for k, v in (probe or {}).get("msg_types", {}).items()})]
    if tree:
        typetab, unknown_syms = resolve_entries(
            parse_s_entries(tree / "lib" / "msg_typetab.h"), pp)
        name_sources.append((f"{tree_label} lib/msg_typetab.h", {v: n for n, v in typetab.items()}))
        if unknown_syms:
            notes.append("msg_typetab.h names record types no installed header gives a number for "
                         "(they stay UNKNOWN[n] until linux-libc-dev/libaudit-dev define them): "
                         + ", ".join(unknown_syms))
    won["record type names"], lib_types = newest("record type names", name_sources, notes)
    record_names: dict[int, str] = {}
    record_numbers: dict[str, int] = {}
    for name, v in header_types.items():
        record_numbers.setdefault(name, v)
        record_names.setdefault(v, name)
    for v, name in lib_types.items():
        record_names[v] = name              # what auditd writes in logs wins
        if name in record_numbers and record_numbers[name] != v:
            raise GenError(f"record type {name}: header {record_numbers[name]} vs libaudit {v}")
        record_numbers[name] = v
    for v, name in sorted(lib_types.items()):
        hdr = [n for n, hv in header_types.items() if hv == v]
        if hdr and name not in hdr:
            notes.append(f"record type {v}: libaudit writes {name}, header calls it {'/'.join(hdr)}")
        if not hdr:
            notes.append(f"record type {v} ({name}) is known to libaudit but not to the headers")
    unnamed = [f"{v} {name}" for name, v in sorted(header_types.items(), key=lambda kv: kv[1])
               if lib_types and v not in lib_types]
    if unnamed:
        notes.append("record types in the headers that libaudit has no name for (auditd writes "
                     "UNKNOWN[n] for them): " + ", ".join(unnamed))

    # ---- arches ----------------------------------------------------------------------
    lib_arches = {int(k): v for k, v in (probe or {}).get("arches", {}).items()}
    arch_names: dict[int, str] = {}
    arch_numbers: dict[str, int] = {}
    for name, v in arch_consts.items():
        hname = name[len("AUDIT_ARCH_"):].lower()
        arch_numbers.setdefault(hname, v)
        arch_names.setdefault(v, hname)
    for v, name in lib_arches.items():
        if arch_names.get(v) != name:
            notes.append(f"arch {v:#x}: auparse/ausyscall call it {name}, header {arch_names.get(v)}")
        arch_names[v] = name
        if arch_numbers.get(name, v) != v:
            notes.append(f"arch name {name}: libaudit {v:#x} wins over header {arch_numbers[name]:#x}")
        arch_numbers[name] = v

    # ---- syscalls --------------------------------------------------------------------
    ausyscall = args.ausyscall or shutil.which("ausyscall") or "/usr/bin/ausyscall"
    if not os.path.exists(ausyscall):
        raise GenError("ausyscall not found (install auditd)")
    dumped: dict[str, dict[int, str]] = {}
    for name in sorted(set(arch_names.values()) | set(arch_numbers)):
        got = ausyscall_dump(ausyscall, name)
        # ausyscall silently falls back to x86_64 for arches it does not know
        if got and got[0] == name and got[1]:
            dumped[name] = got[1]
    if "x86_64" not in dumped:
        raise GenError("ausyscall x86_64 --dump gave nothing")
    ausyscall_label = f"ausyscall --dump (auditd {package_version('auditd')})"
    sources.append(f"{ausyscall} <arch> --dump (auditd {package_version('auditd')}) for "
                   f"{', '.join(sorted(dumped))}")
    groups = machine_groups(tree) if tree else {}
    shared_tables, shared_notes = shared_syscall_tables(tree, groups) if tree else ({}, [])
    notes.extend(shared_notes)
    syscalls: dict[str, dict[int, str]] = {}
    for name in sorted(set(dumped) | set(shared_tables)):
        if name not in arch_numbers:
            notes.append(f"{name}_table.h: no AUDIT_ARCH_* for {name} in the headers, left out")
            continue
        label, syscalls[name] = newest(f"syscalls {name}", [
            (ausyscall_label, dumped.get(name, {})),
            (f"{tree_label} lib/*_table.h", shared_tables.get(name, {}))], notes)
        won[f"syscalls {name}"] = label

    # ---- rule vocabulary: fields, machines, fstypes, io_uring ops ---------------------
    rule_fields: list[tuple[str, int]] = []
    machines: dict[str, str] = {}
    fstypes: dict[str, int] = {}
    uring_ops: dict[int, str] = {}
    if tree:
        lib = tree / "lib"
        for sym, name, _ in parse_s_entries(lib / "fieldtab.h"):
            try:
                rule_fields.append((name, pp.value(sym)))
            except Unresolvable:
                notes.append(f"fieldtab.h {name}: {sym} is not in the installed headers, left out")
        for names in groups.values():
            if names[0] in syscalls:
                machines.update((n, names[0]) for n in names)
        fstypes = {name: int(num, 0) for num, name, _ in parse_s_entries(lib / "fstypetab.h")}
        uring_ops = {int(num, 0): name for num, name, _ in parse_s_entries(lib / "uringop_table.h")}
        for table in ("rule fields", "machines", "fstypes", "io_uring ops"):
            won[table] = f"{tree_label} lib/" + {
                "rule fields": "fieldtab.h", "machines": "machinetab.h",
                "fstypes": "fstypetab.h", "io_uring ops": "uringop_table.h"}[table]

    # ---- errno / signals / capabilities ----------------------------------------------
    epp = Preprocessor()
    errno_files = [inc / "asm-generic" / "errno-base.h", inc / "asm-generic" / "errno.h"]
    for p in errno_files:
        epp.process(p)
        src_line(p, "errno names")
    errno_all = epp.constants(r"E[A-Z0-9]+")
    errno_names: dict[int, str] = {}
    for name, v in errno_all.items():
        errno_names.setdefault(v, name)

    spp = Preprocessor()
    sig_h = inc / "asm-generic" / "signal.h"
    spp.process(sig_h)
    src_line(sig_h, "signal names (generic numbering, as on x86/arm/s390/ppc)")
    sig_all = spp.constants(r"SIG[A-Z0-9]+")
    rtmin = sig_all.get("SIGRTMIN", 32)
    sig_all = {k: v for k, v in sig_all.items() if 0 < v < rtmin}
    signal_names: dict[int, str] = {}
    for name, v in sig_all.items():
        signal_names.setdefault(v, name)

    cpp = Preprocessor()
    cap_h = inc / "linux" / "capability.h"
    cpp.process(cap_h)
    src_line(cap_h, "capability names")
    caps_all = cpp.constants(r"CAP_[A-Z0-9_]+")
    last = caps_all.get("CAP_LAST_CAP")
    capabilities: dict[int, str] = {}
    for name, v in caps_all.items():
        if name != "CAP_LAST_CAP" and (last is None or 0 <= v <= last):
            capabilities.setdefault(v, name)

    # ---- field types -----------------------------------------------------------------
    src = None if args.no_audit_source else find_audit_source(
        args.audit_source or os.environ.get("AUDITPIPE_AUDIT_SRC"))
    src_label = source_version(src) if src else ""
    if tree and (tree / "auparse" / "typetab.h").exists() and not args.no_audit_source:
        candidates = [(src_label, {n: (t, c) for n, t, c in parse_typetab(src)} if src else {}),
                      (tree_label, {n: (t, c) for n, t, c in parse_typetab(tree)})]
        src_label, _ = newest("auparse typetab.h", candidates, notes)
        src = tree if src_label == tree_label else src
    type_ids, ids_from = auparse_type_ids(inc, py)
    if type_ids and ids_from:
        sources.append(ids_from)

    def probe_types(names: list[str]) -> dict[str, str] | None:
        """name -> type as the installed libauparse classifies it (None without the bindings)."""
        if not (py and type_ids and names):
            return None
        r = libaudit_probe(py, (0, -1), [], fields=names)
        if not r:
            return None
        return {n: type_ids.get(t, f"?{t}") for n, t in r["field_types"].items()}

    field_types: dict[str, str]
    if src:
        check_interpret_c(src)
        entries = parse_typetab(src)
        installed = probe_types(sorted({n for n, _, _ in entries})) or {}
        field_types = {}
        for name, typ, st in entries:
            # entries under #ifdef WITH_* (build options) are kept iff the installed libauparse
            # was built with them (it classifies them the same way); kept unchecked otherwise
            if st and installed and installed.get(name) != typ:
                notes.append(f"typetab.h {name} ({typ}, under {' '.join(st)}): not in the "
                             f"installed libauparse, left out")
                continue
            if installed and installed.get(name) != typ and name not in field_types:
                notes.append(f"typetab.h says {name} is {typ}, the installed libauparse says "
                             f"{installed.get(name)} (typetab.h kept)")
            field_types.setdefault(name, typ)
        conds = sorted({c for _, _, st in entries for c in st})
        if installed:
            notes.append("every typetab.h entry was checked against the installed libauparse "
                         + (f"(entries under {', '.join(conds)} included only if built in)"
                            if conds else ""))
        elif conds:
            notes.append(f"typetab.h entries under {', '.join(conds)} kept unchecked")
        won["field types"] = f"{src_label} auparse/typetab.h"
        sources.append(f"auparse/typetab.h from {src_label} (the newest of --audit-source / "
                       f"$AUDITPIPE_AUDIT_SRC / ~/.cache/auditpipe/audit-src and the tables "
                       f"tree): field name -> auparse type; auparse/interpret.c (when present): "
                       f"which types are hex-decoded")
    else:
        warn("no audit-userspace source (auparse/typetab.h): pass --audit-source DIR, set "
             "$AUDITPIPE_AUDIT_SRC, or run with --fetch-audit-source (needs a deb-src line). "
             "Falling back to probing the installed libauparse.")
        cands, lib = libauparse_field_candidates()
        got = probe_types(cands)
        if got is None:
            raise GenError("neither the audit source nor python3-audit (+ auparse type ids) is "
                           "available for field types")
        field_types = {n: t for n, t in got.items() if t != "unclassified"}
        won["field types"] = f"{lib} (probed)"
        sources.append(f"{lib} ({package_of(lib)}): field-like strings in it, classified by "
                       f"auparse AuParser.get_field_type() over one synthetic SYSCALL record "
                       f"(audit-userspace source not available: auparse's per-record type "
                       f"adjustments and build options are not visible)")
    encoded = sorted(n for n, t in field_types.items() if t in ENCODED_TYPES)

    # ---- K namespace names -----------------------------------------------------------
    short: dict[str, str] = {}
    clashes: list[str] = []
    for full in consts:
        s = re.sub(r"^_*AUDIT_", "", full)
        if not s.isidentifier() or s[0].isdigit():
            continue
        if s in short:
            # a plain AUDIT_X wins over __AUDIT_X
            if full.startswith("AUDIT_") and short[s].startswith("__"):
                clashes.append(short[s])
                short[s] = full
            else:
                clashes.append(full)
            continue
        short[s] = full
    if clashes:
        notes.append("not in K (short name taken): " + ", ".join(sorted(clashes)))

    vocab = {"RULE_FIELDS": rule_fields, "MACHINES": machines, "FSTYPES": fstypes,
             "URING_OPS": uring_ops}
    return render(args, sources, notes, consts, short, record_names, record_numbers, arch_names,
                  arch_numbers, syscalls, errno_names, errno_all, signal_names, sig_all,
                  capabilities, field_types, encoded, won, vocab)


def _fmt(obj) -> str:
    return pprint.pformat(obj, width=100, sort_dicts=True, compact=True)


def _hexdict(d: dict[int, str]) -> str:
    lines = ["{"]
    for k in sorted(d):
        lines.append(f"    {k:#010x}: {d[k]!r},")
    lines.append("}")
    return "\n".join(lines)


def _hexdict_rev(d: dict[str, int]) -> str:
    lines = ["{"]
    for k in sorted(d):
        lines.append(f"    {k!r}: {d[k]:#010x},")
    lines.append("}")
    return "\n".join(lines)


def _plain(d: dict, key_hex=False, val_hex=False) -> str:
    lines = ["{"]
    for k in sorted(d):
        v = d[k]
        ks = f"{k:#x}" if key_hex else repr(k)
        vs = f"{v:#x}" if val_hex else repr(v)
        lines.append(f"    {ks}: {vs},")
    lines.append("}")
    return "\n".join(lines)


def render(args, sources, notes, consts, short, record_names, record_numbers, arch_names,
           arch_numbers, syscalls, errno_names, errno_all, signal_names, sig_all, capabilities,
           field_types, encoded, won, vocab) -> str:
    out: list[str] = []
    w = out.append
    w("# GENERATED FILE - DO NOT EDIT BY HAND.")
    w("#")
    w(f"# Made by: .venv/bin/python {COMMAND}")
    w("# (regenerate after upgrading any package below; `--check` verifies this file is current)")
    w("#")
    w("# Sources:")
    for s in sources:
        w(_wrap(s))
    w("#")
    w("# Which source each table came from (the newest available: the one knowing the most):")
    for line in _won_lines(won):
        w(_wrap(line))
    if notes:
        w("#")
        w("# Notes from the generator:")
        for n in notes:
            w(_wrap(n))
    w('"""Audit interpretation tables generated from installed headers and tools. Do not edit;')
    w('see scripts/gen_tables.py and the header comment above."""')
    w("")
    w("# Full AUDIT_* names (linux/audit.h, libaudit.h) -> value.")
    w("AUDIT_CONSTANTS: dict[str, int] = " + _plain(consts))
    w("")
    w("# Short name (AUDIT_ prefix removed) -> full name, used to build tables.K.")
    w("K_NAMES: dict[str, str] = " + _plain(short))
    w("")
    w("# Record type number -> name as auditd writes it.")
    w("RECORD_TYPE_NAMES: dict[int, str] = " + _plain(record_names))
    w("")
    w("# Record type name -> number (header names and libaudit names, e.g. AA and APPARMOR).")
    w("RECORD_TYPE_NUMBERS: dict[str, int] = " + _plain(record_numbers))
    w("")
    w("# Message-type ranges (from libaudit.h / linux/audit.h).")
    for name in sorted(consts):
        if re.search(r"(^|_)(FIRST|LAST)(_|$)", name) and name.startswith("AUDIT_") \
                and consts["AUDIT_GET"] <= consts[name] <= consts["AUDIT_LAST_USER_MSG2"]:
            w(f"{name} = {consts[name]}")
    w("")
    w("# AUDIT_ARCH_* value -> arch name as ausyscall/auparse print it (header name otherwise).")
    w("ARCH_NAMES: dict[int, str] = " + _hexdict(arch_names))
    w("")
    w("ARCH_NUMBERS: dict[str, int] = " + _hexdict_rev(arch_numbers))
    w("")
    w("# arch name -> {syscall number: name}, from `ausyscall <arch> --dump`.")
    w("SYSCALLS: dict[str, dict[int, str]] = {")
    for arch in sorted(syscalls):
        w(f"    {arch!r}: {{")
        tbl = syscalls[arch]
        items = [f"{n}: {tbl[n]!r}," for n in sorted(tbl)]
        line = "       "
        for it in items:
            if len(line) + 1 + len(it) > 100:
                w(line)
                line = "       "
            line += " " + it
        if line.strip():
            w(line)
        w("    },")
    w("}")
    w("")
    w("ERRNO_NAMES: dict[int, str] = " + _plain(errno_names))
    w("")
    w("ERRNO_NUMBERS: dict[str, int] = " + _plain(errno_all))
    w("")
    w("SIGNAL_NAMES: dict[int, str] = " + _plain(signal_names))
    w("")
    w("SIGNAL_NUMBERS: dict[str, int] = " + _plain(sig_all))
    w("")
    w("CAPABILITIES: dict[int, str] = " + _plain(capabilities))
    w("")
    w("# field name -> auparse interpretation type (AUPARSE_TYPE_* lower-cased, prefix removed).")
    w("FIELD_TYPES: dict[str, str] = " + _plain(field_types))
    w("")
    w("# auparse types whose values are hex-encoded untrusted strings.")
    w(f"ENCODED_TYPES: frozenset[str] = frozenset({_fmt(sorted(ENCODED_TYPES))})")
    w("")
    w("# field names of those types (the value is hex when it held special characters).")
    w("ENCODED_FIELDS: frozenset[str] = frozenset(" + _plain_list(encoded) + ")")
    w("")
    w("# -F field names in libaudit's order (the first name of a number is the one auditctl -l")
    w("# prints), uname machine -> syscall table, -F fstype names, io_uring op names.")
    w("RULE_FIELDS: tuple[tuple[str, int], ...] = " + _tuple(vocab["RULE_FIELDS"]))
    w("")
    w("MACHINES: dict[str, str] = " + _plain(vocab["MACHINES"]))
    w("")
    w("FSTYPES: dict[str, int] = " + _plain(vocab["FSTYPES"], val_hex=True))
    w("")
    w("URING_OPS: dict[int, str] = " + _plain(vocab["URING_OPS"]))
    w("")
    w("# table -> the source it came from")
    w("TABLE_SOURCES: dict[str, str] = " + _plain(won))
    w("")
    w("PACKAGE_SOURCES: tuple[str, ...] = " + _tuple(sources))
    return "\n".join(out) + "\n"


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, width=100, initial_indent="#   - ",
                                   subsequent_indent="#       ", break_on_hyphens=False,
                                   break_long_words=False))


def _won_lines(won: dict[str, str]) -> list[str]:
    """'syscalls aarch64, syscalls x86_64, ...: SOURCE' lines, one per source."""
    by_source: dict[str, list[str]] = {}
    for table, source in won.items():
        by_source.setdefault(source, []).append(table)
    return [f"{', '.join(sorted(tables))}: {source}" for source, tables in sorted(by_source.items())]


def _plain_list(items) -> str:
    lines = ["["]
    for it in sorted(items):
        lines.append(f"    {it!r},")
    lines.append("]")
    return "\n".join(lines)


def _tuple(items) -> str:
    lines = ["("]
    for it in items:
        lines.append(f"    {it!r},")
    lines.append(")")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", default=str(DEFAULT_OUT))
    ap.add_argument("--include-dir", default="/usr/include")
    ap.add_argument("--ausyscall", default=None)
    ap.add_argument("--audit-python", default=None,
                    help="a Python that can `import audit, auparse` (python3-audit)")
    ap.add_argument("--audit-source", default=None,
                    help="extracted audit-userspace source tree (has auparse/typetab.h); "
                         "default $AUDITPIPE_AUDIT_SRC or ~/.cache/auditpipe/audit-src/audit-*")
    ap.add_argument("--tables-src", default=None,
                    help="libaudit's current table tree (lib/*_table.h ...); default "
                         "$AUDITPIPE_TABLES_SRC or ../shared/tables-src/audit-userspace")
    ap.add_argument("--no-audit-source", action="store_true",
                    help="ignore the audit source even if present (use the libauparse probe)")
    ap.add_argument("--fetch-audit-source", action="store_true",
                    help="apt-get source --download-only audit into ~/.cache/auditpipe/audit-src")
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 if --out differs from what would be generated")
    args = ap.parse_args(argv)
    try:
        if args.fetch_audit_source and not find_audit_source(
                args.audit_source or os.environ.get("AUDITPIPE_AUDIT_SRC")):
            fetch_audit_source()
        text = build(args)
    except GenError as e:
        warn(str(e))
        return 2
    out = Path(args.out)
    if args.check:
        current = out.read_text() if out.exists() else ""
        if current != text:
            warn(f"{out} is out of date (rerun {COMMAND})")
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
