#!/usr/bin/env bash
# Long fuzzing campaigns of the model-file and .npy parsers (the loop of tests/fuzz.rs).
#
#   bash scripts/fuzz.sh [MINUTES] [EXECUTIONS_PER_ROUND]     defaults: 60 and 1000000
#
# Each round runs both targets with the next seed (start: $GAUSSSKIP_FUZZ_SEED, else random)
# and prints their counts; inputs that panic, run slow or use too much memory are saved under
# target/fuzz-failures/ and stop the campaign with a non-zero status. CI runs the same loop
# with 100,000 executions per target (cargo test).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-60}
per_round=${2:-1000000}
seed=${GAUSSSKIP_FUZZ_SEED:-$((RANDOM * 32768 + RANDOM))}
cargo test --release --test fuzz --no-run
end=$((SECONDS + minutes * 60))
rounds=0
log=$(mktemp)
stats=$(mktemp)
trap 'rm -f "$log" "$stats"' EXIT
while [ "$SECONDS" -lt "$end" ]; do
    if ! GAUSSSKIP_FUZZ_SEED=$seed GAUSSSKIP_FUZZ_EXECS=$per_round \
        cargo test --release --test fuzz mutated -- --nocapture --test-threads=1 >"$log" 2>&1; then
        cat "$log"
        echo "fuzz: round with seed $seed failed; inputs in target/fuzz-failures/" >&2
        exit 1
    fi
    grep -oE '(model|npy): Stats.*' "$log" | sed "s/^/seed $seed: /" | tee -a "$stats"
    seed=$((seed + 1))
    rounds=$((rounds + 1))
done
echo "fuzz: $rounds rounds of $per_round executions per target, no failures"
# Totals per target: executions, accepted, rejected, panics.
awk '{ t = $3; gsub(":", "", t)
       for (i = 1; i <= NF; i++) {
           if ($i == "executions:") e[t] += $(i + 1)
           if ($i == "accepted:") a[t] += $(i + 1)
           if ($i == "rejected:") r[t] += $(i + 1)
           if ($i == "panics:") p[t] += $(i + 1)
       } }
     END { for (t in e) printf "fuzz total %s: %d executions, %d accepted, %d rejected, %d panics\n", t, e[t], a[t], r[t], p[t] }' "$stats"
