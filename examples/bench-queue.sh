#!/usr/bin/env bash
# bench-queue.sh - latency under load against the TUN device's transmit
# queue length (`interface.txqueuelen`; docs/performance.md, "Queueing").
#
# Runs ../shared/bench/tunnel-bench.sh (the project's harness: two
# namespaces, veth underlay, tunnel MTU 1420) for netman once per queue
# length in QLENS, with `txqueuelen: Q` added to the manifests the harness
# writes (a copy of the harness, patched in a temp dir; the original is not
# changed), and prints the harness's summary lines per length.
#
#   sudo NETMAN_BIN=$PWD/target/release/netman examples/bench-queue.sh
#   sudo NETMAN_BIN=... QLENS="500 64 1" TESTS="tcp1 pingload udp" ROUNDS=2 examples/bench-queue.sh
#
# Needs what the harness needs (iperf3, jq, iputils-ping, iproute2). All
# traffic stays inside the harness's two namespaces, which it deletes.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=${HARNESS:-$HERE/../shared/bench/tunnel-bench.sh}
QLENS=${QLENS:-500 64 16 4 1}
ROUNDS=${ROUNDS:-1}
DURATION=${DURATION:-8}
export TESTS=${TESTS:-tcp1 pingload}
[[ $(id -u) == 0 ]] || { echo "bench-queue.sh: run as root" >&2; exit 2; }
[[ -f $HARNESS ]] || { echo "bench-queue.sh: no harness at $HARNESS (set HARNESS)" >&2; exit 2; }
[[ -n ${NETMAN_BIN:-} && -x $NETMAN_BIN ]] || { echo "bench-queue.sh: set NETMAN_BIN to a netman binary" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
patched=$work/tunnel-bench.sh
# The manifest the harness writes gets `txqueuelen: $NM_QLEN` after its
# mtu line; the harness's own files are found where the original lives.
sed -e 's|^  mtu: \$TUN_MTU$|  mtu: $TUN_MTU\n  txqueuelen: ${NM_QLEN}|' \
    -e "s|^SCRIPT_DIR=.*|SCRIPT_DIR=$(cd "$(dirname "$HARNESS")" && pwd)|" \
    "$HARNESS" >"$patched"
grep -q 'txqueuelen: \${NM_QLEN}' "$patched" ||
  { echo "bench-queue.sh: the harness's netman manifest changed; cannot add txqueuelen" >&2; exit 1; }

for q in $QLENS; do
  echo "== txqueuelen $q"
  NM_QLEN=$q bash "$patched" -r "$ROUNDS" -t "$DURATION" netman | grep '^summary'
done
