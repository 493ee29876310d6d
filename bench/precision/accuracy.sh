#!/usr/bin/env bash
# Accuracy of heads trained on bf16 features against heads trained on fp32 features, on a grey
# image set (Fashion-MNIST subset), an RGB image set (patches of the scikit-image photos) and a
# text set (UCI Sentiment Labelled Sentences). Each head is evaluated on its own precision's
# test features (the bundle records the precision; `eval` uses it).
# Needs: scripts/fetch-assets mobilenet_v2 fashion_mnist test_photos all_minilm_l6_v2 sentiment;
# .venv-ref (Pillow). Writes bench/precision/out/accuracy.json. SETS picks the sets; NO_BUILD=1 and
# HEADSTART_BIN=PATH run another build of the binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
mkdir -p "$out"
cd "$root"
export HEADSTART_HOME=${HEADSTART_HOME:-$root/.cache}
assets=${HEADSTART_ASSETS:-$HEADSTART_HOME/assets}
export OMP_NUM_THREADS=${THREADS:-2}
[[ -d $out/data/fashion/train ]] || { scripts/make-fashion-subset train 200 "$out/data/fashion/train"; scripts/make-fashion-subset test 100 "$out/data/fashion/test"; }
[[ -d $out/data/photos/train ]] || "$root/.venv-ref/bin/python" "$here/make_patches.py" "$assets" "$out/data/photos"
[[ -f $out/data/sentiment/train.csv ]] || python3 "$root/bench/text/prepare.py" "$assets/sentiment/test/fixtures" "$out/data/sentiment" > /dev/null
[[ -n ${NO_BUILD:-} ]] || cargo build -q --release -p headstart-cli
hs=${HEADSTART_BIN:-$root/target/release/headstart}
rm -rf "$out/acc-cache" "$out"/acc-run-*
for set in ${SETS:-fashion photos sentiment}; do
  case $set in
    sentiment) train=$out/data/sentiment/train.csv; test=$out/data/sentiment/test.csv ;;
    *) train=$out/data/$set/train; test=$out/data/$set/test ;;
  esac
  for p in fp32 bf16; do
    "$hs" train --data "$train" --out "$out/acc-run-$set-$p" --cache-dir "$out/acc-cache" --precision "$p" --seed 0 --progress none --json > "$out/acc-$set-$p-train.json"
    "$hs" eval "$out/acc-run-$set-$p/bundle" --data "$test" --cache-dir "$out/acc-cache" --progress none --json > "$out/acc-$set-$p-eval.json"
    echo "$set $p: test accuracy $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['accuracy'])" "$out/acc-$set-$p-eval.json")"
  done
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
r = {}
for s in ["fashion", "photos", "sentiment"]:
    try:
        e = {p: json.load(open(f"{out}/acc-{s}-{p}-eval.json")) for p in ["fp32", "bf16"]}
        t = {p: json.load(open(f"{out}/acc-{s}-{p}-train.json")) for p in ["fp32", "bf16"]}
    except FileNotFoundError:
        continue
    r[s] = {"n_test": e["fp32"]["n"], "fp32": e["fp32"]["accuracy"], "bf16": e["bf16"]["accuracy"],
            "bf16_minus_fp32_points": 100 * (e["bf16"]["accuracy"] - e["fp32"]["accuracy"]),
            "recorded_precision": {p: t[p].get("precision") for p in t}}
json.dump(r, open(f"{out}/accuracy.json", "w"), indent=1)
print(json.dumps(r, indent=1))
PY
