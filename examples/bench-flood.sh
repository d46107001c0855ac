#!/usr/bin/env bash
# bench-flood.sh - a handshake flood against one end of an established
# tunnel, for netman and other userspace WireGuard implementations (issue 11,
# item 6; the figures in docs/performance.md come from here).
#
#   A [ula 10.210.0.1/24] ==veth== [ulb 10.210.0.2/24] B [ulf 10.211.0.1/24] ==veth== [ulf 10.211.0.2/24] F
#   A [fdA 10.212.0.1/24] ========== tunnel ========== [fdB 10.212.0.2/24] B
#
# Per implementation (positional arguments, default: boringtun gotatun
# wireguard-go netman): bring the tunnel up, ping once, then flood B's
# listen port from F with examples/flood.py (one Python process, as fast as
# it can: initiations with a valid mac1 for B's public key mixed with
# garbage of every length), and ping B through the tunnel every 10 ms
# meanwhile: (FLOOD_SECS - 2) x 100 pings from 1 s after the flood starts;
# the flood is stopped (SIGINT) once the ping is done, so on a busy machine,
# where ping's interval stretches, every ping still runs inside the flood. Reports per implementation: ping loss and average RTT
# during the flood, cookie replies the flooder received (and whether any
# answer was larger than the message it answered), datagrams per second
# sent, and B's RSS before and after.
#
# Usage: sudo NETMAN_BIN=target/release/netman examples/bench-flood.sh [IMPL ...]
# Environment: FLOOD_SECS (12), NETMAN_BIN, WIREGUARD_GO_BIN (wireguard-go),
# BORINGTUN_BIN (boringtun-cli), GOTATUN_BIN (gotatun). Needs root, iproute2,
# iputils-ping, wireguard-tools (wg), python3, and the implementations asked
# for. All traffic stays inside the three namespaces this script creates;
# every process it starts is stopped by PID and the namespaces are deleted on
# exit.

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FLOOD_SECS=${FLOOD_SECS:-12}
WIREGUARD_GO_BIN=${WIREGUARD_GO_BIN:-wireguard-go}
BORINGTUN_BIN=${BORINGTUN_BIN:-boringtun-cli}
GOTATUN_BIN=${GOTATUN_BIN:-gotatun}
NS_A=nmfA NS_B=nmfB NS_F=nmfF
IF_A=fdA IF_B=fdB
PORT=51820
UAPI_DIR=/var/run/wireguard

IMPLS=("$@")
((${#IMPLS[@]})) || IMPLS=(boringtun gotatun wireguard-go netman)
((EUID == 0)) || { echo "must run as root" >&2; exit 1; }
[[ $FLOOD_SECS =~ ^[0-9]+$ ]] && ((FLOOD_SECS >= 4 && FLOOD_SECS <= 120)) ||
  { echo "FLOOD_SECS must be 4..120" >&2; exit 1; }
for t in ip ping wg python3; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }; done

WORK=$(mktemp -d /tmp/bench-flood.XXXXXX)
PIDS=()

stop_pid() {
  local pid=$1 _
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

teardown() {
  local pid ns
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  PIDS=()
  for ns in $NS_A $NS_B $NS_F; do
    if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
      for pid in $(ip netns pids "$ns"); do stop_pid "$pid"; done
      ip netns del "$ns"
    fi
  done
  rm -f "$UAPI_DIR/$IF_A.sock" "$UAPI_DIR/$IF_B.sock"
}
trap 'teardown; rm -rf "$WORK"' EXIT

wait_for() {  # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do ((SECONDS < deadline)) || return 1; sleep 0.1; done
}

setup_net() {
  for ns in $NS_A $NS_B $NS_F; do ip netns add $ns; ip -n $ns link set lo up; done
  ip -n $NS_A link add ula type veth peer name ulb netns $NS_B
  ip -n $NS_F link add ulf type veth peer name ulf netns $NS_B
  ip -n $NS_A addr add 10.210.0.1/24 dev ula
  ip -n $NS_B addr add 10.210.0.2/24 dev ulb
  ip -n $NS_B addr add 10.211.0.1/24 dev ulf
  ip -n $NS_F addr add 10.211.0.2/24 dev ulf
  for l in "$NS_A ula" "$NS_B ulb" "$NS_B ulf" "$NS_F ulf"; do set -- $l; ip -n "$1" link set "$2" up; done
}

keys() {
  (umask 077; wg genkey >"$WORK/a.key"; wg genkey >"$WORK/b.key")
  wg pubkey <"$WORK/a.key" >"$WORK/a.pub"
  wg pubkey <"$WORK/b.key" >"$WORK/b.pub"
}

wg_side() {  # NS IFACE KEY PEER_PUB PEER_UL OVER
  ip netns exec "$1" wg set "$2" private-key "$3" listen-port $PORT \
    peer "$4" allowed-ips "${6%.*}.0/24" endpoint "$5:$PORT"
  ip -n "$1" addr add "$6/24" dev "$2"
  ip -n "$1" link set "$2" mtu 1420 up
}

start_uapi() {  # NS IFACE CMD...
  local ns=$1 ifc=$2; shift 2
  ip netns exec "$ns" "$@" >"$WORK/$ifc.log" 2>&1 &
  PIDS+=("$!")
  wait_for 10 test -S "$UAPI_DIR/$ifc.sock"
  wait_for 5 ip -n "$ns" link show dev "$ifc"
}

netman_manifest() {  # FILE NAME IFACE KEY OVER PEER_PUB PEER_UL PEER_OVER
  cat >"$1" <<EOF
name: $2
interface:
  name: $3
  addresses: [$5/24]
  mtu: 1420
  listen_port: $PORT
  private_key_file: $4
peers:
  - name: peer
    public_key: "$6"
    endpoint: $7:$PORT
    allowed_ips: [$8/32]
EOF
}

start_impl() {
  case $1 in
    wireguard-go)
      start_uapi $NS_A $IF_A env LOG_LEVEL=error WG_PROCESS_FOREGROUND=1 "$WIREGUARD_GO_BIN" -f $IF_A
      start_uapi $NS_B $IF_B env LOG_LEVEL=error WG_PROCESS_FOREGROUND=1 "$WIREGUARD_GO_BIN" -f $IF_B ;;
    boringtun)
      start_uapi $NS_A $IF_A "$BORINGTUN_BIN" $IF_A --foreground --disable-drop-privileges --log "$WORK/bt-a.out"
      start_uapi $NS_B $IF_B "$BORINGTUN_BIN" $IF_B --foreground --disable-drop-privileges --log "$WORK/bt-b.out" ;;
    gotatun)
      start_uapi $NS_A $IF_A env WG_LOG_FILE="$WORK/gt-a.out" "$GOTATUN_BIN" -f --disable-drop-privileges $IF_A
      start_uapi $NS_B $IF_B env WG_LOG_FILE="$WORK/gt-b.out" "$GOTATUN_BIN" -f --disable-drop-privileges $IF_B ;;
    netman)
      [[ -x ${NETMAN_BIN:-} ]] || { echo "set NETMAN_BIN to the netman binary" >&2; return 1; }
      chmod 600 "$WORK/a.key" "$WORK/b.key"
      netman_manifest "$WORK/a.yaml" flood-a $IF_A "$WORK/a.key" 10.212.0.1 "$(cat "$WORK/b.pub")" 10.210.0.2 10.212.0.2
      netman_manifest "$WORK/b.yaml" flood-b $IF_B "$WORK/b.key" 10.212.0.2 "$(cat "$WORK/a.pub")" 10.210.0.1 10.212.0.1
      ip netns exec $NS_A env NETMAN_STATE_DIR="$WORK/state-a" "$NETMAN_BIN" run "$WORK/a.yaml" >"$WORK/netman-a.log" 2>&1 &
      PIDS+=("$!")
      ip netns exec $NS_B env NETMAN_STATE_DIR="$WORK/state-b" "$NETMAN_BIN" run "$WORK/b.yaml" >"$WORK/netman-b.log" 2>&1 &
      PIDS+=("$!")
      wait_for 15 sh -c "ip -n $NS_A -4 addr show dev $IF_A | grep -q 10.212.0.1/"
      wait_for 15 sh -c "ip -n $NS_B -4 addr show dev $IF_B | grep -q 10.212.0.2/"
      return ;;
    *) echo "unknown implementation $1" >&2; return 1 ;;
  esac
  wg_side $NS_A $IF_A "$WORK/a.key" "$(cat "$WORK/b.pub")" 10.210.0.2 10.212.0.1
  wg_side $NS_B $IF_B "$WORK/b.key" "$(cat "$WORK/a.pub")" 10.210.0.1 10.212.0.2
}

