#!/usr/bin/env bash
# Embedding export rows/s: `headstart embed` against torchvision + pyarrow, side by side, and
# how far apart their vectors are.
# Needs: scripts/setup, scripts/setup --reference (with pyarrow), scripts/fetch-assets
# mobilenet_v2 fashion_mnist. HEADSTART_BIN picks a built binary (default: a release build).
# Writes bench/embed/out/: data, both Parquet files, logs, results.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
threads=${THREADS:-2}
per_class=${PER_CLASS:-100}
mkdir -p "$out"
cd "$root"
export HEADSTART_HOME=${HEADSTART_HOME:-$root/.cache}   # the asset store scripts/fetch-assets fills
if [[ ! -d $out/data ]]; then
  scripts/make-fashion-subset train "$per_class" "$out/data"
fi
hs=${HEADSTART_BIN:-}
if [[ -z $hs ]]; then
  cargo build -q --release -p headstart-cli
  hs=$root/target/release/headstart
fi
weights=${HEADSTART_ASSETS:-$HEADSTART_HOME/assets}/mobilenet_v2-b0353104.pth
measure() { # name, command...: wall seconds and peak RSS via /usr/bin/time
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$out/$name.time" "$@" > "$out/$name.log" 2> "$out/$name.err"
  echo "$name: $(cat "$out/$name.time") (s, KiB)"
}
export OMP_NUM_THREADS=$threads
rm -f "$out"/*.parquet
measure headstart "$hs" embed --data "$out/data" --model mobilenet_v2 --weights "$weights" --out "$out/headstart.parquet" \
  --no-cache --progress none --json
measure reference "$root/.venv-ref/bin/python" "$here/reference.py" "$out/data" "$weights" "$out/reference.parquet" --threads "$threads"
# The same reference with glibc malloc set as the headstart binary sets it (engine::tune_allocator):
# large buffers stay in the heap instead of a fresh mmap each, faulted in and zeroed every time.
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824 measure reference_malloc "$root/.venv-ref/bin/python" "$here/reference.py" \
  "$out/data" "$weights" "$out/reference_malloc.parquet" --threads "$threads"
"$root/.venv-ref/bin/python" - "$out" <<'PY'
import json, os, sys
import pyarrow.parquet as pq
out = sys.argv[1]
def t(name):
    s, kib = open(f"{out}/{name}.time").read().split()
    return float(s), int(kib) / 1024
def rows(name):
    tb = pq.read_table(f"{out}/{name}.parquet")
    key = lambda p: os.path.join(*p.split(os.sep)[-2:])
    return {key(p): e for p, e in zip(tb.column("path").to_pylist(), tb.column("embedding").to_pylist())}
h, r = rows("headstart"), rows("reference")
assert h.keys() == r.keys(), "the two files hold different rows"
diff = max(abs(a - b) for k in h for a, b in zip(h[k], r[k]))
res = {}
for name in ["headstart", "reference", "reference_malloc"]:
    wall, rss = t(name)
    res[name] = {"rows": len(h), "wall_s": wall, "rows_per_s": len(h) / wall, "peak_rss_mib": round(rss, 1)}
res["speedup_rows_per_s"] = res["headstart"]["rows_per_s"] / res["reference"]["rows_per_s"]
res["speedup_vs_reference_malloc"] = res["headstart"]["rows_per_s"] / res["reference_malloc"]["rows_per_s"]
res["max_abs_diff"] = diff
json.dump(res, open(f"{out}/results.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
