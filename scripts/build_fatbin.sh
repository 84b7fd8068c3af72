#!/usr/bin/env bash
# Builds kernels/prebuilt/gaussskip.fatbin with the pinned CUDA toolchain and writes its
# sidecar (kernels/prebuilt/gaussskip.fatbin.sha256: hash of the kernel sources and flags,
# hash of the fatbin, toolchain version) and the compiler's resource report
# (kernels/prebuilt/resource-usage.txt: registers, spills, shared memory per kernel).
#
# The toolchain is `cuda-toolkit[nvcc,nvvm,crt,cudart,cccl]==13.0.2` from PyPI (nvcc 13.0.88),
# installed into a virtual environment ($GAUSSSKIP_CUDA_VENV, default /tmp/gaussskip-cuda-13.0.2)
# on first use. All five extras are listed so that no newer piece is pulled in. nvcc needs a
# host gcc/g++ even for device-only output. Output is byte-for-byte reproducible for the same
# sources, flags and toolchain (no paths or dates are embedded; checked by check_fatbin.sh).
#
# Usage: scripts/build_fatbin.sh [--out DIR] [--no-report]
set -euo pipefail
export LC_ALL=C

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/kernels/prebuilt"
report=1
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --no-report) report=0; shift ;;
        *) echo "usage: $0 [--out DIR] [--no-report]" >&2; exit 2 ;;
    esac
done

source "$root/scripts/pinned_cuda.sh"
ensure_pinned_cuda
pin=$pinned_cuda_pin
version=$("$nvcc" --version | grep -o "release .*")

cd "$root"
mapfile -t flags < <(tr -s ' \n' '\n' < kernels/nvcc-flags.txt | sed '/^$/d')
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$nvcc" "${flags[@]}" -o "$tmp/gaussskip.fatbin" kernels/skip.cu
if [ "$report" = 1 ]; then
    # A second compile with ptxas verbose (it records its options in the fatbin, so the
    # committed file is built without them); timing lines are dropped so the report is stable.
    "$nvcc" "${flags[@]}" -Xptxas -v -o "$tmp/verbose.fatbin" kernels/skip.cu 2> "$tmp/ptxas.txt"
    grep -v 'Compile time' "$tmp/ptxas.txt" > "$tmp/resource-usage.txt"
fi

sources=$(sha256sum kernels/*.cu kernels/*.cuh kernels/nvcc-flags.txt | sha256sum | cut -d' ' -f1)
fatbin=$(sha256sum "$tmp/gaussskip.fatbin" | cut -d' ' -f1)
{
    echo "sources $sources"
    echo "fatbin $fatbin"
    echo "toolchain $pin"
    echo "nvcc $version"
} > "$tmp/gaussskip.fatbin.sha256"

# Move into place one file at a time (rename within the folder is atomic).
for f in gaussskip.fatbin gaussskip.fatbin.sha256 resource-usage.txt; do
    [ -f "$tmp/$f" ] || continue
    cp "$tmp/$f" "$out/.$f.tmp"
    mv "$out/.$f.tmp" "$out/$f"
done
echo "wrote $out/gaussskip.fatbin ($(wc -c < "$out/gaussskip.fatbin") bytes, sources $sources)"
