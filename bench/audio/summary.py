"""Summarises bench/audio/out (written by run.sh) into summary.json and prints it.

  summary.py OUT [WINDOWS]   (WINDOWS: the headstart encoder windows run, default clip,full;
                             empty when feature extraction was left out)
"""
import json, os, sys
out = sys.argv[1]
windows = [w for w in (sys.argv[2] if len(sys.argv) > 2 else "clip,full").split(",") if w]
t = lambda n: [float(x) for x in open(f"{out}/{n}.time").read().split()]


def j(n):
    """A tool's JSON output: the whole file, or its last JSON line."""
    text = open(f"{out}/{n}.json").read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads([l for l in text.splitlines() if l.startswith('{"')][-1])


prep = json.load(open(f"{out}/prepare.json"))
cpu = lambda n: t(n)[2] + t(n)[3]
res = {"data": prep}
load = {k: open(f"{out}/load_{k}").read().split() for k in ["start", "end"] if os.path.exists(f"{out}/load_{k}")}
if load:
    res["load_average_1_5_15_min"] = {k: [float(x) for x in v] for k, v in load.items()}
if windows:
    ref = j("pt_features")
    res["transformers"] = {"extract_clips_per_s": ref["clips_per_s"], "end_to_end_s": t("pt_features")[0], "test_accuracy": ref["test_accuracy"],
                           "test_accuracy_real_frames_pooling": ref["test_accuracy_real_frames_pooling"], "process_cpu_s": cpu("pt_features"),
                           "peak_rss_mib": t("pt_features")[1] / 1024}
for w in windows:
    train, ev = j(f"hs_train_{w}"), j(f"hs_eval_{w}")
    hs_total = t(f"hs_train_{w}")[0] + t(f"hs_eval_{w}")[0]
    # Extraction throughput: every clip through the encoder in the two commands (their whole
    # wall time, model loading and the head included).
    hs_cps = (train["backbone_computed"] + ev["n"]) / hs_total
    hs_cpu = cpu(f"hs_train_{w}") + cpu(f"hs_eval_{w}")
    res[f"headstart_{w}_window"] = {
        "extract_clips_per_s": hs_cps, "extract_ratio": hs_cps / ref["clips_per_s"],
        "end_to_end_s": hs_total, "end_to_end_ratio": hs_total / t("pt_features")[0],
        "test_accuracy": ev["accuracy"], "difference_points": 100 * (ev["accuracy"] - ref["test_accuracy"]),
        "process_cpu_s": hs_cpu, "process_cpu_ratio": hs_cpu / cpu("pt_features"),
        "peak_rss_mib_train": t(f"hs_train_{w}")[1] / 1024,
    }
for p in ["fp32", "bf16"]:
    if not os.path.exists(f"{out}/hs_finetune_{p}.time"):
        continue
    h = j(f"hs_finetune_{p}")
    r = j(f"pt_finetune_{p}")
    epochs = r.get("epochs", 1)
    hs_sps = epochs * h["n_train"] / t(f"hs_finetune_{p}")[0]
    res[f"finetune_samples_per_s_{p}"] = {"epochs": epochs, "headstart_wall": hs_sps, "hf_trainer_train": r["samples_per_s"],
                                          "ratio": hs_sps / r["samples_per_s"],
                                          "process_wall_s": {"headstart": t(f"hs_finetune_{p}")[0], "hf_trainer": t(f"pt_finetune_{p}")[0]},
                                          "process_cpu_s": {"headstart": cpu(f"hs_finetune_{p}"), "hf_trainer": cpu(f"pt_finetune_{p}")}}
    # The optimiser steps alone: headstart's `timings.finetune`; the Trainer's callback, from
    # on_step_begin (batch already collated) and from the previous step's end (fetch included).
    hs, pt, pt_fetch = h["timings"]["finetune"], r["steps"], r["steps_with_fetch"]
    keys = ["steps", "samples", "step_s_total", "step_s_median", "samples_per_s", "steady_samples_per_s"]
    res[f"finetune_steps_{p}"] = {
        "headstart": {k: hs[k] for k in keys} | {"setup_s": hs["setup_s"]},
        "hf_trainer": {k: pt[k] for k in keys},
        "hf_trainer_with_fetch": {k: pt_fetch[k] for k in keys},
        "ratio_samples_per_s": hs["samples_per_s"] / pt["samples_per_s"],
        "ratio_steady_samples_per_s": hs["steady_samples_per_s"] / pt["steady_samples_per_s"],
        "ratio_median_step": pt["step_s_median"] / hs["step_s_median"],
        "ratio_samples_per_s_vs_with_fetch": hs["samples_per_s"] / pt_fetch["samples_per_s"],
        "ratio_steady_samples_per_s_vs_with_fetch": hs["steady_samples_per_s"] / pt_fetch["steady_samples_per_s"],
    }
json.dump(res, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(res, indent=2))
