"""The transformers route for the audio benchmark (same clips, same weights as headstart).

  features CT2_MODEL_BIN TRAIN TEST   soundfile decode + resample_poly to 16 kHz,
                                      WhisperFeatureExtractor, the WhisperModel encoder (weights
                                      read from the CTranslate2 file), mean pooling, then
                                      scikit-learn LogisticRegression: extraction throughput,
                                      end-to-end time and test accuracy
  make-w2v2 DIR N_LABELS              a small random Wav2Vec2ForSequenceClassification saved as a
                                      Hugging Face directory (both tools fine-tune it)
  trainer DIR TRAIN fp32|bf16 [EPOCHS] HF Trainer fine-tuning (feature encoder frozen, batch 8,
                                      lr 3e-5; one epoch unless EPOCHS): training samples/s over
                                      the whole `train()`, and over the optimiser steps alone
                                      (a callback times each, on_step_begin to on_step_end)
Prints one JSON line.
"""
import csv, json, math, os, re, struct, sys, time
from math import gcd

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

torch.manual_seed(0)


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    labels = sorted({r["label"] for r in rows})
    return [r["path"] for r in rows], [labels.index(r["label"]) for r in rows], labels


def load(path):
    y, r = sf.read(path, dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    if r != 16000:
        g = gcd(r, 16000)
        y = resample_poly(y, 16000 // g, r // g).astype(np.float32)
    return y


def read_ct2(path):
    kinds = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
    out = {}
    with open(path, "rb") as f:
        u = lambda fmt: struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]
        s = lambda: f.read(u("H")).rstrip(b"\0").decode()
        assert u("I") == 6
        s(), u("I")
        for _ in range(u("I")):
            name, rank = s(), u("B")
            dims = [u("I") for _ in range(rank)]
            dt, nb = u("B"), u("I")
            out[name] = np.frombuffer(f.read(nb), dtype=kinds[dt]).reshape(dims)
    return out


def whisper_encoder(bin_path):
    """The encoder of a CTranslate2 Whisper file as transformers' WhisperEncoder."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    v = read_ct2(bin_path)
    d = v["encoder/conv1/weight"].shape[0]
    layers = 1 + max(int(m.group(1)) for k in v if (m := re.match(r"encoder/layer_(\d+)/", k)))
    sd = {"conv1.weight": v["encoder/conv1/weight"], "conv1.bias": v["encoder/conv1/bias"],
          "conv2.weight": v["encoder/conv2/weight"], "conv2.bias": v["encoder/conv2/bias"],
          "embed_positions.weight": v["encoder/position_encodings/encodings"],
          "layer_norm.weight": v["encoder/layer_norm/gamma"], "layer_norm.bias": v["encoder/layer_norm/beta"]}
    for i in range(layers):
        p, q = f"encoder/layer_{i}/", f"layers.{i}."
        w, b = v[p + "self_attention/linear_0/weight"], v[p + "self_attention/linear_0/bias"]
        sd |= {q + "self_attn.q_proj.weight": w[:d], q + "self_attn.q_proj.bias": b[:d], q + "self_attn.k_proj.weight": w[d:2 * d],
               q + "self_attn.v_proj.weight": w[2 * d:], q + "self_attn.v_proj.bias": b[2 * d:],
               q + "self_attn.out_proj.weight": v[p + "self_attention/linear_1/weight"],
               q + "self_attn.out_proj.bias": v[p + "self_attention/linear_1/bias"],
               q + "self_attn_layer_norm.weight": v[p + "self_attention/layer_norm/gamma"],
               q + "self_attn_layer_norm.bias": v[p + "self_attention/layer_norm/beta"],
               q + "fc1.weight": v[p + "ffn/linear_0/weight"], q + "fc1.bias": v[p + "ffn/linear_0/bias"],
               q + "fc2.weight": v[p + "ffn/linear_1/weight"], q + "fc2.bias": v[p + "ffn/linear_1/bias"],
               q + "final_layer_norm.weight": v[p + "ffn/layer_norm/gamma"], q + "final_layer_norm.bias": v[p + "ffn/layer_norm/beta"]}
    enc = WhisperEncoder(WhisperConfig(d_model=d, encoder_layers=layers, encoder_attention_heads=d // 64, encoder_ffn_dim=4 * d,
                                       num_mel_bins=v["encoder/conv1/weight"].shape[1], max_source_positions=1500)).eval()
    missing, unexpected = enc.load_state_dict({k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in sd.items()}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return enc


def embed(enc, fe, paths, batch=8):
    """Mean over all 1500 frames (the usual recipe) and over the frames of real audio."""
    every, real = [], []
    for i in range(0, len(paths), batch):
        waves = [load(p) for p in paths[i:i + batch]]
        feats = fe(waves, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            h = enc(feats).last_hidden_state
        every.append(h.mean(1))
        for j, w in enumerate(waves):
            n = max(1, min(1500, math.ceil(math.ceil(len(w) / 160) / 2)))
            real.append(h[j, :n].mean(0))
    return torch.cat(every).numpy(), torch.stack(real).numpy()


def features(bin_path, train, test):
    from sklearn.linear_model import LogisticRegression
    from transformers import WhisperFeatureExtractor
    t0 = time.perf_counter()
    (ptr, ytr, _), (pte, yte, _) = read(train), read(test)
    enc, fe = whisper_encoder(bin_path), WhisperFeatureExtractor(feature_size=80)
    t1 = time.perf_counter()
    ftr, rtr = embed(enc, fe, ptr)
    fte, rte = embed(enc, fe, pte)
    t2 = time.perf_counter()
    acc = LogisticRegression(max_iter=1000).fit(ftr, ytr).score(fte, yte)
    t3 = time.perf_counter()
    acc_real = LogisticRegression(max_iter=1000).fit(rtr, ytr).score(rte, yte)
    n = len(ptr) + len(pte)
    print(json.dumps({"tool": "transformers", "what": "features", "clips": n, "extract_s": t2 - t1, "clips_per_s": n / (t2 - t1),
                      "end_to_end_s": t3 - t0, "test_accuracy": acc, "test_accuracy_real_frames_pooling": acc_real}))


def make_w2v2(out, n_labels):
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification
    cfg = Wav2Vec2Config(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                         conv_dim=(128,) * 7, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8,
                         num_labels=int(n_labels), hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
                         feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, classifier_proj_size=256)
    Wav2Vec2ForSequenceClassification(cfg).save_pretrained(out)
    print(json.dumps({"made": out}))


WARMUP_STEPS = 2  # left out of the steady figure, as headstart's `steady_samples_per_s`


def step_figures(steps, sizes):
    """headstart's `timings.finetune` fields from each step's seconds and examples."""
    def rate(s, n):
        return sum(n) / sum(s) if sum(s) > 0 else 0.0
    sec = sorted(steps)
    med = (sec[len(sec) // 2] if len(sec) % 2 else (sec[len(sec) // 2 - 1] + sec[len(sec) // 2]) / 2) if sec else 0.0
    steady = rate(steps[WARMUP_STEPS:], sizes[WARMUP_STEPS:]) if len(steps) > WARMUP_STEPS else None
    return {"steps": len(steps), "samples": sum(sizes), "step_s_total": sum(steps), "step_s_median": med,
            "samples_per_s": rate(steps, sizes), "steady_samples_per_s": steady}


def step_clock(sizes):
    """A TrainerCallback timing every optimiser step: on_step_begin to on_step_end (forward,
    backward, clipping, the update; the batch is fetched and collated before on_step_begin),
    and from the previous step's end (or the epoch's start) to this one's, which adds the fetch."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.steps, self.spans, self.begin, self.last = [], [], None, None

        def on_epoch_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_step_begin(self, args, state, control, **kw):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.steps.append(now - self.begin)
            self.spans.append(now - self.last)
            self.last = now

        def figures(self):
            n = sizes[:len(self.steps)]
            return step_figures(self.steps, n), step_figures(self.spans, n)

    return StepClock()


