#!/usr/bin/env bash
# bench-mss.sh - TCP through the tunnel with a small MSS, netman against
# boringtun in the same run.
#
# Two namespaces joined by a veth (MTU 1500) and a tunnel (MTU 1420) between
# them, as in ../shared/bench/tunnel-bench.sh. For every round, the
# implementations in turn (interleaved: netman, boringtun, netman, ...) and
# every MSS: one iperf3 TCP stream A -> B, `iperf3 -c ... -M MSS -t
# DURATION`. Prints one line per run (Gbit/s at the receiver, the sender's
# retransmits), then a Markdown table of medians (min-max) with the
# netman/boringtun ratio.
#
#   sudo examples/bench-mss.sh                          # builds target/release/netman
#   sudo NETMAN_BIN=/path/to/netman ROUNDS=3 DURATION=10 MSS="536 300" examples/bench-mss.sh
#
# Needs iperf3, wireguard-tools (`wg`, to configure boringtun) and
# boringtun-cli (`cargo install boringtun-cli --locked`; $BORINGTUN_BIN, PATH
# or ~/.cargo/bin). Takes /run/tunnel-bench.lock like tunnel-bench.sh, so two
# benchmarks never overlap. Everything happens inside two namespaces this
# script creates and deletes (also on failure or Ctrl-C); every process it
# starts runs in them and is stopped by pid.
set -Eeuo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
MSS_LIST=${MSS:-536 300}
IMPLS=${IMPLS:-netman boringtun}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 2; }
for t in iperf3 wg jq; do
  command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 2; }
done
if [[ -z ${BORINGTUN_BIN:-} ]]; then
  BORINGTUN_BIN=$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")
fi
[[ -x $BORINGTUN_BIN ]] || { echo "needs boringtun-cli (cargo install boringtun-cli --locked)" >&2; exit 2; }
if [[ -z ${NETMAN_BIN:-} ]]; then
  (cd "$HERE" && cargo build --release --locked --quiet)
  NETMAN_BIN=$HERE/target/release/netman
fi

exec 9>/run/tunnel-bench.lock
flock 9

