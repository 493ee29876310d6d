#!/usr/bin/env bash
# Extraction at fp32 and bf16, headstart and PyTorch side by side in one run:
#   - the machine's matmul peak (fp32, bf16);
#   - MobileNetV2 forward alone (random input, batch 32) per precision and layout;
#   - end-to-end `train` on a Fashion-MNIST subset (cold feature cache): extraction images/s,
#     where the wall time goes (start-up, loading, decoding, backbone, head);
#   - MiniLM sentence embeddings against sentence-transformers, fp32 and bf16 autocast.
# Needs: scripts/fetch-assets mobilenet_v2 fashion_mnist all_minilm_l6_v2 sentiment; .venv-ref.
# PER_CLASS (default 100) images per class; HEAD (default logistic) for `train`.
# Writes bench/precision/out/results.jsonl and prints the summary (summary.py).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
mkdir -p "$out"
cd "$root"
export HEADSTART_HOME=${HEADSTART_HOME:-$root/.cache}
assets=${HEADSTART_ASSETS:-$HEADSTART_HOME/assets}
export OMP_NUM_THREADS=${THREADS:-2}
per=${PER_CLASS:-100}
steps=${STEPS:-5}
head=${HEAD:-logistic}
data=$out/data/fashion-$per
[[ -d $data ]] || scripts/make-fashion-subset train "$per" "$data"
[[ -f $out/data/sentiment/train.csv ]] || python3 "$root/bench/text/prepare.py" "$assets/sentiment/test/fixtures" "$out/data/sentiment" > /dev/null
if [[ -z ${NO_BUILD:-} ]]; then
  cargo build -q --release -p headstart-cli
  cargo build -q --release -p headstart --example extract_throughput --example text_bench
fi
py=$root/.venv-ref/bin/python
hs=${HEADSTART_BIN:-$root/target/release/headstart}
ex=$root/target/release/examples
res=$out/results.jsonl
: > "$res"
"$py" "$here/reference.py" peak | tee -a "$res"
"$ex/extract_throughput" mobilenet_v2 "$steps" 32 | tee -a "$res"
"$py" "$here/reference.py" backbone "$steps" | tee -a "$res"
for p in fp32 bf16; do
  rm -rf "$out/tp-cache" "$out/tp-run"
  /usr/bin/time -f "%e" -o "$out/tp-hs-$p.time" "$hs" train --data "$data" --out "$out/tp-run" --cache-dir "$out/tp-cache" --precision "$p" --head "$head" --progress none --json > "$out/tp-hs-$p.json"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({'tool':'headstart','what':'train','precision':d['precision'],'n':d['backbone_computed'],'wall_s':float(open(sys.argv[2]).read()),'timings':d['timings']}))" "$out/tp-hs-$p.json" "$out/tp-hs-$p.time" | tee -a "$res"
  /usr/bin/time -f "%e" -o "$out/tp-pt-$p.time" "$py" "$here/reference.py" train "$data" "$assets/mobilenet_v2-b0353104.pth" "$p" > "$out/tp-pt-$p.json"
  python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); d['wall_s']=float(open(sys.argv[2]).read()); print(json.dumps(d))" "$out/tp-pt-$p.json" "$out/tp-pt-$p.time" | tee -a "$res"
done
model=$assets/all-minilm-l6-v2
for p in fp32 bf16; do
  "$ex/text_bench" embed "$model" "$out/data/sentiment/train.csv" "$p" | tee -a "$res"
  "$py" "$here/reference.py" embed "$model" "$out/data/sentiment/train.csv" "$p" 2>/dev/null | tee -a "$res"
done
python3 "$here/summary.py" "$res"
