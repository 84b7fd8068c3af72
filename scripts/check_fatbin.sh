#!/usr/bin/env bash
# CI check: fails when the committed kernels/prebuilt/gaussskip.fatbin or its sidecar is stale
# for kernels/*.cu, kernels/*.cuh and kernels/nvcc-flags.txt.
#
# Two comparisons, both must hold:
#  1. the sidecar's `sources` hash equals the hash of the current kernel sources and flags
#     (cheap; catches an edited kernel whose fatbin was not rebuilt), and its `fatbin` hash is
#     the committed fatbin's (catches a fatbin replaced without its sidecar);
#  2. a rebuild with the pinned toolchain (scripts/build_fatbin.sh, installs it into a venv if
#     needed) is byte-identical to the committed fatbin. nvcc 13.0.88 embeds no paths, dates or
#     temporary names, so identical inputs give identical bytes; this also proves the committed
#     file came from these sources with this toolchain.
# The kernels' logic is checked by scripts/kernel_mutants.sh (host emulation and its mutants).
set -euo pipefail
export LC_ALL=C
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
side=kernels/prebuilt/gaussskip.fatbin.sha256
bin=kernels/prebuilt/gaussskip.fatbin
fail() { echo "check_fatbin: $*" >&2; echo "check_fatbin: rebuild with scripts/build_fatbin.sh and commit kernels/prebuilt/" >&2; exit 1; }

[ -f "$bin" ] || fail "$bin is missing"
[ -f "$side" ] || fail "$side is missing"
sources=$(sha256sum kernels/*.cu kernels/*.cuh kernels/nvcc-flags.txt | sha256sum | cut -d' ' -f1)
grep -qx "sources $sources" "$side" || fail "the kernel sources changed since the fatbin was built (sidecar: $(grep '^sources' "$side"), now: $sources)"
fatbin=$(sha256sum "$bin" | cut -d' ' -f1)
grep -qx "fatbin $fatbin" "$side" || fail "the committed fatbin does not match its sidecar"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bash scripts/build_fatbin.sh --out "$tmp" --no-report >&2
cmp -s "$tmp/gaussskip.fatbin" "$bin" || fail "a rebuild with the pinned toolchain differs from the committed fatbin"
cmp -s "$tmp/gaussskip.fatbin.sha256" "$side" || fail "a rebuild writes a different sidecar"
echo "check_fatbin: kernels/prebuilt is current (sources $sources)"

