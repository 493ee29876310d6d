#!/usr/bin/env python3
"""Summarises a bench/heads/run.sh run: writes OUT/results.json and prints Markdown tables."""
import json, statistics, sys

out = sys.argv[1]


def load(name):
    return json.load(open(f"{out}/{name}"))


def sk_line(name):
    return json.loads(open(f"{out}/{name}").read().strip().splitlines()[-1])


results = {}
for s in ["fashion", "demo"]:
    hs = load(f"{s}-headstart.json")
    runs = hs["runs"]
    timed = {r["refit"]: r for r in runs if r["seed"] == 0 and r["head"] == "logistic"}
    sk, tight = sk_line(f"{s}-sklearn.json"), sk_line(f"{s}-sklearn-tol1e-6.json")
    h = timed[True]
    cmp = {
        "headstart": {k: h[k] for k in ["method", "folds", "l2", "selection_estimate", "test_accuracy", "fit_s", "fit_s_all"]},
        "sklearn_tol1e-4": {k: sk[k] for k in ["l2", "selection_estimate", "test_accuracy", "fit_s", "fit_s_all", "fits_not_converged"]},
        "sklearn_tol1e-6": {k: tight[k] for k in ["l2", "selection_estimate", "test_accuracy", "fit_s", "fit_s_all", "fits_not_converged"]},
        "headstart_no_refit": {k: timed[False][k] for k in ["test_accuracy", "fit_s"]},
    }
    cmp["test_points_vs_sklearn_tol1e-4"] = 100 * (h["test_accuracy"] - sk["test_accuracy"])
    cmp["test_points_vs_sklearn_tol1e-6"] = 100 * (h["test_accuracy"] - tight["test_accuracy"])
    cmp["time_ratio_vs_sklearn_tol1e-4"] = h["fit_s"] / sk["fit_s"]
    cmp["time_ratio_vs_sklearn_tol1e-6"] = h["fit_s"] / tight["fit_s"]
    heads = {}
    for head in ["logistic", "linear", "mlp"]:
        acc = {refit: [r["test_accuracy"] for r in runs if r["head"] == head and r["refit"] == refit] for refit in [True, False]}
        if not acc[True]:
            continue
        gains = [100 * (a - b) for a, b in zip(acc[True], acc[False])]
        heads[head] = {"seeds": len(acc[True]), "refit_mean": statistics.mean(acc[True]), "no_refit_mean": statistics.mean(acc[False]),
                       "gain_points_mean": statistics.mean(gains), "gain_points": gains,
                       "method": sorted({r["method"] for r in runs if r["head"] == head and r["refit"]})}
    cli = {}
    for mode in ["refit", "no-refit"]:
        o, e = load(f"cli-{s}-{mode}.json"), load(f"eval-{s}-{mode}.json")
        cli[mode] = {"selection": o["selection"], "val_accuracy_reported": o["val"]["accuracy"] if o["val"] else None, "test_accuracy": e["accuracy"]}
    results[s] = {"n": hs["n"], "threads": hs["threads"], "logistic_vs_sklearn": cmp, "heads": heads, "cli": cli}
json.dump(results, open(f"{out}/results.json", "w"), indent=1)

for s, r in results.items():
    c = r["logistic_vs_sklearn"]
    print(f"\n### {s}: {r['n']['train']} training images, {r['n']['test']} test images, {r['n']['dim']} features, {r['threads']} threads\n")
    print("| logistic head (selection + refit) | selection | chosen l2 | selection estimate | test accuracy | fit s (median) |")
    print("|---|---|---:|---:|---:|---:|")
    h = c["headstart"]
    sel = f"{h['folds']}-fold CV" if h["method"] == "cross_validation" else "validation split"
    print(f"| headstart | {sel} | {h['l2']:g} | {h['selection_estimate']:.4f} | {h['test_accuracy']:.4f} | {h['fit_s']:.2f} |")
    for k in ["sklearn_tol1e-4", "sklearn_tol1e-6"]:
        x = c[k]
        print(f"| scikit-learn, {k.split('_')[1]} | same rows | {x['l2']:g} | {x['selection_estimate']:.4f} | {x['test_accuracy']:.4f} | {x['fit_s']:.2f} |")
    print(f"\ntest accuracy vs scikit-learn: {c['test_points_vs_sklearn_tol1e-4']:+.1f} points (tol 1e-4), {c['test_points_vs_sklearn_tol1e-6']:+.1f} (tol 1e-6); "
          f"fit time {c['time_ratio_vs_sklearn_tol1e-4']:.2f}x (tol 1e-4), {c['time_ratio_vs_sklearn_tol1e-6']:.2f}x (tol 1e-6)")
    print("\n| head | seeds | test acc, refit | test acc, no refit | refit gain (points) |")
    print("|---|---:|---:|---:|---:|")
    for head, x in r["heads"].items():
        print(f"| {head} ({', '.join(x['method'])}) | {x['seeds']} | {x['refit_mean']:.4f} | {x['no_refit_mean']:.4f} | {x['gain_points_mean']:+.2f} |")
    print("\n| CLI `train` then `eval` | selection | reported | test accuracy |")
    print("|---|---|---:|---:|")
    for mode, x in r["cli"].items():
        s_ = x["selection"]
        how = f"{s_['folds']}-fold CV" if s_["method"] == "cross_validation" else "validation split"
        print(f"| `--{mode}` | {how} | {x['val_accuracy_reported']:.4f} | {x['test_accuracy']:.4f} |")
