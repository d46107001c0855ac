#!/usr/bin/env bash
# fleet.sh - netman demo: a fleet of gateways managed from ONE network file.
#
#                          underlay: bridge br0 in <p>-underlay, 192.0.2.0/24
#          +--------------------+--------------------+--------------------+
#      ul0 .1               ul0 .2               ul0 .3               ul0 .4
#   <p>-hq               <p>-branch-1         <p>-branch-2         <p>-branch-3
#   nm0 10.20.0.1        nm0 10.20.0.2        nm0 10.20.0.3        nm0 10.20.0.4
#       fd20::1              fd20::2              fd20::3              fd20::4
#   lan0 172.21.1.1      lan0 172.21.2.1      lan0 172.21.3.1      lan0 172.21.4.1
#        fd21:1::1            fd21:2::1            fd21:3::1            fd21:4::1
#      |                    |                    |                    |
#   <p>-hq-lan           <p>-branch-1-lan     <p>-branch-2-lan     <p>-branch-3-lan
#   eth0 172.21.1.2      eth0 172.21.2.2      eth0 172.21.3.2      eth0 172.21.4.2
#        fd21:1::2            fd21:2::2            fd21:3::2            fd21:4::2
#
# hq is the hub (it has the endpoint), the branches are spokes and reach
# each other through hq. Every gateway runs the SAME command on the SAME
# file, `netman apply network.yaml`, and finds its own site by the public
# key of its /etc/netman/private.key (each gateway namespace gets its own
# /etc/netman through /etc/netns/<ns>/netman, see ip-netns(8)).
#
# Steps:
#   1. the file (examples/fleet/network.yaml with freshly generated keys) is
#      applied on hq, branch-1 and branch-2; every LAN pings every other LAN
#      (IPv4 and IPv6);
#   2. a fourth site, branch-3, is added to the file and its gateway started
#      with `netman apply`; the watchers of the others converge by
#      themselves, each change kept by health (`rollout: {confirm:
#      healthy}`), while two continuous pings (every 50 ms) between the
#      other LANs must not lose a single packet;
#   3. a broken change: branch-2's public key in the file is replaced by a
#      wrong one. hq's watcher applies it on probation, cannot handshake
#      with branch-2 any more and reverts by health after the rollout
#      timeout; `netman status` on hq shows why, LAN hq <-> LAN branch-2
#      works again and the reverted file version is not applied again.
#      (branch-2 itself refuses the file: no site has its key any more.)
#
# Usage (as root):  examples/fleet.sh
# Environment:
#   NETMAN_BIN   use this netman binary instead of building one
#                (default: cargo build --release, target/release/netman)
#   DEMO_PREFIX  namespace name prefix (default nmfleet)
#   KEEP=1       stop before the teardown and wait for Enter (to look around)
#
# Network safety: all traffic stays inside the namespaces this script
# creates; the addresses (192.0.2.0/24 TEST-NET-1, 10.20.0.0/24, fd20::/64,
# 172.21.x.0/24, fd21:x::/64) exist only in them. On the host, the script
# creates /etc/netns/<ns>/ for its gateway namespaces (and /etc/netns and an
# empty /etc/netman if they are missing: ip netns exec needs the mount
# point) and removes them again.

set -euo pipefail

P=${DEMO_PREFIX:-nmfleet}
SITES=(hq branch-1 branch-2 branch-3)
declare -A IDX=([hq]=1 [branch-1]=2 [branch-2]=3 [branch-3]=4)
NS_UL=$P-underlay
WORK=""
CREATED=()       # namespaces, in creation order
ETC_CREATED=()   # directories under /etc this script created
UP=()            # sites whose gateway has been applied
PING_PIDS=()
T0=$SECONDS

log() { printf '\n\033[1m== [%3ss] %s\033[0m\n' "$((SECONDS - T0))" "$*"; }
die() { printf 'fleet.sh: FAILED: %s\n' "$*" >&2; exit 1; }

((EUID == 0)) || die "must run as root (network namespaces, TUN devices)"
for tool in ip ping awk sed; do
  command -v "$tool" >/dev/null || die "missing $tool (apt-get install iproute2 iputils-ping gawk sed)"
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEMPLATE=$REPO/examples/fleet/network.yaml
if [[ -z ${NETMAN_BIN:-} ]]; then
  command -v cargo >/dev/null || die "cargo not found; install Rust or set NETMAN_BIN"
  log "building netman (cargo build --release)"
  (cd "$REPO" && cargo build --release --bin netman)
  NETMAN_BIN=$REPO/target/release/netman
