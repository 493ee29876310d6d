#!/usr/bin/env bash
# Audio benchmark, headstart vs the transformers route, side by side in one run, on spoken
# letters and syllables as language identification (Debian klettres-data; LANGS, default five
# languages, stratified 80/20 split):
#   - feature extraction with Whisper tiny.en (same weights on both sides, from the CTranslate2
#     file): headstart `train` on a cold feature cache, then `eval --no-cache` on the test clips,
#     once per encoder window (WINDOWS, default `clip,full`: the clip's own seconds, or the whole
#     30 s as Whisper pads), vs soundfile + resample_poly + WhisperFeatureExtractor + the
#     WhisperModel encoder (30 s) + mean pooling + scikit-learn LogisticRegression: clips/s,
#     end-to-end time, test accuracy;
#   - fine-tuning a small random Wav2Vec2 (4 layers, width 256; feature encoder frozen, batch 8,
#     lr 3e-5; EPOCHS, default 1) in fp32 and bf16 vs HF Trainer: training samples/s of the
#     whole jobs, and of the optimiser steps alone (headstart's `timings.finetune`, a
#     TrainerCallback on the other side), also without each side's first two steps
#     (FINETUNE=0 leaves fine-tuning out, FEATURES=0 feature extraction; PRECISIONS, default
#     "fp32 bf16", the fine-tuning precisions to run).
# Needs: scripts/setup, scripts/setup --reference, scripts/fetch-assets whisper_tiny_en klettres.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
threads=${THREADS:-2}
langs=${LANGS:-de,fr,it,ru,hu}
per_lang=${PER_LANG:-0}   # at most this many clips of each language (0: all), for a quick check
windows=${WINDOWS:-clip,full}
epochs=${EPOCHS:-1}
features=${FEATURES:-1}
mkdir -p "$out"
cut -d' ' -f1-3 /proc/loadavg > "$out/load_start"   # the machine's load, for the report
cd "$root"
export HEADSTART_HOME=${HEADSTART_HOME:-$root/.cache}   # the asset store scripts/fetch-assets fills
export OMP_NUM_THREADS=$threads
assets=${HEADSTART_ASSETS:-$HEADSTART_HOME/assets}
data=$out/data
python3 "$here/prepare.py" "$assets/klettres" "$data" "$langs" "$per_lang" | tee "$out/prepare.json"
# HEADSTART_BIN: an already built binary instead of a release build (say so when reporting).
if [[ -z "${HEADSTART_BIN:-}" ]]; then
  cargo build -q --release -p headstart-cli
fi
py=$root/.venv-ref/bin/python
hs=${HEADSTART_BIN:-$root/target/release/headstart}
: > "$out/results.jsonl"
rm -rf "$out/cache"* "$out/run-"* "$out/"hs_* "$out/"pt_* "$out/summary.json"
# Wall seconds, peak RSS KiB, user and system CPU seconds (the CPU time is the steadier figure on
# a shared machine).
timed() { local name=$1; shift; /usr/bin/time -f "%e %M %U %S" -o "$out/$name.time" "$@" > "$out/$name.json"; }
[[ $features == 0 ]] && windows=""
# Feature extraction, per window: cold cache, then the test clips without a cache.
for w in ${windows//,/ }; do
  timed "hs_train_$w" "$hs" train --data "$data/train.csv" --model whisper_tiny_en --audio-window "$w" --out "$out/run-features-$w" \
    --cache-dir "$out/cache-$w" --progress none --json
  timed "hs_eval_$w" "$hs" eval "$out/run-features-$w/bundle" --data "$data/test.csv" --no-cache --progress none --json
done
if [[ $features != 0 ]]; then
  timed pt_features "$py" "$here/reference.py" features "$assets/whisper-tiny.en/model.bin" "$data/train.csv" "$data/test.csv"
fi
# Fine-tuning step throughput on a small random Wav2Vec2.
if [[ ${FINETUNE:-1} == 0 ]]; then
  cut -d' ' -f1-3 /proc/loadavg > "$out/load_end"
python3 "$here/summary.py" "$out" "$windows"
  exit 0
fi
n_labels=$(tr ',' '\n' <<< "$langs" | wc -l)
"$py" "$here/reference.py" make-w2v2 "$out/w2v2-small" "$n_labels" > /dev/null
for p in ${PRECISIONS:-fp32 bf16}; do
  timed "hs_finetune_$p" "$hs" train --mode finetune --data "$data/train.csv" --model "$out/w2v2-small" --epochs "$epochs" --head-epochs 0 \
    --batch-size 8 --lr 3e-5 --val-split 0 --precision "$p" --out "$out/run-finetune-$p" --no-cache --progress none --json
  timed "pt_finetune_$p" "$py" "$here/reference.py" trainer "$out/w2v2-small" "$data/train.csv" "$p" "$epochs"
done
cut -d' ' -f1-3 /proc/loadavg > "$out/load_end"
python3 "$here/summary.py" "$out" "$windows"
