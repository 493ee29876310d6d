"""Which Whisper window suits clip classification: one head on four feature sets of the same
clips, scored over stratified resplits (one split of a few hundred clips moves in steps of
half a point or more, too coarse to choose a default by).

  windows.py MANIFEST.csv FULL.parquet CLIP.parquet CT2_MODEL_BIN OUT.json [RESPLITS]

Feature sets, one row per clip of MANIFEST (`path,label`):
- headstart `full`: `headstart embed --audio-window full` (the 30 s window, as Whisper pads;
  mean over the real frames);
- headstart `clip`: `headstart embed --audio-window clip` (the clip's own whole seconds);
- transformers, all frames: WhisperFeatureExtractor + WhisperEncoder (same weights, read from
  the CTranslate2 file by reference.py), mean over all 1,500 frames (the usual recipe);
- transformers, real frames: the same encoder output, mean over the frames of real audio.
Head for every set: StandardScaler + LogisticRegression(max_iter=2000), trained on 80% and
scored on 20% of each StratifiedShuffleSplit(RESPLITS, default 10, random_state=0).
Writes OUT.json and prints it.
"""
import csv, json, sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402


def headstart_features(path, paths):
    t = pq.read_table(path, columns=["path", "embedding"]).to_pydict()
    rows = {str(Path(p).resolve()): np.asarray(e, dtype=np.float32) for p, e in zip(t["path"], t["embedding"])}
    missing = [p for p in paths if str(Path(p).resolve()) not in rows]
    if missing:
        sys.exit(f"{path}: {len(missing)} clips of the manifest have no row, e.g. {missing[0]}")
    return np.stack([rows[str(Path(p).resolve())] for p in paths])


def main():
    manifest, full, clip, ct2, out = sys.argv[1:6]
    resplits = int(sys.argv[6]) if len(sys.argv) > 6 else 10
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    paths, labels = [r["path"] for r in rows], np.array([r["label"] for r in rows])
    ours = {"headstart_full": headstart_features(full, paths), "headstart_clip": headstart_features(clip, paths)}
    from transformers import WhisperFeatureExtractor
    every, real = reference.embed(reference.whisper_encoder(ct2), WhisperFeatureExtractor(feature_size=80), paths)
    sets = {**ours, "transformers_all_frames": every, "transformers_real_frames": real}
    scores = {k: [] for k in sets}
    for tr, te in StratifiedShuffleSplit(n_splits=resplits, test_size=0.2, random_state=0).split(paths, labels):
        for k, x in sets.items():
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[tr], labels[tr])
            scores[k].append(float(clf.score(x[te], labels[te])))
    n_test = len(paths) - int(np.floor(len(paths) * 0.8))
    res = {"clips": len(paths), "classes": int(len(set(labels))), "resplits": resplits, "test_clips_per_split": n_test,
           "mean": {k: round(float(np.mean(v)), 4) for k, v in scores.items()},
           "sd": {k: round(float(np.std(v, ddof=1)), 4) for k, v in scores.items()},
           "clip_minus_full_points": [round(100 * (c - f), 2) for c, f in zip(scores["headstart_clip"], scores["headstart_full"])],
           "per_split": scores}
    Path(out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
