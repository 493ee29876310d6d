"""Python references for the text benchmark (same data, split and seed as headstart).

  embed DIR CSV              sentence-transformers encode throughput (batch 32, real lengths)
  features DIR TRAIN TEST    frozen encoder run every epoch + linear head, 10 epochs (the HF-style
                             recipe without a feature cache): wall time and test accuracy
  trainer DIR TRAIN TEST     HF Trainer full fine-tuning (3 epochs, lr 5e-5, batch 16, wd 0.01,
                             linear schedule, no warm-up), then test accuracy; training time
  step DIR CSV fp32|bf16 N   HF Trainer training throughput at sequence length 128, batch 16:
                             N timed steps after one warm-up step
Prints one JSON line.
"""
import csv, json, sys, time

import torch

torch.manual_seed(0)


def read(path):
    with open(path, newline="") as f:
        r = list(csv.DictReader(f))
    labels = sorted({x["label"] for x in r})
    return [x["text"] for x in r], [labels.index(x["label"]) for x in r]


def embed(d, path):
    from sentence_transformers import SentenceTransformer
    texts, _ = read(path)
    m = SentenceTransformer(d, device="cpu")
    m.encode(texts[:64], batch_size=32)  # warm-up
    t = time.perf_counter()
    m.encode(texts, batch_size=32)
    dt = time.perf_counter() - t
    print(json.dumps({"tool": "sentence-transformers", "what": "embed", "n": len(texts), "seconds": dt, "sentences_per_s": len(texts) / dt}))


def features(d, train, test):
    from sentence_transformers import SentenceTransformer
    t0 = time.perf_counter()
    xtr, ytr = read(train)
    xte, yte = read(test)
    enc = SentenceTransformer(d, device="cpu")
    enc.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    head = torch.nn.Linear(384, 2)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for epoch in range(10):
        order = torch.randperm(len(xtr), generator=g).tolist()
        for i in range(0, len(order), 32):
            idx = order[i:i + 32]
            with torch.no_grad():
                f = enc.encode([xtr[j] for j in idx], batch_size=32, convert_to_tensor=True).clone()
            loss = torch.nn.functional.cross_entropy(head(f), torch.tensor([ytr[j] for j in idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        f = enc.encode(xte, batch_size=32, convert_to_tensor=True).clone()
        acc = (head(f).argmax(-1) == torch.tensor(yte)).float().mean().item()
    print(json.dumps({"tool": "pytorch", "what": "features", "seconds": time.perf_counter() - t0, "test_accuracy": acc}))


class Rows(torch.utils.data.Dataset):
    def __init__(self, enc, labels):
        self.enc, self.labels = enc, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        d = {k: v[i] for k, v in self.enc.items()}
        d["labels"] = self.labels[i]
        return d


def trainer(d, train, test, steps=None, bf16=False, pad=False, out="/tmp/hs-bench-trainer"):
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)
    import numpy as np
    tok = AutoTokenizer.from_pretrained(d)
    xtr, ytr = read(train)
    kw = dict(truncation=True, max_length=128, padding="max_length" if pad else False)
    tr = Rows(tok(xtr, **kw), ytr)
    model = AutoModelForSequenceClassification.from_pretrained(d, num_labels=2)
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=16, per_device_eval_batch_size=32,
                             num_train_epochs=3, learning_rate=5e-5, weight_decay=0.01, warmup_steps=0,
                             lr_scheduler_type="linear", seed=0, use_cpu=True, bf16=bf16, report_to=[],
                             logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
                             eval_strategy="no", save_strategy="no", max_steps=(steps + 1) if steps else -1)
    if steps:
        from transformers import TrainerCallback
        marks = {}

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                marks[state.global_step] = time.perf_counter()

        t = Trainer(model=model, args=args, train_dataset=tr, data_collator=DataCollatorWithPadding(tok), callbacks=[Clock()])
        t.train()
        dt = marks[steps + 1] - marks[1]
        print(json.dumps({"tool": "hf-trainer", "what": "step", "precision": "bf16" if bf16 else "fp32", "steps": steps,
                          "seconds": dt, "samples_per_s": steps * 16 / dt}))
        return
    xte, yte = read(test)
    te = Rows(tok(xte, **kw), yte)
    t = Trainer(model=model, args=args, train_dataset=tr, eval_dataset=te, data_collator=DataCollatorWithPadding(tok),
                compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())})
    t0 = time.perf_counter()
    t.train()
    dt = time.perf_counter() - t0
    acc = t.evaluate()["eval_accuracy"]
    print(json.dumps({"tool": "hf-trainer", "what": "finetune", "seconds": dt, "test_accuracy": acc}))


if __name__ == "__main__":
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "2")))
    cmd = sys.argv[1]
    if cmd == "embed":
        embed(sys.argv[2], sys.argv[3])
    elif cmd == "features":
        features(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "trainer":
        trainer(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "step":
        trainer(sys.argv[2], sys.argv[3], None, steps=int(sys.argv[5]) if len(sys.argv) > 5 else 20,
                bf16=sys.argv[4] == "bf16", pad=True)
