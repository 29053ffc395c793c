#!/usr/bin/env bash
# Live overhead: `auditpipe run` (ECS to a file) beside auditd -f with laurel as its plugin, under
# the same exec load, in one run, with ../shared/bench/live_overhead.py.
#
#   sudo bash benchmarks/live_overhead.sh [RATE] [SECONDS] [ROUNDS] (default 1000 15 3: ROUNDS
#        pairs, auditpipe and auditd + laurel alternating which goes first; then the CPU ratio
#        auditpipe / (auditd + laurel) per round, min/median/max, on CPU-seconds and on CPU per
#        event written (the loader may fall short of RATE on a busy machine, and other
#        processes' execs are audited too); AUDITPIPE_EXTRA='[process]\nenabled = false' adds
#        lines to auditpipe's config)
#   sudo bash benchmarks/live_overhead.sh --sweep 2000 3000 4000   (auditpipe alone at each rate)
#   sudo bash benchmarks/live_overhead.sh --process [RATE] [ROUNDS] (auditpipe alone, [process]
#        enabled = true vs false, alternating, ROUNDS each (default 1000 3); then min/median CPU
#        of each and the ratio on/off, also per event written (when load holds execload below
#        its rate the runs differ in events); PROCESS_EXTRA='read_proc = false' adds lines to
#        the on run's [process] section)
#
# Everything it writes goes to a temporary directory (execload is built by live_overhead.py into
# /tmp, never into the repo). It takes the kernel-test lock so it never runs beside the kernel
# tests, refuses to run when an audit daemon is registered, sets backlog_limit 8192 for the auditd
# run too (auditpipe sets it itself; Debian's rules.d does the same for auditd), and puts
# backlog_limit, enabled and the rule list back when it ends. Prints one JSON line per run plus
# the number of events each wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${AUDITPIPE_SHARED:-$ROOT/../shared}
BENCH=$SHARED/bench/live_overhead.py
LOCK=${AUDITPIPE_KERNEL_LOCK:-/run/lock/auditpipe-kernel-tests.lock}
AUDITPIPE=$ROOT/.venv/bin/auditpipe

[ "$(id -u)" = 0 ] || { echo "live_overhead: needs root" >&2; exit 1; }
[ -f "$BENCH" ] || { echo "live_overhead: $BENCH not found" >&2; exit 1; }
[ -x "$AUDITPIPE" ] || { echo "live_overhead: run scripts/setup.sh first" >&2; exit 1; }

SWEEP=()
PROCESS_ROUNDS=0
if [ "${1:-}" = --sweep ]; then shift; SWEEP=("$@"); RATE=0; SECS=${SECS:-15}
elif [ "${1:-}" = --process ]; then RATE=${2:-1000}; PROCESS_ROUNDS=${3:-3}; SECS=${SECS:-15}
else RATE=${1:-1000}; SECS=${2:-15}; ROUNDS=${3:-3}; fi

exec 9>>"$LOCK"
flock -w 600 9 || { echo "live_overhead: $LOCK busy" >&2; exit 1; }

status() { auditctl -s | awk -v k="$1" '$1 == k {print $2}'; }
[ "$(status pid)" = 0 ] || { echo "live_overhead: an audit daemon is registered (pid $(status pid)); stop it first" >&2; exit 1; }
[ "$(auditctl -l)" = "No rules" ] || { echo "live_overhead: rules are loaded; this benchmark replaces the rule list, so it runs only on an empty one" >&2; exit 1; }

