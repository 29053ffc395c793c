#!/usr/bin/env bash
# Set up (see setup.sh) and start the live collector with the default configuration: audit events
# from the kernel, as ECS JSON lines, into ./auditpipe-events.jsonl and a Parquet lake under
# ./auditpipe-data (`auditpipe query`). Needs root. Ctrl-C stops it and puts the kernel's audit
# settings back.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/auditpipe run "$@"