def trainer(d, train, precision, epochs=1):
    from transformers import Trainer, TrainingArguments, Wav2Vec2ForSequenceClassification
    paths, y, labels = read(train)
    waves = [load(p) for p in paths]

    def norm(w):
        return (w - w.mean()) / np.sqrt(w.var() + 1e-7)

    rows = [{"input_values": norm(w), "labels": l} for w, l in zip(waves, y)]

    sizes = []  # each collated batch's examples, in order (no workers: batch k is step k's)

    def collate(batch):
        sizes.append(len(batch))
        n = max(len(b["input_values"]) for b in batch)
        x = np.zeros((len(batch), n), dtype=np.float32)
        for i, b in enumerate(batch):
            x[i, :len(b["input_values"])] = b["input_values"]
        return {"input_values": torch.from_numpy(x), "labels": torch.tensor([b["labels"] for b in batch])}

    model = Wav2Vec2ForSequenceClassification.from_pretrained(d, num_labels=len(labels))
    model.freeze_feature_encoder()
    args = TrainingArguments(output_dir="/tmp/hs-bench-audio-trainer", per_device_train_batch_size=8, num_train_epochs=epochs,
                             learning_rate=3e-5, weight_decay=0.01, warmup_steps=int(0.1 * epochs * math.ceil(len(rows) / 8)), lr_scheduler_type="linear", seed=0,
                             use_cpu=True, bf16=precision == "bf16", report_to=[], logging_strategy="no", disable_tqdm=True,
                             dataloader_num_workers=0, eval_strategy="no", save_strategy="no")
    clock = step_clock(sizes)
    t = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[clock])
    t0 = time.perf_counter()
    t.train()
    dt = time.perf_counter() - t0
    steps, spans = clock.figures()
    print(json.dumps({"tool": "hf-trainer", "what": "finetune", "precision": precision, "epochs": epochs, "samples": epochs * len(rows),
                      "seconds": dt, "samples_per_s": epochs * len(rows) / dt, "steps": steps, "steps_with_fetch": spans}))


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    cmd = sys.argv[1]
    if cmd == "features":
        features(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "make-w2v2":
        make_w2v2(sys.argv[2], sys.argv[3])
    elif cmd == "trainer":
        trainer(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 1)
