"""The Python reference for the long-text benchmark: sentence-transformers encodes the same
chunks headstart reads, scikit-learn fits the classifier.

  reference.py chunks|truncate MODEL_DIR TRAIN.csv TEST.csv [OVERLAP [MAX_CHUNKS]]
  reference.py resplits chunks|truncate MODEL_DIR SPLITS_DIR   (accuracy only: every text of
      SPLITS_DIR/*/train.csv and test.csv is embedded once, then the head is fitted and scored
      on each split; prints one JSON line per split)

chunks: each text is cut by the model's own (fast) tokenizer into windows of max_seq_length
tokens with the special tokens (return_overflowing_tokens, stride = OVERLAP, default 0), the
first MAX_CHUNKS (default 16) kept; every chunk of every text is embedded by the
SentenceTransformer (its modules: mean pooling, normalisation) in batches of 32 sorted by length,
as `encode` batches; a text's embedding is the mean of its chunks'.
truncate: SentenceTransformer.encode on the texts (cut at max_seq_length), batch 32.
Head: StandardScaler + LogisticRegression (lbfgs, C=1, max_iter 2000) on the training texts.
Prints one JSON line: wall time from the start of the script (imports included), the encoding
time, test accuracy.
"""
import time

T0 = time.perf_counter()
import csv, json, os, sys

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def chunk_embeddings(m, texts, overlap, max_chunks):
    tok = m.tokenizer
    enc = tok(texts, add_special_tokens=True, truncation=True, max_length=m.max_seq_length, stride=overlap,
              return_overflowing_tokens=True, padding=False)
    owner, chunks, seen = [], [], {}
    for ids, doc in zip(enc["input_ids"], enc["overflow_to_sample_mapping"]):
        if seen.get(doc, 0) < max_chunks:
            seen[doc] = seen.get(doc, 0) + 1
            owner.append(doc)
            chunks.append(ids)
    order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i]))
    out = torch.zeros(len(chunks), m.get_sentence_embedding_dimension())
    with torch.inference_mode():
        for s in range(0, len(order), 32):
            batch = order[s:s + 32]
            n = max(len(chunks[i]) for i in batch)
            ids = torch.tensor([chunks[i] + [tok.pad_token_id] * (n - len(chunks[i])) for i in batch])
            mask = torch.tensor([[1] * len(chunks[i]) + [0] * (n - len(chunks[i])) for i in batch])
            e = m({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)})["sentence_embedding"]
            out[batch] = e
    docs = torch.zeros(len(texts), out.shape[1])
    docs.index_add_(0, torch.tensor(owner), out)
    counts = torch.bincount(torch.tensor(owner), minlength=len(texts)).clamp_min(1)
    return (docs / counts[:, None]).numpy(), len(chunks)


def embed(m, policy, texts, overlap=0, max_chunks=16):
    if policy == "chunks":
        return chunk_embeddings(m, texts, overlap, max_chunks)
    return m.encode(texts, batch_size=32), len(texts)


def fit_score(ftr, ytr, fte, yte):
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(ftr, ytr)
    return float(np.mean(clf.predict(fte) == np.array(yte)))


def resplits():
    from pathlib import Path
    policy, model_dir, root = sys.argv[2:5]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    splits = sorted(d for d in Path(root).iterdir() if (d / "train.csv").exists())
    parts = {d.name: (read(d / "train.csv"), read(d / "test.csv")) for d in splits}
    texts = sorted({t for (xtr, _), (xte, _) in parts.values() for t in xtr + xte})
    m = SentenceTransformer(model_dir, device="cpu")
    m.eval()
    emb, _ = embed(m, policy, texts)
    row = {t: i for i, t in enumerate(texts)}
    for name, ((xtr, ytr), (xte, yte)) in parts.items():
        acc = fit_score(emb[[row[t] for t in xtr]], ytr, emb[[row[t] for t in xte]], yte)
        print(json.dumps({"split": name, "policy": policy, "test_accuracy": acc}))


def main():
    if sys.argv[1] == "resplits":
        return resplits()
    policy, model_dir, train, test = sys.argv[1:5]
    overlap = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    max_chunks = int(sys.argv[6]) if len(sys.argv) > 6 else 16
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    xtr, ytr = read(train)
    xte, yte = read(test)
    m = SentenceTransformer(model_dir, device="cpu")
    m.eval()
    t = time.perf_counter()
    ftr, ctr = embed(m, policy, xtr, overlap, max_chunks)
    fte, cte = embed(m, policy, xte, overlap, max_chunks)
    n_chunks = ctr + cte
    encode_s = time.perf_counter() - t
    acc = fit_score(ftr, ytr, fte, yte)
    print(json.dumps({"tool": "sentence-transformers+sklearn", "policy": policy, "overlap": overlap, "chunks": n_chunks,
                      "encode_seconds": encode_s, "seconds": time.perf_counter() - T0, "test_accuracy": acc}))


if __name__ == "__main__":
    main()
