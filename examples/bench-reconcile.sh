#!/usr/bin/env bash
# bench-reconcile.sh - netman's reconciler against `ip -batch`, side by side.
#
# Two manifests, each applied in a fresh network namespace (root needed):
#   routes10k : one interface and 10,000 routes
#   peers1k   : 1,000 peers x 10 allowed IPs (10,000 routes) - the engine
#               also gets 1,000 peers configured
# For each: the time of `ip -batch` adding the same routes to a TUN device
# (the baseline), of `netman apply` (link, addresses, routes, and starting
# the engine), of a no-op re-apply, of `netman diff`, and of `netman down`.
# Medians of ROUNDS runs (default 5). Also the engine's RSS with the
# manifest applied.
#
#   sudo examples/bench-reconcile.sh                 # builds target/release/netman
#   sudo NETMAN_BIN=/path/to/netman ROUNDS=3 examples/bench-reconcile.sh
#
# Everything happens inside namespaces this script creates and deletes
# (also on failure or Ctrl-C); nothing is sent anywhere.
set -Eeuo pipefail

ROUNDS=${ROUNDS:-5}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${NETMAN_BIN:-} ]]; then
  (cd "$HERE" && cargo build --release --quiet)
  NETMAN_BIN=$HERE/target/release/netman
fi
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 2; }

WORK=$(mktemp -d /tmp/netman-bench-reconcile.XXXXXX)
NS=nmrb$$
cleanup() {
  ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

now_ns() { date +%s%N; }
ms() { echo "scale=1; ($2 - $1) / 1000000" | bc; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }

umask 077
"$NETMAN_BIN" genkey >"$WORK/own.key"

write_routes10k() {
  {
    echo "name: bench"
    echo "interface:"
    echo "  name: nmb0"
    echo "  addresses: [10.255.0.1/24]"
    echo "  private_key_file: $WORK/own.key"
    echo "peers: []"
    echo "routes:"
    for i in $(seq 0 9999); do echo "  - to: 10.$((i / 256)).$((i % 256)).0/24"; done
  } >"$WORK/routes10k.yaml"
  for i in $(seq 0 9999); do echo "route add 10.$((i / 256)).$((i % 256)).0/24 dev nmb0"; done >"$WORK/routes10k.batch"
}

write_peers1k() {
  python3 - "$WORK" <<'EOF'
import base64, os, sys
work = sys.argv[1]
lines = ["name: bench", "interface:", "  name: nmb0", "  addresses: [10.255.0.1/24]",
         f"  private_key_file: {work}/own.key", "peers:"]
batch = []
for p in range(1000):
    key = base64.b64encode(os.urandom(32)).decode()
    ips = []
    for j in range(10):
        n = p * 10 + j
        ips.append(f"10.{n // 256}.{n % 256}.0/24")
        batch.append(f"route add 10.{n // 256}.{n % 256}.0/24 dev nmb0")
    lines += [f"  - name: p{p}", f'    public_key: "{key}"', f"    allowed_ips: [{', '.join(ips)}]"]
open(f"{work}/peers1k.yaml", "w").write("\n".join(lines) + "\n")
open(f"{work}/peers1k.batch", "w").write("\n".join(batch) + "\n")
EOF
}

fresh_ns() {
  ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  rm -rf "$WORK/state"
}

nm() { ip netns exec "$NS" env NETMAN_STATE_DIR="$WORK/state" "$NETMAN_BIN" "$@"; }

bench_case() {
  local case=$1
  local ipb=() apply=() noop=() diff=() down=() rss=""
  for _ in $(seq "$ROUNDS"); do
    fresh_ns
    ip -n "$NS" tuntap add dev nmb0 mode tun
    ip -n "$NS" link set nmb0 up
    local t0 t1
    t0=$(now_ns); ip -n "$NS" -batch "$WORK/$case.batch"; t1=$(now_ns)
    ipb+=("$(ms "$t0" "$t1")")

    fresh_ns
    t0=$(now_ns); nm apply "$WORK/$case.yaml" >/dev/null; t1=$(now_ns)
    apply+=("$(ms "$t0" "$t1")")
    t0=$(now_ns); out=$(nm apply "$WORK/$case.yaml"); t1=$(now_ns)
    [[ $out == "no changes" ]] || { echo "re-apply was not a no-op: $out" >&2; exit 1; }
    noop+=("$(ms "$t0" "$t1")")
    t0=$(now_ns); nm diff "$WORK/$case.yaml" >/dev/null; t1=$(now_ns)
    diff+=("$(ms "$t0" "$t1")")
    local pid
    pid=$(nm status --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["engine"]["pid"])')
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    t0=$(now_ns); nm down >/dev/null; t1=$(now_ns)
    down+=("$(ms "$t0" "$t1")")
  done
  local m_ipb m_apply
  m_ipb=$(printf '%s\n' "${ipb[@]}" | median)
  m_apply=$(printf '%s\n' "${apply[@]}" | median)
  printf '| %-9s | %8s | %8s | %5s | %8s | %8s | %8s | %8s |\n' "$case" \
    "$m_ipb" "$m_apply" "$(echo "scale=2; $m_apply / $m_ipb" | bc)" \
    "$(printf '%s\n' "${noop[@]}" | median)" "$(printf '%s\n' "${diff[@]}" | median)" \
    "$(printf '%s\n' "${down[@]}" | median)" "$((rss / 1024)) MB"
}

write_routes10k
write_peers1k
echo "netman reconciler vs ip -batch, medians of $ROUNDS runs, milliseconds ($(nproc) cores, $(uname -r))"
echo
echo "| manifest  | ip -batch | apply | ratio | no-op apply | diff | down | engine RSS |"
echo "|-----------|----------:|------:|------:|------------:|-----:|-----:|-----------:|"
bench_case routes10k
bench_case peers1k
