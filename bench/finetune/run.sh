#!/usr/bin/env bash
# Fine-tuning, headstart vs PyTorch eager, side by side in one run: training-step throughput
# (MobileNetV2 and ResNet-50, batch 32, 224 px, full and last-stage, fp32) and a 5-epoch
# last-stage fine-tune on the Fashion-MNIST subset of the feature-extraction benchmark.
# Needs: scripts/setup, scripts/setup --reference, scripts/fetch-assets mobilenet_v2 fashion_mnist.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
threads=${THREADS:-2}
steps=${STEPS:-4}
mkdir -p "$out"
cd "$root"
export HEADSTART_HOME=${HEADSTART_HOME:-$root/.cache}   # the asset store scripts/fetch-assets fills
data=$root/bench/feature_extraction/out/data
if [[ ! -d $data/train ]]; then
  scripts/make-fashion-subset train 200 "$data/train"
  scripts/make-fashion-subset test 100 "$data/test"
fi
cargo build -q --release -p headstart-cli
cargo build -q --release -p headstart --example step_throughput
export OMP_NUM_THREADS=$threads
py=$root/.venv-ref/bin/python
: > "$out/throughput.jsonl"
for model in mobilenet_v2 resnet50; do
  for mode in full last; do
    "$root/target/release/examples/step_throughput" "$model" "$mode" "$steps" | tee -a "$out/throughput.jsonl"
    "$py" "$here/step_reference.py" "$model" "$mode" "$steps" | tee -a "$out/throughput.jsonl"
  done
done
weights=${HEADSTART_ASSETS:-$HEADSTART_HOME/assets}/mobilenet_v2-b0353104.pth
rm -rf "$out/run-last" "$out/cache"
hs=$root/target/release/headstart
/usr/bin/time -f "%e %M" -o "$out/hs_finetune.time" "$hs" train --mode finetune --unfreeze last:1 --epochs 5 --head-epochs 0 \
  --lr 1e-3 --weight-decay 0.01 --schedule constant --stage-lr-decay 1 --val-split 0 --data "$data/train" \
  --out "$out/run-last" --cache-dir "$out/cache" --progress none --json > "$out/hs_finetune.log"
/usr/bin/time -f "%e %M" -o "$out/hs_finetune_eval.time" "$hs" eval "$out/run-last/bundle" --data "$data/test" \
  --no-cache --progress none --json > "$out/hs_finetune_eval.log"
/usr/bin/time -f "%e %M" -o "$out/pt_finetune.time" "$py" "$here/reference_finetune.py" "$data/train" "$data/test" "$weights" \
  --threads "$threads" > "$out/pt_finetune.log"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/throughput.jsonl")]
tp = {}
for r in rows:
    tp.setdefault(f"{r['model']}/{r['mode']}", {})[r["tool"]] = r["images_per_s"]
for k, v in tp.items():
    v["ratio"] = v["headstart"] / v["pytorch"]
t = lambda n: [float(x) for x in open(f"{out}/{n}.time").read().split()]
pt = json.loads(open(f"{out}/pt_finetune.log").read().strip().splitlines()[-1])
r = {"throughput_images_per_s": tp,
     "last_stage_5_epochs": {
        "headstart_train_s": t("hs_finetune")[0], "headstart_eval_s": t("hs_finetune_eval")[0],
        "headstart_peak_rss_mib": t("hs_finetune")[1] / 1024,
        "headstart_test_accuracy": json.load(open(f"{out}/hs_finetune_eval.log"))["accuracy"],
        "pytorch_wall_s": t("pt_finetune")[0], "pytorch_train_s": pt["train_s"],
        "pytorch_peak_rss_mib": t("pt_finetune")[1] / 1024, "pytorch_test_accuracy": pt["test_accuracy"]}}
l = r["last_stage_5_epochs"]
l["speedup_train"] = l["pytorch_train_s"] / l["headstart_train_s"]
l["speedup_end_to_end"] = l["pytorch_wall_s"] / (l["headstart_train_s"] + l["headstart_eval_s"])
json.dump(r, open(f"{out}/results.json", "w"), indent=1)
print(json.dumps(r, indent=1))
PY
