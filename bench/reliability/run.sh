#!/usr/bin/env bash
# Reliability: `headstart train` on a messy folder of ~1,400 generated images (truncated,
# bit-flipped, header-damaged, junk, decompression bombs, and valid images in unusual layouts and
# extreme shapes), with Pillow's verdict on the same files side by side.
# Needs: scripts/setup, scripts/setup --reference, scripts/fetch-assets mobilenet_v2.
# PROFILE=dev reuses the debug build (memory and counts do not depend on it).
# Writes bench/reliability/out/: the folder, logs, and results.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$here/out
profile=${PROFILE:-release}
cd "$root"
rm -rf "$out" && mkdir -p "$out"
.venv-ref/bin/python "$here/make_messy.py" "$out/messy" --seed "${SEED:-0}" | tee "$out/kinds.txt"
cargo build -q --profile "$profile" -p headstart-cli
dir=$([[ $profile == dev ]] && echo debug || echo "$profile")
hs=$root/target/$dir/headstart
export OMP_NUM_THREADS=${THREADS:-2}
.venv-ref/bin/python - "$hs" "$out" <<'PY'
import json, resource, subprocess, sys, warnings
from collections import Counter
from pathlib import Path
from PIL import Image

hs, out = sys.argv[1], Path(sys.argv[2])
run = subprocess.run([hs, "train", "--data", str(out / "messy"), "--out", str(out / "run"), "--no-cache",
                      "--progress", "none", "--json"], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
(out / "train.err").write_text(run.stderr)
o = json.loads(run.stdout) if run.returncode == 0 else {}
skips = [json.loads(l) for l in (out / "run" / "errors.jsonl").read_text().splitlines()] if run.returncode == 0 else []
refused = {Path(s["path"]).name for s in skips}

def pillow_ok(p):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(p) as im:
                im.convert("RGB").load()
        return True
    except Exception:
        return False

files = sorted(p for p in (out / "messy").rglob("*") if p.is_file())
kind = lambda name: name.split("_")[0]
table = Counter()
for p in files:
    table[(kind(p.name), p.name not in refused, pillow_ok(p))] += 1
reasons = Counter(s["reason"].split(":")[0] for s in skips)
res = {
    "files": len(files), "exit_code": run.returncode, "panicked": "panicked" in run.stderr,
    "peak_rss_mib": round(peak / 2**20), "accepted": o.get("n_train", 0) + o.get("n_val", 0),
    "refused": len(skips), "val_accuracy": (o.get("val") or {}).get("accuracy"),
    "reasons": dict(reasons.most_common()),
    "by_kind": {f"{k} headstart={'ok' if a else 'refused'} pillow={'ok' if b else 'refused'}": n for (k, a, b), n in sorted(table.items())},
}
(out / "results.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
PY
