#!/usr/bin/env bash
# bench-watch.sh - what the watcher does while N routes are applied under it.
#
# In a fresh network namespace: apply a small manifest (the engine starts
# and watches), then apply one with N routes (default 10,000) from another
# file, wait until the engine has been idle for 2 s, and print the engine's
# CPU time over that, and the watcher's counters from `status --output json`
# (`engine.watch_counters`: rtnetlink messages received, state file reads).
# With STRACE=1 the engine's opens of the state file are also counted with
# strace (which works with binaries that have no counters, too). Repeats
# ROUNDS times (default 3).
#
#   sudo examples/bench-watch.sh                      # builds target/release/netman
#   sudo NETMAN_BIN=/path/to/netman N=2000 examples/bench-watch.sh
#
# Everything happens inside a namespace this script creates and deletes
# (also on failure or Ctrl-C); nothing is sent anywhere.
set -Eeuo pipefail

N=${N:-10000}
ROUNDS=${ROUNDS:-3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${NETMAN_BIN:-} ]]; then
  (cd "$HERE" && cargo build --release --quiet)
  NETMAN_BIN=$HERE/target/release/netman
fi
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 2; }
command -v jq >/dev/null || { echo "needs jq" >&2; exit 2; }
[[ -z ${STRACE:-} ]] || command -v strace >/dev/null || { echo "needs strace" >&2; exit 2; }

WORK=$(mktemp -d /tmp/netman-bench-watch.XXXXXX)
NS=nmbw$$
cleanup() {
  ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

(umask 077; "$NETMAN_BIN" genkey >"$WORK/k")
head() { printf 'name: bw\ninterface:\n  name: nm0\n  addresses: [10.255.0.1/24]\n  private_key_file: %s\n' "$WORK/k"; }
head >"$WORK/small.yaml"
{
  head
  echo "routes:"
  awk -v n="$N" 'BEGIN { for (i = 0; i < n; i++) printf "  - to: %d.%d.%d.0/24\n", 10 + int(i / 65536), int(i / 256) % 256, i % 256 }'
} >"$WORK/big.yaml"
nm() { ip netns exec "$NS" "$NETMAN_BIN" --state-dir "$WORK/state" "$@"; }

for round in $(seq "$ROUNDS"); do
  ip netns add "$NS"
  nm apply "$WORK/small.yaml" >/dev/null
  sleep 1
  pid=$(nm status bw --output json | jq '.[0].engine.pid')
  cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
  if [[ -n ${STRACE:-} ]]; then
    strace -qq -f -e trace=openat -o "$WORK/strace" -p "$(ls "/proc/$pid/task" | paste -sd, -)" 2>/dev/null &
    spid=$!
    sleep 1
  fi
  c0=$(cpu)
  t0=$(date +%s%N)
  nm apply "$WORK/big.yaml" >/dev/null
  t1=$(date +%s%N)
  last=$(cpu); idle=0
  for _ in $(seq 1200); do
    sleep 0.5
    now=$(cpu)
    if [[ $now == "$last" ]]; then idle=$((idle + 1)); else idle=0; fi
    last=$now
    [[ $idle -ge 4 ]] && break
  done
  c1=$(cpu)
  opens=""
  if [[ -n ${STRACE:-} ]]; then
    kill "$spid"; wait "$spid" 2>/dev/null || true
    opens=" state_file_opens=$(grep -c '/bw.json", O_RDONLY' "$WORK/strace" || true)"
  fi
  counters=$(nm status bw --output json | jq -c '.[0].engine.watch_counters')
  echo "round $round: routes=$N apply_ms=$(( (t1 - t0) / 1000000 )) engine_cpu_s=$(echo "scale=2; ($c1 - $c0) / $(getconf CLK_TCK)" | bc) watch_counters=$counters$opens"
  nm down >/dev/null
  ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$NS"
done
