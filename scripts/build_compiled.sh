#!/usr/bin/env bash
# Compile the typed hot path (parse → reassemble → pipeline → coalesced/JSON) with mypyc, in
# place: each module's .so sits next to its .py and is imported first. Optional: when the
# compiler or the Python headers are missing, or the build fails, the .so files are removed and
# the same modules run as plain Python (AUDITPIPE_PURE=1 forces that at run time; the list of
# modules is scripts/compiled_modules.txt). Safe to run again. Every module is byte-compiled
# first, as `pip install` does: under PYTHONDONTWRITEBYTECODE an editable install would otherwise
# compile every module from source at each start (0.07 CPU-s of `parse`'s start-up, measured).
set -uo pipefail
cd "$(dirname "$0")/../src"
PY=../.venv/bin/python
mapfile -t modules < <(grep -v '^#' ../scripts/compiled_modules.txt | grep .)
clean() { find auditpipe -name '*.so' -delete; rm -f ./*__mypyc*.so; rm -rf build .mypy_cache; }
clean
"$PY" -m compileall -q auditpipe >/dev/null
if [ "${AUDITPIPE_NO_COMPILE:-}" = 1 ]; then echo "build_compiled: skipped (AUDITPIPE_NO_COMPILE=1)" >&2; exit 0; fi
if ! command -v gcc >/dev/null 2>&1 || ! "$PY" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
  echo "build_compiled: no gcc or no Python headers: the pure-Python modules are used" >&2; exit 0
fi
if ! ../.venv/bin/mypyc "${modules[@]}" >/tmp/auditpipe-mypyc.log 2>&1; then
  echo "build_compiled: mypyc failed (see /tmp/auditpipe-mypyc.log): the pure-Python modules are used" >&2
  clean; exit 0
fi
rm -rf build .mypy_cache
echo "build_compiled: ${#modules[@]} modules compiled with mypyc" >&2
