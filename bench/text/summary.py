"""Summarises bench/text/out (written by run.sh) into summary.json and prints it."""
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/results.jsonl") if l.startswith('{"')]
def get(tool, what, prec=None):
    # Rows without a precision are fp32 (the reference's embed row has none).
    want = prec or "fp32"
    return next(r for r in rows if r["tool"] == tool and r["what"] == what and r.get("precision", "fp32") == want)
t = lambda n: [float(x) for x in open(f"{out}/{n}.time").read().split()]
# A tool's JSON output: the whole file, or its last JSON line (libraries print lines of
# their own before it).
def j(n):
    text = open(f"{out}/{n}.json").read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads([l for l in text.splitlines() if l.startswith('{"')][-1])
res = {
    "embed_sentences_per_s": {"headstart": get("headstart", "embed")["sentences_per_s"],
                              "sentence_transformers": get("sentence-transformers", "embed")["sentences_per_s"]},
}
res["embed_sentences_per_s"]["ratio"] = res["embed_sentences_per_s"]["headstart"] / res["embed_sentences_per_s"]["sentence_transformers"]
for p in ["fp32", "bf16"]:
    h, r = get("headstart", "step", p)["samples_per_s"], get("hf-trainer", "step", p)["samples_per_s"]
    res[f"step_samples_per_s_{p}"] = {"headstart": h, "hf_trainer": r, "ratio": h / r}
hl = t("hs_linear")[0]
res["features_linear_10_epochs"] = {"headstart_s": hl, "reference_s": t("pt_features")[0], "speedup": t("pt_features")[0] / hl,
    "headstart_test_acc": j("hs_linear_eval")["accuracy"], "reference_test_acc": j("pt_features")["test_accuracy"],
    "headstart_peak_rss_mib": t("hs_linear")[1] / 1024, "reference_peak_rss_mib": t("pt_features")[1] / 1024}
res["features_logistic"] = {"headstart_s": t("hs_logistic")[0], "headstart_test_acc": j("hs_logistic_eval")["accuracy"]}
res["full_finetune_3_epochs"] = {"headstart_s": t("hs_finetune")[0], "reference_train_s": j("pt_finetune")["seconds"],
    "reference_wall_s": t("pt_finetune")[0], "headstart_test_acc": j("hs_finetune_eval")["accuracy"],
    "reference_test_acc": j("pt_finetune")["test_accuracy"],
    "headstart_peak_rss_mib": t("hs_finetune")[1] / 1024, "reference_peak_rss_mib": t("pt_finetune")[1] / 1024}
json.dump(res, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(res, indent=2))
