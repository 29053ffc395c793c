"""The status file `auditpipe run` keeps and `auditpipe status` reads: one JSON object, replaced
atomically."""

from __future__ import annotations

import logging
import os

import orjson

__all__ = ["StatusWriter", "read_status_file"]

log = logging.getLogger("auditpipe.run")


class StatusWriter:
    """Writes the agent's status as one JSON object, atomically (temp file + rename)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._warned = False

    def write(self, doc: dict) -> bool:
        if not self.path:
            return False
        tmp = f"{self.path}.tmp.{os.getpid()}"
        try:
            d = os.path.dirname(self.path)
            if d:
                os.makedirs(d, mode=0o755, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
            return True
        except OSError as e:
            if not self._warned:
                log.warning("cannot write the status file %s: %s", self.path, e)
                self._warned = True
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False


def read_status_file(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError):
        return None
