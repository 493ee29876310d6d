#!/usr/bin/env bash
# Whisper's window for clip classification: headstart's `full` and `clip` features and the
# transformers route's, each under one scikit-learn head, over RESPLITS (default 10) stratified
# resplits of every clip of LANGS (default ten languages of Debian klettres-data).
# Accuracy only (see windows.py). Needs: scripts/setup, scripts/setup --reference (plus
# pyarrow in .venv-ref), scripts/fetch-assets whisper_tiny_en klettres.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out/windows
langs=${LANGS:-de,fr,it,ru,hu,es,pt_BR,lt,uk,nds}
mkdir -p "$out"
cd "$root"
export HEADSTART_HOME=${HEADSTART_HOME:-$root/.cache}
export OMP_NUM_THREADS=${THREADS:-2}
assets=${HEADSTART_ASSETS:-$HEADSTART_HOME/assets}
python3 "$here/prepare.py" "$assets/klettres" "$out/data" "$langs" 0 > "$out/prepare.json"
# One manifest of every clip; the resplits are drawn in windows.py.
{ head -1 "$out/data/train.csv"; tail -n +2 "$out/data/train.csv"; tail -n +2 "$out/data/test.csv"; } > "$out/all.csv"
# HEADSTART_BIN: an already built binary instead of a release build (say so when reporting).
[[ -n "${HEADSTART_BIN:-}" ]] || cargo build -q --release -p headstart-cli
hs=${HEADSTART_BIN:-$root/target/release/headstart}
for w in full clip; do
  "$hs" embed --model whisper_tiny_en --data "$out/all.csv" --audio-window "$w" --cache-dir "$out/cache-$w" \
    --progress none --out "$out/$w.parquet" > /dev/null
done
"$root/.venv-ref/bin/python" "$here/windows.py" "$out/all.csv" "$out/full.parquet" "$out/clip.parquet" \
  "$assets/whisper-tiny.en/model.bin" "$out/summary.json" "${RESPLITS:-10}"
