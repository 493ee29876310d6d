#!/usr/bin/env bash
# Feature extraction, headstart vs the classic PyTorch recipe, side by side in one run.
# Needs: scripts/setup, scripts/setup --reference, scripts/fetch-assets mobilenet_v2 fashion_mnist.
# Writes bench/feature_extraction/out/: data, logs, and results.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
threads=${THREADS:-2}
mkdir -p "$out"
cd "$root"
export HEADSTART_HOME=${HEADSTART_HOME:-$root/.cache}   # the asset store scripts/fetch-assets fills
if [[ ! -d $out/data/train ]]; then
  rm -rf "$out/data"
  scripts/make-fashion-subset train 200 "$out/data/train"
  scripts/make-fashion-subset test 100 "$out/data/test"
fi
cargo build -q --release -p headstart-cli
hs=$root/target/release/headstart
weights=${HEADSTART_ASSETS:-$HEADSTART_HOME/assets}/mobilenet_v2-b0353104.pth
cache=$out/cache
rm -rf "$cache" "$out"/run-*
measure() { # name, command...: wall seconds and peak RSS via /usr/bin/time
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$out/$name.time" "$@" > "$out/$name.log" 2> "$out/$name.err"
  echo "$name: $(cat "$out/$name.time") (s, KiB)"
}
export OMP_NUM_THREADS=$threads
measure headstart_train "$hs" train --data "$out/data/train" --out "$out/run-logistic" --cache-dir "$cache" --progress none --json
measure headstart_eval "$hs" eval "$out/run-logistic/bundle" --data "$out/data/test" --cache-dir "$cache" --progress none --json
measure headstart_train_linear "$hs" train --data "$out/data/train" --out "$out/run-linear" --cache-dir "$cache" --head linear --epochs 10 --progress none --json
measure headstart_eval_linear "$hs" eval "$out/run-linear/bundle" --data "$out/data/test" --cache-dir "$cache" --progress none --json
measure pytorch "$root/.venv-ref/bin/python" "$here/reference.py" "$out/data/train" "$out/data/test" "$weights" --threads "$threads"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def t(name):
    s, kib = open(f"{out}/{name}.time").read().split()
    return float(s), int(kib) / 1024
def j(name):
    return json.load(open(f"{out}/{name}.log"))
ref = json.loads(open(f"{out}/pytorch.log").read().strip().splitlines()[-1])
r = {
  "pytorch": {"wall_s": t("pytorch")[0], "peak_rss_mib": t("pytorch")[1], "train_s": ref["train_s"], "test_accuracy": ref["test_accuracy"]},
  "headstart_train": {"wall_s": t("headstart_train")[0], "peak_rss_mib": t("headstart_train")[1], "val_accuracy": j("headstart_train")["val"]["accuracy"]},
  "headstart_eval": {"wall_s": t("headstart_eval")[0], "peak_rss_mib": t("headstart_eval")[1], "test_accuracy": j("headstart_eval")["accuracy"]},
  "headstart_train_linear_cached": {"wall_s": t("headstart_train_linear")[0], "peak_rss_mib": t("headstart_train_linear")[1]},
  "headstart_eval_linear": {"test_accuracy": j("headstart_eval_linear")["accuracy"]},
}
r["ratios"] = {
  "train_vs_pytorch_wall": r["headstart_train"]["wall_s"] / r["pytorch"]["wall_s"],
  "train_plus_eval_vs_pytorch_wall": (r["headstart_train"]["wall_s"] + r["headstart_eval"]["wall_s"]) / r["pytorch"]["wall_s"],
  "second_train_vs_pytorch_wall": r["headstart_train_linear_cached"]["wall_s"] / r["pytorch"]["wall_s"],
  "test_accuracy_points_vs_pytorch": 100 * (r["headstart_eval"]["test_accuracy"] - r["pytorch"]["test_accuracy"]),
}
json.dump(r, open(f"{out}/results.json", "w"), indent=1)
print(json.dumps(r, indent=1))
PY
