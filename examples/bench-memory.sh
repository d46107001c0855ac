#!/usr/bin/env bash
# bench-memory.sh - the engine's memory with 1,000 peers, and over a traffic run.
#
# Two namespaces joined by a veth; site A has 1,000 peers configured (999 that
# never answer plus site B), site B has A. A bounded, paced iperf3 load (TCP
# and UDP in turns) runs through the tunnel for DURATION seconds (default
# 600) while the RSS of A's engine is sampled every 10 s. Prints the RSS right
# after start, after the first traffic, the peak and the end, and the growth
# between the first and the last sample of the traffic run.
#
#   sudo examples/bench-memory.sh                     # builds target/release/netman
#   sudo NETMAN_BIN=/path/to/netman DURATION=120 examples/bench-memory.sh
#
# Everything happens inside two namespaces this script creates and deletes
# (also on failure or Ctrl-C); nothing is sent anywhere else.
set -Eeuo pipefail

DURATION=${DURATION:-600}
RATE=${RATE:-200M}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${NETMAN_BIN:-} ]]; then
  (cd "$HERE" && cargo build --release --quiet)
  NETMAN_BIN=$HERE/target/release/netman
fi
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 2; }
command -v iperf3 >/dev/null || { echo "needs iperf3" >&2; exit 2; }

WORK=$(mktemp -d /tmp/netman-bench-memory.XXXXXX)
A=nmmA$$
B=nmmB$$
cleanup() {
  for ns in "$A" "$B"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ip netns add "$A"; ip netns add "$B"
ip -n "$A" link set lo up; ip -n "$B" link set lo up
ip -n "$A" link add vma type veth peer name vmb netns "$B"
ip -n "$A" addr add 192.0.2.1/24 dev vma; ip -n "$B" addr add 192.0.2.2/24 dev vmb
ip -n "$A" link set vma up; ip -n "$B" link set vmb up

umask 077
"$NETMAN_BIN" genkey >"$WORK/a.key"; "$NETMAN_BIN" genkey >"$WORK/b.key"
PA=$("$NETMAN_BIN" pubkey <"$WORK/a.key"); PB=$("$NETMAN_BIN" pubkey <"$WORK/b.key")
python3 - "$WORK" "$PB" <<'EOF'
import base64, os, sys
work, pb = sys.argv[1], sys.argv[2]
lines = ["name: mem-a", "watch: false", "interface:", "  name: nmm0", "  addresses: [10.10.0.1/16]",
         "  listen_port: 51820", f"  private_key_file: {work}/a.key", "peers:",
         "  - name: site-b", f'    public_key: "{pb}"', "    endpoint: 192.0.2.2:51820",
         "    allowed_ips: [10.10.0.2/32]"]
for p in range(999):
    key = base64.b64encode(os.urandom(32)).decode()
    lines += [f"  - name: p{p}", f'    public_key: "{key}"',
              f"    endpoint: 192.0.2.{10 + p % 200}:{20000 + p}",
              f"    allowed_ips: [10.{20 + p // 256}.{p % 256}.0/24]"]
open(f"{work}/a.yaml", "w").write("\n".join(lines) + "\n")
EOF
cat >"$WORK/b.yaml" <<EOF
name: mem-b
watch: false
interface:
  name: nmm0
  addresses: [10.10.0.2/16]
  listen_port: 51820
  private_key_file: $WORK/b.key
peers:
  - name: site-a
    public_key: "$PA"
    endpoint: 192.0.2.1:51820
    allowed_ips: [10.10.0.1/32]
EOF
ip netns exec "$A" env NETMAN_STATE_DIR="$WORK/sa" "$NETMAN_BIN" apply "$WORK/a.yaml" >/dev/null
ip netns exec "$B" env NETMAN_STATE_DIR="$WORK/sb" "$NETMAN_BIN" apply "$WORK/b.yaml" >/dev/null
pid=$(ip netns exec "$A" env NETMAN_STATE_DIR="$WORK/sa" "$NETMAN_BIN" status --output json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["engine"]["pid"])')
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
peers=$(ip netns exec "$A" env NETMAN_STATE_DIR="$WORK/sa" "$NETMAN_BIN" status --output json \
  | python3 -c 'import json,sys; print(len(json.load(sys.stdin)[0]["engine"]["peers"]))')
start=$(rss)
echo "engine pid $pid, $peers peers configured; RSS at start: $((start / 1024)) MB ($start kB)"

ip netns exec "$B" iperf3 -s -D -B 10.10.0.2 >/dev/null
sleep 0.5
first="" peak=0 last=0 t0=$SECONDS round=0
while ((SECONDS - t0 < DURATION)); do
  round=$((round + 1))
  if ((round % 2)); then args=(-b "$RATE"); else args=(-u -b "$RATE" -l 1372); fi
  ip netns exec "$A" timeout 30 iperf3 -c 10.10.0.2 -t 10 "${args[@]}" >/dev/null 2>&1 || true
  r=$(rss)
  [[ -n $first ]] || first=$r
  ((r > peak)) && peak=$r
  last=$r
  printf '%4d s  RSS %6d kB\n' $((SECONDS - t0)) "$r"
done
echo
echo "| peers | RSS at start | after first traffic | peak | end | growth first→end |"
echo "|------:|-------------:|--------------------:|-----:|----:|-----------------:|"
printf '| %d | %d MB | %d MB | %d MB | %d MB | %d kB |\n' "$peers" $((start / 1024)) \
  $((first / 1024)) $((peak / 1024)) $((last / 1024)) $((last - first))