victim_pid() {  # the process in B bound to the listen port
  ip netns exec $NS_B ss -Hulnp "sport = :$PORT" | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2
}

rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

printf '%-14s %9s %12s %12s %14s %9s %12s %9s %16s\n' impl "loss %" "rtt avg ms" "rtt max ms" "cookie replies" "larger" "flood dg/s" "flood s" "RSS kB before/after"
for impl in "${IMPLS[@]}"; do
  setup_net
  keys
  start_impl "$impl"
  wait_for 20 ip netns exec $NS_A ping -c1 -W1 10.212.0.2 || { echo "$impl: tunnel did not come up" >&2; teardown; continue; }
  vpid=$(victim_pid)
  rss0=$(rss_kb "$vpid")
  ip netns exec $NS_F python3 "$HERE/flood.py" --target 10.211.0.1:$PORT \
    --public-key "$(cat "$WORK/b.pub")" --seconds $((FLOOD_SECS * 4)) >"$WORK/flood.json" 2>"$WORK/flood.err" &
  fpid=$!
  PIDS+=("$fpid")
  sleep 1
  count=$(((FLOOD_SECS - 2) * 100))
  ping_out=$(ip netns exec $NS_A timeout $((FLOOD_SECS + 30)) ping -q -n -c "$count" -i 0.01 -W 1 10.212.0.2 2>&1 || true)
  rss1=$(rss_kb "$vpid")
  kill -INT "$fpid" 2>/dev/null || true   # `ip netns exec` ran python3 in its place
  wait "$fpid" || true
  loss=$(grep -o '[0-9.]*% packet loss' <<<"$ping_out" | cut -d% -f1)
  rtt=$(awk -F'[/ ]' '/^rtt/{print $8, $9}' <<<"$ping_out")
  read -r rtt_avg rtt_max <<<"${rtt:-- -}"
  f=$(cat "$WORK/flood.json")
  cookies=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["received"]["cookie_replies"])' <<<"$f")
  larger=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["received"]["larger_than_answered"])' <<<"$f")
  rate=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["datagrams_per_second"])' <<<"$f")
  secs=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])' <<<"$f")
  printf '%-14s %9s %12s %12s %14s %9s %12s %9s %16s\n' "$impl" "${loss:--}" "$rtt_avg" "$rtt_max" "$cookies" "$larger" "$rate" "$secs" "$rss0/$rss1"
  [[ -n ${VERBOSE:-} ]] && { echo "$ping_out"; echo "$f"; }
  teardown
done
