#!/usr/bin/env bash
# Set up everything auditpipe needs on a fresh Debian machine: system packages (when root), a
# virtualenv in .venv with the project and its test dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  need=()
  command -v auditctl >/dev/null 2>&1 || need+=(auditd)        # auditctl/ausearch/ausyscall: tests compare against them
  command -v laurel   >/dev/null 2>&1 || need+=(laurel)        # peer for tests and benchmarks
  dpkg -s python3-audit >/dev/null 2>&1 || need+=(python3-audit)  # table generator (scripts/gen_tables.py)
  dpkg -s libaudit-dev >/dev/null 2>&1 || need+=(libaudit-dev)    # libaudit.h for the table generator
  dpkg -s libauparse-dev >/dev/null 2>&1 || need+=(libauparse-dev)  # auparse-defs.h, likewise
  command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)  # tests verify the service unit
  command -v chromium >/dev/null 2>&1 || need+=(chromium)      # renders `auditpipe report --html` headless in the tests
  command -v java     >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)  # `query --engine spark` (PySpark local mode)
  # tools the detection kernel tests run as the activities Sigma's auditd rules describe
  command -v nft      >/dev/null 2>&1 || need+=(nftables)
  command -v insmod   >/dev/null 2>&1 || need+=(kmod)
  command -v nc       >/dev/null 2>&1 || need+=(netcat-openbsd)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    # never let a package start a service here (auditd would register as the audit daemon)
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]'
# the compiled hot path (optional: plain Python when it cannot be built)
bash scripts/build_compiled.sh
