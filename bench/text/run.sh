#!/usr/bin/env bash
# Text benchmark, headstart vs the Python references, side by side in one run, on the UCI
# Sentiment Labelled Sentences with all-MiniLM-L6-v2:
#   - embedding throughput (batch 32, real lengths) vs sentence-transformers encode;
#   - full fine-tuning step throughput at length 128, batch 16, fp32 and bf16, vs HF Trainer;
#   - feature extraction end to end (frozen encoder, linear head 10 epochs; headstart caches
#     the embeddings, the reference runs the encoder every epoch), and the default logistic head;
#   - full fine-tuning, 3 epochs, lr 5e-5, batch 16: test accuracy vs HF Trainer.
# Needs: scripts/setup, scripts/setup --reference, scripts/fetch-assets all_minilm_l6_v2 sentiment.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
threads=${THREADS:-2}
steps=${STEPS:-10}
mkdir -p "$out"
cd "$root"
export HEADSTART_HOME=${HEADSTART_HOME:-$root/.cache}   # the asset store scripts/fetch-assets fills
export OMP_NUM_THREADS=$threads
model=${HEADSTART_ASSETS:-$HEADSTART_HOME/assets}/all-minilm-l6-v2
data=$out/data
python3 "$here/prepare.py" "${HEADSTART_ASSETS:-$HEADSTART_HOME/assets}/sentiment/test/fixtures" "$data" | tee "$out/prepare.json"
cargo build -q --release -p headstart-cli
cargo build -q --release -p headstart --example text_bench
py=$root/.venv-ref/bin/python
hs=$root/target/release/headstart
bench=$root/target/release/examples/text_bench
: > "$out/results.jsonl"
"$bench" embed "$model" "$data/train.csv" | tee -a "$out/results.jsonl"
"$py" "$here/reference.py" embed "$model" "$data/train.csv" 2>/dev/null | tee -a "$out/results.jsonl"
for p in fp32 bf16; do
  "$bench" step "$model" "$data/long.csv" $p "$steps" | tee -a "$out/results.jsonl"
  "$py" "$here/reference.py" step "$model" "$data/long.csv" $p "$steps" 2>/dev/null | tee -a "$out/results.jsonl"
done
# Feature extraction: linear head, 10 epochs, no early stop, on a cold cache.
rm -rf "$out/cache" "$out/run-"*
timed() { local name=$1; shift; /usr/bin/time -f "%e %M" -o "$out/$name.time" "$@" > "$out/$name.json"; }
timed hs_linear "$hs" train --data "$data/train.csv" --model "$model" --head linear --epochs 10 --patience 10 --val-split 0 \
  --out "$out/run-linear" --cache-dir "$out/cache" --progress none --json
timed hs_linear_eval "$hs" eval "$out/run-linear/bundle" --data "$data/test.csv" --no-cache --progress none --json
timed hs_logistic "$hs" train --data "$data/train.csv" --model "$model" --out "$out/run-logistic" --cache-dir "$out/cache" --progress none --json
timed hs_logistic_eval "$hs" eval "$out/run-logistic/bundle" --data "$data/test.csv" --no-cache --progress none --json
timed pt_features "$py" "$here/reference.py" features "$model" "$data/train.csv" "$data/test.csv"
# Full fine-tuning, HF Trainer's recipe on both sides.
timed hs_finetune "$hs" train --mode finetune --data "$data/train.csv" --model "$model" --epochs 3 --lr 5e-5 --batch-size 16 \
  --val-split 0 --out "$out/run-finetune" --no-cache --progress none --json
timed hs_finetune_eval "$hs" eval "$out/run-finetune/bundle" --data "$data/test.csv" --no-cache --progress none --json
timed pt_finetune "$py" "$here/reference.py" trainer "$model" "$data/train.csv" "$data/test.csv"
python3 "$here/summary.py" "$out"
