#!/usr/bin/env bash
# Zero-shot classification at the ViT-B/32 shape (random weights), headstart vs transformers
# vs open_clip, side by side: 128 JPEGs, 10 labels × 3 templates, batches of 32.
# Needs: scripts/setup, scripts/setup --reference, open_clip_torch in .venv-ref.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${OUT:-$here/out}
export THREADS=${THREADS:-2} OMP_NUM_THREADS=${THREADS:-2}
cd "$root"
[[ -d $out/clip_b32 ]] || .venv-ref/bin/python "$here/reference.py" make "$out"
cargo build -q --release -p headstart --example zero_shot_bench
for i in 1 2; do
  target/release/examples/zero_shot_bench "$out/clip_b32" "$out/images" | tee -a "$out/results.jsonl"
  .venv-ref/bin/python "$here/reference.py" hf "$out" 2>/dev/null | tee -a "$out/results.jsonl"
  .venv-ref/bin/python "$here/reference.py" open_clip "$out" 2>/dev/null | tee -a "$out/results.jsonl"
done
