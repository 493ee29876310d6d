"""Reads bench/long_text/out and prints the side-by-side figures as JSON: per tool and policy,
test accuracy and the fastest round's wall and CPU seconds (headstart: train + eval, cold
cache, the reference's logistic regression), and headstart's default head on the cached
embeddings; then both tools' test accuracy on every resplit of the articles, and the mean and
spread of the difference."""
import glob, json, re, sys
from pathlib import Path

out = Path(sys.argv[1])


def times(name):
    wall, user, sys_, rss = open(out / f"{name}.time").read().split()[-4:]
    return float(wall), float(user) + float(sys_), int(rss)


rounds = sorted({int(m.group(1)) for f in glob.glob(str(out / "pt_*_*.time")) if (m := re.search(r"_(\d+)\.time$", f))})
rows = []
for policy in ["chunks", "truncate"] if rounds else []:
    hs, pt = [], []
    for r in rounds:
        tw, tc, trss = times(f"hs_{policy}_train_{r}")
        ew, ec, erss = times(f"hs_{policy}_eval_{r}")
        acc = json.loads((out / f"hs_{policy}_eval_{r}.json").read_text())["accuracy"]
        train = json.loads((out / f"hs_{policy}_train_{r}.json").read_text())
        hs.append({"wall_s": tw + ew, "cpu_s": tc + ec, "peak_rss_mib": max(trss, erss) // 1024, "test_accuracy": acc,
                   "l2": train["l2"], "embedded": train["backbone_computed"]})
        pw, pc, prss = times(f"pt_{policy}_{r}")
        ref = json.loads((out / f"pt_{policy}_{r}.json").read_text().strip().splitlines()[-1])
        pt.append({"wall_s": pw, "cpu_s": pc, "peak_rss_mib": prss // 1024, "test_accuracy": ref["test_accuracy"],
                   "encode_s": ref["encode_seconds"], "chunks": ref["chunks"]})
    default = []
    for r in rounds:
        tw, tc, _ = times(f"hsdef_{policy}_train_{r}")
        ew, ec, _ = times(f"hsdef_{policy}_eval_{r}")
        train = json.loads((out / f"hsdef_{policy}_train_{r}.json").read_text())
        acc = json.loads((out / f"hsdef_{policy}_eval_{r}.json").read_text())["accuracy"]
        default.append({"wall_s_cached": tw + ew, "test_accuracy": acc, "l2": train["l2"], "val_accuracy": train["val"]["accuracy"]})
    bf16 = []
    for r in rounds:
        if not (out / f"hsbf16_{policy}_train_{r}.time").exists():
            continue
        tw, tc, trss = times(f"hsbf16_{policy}_train_{r}")
        ew, ec, erss = times(f"hsbf16_{policy}_eval_{r}")
        acc = json.loads((out / f"hsbf16_{policy}_eval_{r}.json").read_text())["accuracy"]
        bf16.append({"wall_s": tw + ew, "cpu_s": tc + ec, "peak_rss_mib": max(trss, erss) // 1024, "test_accuracy": acc})
    best = lambda xs: min(xs, key=lambda x: x["wall_s"])
    h, p = best(hs), best(pt)
    extra = {}
    if bf16:
        b = best(bf16)
        extra = {"headstart_bf16": b, "bf16_accuracy_points": round(100 * (b["test_accuracy"] - p["test_accuracy"]), 2),
                 "bf16_wall_ratio": round(b["wall_s"] / p["wall_s"], 3), "bf16_cpu_ratio": round(b["cpu_s"] / p["cpu_s"], 3)}
    rows.append({"policy": policy, "headstart": h, "reference": p, "headstart_default_head": default, **extra,
                 "all_rounds": {"headstart": hs, "reference": pt},
                 "accuracy_points": round(100 * (h["test_accuracy"] - p["test_accuracy"]), 2),
                 "wall_ratio": round(h["wall_s"] / p["wall_s"], 3), "cpu_ratio": round(h["cpu_s"] / p["cpu_s"], 3)})
resplits = []
for policy in ["chunks", "truncate"]:
    ref_file = out / f"split_pt_{policy}.jsonl"
    if not ref_file.exists():
        continue
    ref = {}
    for line in ref_file.read_text().splitlines():
        r = json.loads(line)
        ref[r["split"]] = r["test_accuracy"]
    per = []
    for split in sorted(ref, key=lambda x: int(x[1:])):
        hs = json.loads((out / f"split_hs_{policy}_{split}.json").read_text())["accuracy"]
        per.append({"split": split, "headstart": hs, "reference": ref[split], "points": round(100 * (hs - ref[split]), 2)})
    d = [x["points"] for x in per]
    mean = sum(d) / len(d)
    sd = (sum((x - mean) ** 2 for x in d) / max(len(d) - 1, 1)) ** 0.5
    resplits.append({"policy": policy, "splits": len(per), "headstart_mean": round(sum(x["headstart"] for x in per) / len(per), 4),
                     "reference_mean": round(sum(x["reference"] for x in per) / len(per), 4),
                     "points_mean": round(mean, 2), "points_sd": round(sd, 2), "points_min": min(d), "points_max": max(d),
                     "splits_within_0.5": sum(1 for x in d if x >= -0.5), "per_split": per})
print(json.dumps({"rounds": len(rounds), "results": rows, "resplits": resplits}, indent=1))
