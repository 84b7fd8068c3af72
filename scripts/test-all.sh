#!/usr/bin/env bash
# Every test of the project, as the README's test command and CI run it:
#   1. the Rust suite (unit, integration, C/C++ consumer programs, doc tests) in release mode;
#   2. the benchmarks compile (they are measured with `cargo bench`, not here);
#   3. the Python package installed with pip into a private virtual environment, and its tests.
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

step "Python package (pip install ./bindings/python) and its tests"
cargo build --release --lib
venv=${GAUSSSKIP_TEST_VENV:-target/py-test-venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet numpy pytest ./bindings/python
GAUSSSKIP_LIB="$PWD/target/release/libgaussskip.so" "$venv/bin/python" -m pytest -q bindings/python/tests

step "all tests passed"
