#!/usr/bin/env bash
# Audio benchmark, headstart vs the transformers route, side by side in one run, on spoken
# letters and syllables as language identification (Debian klettres-data; LANGS, default five
# languages, stratified 80/20 split):
#   - feature extraction with Whisper tiny.en (same weights on both sides, from the CTranslate2
#     file): headstart `train` on a cold feature cache, then `eval --no-cache` on the test clips,
#     vs soundfile + resample_poly + WhisperFeatureExtractor + the WhisperModel encoder + mean
#     pooling + scikit-learn LogisticRegression: clips/s, end-to-end time, test accuracy;
#   - fine-tuning one epoch of a small random Wav2Vec2 (4 layers, width 256; feature encoder
#     frozen, batch 8, lr 3e-5) in fp32 and bf16: training samples/s vs HF Trainer.
# Needs: scripts/setup, scripts/setup --reference, scripts/fetch-assets whisper_tiny_en klettres.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
threads=${THREADS:-2}
langs=${LANGS:-de,fr,it,ru,hu}
mkdir -p "$out"
cd "$root"
export HEADSTART_HOME=${HEADSTART_HOME:-$root/.cache}   # the asset store scripts/fetch-assets fills
export OMP_NUM_THREADS=$threads
assets=${HEADSTART_ASSETS:-$HEADSTART_HOME/assets}
data=$out/data
python3 "$here/prepare.py" "$assets/klettres" "$data" "$langs" | tee "$out/prepare.json"
# HEADSTART_BIN: an already built binary instead of a release build (say so when reporting).
if [[ -z "${HEADSTART_BIN:-}" ]]; then
  cargo build -q --release -p headstart-cli
fi
py=$root/.venv-ref/bin/python
hs=${HEADSTART_BIN:-$root/target/release/headstart}
: > "$out/results.jsonl"
rm -rf "$out/cache" "$out/run-"*
# Wall seconds, peak RSS KiB, user and system CPU seconds (the CPU time is the steadier figure on
# a shared machine).
timed() { local name=$1; shift; /usr/bin/time -f "%e %M %U %S" -o "$out/$name.time" "$@" > "$out/$name.json"; }
# Feature extraction: cold cache, then the test clips without a cache.
timed hs_train "$hs" train --data "$data/train.csv" --model whisper_tiny_en --out "$out/run-features" --cache-dir "$out/cache" \
  --progress none --json
timed hs_eval "$hs" eval "$out/run-features/bundle" --data "$data/test.csv" --no-cache --progress none --json
timed pt_features "$py" "$here/reference.py" features "$assets/whisper-tiny.en/model.bin" "$data/train.csv" "$data/test.csv"
# Fine-tuning step throughput on a small random Wav2Vec2.
n_labels=$(tr ',' '\n' <<< "$langs" | wc -l)
"$py" "$here/reference.py" make-w2v2 "$out/w2v2-small" "$n_labels" > /dev/null
for p in fp32 bf16; do
  timed "hs_finetune_$p" "$hs" train --mode finetune --data "$data/train.csv" --model "$out/w2v2-small" --epochs 1 --head-epochs 0 \
    --batch-size 8 --lr 3e-5 --val-split 0 --precision "$p" --out "$out/run-finetune-$p" --no-cache --progress none --json
  timed "pt_finetune_$p" "$py" "$here/reference.py" trainer "$out/w2v2-small" "$data/train.csv" "$p"
done
python3 "$here/summary.py" "$out"