WORK=$(mktemp -d /tmp/auditpipe-live.XXXXXX)
BACKLOG0=$(status backlog_limit)
ENABLED0=$(status enabled)
cleanup() {
  auditctl -D >/dev/null 2>&1 || true
  auditctl -b "$BACKLOG0" >/dev/null 2>&1 || true
  auditctl -e "$ENABLED0" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- auditpipe: ECS JSON lines to a file, the benchmark's own rule (no rule files) ---------------
cat > "$WORK/auditpipe.toml" <<EOF
[rules]
files = []
[normalize]
format = "ecs"
[[outputs]]
path = "$WORK/auditpipe-events.jsonl"
max_bytes = 0
[status]
path = "$WORK/auditpipe-status.json"
EOF
[ -n "${AUDITPIPE_EXTRA:-}" ] && printf '%b\n' "$AUDITPIPE_EXTRA" >> "$WORK/auditpipe.toml"

run_auditpipe() {  # RATE [CONFIG]
  rm -f "$WORK/auditpipe-events.jsonl"
  local res
  res=$(python3 "$BENCH" --rate "$1" --seconds "$SECS" -- "$AUDITPIPE" run --config "${2:-$WORK/auditpipe.toml}")
  local n; n=$(wc -l < "$WORK/auditpipe-events.jsonl")
  local drops; drops=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["counters"]; print(c["userspace_drops"], c["enobufs"], c["serial_gaps"])' "$WORK/auditpipe-status.json")
  echo "{\"collector\": \"auditpipe run (ecs)\", \"result\": $res, \"events_in_output\": $n, \"userspace_drops_enobufs_serial_gaps\": \"$drops\"}"
}

if [ "$PROCESS_ROUNDS" -gt 0 ]; then  # the process table's cost: the same run with it on and off
  for on in true false; do
    extra=; [ "$on" = true ] && extra=${PROCESS_EXTRA:-}
    { cat "$WORK/auditpipe.toml"; printf '[process]\nenabled = %s\nstate_dir = "%s"\n%s\n' "$on" "$WORK/state-$on" "$extra"; } \
      > "$WORK/process-$on.toml"
  done
  for i in $(seq "$PROCESS_ROUNDS"); do
    for on in true false; do
      run_auditpipe "$RATE" "$WORK/process-$on.toml" | sed "s/^{/{\"process\": $on, /" | tee -a "$WORK/process.jsonl"
    done
  done
  python3 - "$WORK/process.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
cpu = {on: [r["result"]["cpu_s"] for r in rows if r["process"] is on] for on in (True, False)}
fig = {on: (min(v), statistics.median(v)) for on, v in cpu.items()}
# per event written: a loaded machine can hold execload below its rate in one run and not the next
per = {on: [1e6 * r["result"]["cpu_s"] / max(r["events_in_output"], 1) for r in rows if r["process"] is on]
       for on in (True, False)}
pfig = {on: (min(v), statistics.median(v), max(v)) for on, v in per.items()}
print(json.dumps({"process_on_cpu_s": cpu[True], "process_off_cpu_s": cpu[False],
                  "ratio_min": round(fig[True][0] / fig[False][0], 3),
                  "ratio_median": round(fig[True][1] / fig[False][1], 3),
                  "us_per_event_on": [round(x, 1) for x in per[True]],
                  "us_per_event_off": [round(x, 1) for x in per[False]],
                  "per_event_ratio_min": round(pfig[True][0] / pfig[False][0], 3),
                  "per_event_ratio_median": round(pfig[True][1] / pfig[False][1], 3)}))
PY
  exit 0
fi

if [ ${#SWEEP[@]} -gt 0 ]; then
  for r in "${SWEEP[@]}"; do run_auditpipe "$r"; done
  exit 0
fi

# --- auditd -f with laurel as its plugin -------------------------------------------------------
mkdir -p "$WORK/auditd/plugins.d" "$WORK/laurel"
chown _laurel "$WORK/laurel" 2>/dev/null || true
chmod 755 "$WORK"
cat > "$WORK/auditd/auditd.conf" <<EOF
local_events = yes
write_logs = yes
log_file = $WORK/auditd/audit.log
log_group = root
log_format = RAW
flush = NONE
freq = 50
max_log_file = 100
num_logs = 2
priority_boost = 4
name_format = NONE
max_log_file_action = ROTATE
space_left = 75
space_left_action = IGNORE
admin_space_left = 50
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
tcp_listen_queue = 5
tcp_max_per_addr = 1
tcp_client_max_idle = 0
distribute_network = no
q_depth = 2000
overflow_action = SYSLOG
max_restarts = 10
plugin_dir = $WORK/auditd/plugins.d
end_of_event_timeout = 2
EOF
chmod 600 "$WORK/auditd/auditd.conf"
cat > "$WORK/auditd/plugins.d/laurel.conf" <<EOF
active = yes
direction = out
type = always
format = string
path = /usr/sbin/laurel
args = --config $WORK/laurel.toml
EOF
chmod 600 "$WORK/auditd/plugins.d/laurel.conf"
cat > "$WORK/laurel.toml" <<EOF
directory = "$WORK/laurel"
user = "_laurel"
statusreport-period = 0
[auditlog]
file = "audit.log"
size = 1000000000
generations = 2
[transform]
execve-argv = [ "array" ]
[translate]
universal = false
user-db = false
[enrich]
pid = true
execve-env = [ "LD_PRELOAD", "LD_LIBRARY_PATH" ]
container = true
script = true
EOF

run_auditd() {  # RATE
  rm -f "$WORK"/laurel/audit.log*
  auditctl -b 8192 >/dev/null
  local res n
  res=$(python3 "$BENCH" --rate "$1" --seconds "$SECS" -- /usr/sbin/auditd -f -c "$WORK/auditd")
  n=$(cat "$WORK"/laurel/audit.log* 2>/dev/null | wc -l)
  auditctl -b "$BACKLOG0" >/dev/null
  echo "{\"collector\": \"auditd -f + laurel\", \"result\": $res, \"events_in_output\": $n}"
}

for i in $(seq "$ROUNDS"); do  # pairwise, alternating which runs first
  if [ $((i % 2)) = 1 ]; then order="auditpipe auditd"; else order="auditd auditpipe"; fi
  for c in $order; do "run_$c" "$RATE" | sed "s/^{/{\"round\": $i, /" | tee -a "$WORK/pairs.jsonl"; done
done
python3 - "$WORK/pairs.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def fig(values):
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3)}
ratio_cpu, ratio_event = [], []
for r in sorted({row["round"] for row in rows}):
    ap, ad = (next(x for x in rows if x["round"] == r and x["collector"].startswith(name))
              for name in ("auditpipe", "auditd"))
    ratio_cpu.append(ap["result"]["cpu_s"] / ad["result"]["cpu_s"])
    ratio_event.append((ap["result"]["cpu_s"] / max(ap["events_in_output"], 1))
                       / (ad["result"]["cpu_s"] / max(ad["events_in_output"], 1)))
print(json.dumps({"rounds": len(ratio_cpu), "ratio_cpu_s": fig(ratio_cpu),
                  "ratio_cpu_per_event": fig(ratio_event),
                  "kernel_lost": sum(x["result"]["kernel_lost"] for x in rows)}))
PY
