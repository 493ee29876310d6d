#!/usr/bin/env bash
# Training-step throughput with bf16 autocast on CPU, headstart vs PyTorch, side by side.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
steps=${STEPS:-4}
mkdir -p "$out"
cd "$root"
cargo build -q --release -p headstart --example step_throughput
export OMP_NUM_THREADS=${THREADS:-2}
: > "$out/throughput_bf16.jsonl"
for model in mobilenet_v2 resnet50; do
  for mode in full last; do
    "$root/target/release/examples/step_throughput" "$model" "$mode" "$steps" 32 bf16 | tee -a "$out/throughput_bf16.jsonl"
    "$root/.venv-ref/bin/python" "$here/step_reference.py" "$model" "$mode" "$steps" 32 bf16 | tee -a "$out/throughput_bf16.jsonl"
  done
done
