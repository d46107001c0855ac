#!/usr/bin/env bash
# two-sites.sh - netman demo: two sites, each with a LAN behind it, joined by
# netman's WireGuard-protocol tunnel, all inside network namespaces.
#
#   LAN A                     site A                    site B                     LAN B
#   <p>-lan-a                 <p>-a                     <p>-b                      <p>-lan-b
#   eth0 172.18.1.2/24 -- br-a 172.18.1.1/24            br-b 172.18.2.1/24 -- eth0 172.18.2.2/24
#                             ul0 192.0.2.1/24 ==veth== ul0 192.0.2.2/24           (underlay)
#                             nm0 10.10.0.1/24 ~~~~~~~~ nm0 10.10.0.2/24           (overlay, netman)
#                                 fd10::1/64              fd10::2/64
#
# Each site's manifest routes the other site's LAN through the tunnel
# (`allowed_ips`); IP forwarding is enabled inside the two gateway
# namespaces only. The script builds netman, generates keys with
# `netman genkey`, applies both manifests, shows `netman status`, pings
# LAN A -> LAN B and the overlay (v4 and v6), then tears everything down
# (`netman down`, then the namespaces), also on failure or Ctrl-C.
#
# Usage (as root):  examples/two-sites.sh
# Environment:
#   NETMAN_BIN   use this netman binary instead of building one
#                (default: cargo build --release, target/release/netman)
#   DEMO_PREFIX  namespace name prefix (default nmdemo)
#   KEEP=1       stop before the teardown and wait for Enter (to look around:
#                ip netns exec nmdemo-a netman status ...)
#
# Network safety: all traffic stays inside the namespaces this script creates;
# the addresses (192.0.2.0/24 TEST-NET-1, 10.10.0.0/24, fd10::/64,
# 172.18.x.0/24) exist only in them. The host's own namespace is not touched.

set -euo pipefail

P=${DEMO_PREFIX:-nmdemo}
NS_A=$P-a
NS_B=$P-b
NS_LA=$P-lan-a
NS_LB=$P-lan-b
ALL_NS=("$NS_LA" "$NS_A" "$NS_B" "$NS_LB")
WORK=""
CREATED=()

log() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf 'two-sites.sh: %s\n' "$*" >&2; exit 1; }

((EUID == 0)) || die "must run as root (network namespaces, TUN devices)"
for tool in ip ping; do
  command -v "$tool" >/dev/null || die "missing $tool (apt-get install iproute2 iputils-ping)"
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${NETMAN_BIN:-} ]]; then
  command -v cargo >/dev/null || die "cargo not found; install Rust or set NETMAN_BIN"
  log "building netman (cargo build --release)"
  (cd "$REPO" && cargo build --release --bin netman)
  NETMAN_BIN=$REPO/target/release/netman
fi
[[ -x $NETMAN_BIN ]] || die "NETMAN_BIN=$NETMAN_BIN is not an executable file"
NETMAN_BIN=$(realpath "$NETMAN_BIN")

ns_exists() { ip netns list | awk '{print $1}' | grep -qx -- "$1"; }
for ns in "${ALL_NS[@]}"; do
  ns_exists "$ns" && die "namespace $ns already exists (another demo running? try DEMO_PREFIX=...)"
done

# netman inside a site's namespace, with that site's own state dir.
nm() {  # nm SITE ARGS...   (SITE is a or b)
  local site=$1; shift
  local ns=$NS_A; [[ $site == b ]] && ns=$NS_B
  ip netns exec "$ns" env NETMAN_STATE_DIR="$WORK/site-$site/state" "$NETMAN_BIN" "$@"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  ((rc == 0)) || printf '\ntwo-sites.sh: failed (status %s); cleaning up\n' "$rc" >&2
  log "teardown"
  for site in a b; do
    if [[ -n $WORK && -d $WORK/site-$site/state ]]; then
      nm "$site" down "site-$site"
    fi
  done
  for ns in "${CREATED[@]}"; do
    # Whatever still runs in a namespace of ours was started by this script.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null && echo "deleted namespace $ns"
  done
  [[ -n $WORK ]] && rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d /tmp/netman-demo.XXXXXX)

