#!/usr/bin/env bash
# bench-validate.sh - `netman validate` of N firewall rules against N routes.
#
# Generates two manifests, one with N rules in one chain and one with N
# routes (default N=100000; also 20,000 in the same run), and prints the CPU
# time (user + system) of `netman validate` on each, medians of ROUNDS runs
# (default 3). Validation is meant to be linear: rules should cost about
# what routes cost. No root needed; nothing outside a temp dir is touched.
#
#   examples/bench-validate.sh                        # builds target/release/netman
#   NETMAN_BIN=/path/to/netman ROUNDS=5 examples/bench-validate.sh
set -Eeuo pipefail

ROUNDS=${ROUNDS:-3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${NETMAN_BIN:-} ]]; then
  (cd "$HERE" && cargo build --release --quiet)
  NETMAN_BIN=$HERE/target/release/netman
fi
WORK=$(mktemp -d /tmp/netman-bench-validate.XXXXXX)
trap 'rm -rf "$WORK"' EXIT INT TERM
[[ -x /usr/bin/time ]] || { echo "needs /usr/bin/time (Debian package time)" >&2; exit 2; }

head() {
  printf 'name: bench\ninterface:\n  name: nm0\n  addresses: [10.255.0.1/24]\n  private_key_file: k\n'
}
manifest() { # KIND N
  head
  if [[ $1 == routes ]]; then
    echo "routes:"
    awk -v n="$2" 'BEGIN { for (i = 0; i < n; i++) printf "  - to: %d.%d.%d.0/24\n", 10 + int(i / 65536), int(i / 256) % 256, i % 256 }'
  else
    printf 'firewall:\n  chains:\n    - name: forward\n      hook: forward\n      rules:\n'
    awk -v n="$2" 'BEGIN { for (i = 0; i < n; i++) printf "        - ip saddr %d.%d.%d.0/24 accept\n", 10 + int(i / 65536), int(i / 256) % 256, i % 256 }'
  fi
}
cpu_s() { # FILE -> CPU seconds of one validate
  /usr/bin/time -o "$WORK/time" -f '%U %S' "$NETMAN_BIN" validate "$1" >/dev/null
  awk '{ printf "%.2f\n", $1 + $2 }' "$WORK/time"
}
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }

printf '%-8s %10s %14s\n' n kind "cpu s (median)"
for n in 20000 100000; do
  for kind in routes rules; do
    manifest "$kind" "$n" >"$WORK/$kind$n.yaml"
    "$NETMAN_BIN" validate "$WORK/$kind$n.yaml" >/dev/null
    m=$(for _ in $(seq "$ROUNDS"); do cpu_s "$WORK/$kind$n.yaml"; done | median)
    printf '%-8s %10s %14s\n' "$n" "$kind" "$m"
  done
done
