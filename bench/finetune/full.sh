#!/usr/bin/env bash
# Full fine-tuning (every stage unfrozen) of MobileNetV2 on the Fashion-MNIST subset, headstart
# vs PyTorch, side by side; EPOCHS (default 1) to keep it within a CPU budget.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
epochs=${EPOCHS:-1}
threads=${THREADS:-2}
data=$root/bench/feature_extraction/out/data
cd "$root"
export HEADSTART_HOME=${HEADSTART_HOME:-$root/.cache}   # the asset store scripts/fetch-assets fills
cargo build -q --release -p headstart-cli
export OMP_NUM_THREADS=$threads
hs=$root/target/release/headstart
rm -rf "$out/run-full"
/usr/bin/time -f "%e %M" -o "$out/hs_full.time" "$hs" train --mode finetune --unfreeze all --epochs "$epochs" --head-epochs 0 \
  --lr 1e-4 --weight-decay 0.01 --schedule constant --stage-lr-decay 1 --val-split 0 --data "$data/train" \
  --out "$out/run-full" --no-cache --progress none --json > "$out/hs_full.log"
"$hs" eval "$out/run-full/bundle" --data "$data/test" --no-cache --progress none --json > "$out/hs_full_eval.log"
/usr/bin/time -f "%e %M" -o "$out/pt_full.time" "$root/.venv-ref/bin/python" "$here/reference_finetune.py" "$data/train" "$data/test" \
  "${HEADSTART_ASSETS:-$HEADSTART_HOME/assets}/mobilenet_v2-b0353104.pth" --threads "$threads" --epochs "$epochs" --all --lr 1e-4 > "$out/pt_full.log"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
t = lambda n: [float(x) for x in open(f"{out}/{n}.time").read().split()]
pt = json.loads(open(f"{out}/pt_full.log").read().strip().splitlines()[-1])
r = {"headstart_train_s": t("hs_full")[0], "headstart_test_accuracy": json.load(open(f"{out}/hs_full_eval.log"))["accuracy"],
     "pytorch_train_s": pt["train_s"], "pytorch_test_accuracy": pt["test_accuracy"]}
json.dump(r, open(f"{out}/full_results.json", "w"), indent=1)
print(json.dumps(r, indent=1))
PY