WORK=$(mktemp -d /tmp/netman-bench-mss.XXXXXX)
A=nmsA$$
B=nmsB$$
IFA=bmA$$   # distinct names: the UAPI sockets in /var/run/wireguard are not per namespace
IFB=bmB$$
stop_all() {
  for ns in "$A" "$B"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  done
  for _ in $(seq 50); do
    [[ -z $(ip netns pids "$A" 2>/dev/null)$(ip netns pids "$B" 2>/dev/null) ]] && break
    sleep 0.1
  done
  for ns in "$A" "$B"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  rm -f "/var/run/wireguard/$IFA.sock" "/var/run/wireguard/$IFB.sock"
}
cleanup() {
  stop_all
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ip netns add "$A"; ip netns add "$B"
ip -n "$A" link set lo up; ip -n "$B" link set lo up
ip -n "$A" link add vA type veth peer name vB netns "$B"
ip -n "$A" addr add 192.0.2.1/24 dev vA; ip -n "$B" addr add 192.0.2.2/24 dev vB
ip -n "$A" link set vA up; ip -n "$B" link set vB up

umask 077
wg genkey >"$WORK/a.key"; wg genkey >"$WORK/b.key"
PA=$(wg pubkey <"$WORK/a.key"); PB=$(wg pubkey <"$WORK/b.key")

wait_for() {  # wait_for SECONDS CMD...: poll every 0.1 s, bounded
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

manifest() {  # manifest NAME IFACE KEY OVERLAY PEER_PUB PEER_UNDERLAY PEER_OVERLAY
  cat <<EOF
name: $1
watch: false
interface:
  name: $2
  addresses: [$4/24]
  mtu: 1420
  listen_port: 51820
  private_key_file: $3
peers:
  - name: peer
    public_key: "$5"
    endpoint: $6:51820
    allowed_ips: [$7/32]
EOF
}

start_netman() {
  manifest mss-a "$IFA" "$WORK/a.key" 10.201.0.1 "$PB" 192.0.2.2 10.201.0.2 >"$WORK/a.yaml"
  manifest mss-b "$IFB" "$WORK/b.key" 10.201.0.2 "$PA" 192.0.2.1 10.201.0.1 >"$WORK/b.yaml"
  ip netns exec "$A" env NETMAN_STATE_DIR="$WORK/sa" "$NETMAN_BIN" apply "$WORK/a.yaml" >/dev/null
  ip netns exec "$B" env NETMAN_STATE_DIR="$WORK/sb" "$NETMAN_BIN" apply "$WORK/b.yaml" >/dev/null
}
stop_netman() {
  ip netns exec "$A" env NETMAN_STATE_DIR="$WORK/sa" "$NETMAN_BIN" down mss-a >/dev/null || true
  ip netns exec "$B" env NETMAN_STATE_DIR="$WORK/sb" "$NETMAN_BIN" down mss-b >/dev/null || true
  rm -rf "$WORK/sa" "$WORK/sb"
}

start_boringtun() {
  local ns ifc key peer under over peer_over
  for side in A B; do
    if [[ $side == A ]]; then
      ns=$A ifc=$IFA key=$WORK/a.key peer=$PB under=192.0.2.2 over=10.201.0.1 peer_over=10.201.0.2
    else
      ns=$B ifc=$IFB key=$WORK/b.key peer=$PA under=192.0.2.1 over=10.201.0.2 peer_over=10.201.0.1
    fi
    ip netns exec "$ns" "$BORINGTUN_BIN" "$ifc" --foreground --disable-drop-privileges \
      --log "$WORK/boringtun-$side.log" >"$WORK/boringtun-$side.out" 2>&1 &
    wait_for 10 test -S "/var/run/wireguard/$ifc.sock"
    ip netns exec "$ns" wg set "$ifc" private-key "$key" listen-port 51820 \
      peer "$peer" allowed-ips "$peer_over/32" endpoint "$under:51820"
    ip -n "$ns" addr add "$over/24" dev "$ifc"
    ip -n "$ns" link set dev "$ifc" mtu 1420 up
  done
}

# One iperf3 run: prints "GBPS RETRANS".
run_iperf() {  # run_iperf MSS
  ip netns exec "$B" timeout $((DURATION + 40)) iperf3 -s -1 -B 10.201.0.2 -p 5201 >/dev/null 2>&1 &
  local srv=$!
  wait_for 10 ip netns exec "$B" sh -c 'ss -Hltn "sport = :5201" | grep -q LISTEN'
  local j
  j=$(ip netns exec "$A" timeout $((DURATION + 30)) iperf3 -c 10.201.0.2 -p 5201 -J \
      -t "$DURATION" -M "$1" || true)
  wait "$srv" 2>/dev/null || true
  jq -r '"\((.end.sum_received.bits_per_second // 0) / 1e9 * 1000 | round / 1000) \(.end.sum_sent.retransmits // "null")"' <<<"$j" 2>/dev/null \
    || echo "null null"
}

declare -A RES   # RES[impl,mss] = "gbps gbps ..."; RET[impl,mss] likewise
declare -A RET
echo "netman: $NETMAN_BIN; boringtun: $BORINGTUN_BIN ($("$BORINGTUN_BIN" --version 2>/dev/null | head -1))"
echo "rounds $ROUNDS, ${DURATION}s per test, MSS: $MSS_LIST; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  for impl in $IMPLS; do
    "start_$impl"
    wait_for 20 ip netns exec "$A" ping -c 1 -W 1 10.201.0.2 || { echo "$impl: tunnel did not come up" >&2; exit 1; }
    for mss in $MSS_LIST; do
      sleep 1
      read -r gbps retr < <(run_iperf "$mss")
      echo "impl=$impl mss=$mss round=$round gbps=$gbps retransmits=$retr"
      RES[$impl,$mss]+="$gbps "
      RET[$impl,$mss]+="$retr "
    done
    if [[ $impl == netman ]]; then stop_netman; fi
    stop_all
  done
done

median() { tr ' ' '\n' | grep -v '^$' | grep -v null | sort -g | awk '{v[NR]=$1} END { if (NR == 0) { print "null"; exit } m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%s (%s-%s)", m, v[1], v[NR] }'; }
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| MSS | netman Gbit/s | boringtun Gbit/s | netman / boringtun | retransmits netman / boringtun (median) |"
echo "| ---: | --- | --- | ---: | --- |"
for mss in $MSS_LIST; do
  n=$(median <<<"${RES[netman,$mss]:-}")
  b=$(median <<<"${RES[boringtun,$mss]:-}")
  ratio=$(awk -v n="${n%% *}" -v b="${b%% *}" 'BEGIN { if (b > 0) printf "%.1f×", n / b; else print "-" }')
  rn=$(median <<<"${RET[netman,$mss]:-}"); rb=$(median <<<"${RET[boringtun,$mss]:-}")
  echo "| $mss | $n | $b | $ratio | ${rn%% *} / ${rb%% *} |"
done