fi
[[ -x $NETMAN_BIN ]] || die "NETMAN_BIN=$NETMAN_BIN is not an executable file"
NETMAN_BIN=$(realpath "$NETMAN_BIN")

gw() { echo "$P-$1"; }       # gateway namespace of a site
lanns() { echo "$P-$1-lan"; } # LAN host namespace of a site

ns_exists() { ip netns list | awk '{print $1}' | grep -qx -- "$1"; }
for ns in "$NS_UL" $(for s in "${SITES[@]}"; do gw "$s"; lanns "$s"; done); do
  ns_exists "$ns" && die "namespace $ns already exists (another demo running? try DEMO_PREFIX=...)"
  [[ -e /etc/netns/$ns ]] && die "/etc/netns/$ns already exists (try DEMO_PREFIX=...)"
done

# netman on a site's gateway, with that gateway's own state dir.
nm() {  # nm SITE ARGS...
  local site=$1; shift
  ip netns exec "$(gw "$site")" env NETMAN_STATE_DIR="$WORK/state/$site" "$NETMAN_BIN" "$@"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  ((rc == 0)) || printf '\nfleet.sh: failed (status %s); cleaning up\n' "$rc" >&2
  for pid in "${PING_PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  log "teardown"
  for site in "${UP[@]}"; do
    nm "$site" down "$site"
  done
  for ((i = ${#CREATED[@]} - 1; i >= 0; i--)); do
    ns=${CREATED[i]}
    # Whatever still runs in a namespace of ours was started by this script.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null && echo "deleted namespace $ns"
  done
  for ((i = ${#ETC_CREATED[@]} - 1; i >= 0; i--)); do
    d=${ETC_CREATED[i]}
    case $d in
      /etc/netns/?*) rm -rf -- "$d" ;;
      *) rmdir -- "$d" 2>/dev/null ;;   # /etc/netns, /etc/netman: only if empty
    esac
  done
  [[ -n $WORK ]] && rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d /tmp/netman-fleet.XXXXXX)
mkdir -p "$WORK/state"
NET=$WORK/repo/network.yaml   # the ONE network file every gateway applies
mkdir -p "$WORK/repo"

# ---------------------------------------------------------------- helpers --
# wait_until SECS DESCRIPTION CMD...: run CMD every 0.2 s until it succeeds.
wait_until() {
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || die "timed out after ${secs}s waiting for: $what"
    sleep 0.2
  done
}
ping1() { ip netns exec "$1" ping -n -c 1 -W 1 "$2"; }   # ping1 NS ADDR
lan4() { echo "172.21.${IDX[$1]}.2"; }
lan6() { echo "fd21:${IDX[$1]}::2"; }

# Every LAN host of the given sites pings every other one, v4 and v6.
check_lans() {
  local a b n=0
  for a in "$@"; do
    for b in "$@"; do
      [[ $a == "$b" ]] && continue
      wait_until 20 "LAN $a -> LAN $b (IPv4)" ping1 "$(lanns "$a")" "$(lan4 "$b")"
      wait_until 20 "LAN $a -> LAN $b (IPv6)" ping1 "$(lanns "$a")" "$(lan6 "$b")"
      n=$((n + 2))
    done
  done
  echo "ok: $n pings between the LANs of $* (IPv4 and IPv6)"
}

# A continuous ping, every 50 ms, from the LAN of one site to another.
start_ping() {  # start_ping FROM TO ADDR
  local log=$WORK/ping-$1-$2.log
  ip netns exec "$(lanns "$1")" ping -n -i 0.05 -W 1 "$3" >"$log" 2>&1 &
  PING_PIDS+=($!)
  echo "continuous ping LAN $1 -> LAN $2 ($3), every 50 ms (pid $!)"
}
# Stop the continuous pings; print their counts; fail if any lost a packet.
# Lost = sequence numbers never answered up to the last one answered, plus
# those sent after it beyond the one that may be in flight at the stop.
stop_pings() {
  local pid f bad=0
  for pid in "${PING_PIDS[@]}"; do kill -INT "$pid" 2>/dev/null; done
  for pid in "${PING_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PING_PIDS=()
  for f in "$WORK"/ping-*.log; do
    read -r sent got lost < <(awk '
      /bytes from/ { if (match($0, /icmp_seq=[0-9]+/)) { s = substr($0, RSTART + 9, RLENGTH - 9) + 0; seen[s] = 1; if (s > max) max = s } }
      /packets transmitted/ { tx = $1 + 0 }
      END {
        n = 0; for (s in seen) n++
        lost = max - n; tail = tx - max - 1; if (tail > 0) lost += tail
        print tx, n, lost
      }' "$f")
    echo "$(basename "$f" .log): $sent sent, $got answered, $lost lost"
    LOST_TOTAL=$((LOST_TOTAL + lost))
    ((sent > 0 && lost == 0)) || bad=1
  done
  ((bad == 0)) || die "a continuous ping lost packets (or sent none)"
}
LOST_TOTAL=0

# status_has SITE REGEX / status_lacks SITE REGEX
status_has() { nm "$1" status "$1" | grep -Eq -- "$2"; }
status_lacks() { ! nm "$1" status "$1" | grep -Eq -- "$2"; }

# -------------------------------------------------------------- topology --
add_ns() {
  CREATED+=("$1")   # first: an interrupt right after the add still deletes it
  ip netns add "$1"
  ip -n "$1" link set lo up
}
# /etc/netns/<gw>/netman appears as /etc/netman inside the gateway.
if [[ ! -d /etc/netns ]]; then mkdir /etc/netns; ETC_CREATED+=(/etc/netns); fi
if [[ ! -d /etc/netman ]]; then mkdir /etc/netman; ETC_CREATED+=(/etc/netman); fi

add_gateway() {  # add_gateway SITE: gateway + LAN host, on the underlay
  local site=$1 n=${IDX[$1]} g l
  g=$(gw "$site") l=$(lanns "$site")
  add_ns "$g"
  add_ns "$l"
  # underlay: a veth from the gateway to the bridge
  ip -n "$NS_UL" link add "ul$n" type veth peer name ul0 netns "$g"
  ip -n "$NS_UL" link set "ul$n" master br0 up
  ip -n "$g" addr add "192.0.2.$n/24" dev ul0
  ip -n "$g" link set ul0 up
  # LAN: a veth from the gateway to its LAN host
  ip -n "$g" link add lan0 type veth peer name eth0 netns "$l"
  ip -n "$g" addr add "172.21.$n.1/24" dev lan0
  ip -n "$g" addr add "fd21:$n::1/64" dev lan0 nodad
  ip -n "$g" link set lan0 up
  ip -n "$l" addr add "172.21.$n.2/24" dev eth0
  ip -n "$l" addr add "fd21:$n::2/64" dev eth0 nodad
  ip -n "$l" link set eth0 up
  ip -n "$l" route add default via "172.21.$n.1"
  ip -n "$l" -6 route add default via "fd21:$n::1"
  # its key: /etc/netman/private.key inside the gateway, mode 0600
  mkdir -p "/etc/netns/$g/netman"
  ETC_CREATED+=("/etc/netns/$g")
  (umask 077; "$NETMAN_BIN" genkey >"/etc/netns/$g/netman/private.key")
  # (read inside the gateway: its /etc/netman is /etc/netns/$g/netman)
  PUB[$site]=$(ip netns exec "$g" sh -c '"$1" pubkey </etc/netman/private.key' sh "$NETMAN_BIN")
  echo "$site: namespaces $g and $l, public key ${PUB[$site]}"
}
declare -A PUB

log "topology: underlay bridge in $NS_UL, a gateway and a LAN host per site"
add_ns "$NS_UL"
ip -n "$NS_UL" link add br0 type bridge
ip -n "$NS_UL" link set br0 up
for site in hq branch-1 branch-2; do add_gateway "$site"; done

# ---------------------------------------------------------- network file --
log "the network file: $TEMPLATE with the generated keys -> $NET"
# The template's placeholder keys, in site order.
mapfile -t PLACEHOLDER < <(awk '/^  - name:/ {site = $3} /^    public_key:/ {print site, $2}' "$TEMPLATE")
cp "$TEMPLATE" "$NET"
for entry in "${PLACEHOLDER[@]}"; do
  read -r site key <<<"$entry"
  [[ -n ${PUB[$site]:-} ]] || die "template site $site has no gateway"
  sed -i "s|$key|${PUB[$site]}|" "$NET"
done
# (keys are base64: no '|' in them)
sed -n '/^network:/,$p' "$NET"
"$NETMAN_BIN" validate "$NET"
echo "--- netman render --site branch-1 (what branch-1's gateway derives):"
"$NETMAN_BIN" render "$NET" --site branch-1

# ---------------------------------------------------------------- apply --
for site in hq branch-1 branch-2; do
  log "$site: netman apply $NET (site found by /etc/netman/private.key)"
  UP+=("$site")
  nm "$site" apply "$NET"
done

log "every LAN reaches every other LAN"
check_lans hq branch-1 branch-2
nm hq status hq

# --------------------------------------------------- add a fourth site --
log "add branch-3: a new gateway, a new site in the file, zero loss elsewhere"
add_gateway branch-3
start_ping branch-1 branch-2 "$(lan4 branch-2)"
start_ping hq branch-1 "$(lan6 branch-1)"
sleep 1
# Edit the file as a `git pull` would: a new file renamed into place.
cp "$NET" "$NET.new"
cat >>"$NET.new" <<EOF
  - name: branch-3
    public_key: ${PUB[branch-3]}
    addresses: [10.20.0.4/24, fd20::4/64]
    subnets: [172.21.4.0/24, fd21:4::/64]
    probes:
      - ping: 10.20.0.1
EOF
"$NETMAN_BIN" validate "$NET.new"
mv "$NET.new" "$NET"
echo "branch-3 added to $NET"
UP+=(branch-3)
nm branch-3 apply "$NET"
log "waiting for the watchers of hq, branch-1 and branch-2 to converge (deadline 30 s)"
wait_until 30 "hq's watcher to add peer branch-3" status_has hq '^peer: branch-3 '
for site in hq branch-1 branch-2; do
  wait_until 30 "$site's change to be kept by health" status_lacks "$site" 'on probation'
  status_lacks "$site" 'last revert' || { nm "$site" status "$site"; die "$site reverted a good change"; }
done
check_lans hq branch-1 branch-2 branch-3
sleep 1
stop_pings
nm hq status hq

# --------------------------------------------------- a broken change --
log "a broken change: branch-2's public key in the file replaced by a wrong one"
WRONG=$("$NETMAN_BIN" genkey | "$NETMAN_BIN" pubkey)
cp "$NET" "$WORK/network.good.yaml"
sed "s|${PUB[branch-2]}|$WRONG|" "$NET" >"$NET.new"
"$NETMAN_BIN" validate "$NET.new"   # valid: only the key is wrong
mv "$NET.new" "$NET"
echo "branch-2's public_key is now $WRONG (its gateway's key is ${PUB[branch-2]})"
wait_until 10 "hq's watcher to apply the change on probation" status_has hq 'on probation'
nm hq status hq
log "branch-2's own gateway refuses the file (no site has its key any more)"
if nm branch-2 apply "$NET"; then die "branch-2 applied a file that does not have its key"; fi
echo "(refused, as expected)"
log "waiting for hq to revert by health (rollout timeout 15 s; deadline 40 s)"
wait_until 40 "hq to revert" status_has hq 'last revert'
nm hq status hq
status_has hq 'last revert: not healthy before the deadline.*branch-2' \
  || die "hq's status does not give branch-2 as the reason of the revert"
log "LAN hq <-> LAN branch-2 works again"
wait_until 20 "LAN hq -> LAN branch-2" ping1 "$(lanns hq)" "$(lan4 branch-2)"
check_lans hq branch-2
log "the reverted file version is not applied again"
touch "$NET"   # an inotify event: the watcher reads the file again
sleep 3
status_lacks hq 'on probation' || die "hq applied the reverted file version again"
echo "hq: not on probation again; the file still has the wrong key for branch-2"

log "fix the file (git revert): back to the good version"
cp "$WORK/network.good.yaml" "$NET.new"
mv "$NET.new" "$NET"
sleep 1
check_lans hq branch-1 branch-2 branch-3
for site in "${SITES[@]}"; do
  wait_until 20 "$site to leave probation" status_lacks "$site" 'on probation'
done

if [[ ${KEEP:-0} == 1 ]]; then
  log "KEEP=1: look around, e.g. ip netns exec $(gw hq) env NETMAN_STATE_DIR=$WORK/state/hq $NETMAN_BIN status"
  read -r -p "press Enter to tear down " _
fi

log "demo passed in $((SECONDS - T0)) s; continuous pings lost $LOST_TOTAL packets"
# teardown: the EXIT trap (netman down on every gateway, then the namespaces)