# ------------------------------------------------------------- topology --
log "topology: namespaces ${ALL_NS[*]}"
for ns in "${ALL_NS[@]}"; do
  CREATED+=("$ns")   # first: an interrupt right after the add still deletes it
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
# underlay between the two sites
ip -n "$NS_A" link add ul0 type veth peer name ul0 netns "$NS_B"
ip -n "$NS_A" addr add 192.0.2.1/24 dev ul0
ip -n "$NS_B" addr add 192.0.2.2/24 dev ul0
ip -n "$NS_A" link set ul0 up
ip -n "$NS_B" link set ul0 up
# a LAN behind each site: a bridge in the gateway, a "container" on it
lan() {  # lan GW_NS BRIDGE GW_CIDR LAN_NS LAN_CIDR GW_ADDR
  ip -n "$1" link add "$2" type bridge
  ip -n "$1" addr add "$3" dev "$2"
  ip -n "$1" link set "$2" up
  ip -n "$1" link add lan0 type veth peer name eth0 netns "$4"
  ip -n "$1" link set lan0 master "$2" up
  ip -n "$4" addr add "$5" dev eth0
  ip -n "$4" link set eth0 up
  ip -n "$4" route add default via "$6"
}
lan "$NS_A" br-a 172.18.1.1/24 "$NS_LA" 172.18.1.2/24 172.18.1.1
lan "$NS_B" br-b 172.18.2.1/24 "$NS_LB" 172.18.2.2/24 172.18.2.1
# the gateways route between their LAN and the tunnel (inside them only)
ip netns exec "$NS_A" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$NS_B" sysctl -qw net.ipv4.ip_forward=1

# ----------------------------------------------------------------- keys --
log "keys (netman genkey / netman pubkey, mode 0600)"
for site in a b; do
  mkdir -p "$WORK/site-$site/keys"
  (umask 077; "$NETMAN_BIN" genkey >"$WORK/site-$site/keys/site-$site.key")
  "$NETMAN_BIN" pubkey <"$WORK/site-$site/keys/site-$site.key" >"$WORK/site-$site/site-$site.pub"
  echo "site-$site public key: $(cat "$WORK/site-$site/site-$site.pub")"
done

# ------------------------------------------------------------ manifests --
write_manifest() {  # write_manifest SITE OTHER N OTHER_N
  local site=$1 other=$2 n=$3 on=$4
  cat >"$WORK/site-$site/site-$site.yaml" <<EOF
# site-$site: generated by examples/two-sites.sh
name: site-$site
interface:
  name: nm0
  addresses: [10.10.0.$n/24, fd10::$n/64]
  mtu: 1420
  listen_port: 51820
  private_key_file: keys/site-$site.key
peers:
  - name: site-$other
    public_key: "$(cat "$WORK/site-$other/site-$other.pub")"
    endpoint: 192.0.2.$on:51820
    allowed_ips: [10.10.0.$on/32, fd10::$on/128, 172.18.$on.0/24]
    persistent_keepalive: 25
EOF
}
write_manifest a b 1 2
write_manifest b a 2 1
log "manifest of site-a ($WORK/site-a/site-a.yaml)"
cat "$WORK/site-a/site-a.yaml"
"$NETMAN_BIN" validate "$WORK/site-a/site-a.yaml" "$WORK/site-b/site-b.yaml"

# ---------------------------------------------------------------- apply --
for site in a b; do
  log "netman apply site-$site.yaml (in $P-$site)"
  nm "$site" apply "$WORK/site-$site/site-$site.yaml"
done

# ---------------------------------------------------------------- check --
log "ping: container in LAN A (172.18.1.2) -> container in LAN B (172.18.2.2)"
ip netns exec "$NS_LA" ping -n -c 3 -i 0.2 -W 2 172.18.2.2
log "ping: container in LAN B -> container in LAN A"
ip netns exec "$NS_LB" ping -n -c 3 -i 0.2 -W 2 172.18.1.2
log "ping: overlay site-a -> site-b, IPv4 and IPv6"
ip netns exec "$NS_A" ping -n -c 3 -i 0.2 -W 2 10.10.0.2
ip netns exec "$NS_A" ping -n -c 3 -i 0.2 -W 2 fd10::2

for site in a b; do
  log "netman status (in $P-$site)"
  nm "$site" status
done
log "netman diff (in $P-a): in sync"
nm a diff

if [[ ${KEEP:-0} == 1 ]]; then
  log "KEEP=1: look around, e.g. ip netns exec $NS_A env NETMAN_STATE_DIR=$WORK/site-a/state $NETMAN_BIN status"
  read -r -p "press Enter to tear down " _
fi

log "demo passed"
# teardown: the EXIT trap (netman down on both sites, then the namespaces)
