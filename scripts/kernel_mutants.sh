#!/usr/bin/env bash
# The kernels' logic without a GPU: runs the host emulation (kernels/emulate) of the real
# kernels of both versions, once more under AddressSanitizer/UBSan (a subset of cases), then
# applies every mutant in kernels/emulate/mutants/ (a deliberate bug, one patch each) to a copy
# of kernels/ and checks that the emulation catches it. A mutant named v2-* is in version 2's
# own code and runs against version 2 only; the others are in version 1 or in code both
# versions share (one function, so catching it once suffices) and run against version 1 only.
# Exits 0 only when the real kernels pass, the sanitized run is clean and every mutant is
# caught; the last line reads "N of N mutants caught".
#
# Usage: scripts/kernel_mutants.sh          (needs g++ and the pinned CUDA headers, installed
#                                            on first use: scripts/pinned_cuda.sh)
set -euo pipefail
export LC_ALL=C
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/pinned_cuda.sh
ensure_pinned_cuda

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
flags=(-std=c++20 -O1 -pthread -w)
build() { # kernels-dir output [extra flags...]
    local dir=$1 out=$2
    shift 2
    g++ "${flags[@]}" "$@" -I "$dir/emulate" -I "$cuda_include" "$dir/emulate/main.cpp" -o "$out"
}

mutants=(kernels/emulate/mutants/*.patch)
# Copies of kernels/ with each mutant applied; a patch that no longer applies is an error.
for p in "${mutants[@]}"; do
    name=$(basename "$p" .patch)
    mkdir -p "$tmp/$name"
    cp -r kernels "$tmp/$name/"
    patch --quiet -p1 -d "$tmp/$name" < "$p" || { echo "kernel_mutants: $p does not apply to kernels/" >&2; exit 1; }
done

# Build everything, two compilers at a time.
jobs=()
build kernels "$tmp/real" & jobs+=($!)
build kernels "$tmp/real-asan" -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer & jobs+=($!)
for job in "${jobs[@]}"; do wait "$job"; done
jobs=()
for p in "${mutants[@]}"; do
    name=$(basename "$p" .patch)
    build "$tmp/$name/kernels" "$tmp/$name/emulate" &
    jobs+=($!)
    if [ ${#jobs[@]} -ge 2 ]; then wait "${jobs[0]}"; jobs=("${jobs[@]:1}"); fi
done
for job in "${jobs[@]}"; do wait "$job"; done

echo "== the real kernels, host emulation"
"$tmp/real" || { echo "kernel_mutants: the host emulation of the real kernels disagrees with the float64 reference" >&2; exit 1; }
echo "== the real kernels under AddressSanitizer/UBSan (subset)"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 "$tmp/real-asan" --quick > "$tmp/asan.log" 2>&1 || {
    tail -n 40 "$tmp/asan.log" >&2
    echo "kernel_mutants: the sanitized emulation failed" >&2
    exit 1
}
tail -n 1 "$tmp/asan.log"

echo "== mutants"
caught=0
for p in "${mutants[@]}"; do
    name=$(basename "$p" .patch)
    version=--v1
    case "$name" in v2-*) version=--v2 ;; esac
    if "$tmp/$name/emulate" --stop-early "$version" > "$tmp/$name.log" 2>&1; then
        echo "SURVIVED $name: $(head -n 1 "$p")"
    else
        caught=$((caught + 1))
        echo "caught   $name: $(grep -m1 '^FAIL' "$tmp/$name.log" | cut -c1-160)"
    fi
done
echo "$caught of ${#mutants[@]} mutants caught"
[ "$caught" -eq "${#mutants[@]}" ]
