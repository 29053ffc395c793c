"""Lexical layer of auditctl rules files: splitting a line into words, getopt over the words,
C-style numbers, and the control options (-D -b -e -f -r --backlog_wait_time ...)."""

from __future__ import annotations

import re


class Problem(Exception):
    """One problem with a line; the compiler adds file and line number."""


def split_line(line: str) -> list[str]:
    """Split on blanks. ``\\ `` and ``\\\\`` escape as in auditctl; '...' and "..." group."""
    tokens: list[str] = []
    cur: list[str] = []
    has, quote, i = False, "", 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == quote:
                quote = ""
            else:
                cur.append(c)
        elif c in "'\"":
            quote, has = c, True
        elif c == "\\" and i + 1 < len(line) and line[i + 1] in " \\":
            cur.append(line[i + 1])
            has = True
            i += 1
        elif c in " \t":
            if has:
                tokens.append("".join(cur))
                cur, has = [], False
        else:
            cur.append(c)
            has = True
        i += 1
    if quote:
        raise ValueError(f"unterminated {quote} quote")
    if has:
        tokens.append("".join(cur))
    return tokens


_C_INT = re.compile(r"(-?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def c_number(s: str) -> int | None:
    """C ``strtol(s, NULL, 0)`` over the whole string: 0x hex, leading-0 octal, decimal."""
    m = _C_INT.fullmatch(s)
    if not m:
        return None
    digits = m.group(2)
    n = int(digits, 16) if digits[:2].lower() == "0x" else int(digits, 8) if len(digits) > 1 \
        and digits[0] == "0" else int(digits)
    return -n if m.group(1) else n


def u32(n: int, what: str) -> int:
    if not -(1 << 31) <= n <= 0xFFFFFFFF:
        raise Problem(f"{what}: {n} does not fit in 32 bits")
    return n & 0xFFFFFFFF


# options (getopt "hicslDvtC:e:f:r:b:a:A:d:S:F:m:R:w:W:k:p:q:") and long options
_WITH_ARG = set("CefrbaAdSFmRwWkpq")
_NO_ARG = set("hicslDvt")
_LONG = {"loginuid-immutable": False, "backlog_wait_time": True, "reset-lost": False,
         "reset_backlog_wait_time_actual": False, "signal": True}
NOT_IN_FILES = {"h": "-h (help)", "s": "-s (status)", "l": "-l (list)", "v": "-v (version)",
                 "t": "-t (trim)", "m": "-m (user message)", "R": "-R (nested rule files)",
                 "q": "-q (make equivalent)", "signal": "--signal"}
CONTROL_OPTS = {"D", "e", "f", "r", "b", "i", "c", "loginuid-immutable", "backlog_wait_time",
                 "reset-lost", "reset_backlog_wait_time_actual"}


def options(tokens: list[str]) -> list[tuple[str, str | None]]:
    """getopt_long over one line's tokens; a stray word is reported as an error."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.startswith("--") and len(t) > 2:
            name, eq, val = t[2:].partition("=")
            if name not in _LONG:
                raise Problem(f"unknown option {t}")
            if _LONG[name] and not eq:
                i += 1
                if i >= len(tokens):
                    raise Problem(f"option --{name} needs a value")
                val = tokens[i]
            out.append((name, val if _LONG[name] else None))
        elif t.startswith("-") and len(t) > 1:
            opt = t[1]
            if opt in _WITH_ARG:
                if len(t) > 2:
                    val = t[2:]
                else:
                    i += 1
                    if i >= len(tokens):
                        raise Problem(f"option -{opt} needs a value")
                    val = tokens[i]
                out.append((opt, val))
            elif opt in _NO_ARG and len(t) == 2:
                out.append((opt, None))
            else:
                raise Problem(f"unknown option {t}")
        else:
            raise Problem(f"unexpected argument {t!r} (not after an option)")
        i += 1
    return out


def control(opt: str, val: str | None) -> tuple[str, int | str | None]:
    if opt == "D":
        return "delete_all", None
    if opt in ("e", "f"):
        if val not in ("0", "1", "2"):
            raise Problem(f"-{opt} must be 0, 1 or 2, was {val!r}")
        return ("enabled" if opt == "e" else "failure"), int(val)
    if opt in ("r", "b", "backlog_wait_time"):
        n = c_number(val or "") if (val or "")[:1].isdigit() else None
        if n is None or n > 0xFFFFFFFF:
            raise Problem(f"{'-' + opt if len(opt) == 1 else '--' + opt} needs a number, "
                           f"was {val!r}")
        return {"r": "rate_limit", "b": "backlog_limit"}.get(opt, opt), n
    return {"i": "ignore_errors", "c": "continue_on_error",
            "loginuid-immutable": "loginuid_immutable", "reset-lost": "reset_lost"}.get(
        opt, opt), None
