#!/usr/bin/env bash
# bench-network.sh - `netman validate` of a fleet's network file.
#
# Generates a hub-and-spoke network file of N sites (default 1000, the
# most a network file may have; every site a /24 behind it, so each of the
# N derived manifests lists the others' subnets) with a fresh key per site,
# and prints the wall-clock and CPU seconds and the peak memory of
# `netman validate` on it, medians of ROUNDS runs (default 3). Every site's
# manifest is derived and checked, spread over the machine's cores. No root
# needed; nothing outside a temp dir is touched.
#
#   examples/bench-network.sh                       # builds target/release/netman
#   NETMAN_BIN=/path/to/netman N=500 ROUNDS=5 examples/bench-network.sh
set -Eeuo pipefail

N=${N:-1000}
ROUNDS=${ROUNDS:-3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${NETMAN_BIN:-} ]]; then
  (cd "$HERE" && cargo build --release --quiet)
  NETMAN_BIN=$HERE/target/release/netman
fi
WORK=$(mktemp -d /tmp/netman-bench-network.XXXXXX)
trap 'rm -rf "$WORK"' EXIT INT TERM
[[ -x /usr/bin/time ]] || { echo "needs /usr/bin/time (Debian package time)" >&2; exit 2; }

{
  printf 'network: bench\ndefaults:\n  listen_port: 51820\n  private_key_file: /etc/netman/private.key\n'
  printf 'topology:\n  hub_and_spoke:\n    hubs: [s0]\nsites:\n'
  for ((i = 0; i < N; i++)); do
    key=$("$NETMAN_BIN" genkey | "$NETMAN_BIN" pubkey)
    printf '  - name: s%d\n    public_key: %s\n    addresses: [10.20.%d.%d/16]\n    subnets: [172.%d.%d.0/24]\n' \
      "$i" "$key" $((i / 250)) $((i % 250 + 1)) $((16 + i / 250)) $((i % 250 + 1))
    ((i == 0)) && printf '    endpoint: 192.0.2.1:51820\n'
  done
} >"$WORK/network.yaml"
"$NETMAN_BIN" validate "$WORK/network.yaml"

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }
for ((r = 0; r < ROUNDS; r++)); do
  /usr/bin/time -o "$WORK/time" -f '%e %U %S %M' "$NETMAN_BIN" validate "$WORK/network.yaml" >/dev/null
  cat "$WORK/time"
done >"$WORK/runs"
printf '%-6s %8s %8s %10s\n' sites "wall s" "cpu s" "peak MB"
printf '%-6s %8s %8s %10s\n' "$N" \
  "$(awk '{print $1}' "$WORK/runs" | median)" \
  "$(awk '{printf "%.2f\n", $2 + $3}' "$WORK/runs" | median)" \
  "$(awk '{printf "%.0f\n", $4 / 1024}' "$WORK/runs" | median)"
