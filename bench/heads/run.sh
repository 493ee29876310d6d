#!/usr/bin/env bash
# Heads on frozen features, side by side in one run: headstart's logistic head (L2 chosen on the
# validation split or by cross-validation, then refitted on every labelled image) against
# scikit-learn's LogisticRegression on the same features, rows, folds and L2 grid; and the test
# accuracy of every head with and without the refit, on a Fashion-MNIST subset and on the demo
# sample (data/sample).
# Needs: scripts/setup, scripts/setup --reference (scikit-learn), scripts/fetch-assets mobilenet_v2 fashion_mnist.
# Writes bench/heads/out/: data, logs, and results.json. SEEDS (default 5) splits per head;
# REPEATS (default 5) timed fits per side (scikit-learn at tol 1e-6: one); THREADS (default 2).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
threads=${THREADS:-2}
seeds=${SEEDS:-5}
repeats=${REPEATS:-5}
mkdir -p "$out"
cd "$root"
if [[ ! -d $out/data/train ]]; then
  rm -rf "$out/data"
  scripts/make-fashion-subset train 100 "$out/data/train"
  scripts/make-fashion-subset test 100 "$out/data/test"
fi
cargo build -q --release -p headstart-cli
cargo build -q --release -p headstart --example head_bench
hs=$root/target/release/headstart
bench=$root/target/release/examples/head_bench
py=$root/.venv-ref/bin/python
cache=$out/cache
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads

# Features (cached), then every head with and without the refit; the timed logistic fits.
for set in fashion:"$out/data/train" demo:"$root/data/sample"; do
  name=${set%%:*} train=${set#*:}
  "$bench" "$train" "$out/data/test" "$cache" "$out/$name" "$seeds" "$repeats" > "$out/$name-headstart.json"
  "$py" "$here/reference.py" "$out/$name" --repeats "$repeats" > "$out/$name-sklearn.json"
  # The tighter tolerance (headstart's own) is slow on the small cross-validated set: one repeat.
  "$py" "$here/reference.py" "$out/$name" --repeats 1 --tol 1e-6 > "$out/$name-sklearn-tol1e-6.json"
done

# The command line, as a user runs it: train with and without the refit, then eval on the test set.
for set in fashion:"$out/data/train" demo:"$root/data/sample"; do
  name=${set%%:*} train=${set#*:}
  for mode in refit no-refit; do
    "$hs" train --data "$train" --out "$out/run-$name-$mode" --cache-dir "$cache" --progress none --"$mode" > "$out/cli-$name-$mode.txt"
    "$hs" train --data "$train" --out "$out/run-$name-$mode" --cache-dir "$cache" --progress none --"$mode" --json > "$out/cli-$name-$mode.json"
    "$hs" eval "$out/run-$name-$mode/bundle" --data "$out/data/test" --cache-dir "$cache" --progress none --json > "$out/eval-$name-$mode.json"
  done
done
"$py" "$here/summary.py" "$out"
