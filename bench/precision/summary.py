"""Markdown tables from bench/precision/out/results.jsonl (run.sh's measurements)."""
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
MNV2_GFLOP = 0.601  # MobileNetV2 at 224 px: 300.8 M multiply-adds per image (torchvision)
MINILM_MFLOP_PER_TOKEN = 2 * 6 * (4 * 384 * 384 + 2 * 384 * 1536) / 1e6  # projections and FFN, 6 layers


def pick(**kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


peak = {r["dtype"].replace("float32", "fp32").replace("bfloat16", "bf16"): r["gflops"] for r in pick(what="matmul_peak")}
print("### Matmul peak (torch.matmul 2048x2048, 2 threads)\n")
print("| dtype | GFLOP/s |\n|---|---:|")
for k, v in peak.items():
    print(f"| {k} | {v:.1f} |")

print("\n### MobileNetV2 forward alone, batch 32, random input (images/s)\n")
print("| precision, layout | headstart | PyTorch eager | GFLOP/s (headstart) | share of matmul peak |\n|---|---:|---:|---:|---:|")
for p, lay in [("fp32", "contiguous"), ("fp32", "channels_last"), ("bf16", "contiguous"), ("bf16", "channels_last")]:
    h = pick(tool="headstart", precision=p, layout=lay)
    t = pick(tool="pytorch", what="backbone", precision=p, layout=lay)
    hv = h[0]["images_per_s"] if h else None
    tv = t[0]["images_per_s"] if t else None
    g = hv * MNV2_GFLOP if hv else None
    share = f"{100 * g / peak[p]:.1f}%" if g and p in peak else "—"
    print(f"| {p}, {lay.replace('_', '-')} | {hv and f'{hv:.1f}' or '—'} | {tv and f'{tv:.1f}' or '—'} | {g and f'{g:.1f}' or '—'} | {share} |")

print("\n### End to end `train` (cold cache) and the extraction stage\n")
hs = {r["precision"]: r for r in pick(tool="headstart", what="train")}
pt = {r["precision"]: r for r in pick(tool="pytorch", what="train")}
print("| run | extraction images/s | vs PyTorch fp32 | vs PyTorch bf16 + channels-last | `train` wall s | vs PyTorch fp32 | vs PyTorch bf16 |\n|---|---:|---:|---:|---:|---:|---:|")
def ext(r):
    if r["tool"] == "headstart":
        return r["n"] / r["timings"]["extract"]["wall_s"]
    return r["extract_images_per_s"]
for name, r in [("PyTorch fp32", pt.get("fp32")), ("PyTorch bf16 + channels-last", pt.get("bf16")), ("headstart fp32", hs.get("fp32")), ("headstart bf16", hs.get("bf16"))]:
    if not r:
        continue
    e = ext(r)
    cells = [f"{e:.1f}"]
    cells += [f"{e / ext(pt[k]):.2f}×" if k in pt else "—" for k in ["fp32", "bf16"]]
    cells += [f"{r['wall_s']:.1f}"]
    cells += [f"{pt[k]['wall_s'] / r['wall_s']:.2f}×" if k in pt else "—" for k in ["fp32", "bf16"]]
    print(f"| {name} | " + " | ".join(cells) + " |")

print("\n### Where `train`'s wall time goes (seconds)\n")
print("| run | wall | start-up | loading | extraction | backbone busy | backbone starved | decoding (summed over threads) | head and bundle | backbone share of wall |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for p, r in sorted(hs.items()):
    t = r["timings"]
    x = t["extract"]
    print(f"| headstart {p} | {r['wall_s']:.1f} | {r['wall_s'] - t['total_s']:.2f} | {t['load_s']:.2f} | {x['wall_s']:.1f} | {x['backbone_s']:.1f} | {x['starved_s']:.2f} | {x['decode_s']:.1f} ({x['decode_threads']} threads) | {t['head_s']:.1f} | {100 * x['backbone_s'] / r['wall_s']:.0f}% |")
for p, r in sorted(pt.items()):
    print(f"| PyTorch {p} | {r['wall_s']:.1f} | {r['import_s']:.2f} | {r['load_s']:.2f} | {r['extract_s']:.1f} | {r['backbone_s']:.1f} | — | (2 workers) | {r['head_s']:.1f} | {100 * r['backbone_s'] / r['wall_s']:.0f}% |")

print("\n### MiniLM sentence embeddings, batch 32, real lengths\n")
st = {r["precision"]: r for r in pick(tool="sentence-transformers")}
he = {r["precision"]: r for r in pick(tool="headstart", what="embed")}
tokens = next(iter(st.values()))["tokens"] if st else None
print("| precision | headstart sentences/s | sentence-transformers | ratio | headstart GFLOP/s | share of matmul peak |\n|---|---:|---:|---:|---:|---:|")
for p in ["fp32", "bf16"]:
    h, s = he.get(p), st.get(p)
    if not (h and s):
        continue
    g = tokens * MINILM_MFLOP_PER_TOKEN / 1e3 / h["seconds"]
    print(f"| {p} | {h['sentences_per_s']:.1f} | {s['sentences_per_s']:.1f} | {h['sentences_per_s'] / s['sentences_per_s']:.2f}× | {g:.1f} | {100 * g / peak.get(p, float('nan')):.1f}% |")
