"""EXECVE argv and PROCTITLE identical to laurel's on the shared corpora.

laurel (from Debian) runs over the same file; it writes control bytes, `%` and bytes that are not
UTF-8 as `%XX`, so its strings are percent-decoded to bytes before comparing with ours (which
carry such bytes as they are, see docs/formats.md)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from conftest import shared_path
from helpers import coalesce_file

LAUREL = shutil.which("laurel")
pytestmark = pytest.mark.skipif(LAUREL is None, reason="laurel not installed (apt-get install laurel)")

_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")

CONFIG = """directory = "{dir}"
user = "root"
statusreport-period = 0
input = "stdin"
[auditlog]
file = "out.log"
size = 1000000000
generations = 2
[transform]
execve-argv = ["array"]
[translate]
universal = false
user-db = false
drop-raw = false
[enrich]
pid = false
execve-env = []
container = false
systemd = false
script = false
"""


def laurel_events(corpus, tmp_path) -> dict:
    (tmp_path / "laurel.toml").write_text(CONFIG.format(dir=tmp_path))
    with open(corpus, "rb") as f:
        subprocess.run([LAUREL, "-c", str(tmp_path / "laurel.toml")], stdin=f, check=True, capture_output=True)
    out = {}
    for line in (tmp_path / "out.log").read_bytes().split(b"\n"):
        if line:
            ev = json.loads(line)
            out[(ev.get("NODE"), ev["ID"])] = ev
    return out


def unlaurel(s: str) -> bytes:
    return _PCT.sub(lambda m: bytes([int(m.group(1), 16)]), s.encode("utf-8", "surrogateescape"))


def as_bytes(values) -> list[bytes]:
    return [v.encode("utf-8", "surrogateescape") for v in values]


@pytest.mark.parametrize("name", ["enriched.log", "raw-node.log"])
def test_argv_and_proctitle_match_laurel(name, tmp_path):
    corpus = shared_path("corpus", name)
    theirs = laurel_events(corpus, tmp_path)
    docs, _ = coalesce_file(corpus)
    ours = {(d.get("node"), d["id"]): d for d in docs}
    execs = titles = 0
    for key, ev in theirs.items():
        if "EXECVE" in ev:
            execs += 1
            assert as_bytes(ours[key]["execve"]["argv"]) == [unlaurel(a) for a in ev["EXECVE"]["ARGV"]], key
        if "PROCTITLE" in ev and "ARGV" in ev["PROCTITLE"]:
            titles += 1
            assert as_bytes(ours[key]["proctitle"]) == [unlaurel(a) for a in ev["PROCTITLE"]["ARGV"]], key
    assert execs > 400 and titles > 400
    # the 9 KB segmented arguments are in there and came through whole
    longest = max((len(a) for d in docs if "execve" in d for a in d["execve"]["argv"]), default=0)
    assert longest >= 9000
