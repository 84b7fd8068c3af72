#!/usr/bin/env bash
# Builds everything a GPU machine needs HERE and packs it into .carry/ (git-ignored), to be
# copied next to a checkout there. The GPU machine has no Rust toolchain and no network, so it runs
# only what this packs:
#   .carry/bin/cuda-tests    tests/cuda.rs (GPU tests; GAUSSSKIP_REQUIRE_CUDA=1 makes a
#                            missing GPU a failure instead of a skip)
#   .carry/bin/cuda-bench    benches/cuda.rs (criterion)
#   .carry/lib/libgaussskip.so
#   .carry/bench/gpu_bench.py, .carry/bench/torch_peer.py (copy of ../shared/bench)
#   .carry/python/gaussskip  the Python package with libgaussskip.so inside; .carry/python-tests
#   .carry/run_gpu.sh        the command to run there: GPU tests, compute-sanitizer, Python
#                            torch tests, then the speed table
# The binaries need glibc >= 2.34 and load libcuda at run time (no CUDA toolkit).
#
# Usage: scripts/device_build.sh      then, on the GPU machine, from the repository root
#   (with .carry/ copied there):  bash .carry/run_gpu.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
carry="$root/.carry"

cargo build --release
exe() { # the executable cargo reports for target `$2` of kind `$1` in the JSON on stdin
    python3 -c '
import json, sys
kind, name = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name and kind in m["target"]["kind"]:
        print(m["executable"])
' "$1" "$2"
}
tests=$(cargo test --release --test cuda --no-run --message-format=json | exe test cuda)
bench=$(cargo bench --bench cuda --no-run --message-format=json | exe bench cuda)
[ -n "$tests" ] && [ -n "$bench" ] || { echo "could not find the built test/bench executables" >&2; exit 1; }

rm -rf "$carry.tmp"
mkdir -p "$carry.tmp/bin" "$carry.tmp/lib" "$carry.tmp/bench"
cp "$tests" "$carry.tmp/bin/cuda-tests"
cp "$bench" "$carry.tmp/bin/cuda-bench"
cp target/release/libgaussskip.so "$carry.tmp/lib/"
cp scripts/gpu_bench.py "$carry.tmp/bench/"
# The Python package with the library beside it, and its tests.
mkdir -p "$carry.tmp/python" "$carry.tmp/python-tests"
cp -r bindings/python/gaussskip "$carry.tmp/python/"
cp target/release/libgaussskip.so "$carry.tmp/python/gaussskip/"
cp bindings/python/tests/conftest.py bindings/python/tests/test_torch.py "$carry.tmp/python-tests/"
if [ -f ../shared/bench/torch_peer.py ]; then cp ../shared/bench/torch_peer.py "$carry.tmp/bench/"; fi
cat > "$carry.tmp/run_gpu.sh" <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine from the repository root (about 8-10 minutes on an H100/H200: the
# GPU tests and the speed table cover both kernel versions; GS_BENCH_ARGS="--versions v2" or
# "--quick" shortens the table). Prints the device, the GPU tests (a missing GPU fails),
# compute-sanitizer on small shapes, the Python torch tests (graph capture and streams), then
# the speed table (v1 and v2 side by side). Logs go to $OUT.
set -uo pipefail
out=${OUT:-/tmp/gs-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
status=0

echo "== GPU tests (GAUSSSKIP_REQUIRE_CUDA=1)"
GAUSSSKIP_REQUIRE_CUDA=1 .carry/bin/cuda-tests --test-threads=1 --nocapture > "$out/tests.log" 2>&1
rc=$?
grep -E "^test |test result|panicked|configurations" "$out/tests.log"
[ $rc -eq 0 ] || status=1

echo "== compute-sanitizer on small shapes"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
if [ -z "$sanitizer" ]; then
    echo "compute-sanitizer: not installed here"
else
    for tool in memcheck racecheck synccheck; do
        GAUSSSKIP_REQUIRE_CUDA=1 timeout 240 "$sanitizer" --tool "$tool" --error-exitcode 3 \
            .carry/bin/cuda-tests --test-threads=1 --exact small_shapes_for_the_sanitizers > "$out/sanitizer-$tool.log" 2>&1
        rc=$?
        if grep -q "Device not supported" "$out/sanitizer-$tool.log"; then
            echo "$tool: compute-sanitizer does not support this device/runtime (not run)"
        elif [ $rc -eq 0 ]; then
            echo "$tool: clean ($(grep -m1 'ERROR SUMMARY' "$out/sanitizer-$tool.log"))"
        else
            echo "$tool: FAILED (rc $rc)"; tail -n 30 "$out/sanitizer-$tool.log"; status=1
        fi
    done
fi

echo "== Python: torch tests (CUDA tensors, streams, graph capture)"
if [ -d .carry/python ]; then
    PYTHONPATH=.carry/python GAUSSSKIP_REQUIRE_CUDA=1 python3 -m pytest -q .carry/python-tests 2>&1 | tee "$out/python.log" | tail -n 15
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
    echo "no Python package carried"
fi

echo "== speed table (ours, v1 and v2, vs PyTorch, same run)"
PYTHONUNBUFFERED=1 python3 .carry/bench/gpu_bench.py --lib .carry/lib/libgaussskip.so ${GS_BENCH_ARGS:-} 2>&1 | tee "$out/bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "run_gpu: exit $status"
exit $status
RUN
chmod +x "$carry.tmp/run_gpu.sh"
rm -rf "$carry"
mv "$carry.tmp" "$carry"
du -sh "$carry"
echo "packed $carry: copy it to the GPU machine's checkout and run 'bash .carry/run_gpu.sh'"
