"""Summarises bench/audio/out (written by run.sh) into summary.json and prints it."""
import json, sys
out = sys.argv[1]
t = lambda n: [float(x) for x in open(f"{out}/{n}.time").read().split()]


def j(n):
    """A tool's JSON output: the whole file, or its last JSON line."""
    text = open(f"{out}/{n}.json").read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads([l for l in text.splitlines() if l.startswith('{"')][-1])


prep = json.load(open(f"{out}/prepare.json"))
clips = prep["train"] + prep["test"]
train, ev, ref = j("hs_train"), j("hs_eval"), j("pt_features")
hs_total = t("hs_train")[0] + t("hs_eval")[0]
# headstart's extraction throughput: every clip through the encoder in the two commands (their
# whole wall time, model loading and the head included).
hs_cps = (train["backbone_computed"] + ev["n"]) / hs_total
cpu = lambda n: t(n)[2] + t(n)[3]
hs_cpu = cpu("hs_train") + cpu("hs_eval")
res = {
    "data": prep,
    "extract_clips_per_s": {"headstart": hs_cps, "transformers": ref["clips_per_s"], "ratio": hs_cps / ref["clips_per_s"]},
    "end_to_end_s": {"headstart": hs_total, "transformers": t("pt_features")[0], "ratio": hs_total / t("pt_features")[0]},
    "test_accuracy": {"headstart": ev["accuracy"], "transformers": ref["test_accuracy"],
                      "transformers_real_frames_pooling": ref["test_accuracy_real_frames_pooling"],
                      "difference_points": 100 * (ev["accuracy"] - ref["test_accuracy"])},
    "process_cpu_s": {"headstart": hs_cpu, "transformers": cpu("pt_features"), "ratio": hs_cpu / cpu("pt_features")},
    "peak_rss_mib": {"headstart_train": t("hs_train")[1] / 1024, "transformers": t("pt_features")[1] / 1024},
}
for p in ["fp32", "bf16"]:
    h = j(f"hs_finetune_{p}")
    hs_sps = h["n_train"] / t(f"hs_finetune_{p}")[0]
    r = j(f"pt_finetune_{p}")
    res[f"finetune_samples_per_s_{p}"] = {"headstart_wall": hs_sps, "hf_trainer_train": r["samples_per_s"], "ratio": hs_sps / r["samples_per_s"],
                                          "process_wall_s": {"headstart": t(f"hs_finetune_{p}")[0], "hf_trainer": t(f"pt_finetune_{p}")[0]},
                                          "process_cpu_s": {"headstart": cpu(f"hs_finetune_{p}"), "hf_trainer": cpu(f"pt_finetune_{p}")}}
json.dump(res, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(res, indent=2))
