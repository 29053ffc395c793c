"""The argument vector of an exec, from its EXECVE records and its PROCTITLE.

The kernel splits an argument longer than its buffer into `aN[0]`, `aN[1]`, … (announced by
`aN_len`), possibly across several EXECVE records, and hex-encodes each piece on its own. The
pieces are joined as bytes, so a UTF-8 character cut between two pieces comes back whole.
"""

from __future__ import annotations

__all__ = ["execve_argv", "proctitle_argv"]


def _rejoin(pieces: list[str]) -> str:
    joined = "".join(pieces)
    if joined.isascii():
        return joined
    return joined.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")


def execve_argv(records) -> tuple[int | None, list[str]]:
    """(argc, argv) from the EXECVE records of one event (in arrival order).

    Arguments the log does not hold (records lost, or argc larger than what was logged) are
    left out rather than invented; `argc` is what the kernel said.
    """
    merged: dict = {}
    for r in records:
        merged.update(r.fields)
    argc_text = merged.get("argc")
    argc = int(argc_text) if isinstance(argc_text, str) and argc_text.isascii() and argc_text.isdigit() else None
    argv = []
    i = 0
    limit = argc if argc is not None else len(merged)
    while i < limit:
        key = f"a{i}"
        val = merged.get(key)
        if val is not None:
            argv.append(val)
        else:
            pieces = []
            j = 0
            while True:
                piece = merged.get(f"{key}[{j}]")
                if piece is None:
                    break
                pieces.append(piece)
                j += 1
            if not pieces:
                if argc is None:
                    break
                i += 1
                continue
            argv.append(_rejoin(pieces))
        i += 1
    return argc, argv


def proctitle_argv(value: str) -> list[str]:
    """A decoded `proctitle` (NUL-separated, truncated to 128 bytes by the kernel) → arguments."""
    if value.endswith("\0"):
        value = value.rstrip("\0")
    return value.split("\0")
