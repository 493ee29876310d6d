#!/usr/bin/env bash
# CLIP at the ViT-B/32 shape (random weights), headstart vs transformers vs open_clip, side by
# side in one run, two rounds:
#   - zero-shot: 128 JPEGs, 10 labels × 3 templates, batches of 32 (images/s of the image loop);
#     and the same job as whole processes (`headstart zero-shot FILE...` against the reference
#     scripts, imports, model construction and prompts included): images/s of the whole job;
#   - embedding export: the same 128 JPEGs in two class folders, one Parquet row each
#     (`headstart embed` against the image tower + pyarrow), rows/s and whole-process wall time.
# PRECISION=bf16 runs every image tower under bf16 autocast on the CPU (headstart
# `--precision bf16`, PyTorch `torch.autocast("cpu", dtype=torch.bfloat16)`); default fp32.
# Needs: scripts/setup, scripts/setup --reference, open_clip_torch in .venv-ref.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${OUT:-$here/out}
export THREADS=${THREADS:-2} OMP_NUM_THREADS=${THREADS:-2} PRECISION=${PRECISION:-fp32}
cd "$root"
py=$root/.venv-ref/bin/python
[[ -d $out/clip_b32 ]] || "$py" "$here/reference.py" make "$out"
if [[ ! -d $out/labelled ]]; then
  mkdir -p "$out/labelled/a" "$out/labelled/b"
  for f in "$out"/images/*.jpg; do
    n=$(basename "$f" .jpg); c=a; (( 10#$n % 2 )) && c=b
    cp "$f" "$out/labelled/$c/"
  done
fi
if [[ -z ${NO_BUILD:-} ]]; then
  cargo build -q --release -p headstart --example zero_shot_bench
  cargo build -q --release -p headstart-cli
fi
hs=${HEADSTART_BIN:-$root/target/release/headstart}
res=$out/results.jsonl
labels=cat,dog,bird,car,plane,ship,horse,truck,frog,deer
# One JSON line from a reference's own JSON line plus its process's wall time and peak RSS.
with_process() { python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); w,m=open(sys.argv[2]).read().split(); d.update(wall_s=float(w),peak_rss_mib=int(m)//1024,images_per_s_process=round(d['images']/float(w),2)); print(json.dumps(d))" "$1" "$2"; }
for i in 1 2; do
  target/release/examples/zero_shot_bench "$out/clip_b32" "$out/images" "$PRECISION" | tee -a "$res"
  /usr/bin/time -f "%e %M" -o "$out/hs.time" "$hs" zero-shot --model "$out/clip_b32" --labels "$labels" --template "a photo of a {}." \
    --template "a blurry photo of a {}." --template "a drawing of a {}." --top-k 5 --precision "$PRECISION" --json "$out"/images/*.jpg > "$out/hs-zs.json"
  python3 -c "import json,sys; w,m=open(sys.argv[1]).read().split(); print(json.dumps({'impl':'headstart_zero_shot_process','precision':sys.argv[2],'images':128,'wall_s':float(w),'peak_rss_mib':int(m)//1024,'images_per_s_process':round(128/float(w),2)}))" "$out/hs.time" "$PRECISION" | tee -a "$res"
  for k in hf open_clip; do
    /usr/bin/time -f "%e %M" -o "$out/ref.time" "$py" "$here/reference.py" $k "$out" 2>/dev/null > "$out/ref.json"
    with_process "$out/ref.json" "$out/ref.time" | tee -a "$res"
  done
  /usr/bin/time -f "%e %M" -o "$out/hs.time" "$hs" embed --model "$out/clip_b32" --data "$out/labelled" --no-cache \
    --precision "$PRECISION" --progress none --json --out "$out/headstart.parquet" > "$out/hs-embed.json"
  python3 -c "import json,sys; w,m=open(sys.argv[1]).read().split(); print(json.dumps({'impl':'headstart_embed','precision':sys.argv[2],'rows':128,'wall_s':float(w),'peak_rss_mib':int(m)//1024,'rows_per_s_process':round(128/float(w),2)}))" "$out/hs.time" "$PRECISION" | tee -a "$res"
  for k in embed_hf embed_open_clip; do
    /usr/bin/time -f "%e %M" -o "$out/ref.time" "$py" "$here/reference.py" $k "$out" 2>/dev/null > "$out/ref.json"
    python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).read()); w,m=open(sys.argv[2]).read().split(); d.update(wall_s=float(w),peak_rss_mib=int(m)//1024,rows_per_s_process=round(128/float(w),2)); print(json.dumps(d))" "$out/ref.json" "$out/ref.time" | tee -a "$res"
  done
done
