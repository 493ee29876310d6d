"""Spoken letters and syllables (Debian klettres-data asset) as train/test manifests.

  prepare.py KLETTRES_DIR OUT_DIR LANG[,LANG...] [PER_LANG]

Every .ogg clip under each language folder (or PER_LANG of them, drawn with the seed, when given
and positive), labelled by language; a stratified 80/20 split,
seed 0. Writes OUT_DIR/train.csv and OUT_DIR/test.csv (`path,label`, absolute paths) and
prints the counts as JSON.
"""
import csv, json, random, sys
from pathlib import Path

src, out, langs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(",")
per_lang = int(sys.argv[4]) if len(sys.argv) > 4 else 0
out.mkdir(parents=True, exist_ok=True)
rng = random.Random(0)
train, test = [], []
for lang in langs:
    clips = sorted(str(p.resolve()) for p in (src / lang).rglob("*.ogg"))
    if not clips:
        sys.exit(f"no .ogg clips under {src / lang}")
    rng.shuffle(clips)
    if per_lang > 0:
        clips = clips[:per_lang]
    k = round(len(clips) * 0.2)
    test += [(c, lang) for c in clips[:k]]
    train += [(c, lang) for c in clips[k:]]
rng.shuffle(train)
rng.shuffle(test)
for name, rows in [("train", train), ("test", test)]:
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
print(json.dumps({"languages": langs, "train": len(train), "test": len(test)}))
