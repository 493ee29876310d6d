#!/usr/bin/env bash
# Long-text benchmark, headstart vs sentence-transformers + scikit-learn, side by side in one
# run: Reuters-21578 articles longer than all-MiniLM-L6-v2's 256-token window (prepare.py),
# classified by topic from frozen sentence embeddings.
#   - headstart: `train` (feature extraction, logistic head) on train.csv, then `eval` of the
#     bundle on test.csv; --long-text chunks (the default) and --long-text truncate; cold cache.
#     The timed run fits the same logistic regression as the reference (all training texts,
#     standardised features, L2 1/(C·n) with scikit-learn's C = 1: --val-split 0 --l2); then
#     headstart's default head (L2 chosen on a 20% validation split) runs on the cached
#     embeddings, for its accuracy.
#   - reference.py: sentence-transformers embeds the same chunks (the model's own tokenizer with
#     return_overflowing_tokens) or the truncated texts (`encode`), then StandardScaler +
#     LogisticRegression.
# Each configuration runs ROUNDS times (default 2), the tools alternating; wall and CPU time of
# every process are recorded (/usr/bin/time), the summary takes each one's fastest round.
# BF16=0 leaves out the bf16 runs (on CPUs without native bf16 they only measure emulation).
# Then an accuracy check on SPLITS (default 10) stratified resplits of the same articles (split 0
# is the timed one): one test set of 181 articles moves in steps of 0.55 points, so both tools'
# fixed-C heads are scored on every resplit, from embeddings computed once per tool and policy.
# Needs: scripts/setup, scripts/setup --reference, scripts/fetch-assets all_minilm_l6_v2 reuters21578.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
threads=${THREADS:-2}
rounds=${ROUNDS:-2}
splits=${SPLITS:-10}
bf16=${BF16:-1}
assets=${HEADSTART_ASSETS:-$root/.cache/assets}
mkdir -p "$out"
cd "$root"
export OMP_NUM_THREADS=$threads
model=$assets/all-minilm-l6-v2
data=$out/data
py=$root/.venv-ref/bin/python
"$py" "$here/prepare.py" "$assets/reuters21578" "$model/tokenizer.json" "$data" | tee "$out/prepare.json"
# HEADSTART_BIN: an already built binary instead of a release build (say so when reporting).
[[ -n "${HEADSTART_BIN:-}" ]] || cargo build -q --release -p headstart-cli
hs=${HEADSTART_BIN:-$root/target/release/headstart}
timed() { local name=$1; shift; /usr/bin/time -f "%e %U %S %M" -o "$out/$name.time" "$@" > "$out/$name.json"; }
rm -rf "$out"/*.time "$out"/hs_*.json "$out"/pt_*.json "$out"/run-*
# scikit-learn's C = 1 as headstart's L2: 1 / rows (rows, not lines: article bodies hold quoted
# line breaks).
l2_of() { python3 -c 'import csv, sys; print(1 / sum(1 for _ in csv.DictReader(open(sys.argv[1], newline=""))))' "$1"; }
l2=$(l2_of "$data/train.csv")
for r in $(seq 1 "$rounds"); do
  for policy in chunks truncate; do
    rm -rf "$out/cache"
    timed "hs_${policy}_train_$r" "$hs" train --data "$data/train.csv" --model "$model" --long-text "$policy" \
      --val-split 0 --l2 "$l2" --out "$out/run-$policy-$r" --cache-dir "$out/cache" --progress none --json
    timed "hs_${policy}_eval_$r" "$hs" eval "$out/run-$policy-$r/bundle" --data "$data/test.csv" --cache-dir "$out/cache" --progress none --json
    timed "pt_${policy}_$r" "$py" "$here/reference.py" "$policy" "$model" "$data/train.csv" "$data/test.csv"
    # headstart's default head, on the cached embeddings.
    timed "hsdef_${policy}_train_$r" "$hs" train --data "$data/train.csv" --model "$model" --long-text "$policy" \
      --out "$out/run-default-$policy-$r" --cache-dir "$out/cache" --progress none --json
    timed "hsdef_${policy}_eval_$r" "$hs" eval "$out/run-default-$policy-$r/bundle" --data "$data/test.csv" --cache-dir "$out/cache" --progress none --json
    # The same fixed-C run with the encoder under bf16 autocast (cold cache: features are keyed by precision).
    [[ $bf16 == 1 ]] || continue
    rm -rf "$out/cache"
    timed "hsbf16_${policy}_train_$r" "$hs" train --data "$data/train.csv" --model "$model" --long-text "$policy" --precision bf16 \
      --val-split 0 --l2 "$l2" --out "$out/run-bf16-$policy-$r" --cache-dir "$out/cache" --progress none --json
    timed "hsbf16_${policy}_eval_$r" "$hs" eval "$out/run-bf16-$policy-$r/bundle" --data "$data/test.csv" --cache-dir "$out/cache" --progress none --json
  done
done
if (( splits > 0 )); then
  rm -rf "$out/splits" "$out"/split_*
  for s in $(seq 0 $((splits - 1))); do
    "$py" "$here/prepare.py" "$assets/reuters21578" "$model/tokenizer.json" "$out/splits/s$s" "$s" > /dev/null
  done
  for policy in chunks truncate; do
    for d in "$out"/splits/s*; do
      s=$(basename "$d")
      "$hs" train --data "$d/train.csv" --model "$model" --long-text "$policy" --val-split 0 --l2 "$(l2_of "$d/train.csv")" \
        --out "$out/split_run-$policy-$s" --cache-dir "$out/cache-splits" --progress none --json > /dev/null
      "$hs" eval "$out/split_run-$policy-$s/bundle" --data "$d/test.csv" --cache-dir "$out/cache-splits" --progress none --json \
        > "$out/split_hs_${policy}_$s.json"
    done
    "$py" "$here/reference.py" resplits "$policy" "$model" "$out/splits" > "$out/split_pt_$policy.jsonl"
  done
fi
python3 "$here/summary.py" "$out" | tee "$out/summary.json"
