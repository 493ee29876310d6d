"""The UCI Sentiment Labelled Sentences (npm sentiment@5.0.2 asset) as train/test CSV files.

3,003 rows (amazon, imdb, yelp); the three empty texts are dropped here (and counted) so both
tools see the same data. Stratified 80/20 split by label and source, seed 0. Also writes
long.csv: texts of well over 128 tokens (24 sentences joined), for step throughput at length 128.
"""
import csv, json, random, sys
from pathlib import Path

src_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
rows, empty = [], 0
for src in ["amazon", "imdb", "yelp"]:
    for r in json.loads((src_dir / f"{src}.json").read_text()):
        t = r["text"].strip()
        if not t:
            empty += 1
            continue
        rows.append((t, "positive" if r["class"] == 1 else "negative", src))
rng = random.Random(0)
train, test = [], []
for key in sorted({(l, s) for _, l, s in rows}):
    group = [r for r in rows if (r[1], r[2]) == key]
    rng.shuffle(group)
    k = round(len(group) * 0.2)
    test += group[:k]
    train += group[k:]
rng.shuffle(train)
rng.shuffle(test)
for name, part in [("train", train), ("test", test)]:
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for t, l, _ in part:
            w.writerow([t, l])
with open(out / "long.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["text", "label"])
    for i in range(0, len(train) - 24, 24):
        w.writerow([" ".join(t for t, _, _ in train[i:i + 24]), train[i][1]])
print(json.dumps({"rows": len(rows), "empty_dropped": empty, "train": len(train), "test": len(test)}))
