#!/usr/bin/env bash
# Serving under load, headstart vs a FastAPI + PyTorch reference, side by side in one run.
# Each server gets the same bundle (MobileNetV2 features, logistic head trained on data/sample)
# and the same request: one 28 × 28 Fashion-MNIST PNG as base64, top_k 5, upscaled by the
# server's preprocessing to 224 px. For each: saturation throughput (closed loop, CONC clients,
# SAT_S seconds), then RATE_S seconds at 70% of it (open loop: latency counted from the
# scheduled send time). Client: crates/headstart-cli/examples/loadgen.rs.
# Needs: scripts/setup, scripts/setup --reference (plus fastapi and uvicorn in .venv-ref),
# scripts/fetch-assets mobilenet_v2. Writes bench/serve/out/: logs and results.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
threads=${THREADS:-2}
conc=${CONC:-16}
sat_s=${SAT_S:-20}
rate_s=${RATE_S:-60}
profile=${PROFILE:-release}
hs_threads=${HS_THREADS:-2}   # headstart model workers (each with its own copy, THREADS/HS_THREADS torch threads)
mkdir -p "$out"
cd "$root"
export HEADSTART_HOME=${HEADSTART_HOME:-$root/.cache}
if [[ $profile == release ]]; then
  cargo build -q --release -p headstart-cli --bin headstart --example loadgen
  bin=$root/target/release
else
  cargo build -q -p headstart-cli --bin headstart --example loadgen
  bin=$root/target/debug
fi
weights=${HEADSTART_ASSETS:-$HEADSTART_HOME/assets}/mobilenet_v2-b0353104.pth
[[ -f $out/run/bundle/bundle.toml ]] || "$bin/headstart" train --data data/sample --out "$out/run" --progress none > "$out/train.log"
img=$(ls data/sample/Bag/*.png | head -1)
printf '{"inputs": ["%s"], "top_k": 5}' "$(base64 -w0 "$img")" > "$out/body.json"

wait_up() { # url
  for _ in $(seq 1 600); do curl -sf "$1" > /dev/null && return 0; sleep 0.1; done
  echo "server at $1 did not come up" >&2; return 1
}
bench() { # name url
  local name=$1 url=$2
  curl -sf -H 'Content-Type: application/json' --data @"$out/body.json" "$url" > "$out/$name.answer.json"
  "$bin/examples/loadgen" "$url" "$out/body.json" closed "$conc" "$sat_s" > "$out/$name.saturation.json"
  local rate
  rate=$(python3 -c "import json; print(round(0.7 * json.load(open('$out/$name.saturation.json'))['throughput_rps'], 2))")
  "$bin/examples/loadgen" "$url" "$out/body.json" open "$rate" "$rate_s" > "$out/$name.rate70.json"
  echo "$name: saturation $(cat "$out/$name.saturation.json")"
  echo "$name: 70%        $(cat "$out/$name.rate70.json")"
}

# headstart: HS_THREADS model workers sharing the cores, dynamic batching.
OMP_NUM_THREADS=$threads "$bin/headstart" serve "$out/run/bundle" --addr 127.0.0.1:18181 --threads "$hs_threads" --max-batch 32 --max-wait-ms 5 \
  --queue-size 1024 2> "$out/headstart.err" &
hs_pid=$!
trap 'kill $hs_pid 2>/dev/null || true; kill ${ref_pid:-0} 2>/dev/null || true' EXIT
wait_up http://127.0.0.1:18181/readyz
bench headstart http://127.0.0.1:18181/v1/predict
kill -TERM $hs_pid; wait $hs_pid || true

OMP_NUM_THREADS=$threads "$root/.venv-ref/bin/python" "$here/reference.py" "$out/run/bundle" "$weights" --port 18182 --threads "$threads" \
  2> "$out/reference.err" &
ref_pid=$!
wait_up http://127.0.0.1:18182/healthz
bench reference http://127.0.0.1:18182/v1/predict
kill -TERM $ref_pid; wait $ref_pid || true

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
j = lambda n: json.load(open(f"{out}/{n}.json"))
r = {n: {"saturation": j(f"{n}.saturation"), "rate70": j(f"{n}.rate70"), "answer": j(f"{n}.answer")["predictions"][0]["top"][:2]}
     for n in ["headstart", "reference"]}
h, p = r["headstart"], r["reference"]
r["ratios"] = {
  "throughput_headstart_over_reference": h["saturation"]["throughput_rps"] / p["saturation"]["throughput_rps"],
  "headstart_p99_over_p50_at_70pct": h["rate70"]["p99_ms"] / h["rate70"]["p50_ms"],
  "reference_p99_over_p50_at_70pct": p["rate70"]["p99_ms"] / p["rate70"]["p50_ms"],
}
json.dump(r, open(f"{out}/results.json", "w"), indent=2)
print(json.dumps(r, indent=2))
PY
