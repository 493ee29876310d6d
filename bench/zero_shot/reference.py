"""Zero-shot benchmark at the ViT-B/32 shape (random weights): the reference side.

    reference.py make OUT            a random ViT-B/32 CLIPModel directory and test images
    reference.py hf OUT              transformers: CLIPProcessor + CLIPModel
    reference.py open_clip OUT       open_clip: its ViT-B-32 (random init) and preprocess
    reference.py embed_hf OUT        embedding export: every image of OUT/labelled through the
    reference.py embed_open_clip OUT   image tower, one Parquet row each (path, label, projected
                                     embedding as fixed_size_list<float32>), written atomically

Each run prints one JSON line: seconds to embed the prompts, images/s of the image loop
(decode, preprocess, forward, softmax, top-k; batches of 32) and the top-1 labels.
"""
import json, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LABELS = ["cat", "dog", "bird", "car", "plane", "ship", "horse", "truck", "frog", "deer"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "a drawing of a {}."]
BATCH = 32
PRECISION = __import__("os").environ.get("PRECISION", "fp32")


def make(out):
    from transformers import CLIPConfig, CLIPModel, CLIPImageProcessor
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "fixtures"))
    import make_clip_fixtures as fx
    torch.manual_seed(0)
    m = CLIPModel(CLIPConfig())  # the defaults are ViT-B/32
    d = out / "clip_b32"
    m.save_pretrained(d)
    fx.make_tokenizer(d)
    CLIPImageProcessor().save_pretrained(d)
    rng = np.random.default_rng(0)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i in range(128):
        small = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8))
        small.resize((320 + i % 7 * 16, 240 + i % 5 * 16), Image.BILINEAR).save(out / "images" / f"{i:03d}.jpg", quality=90)


def at_precision(f):
    """`f` under CPU bf16 autocast when PRECISION=bf16 (PyTorch's own mixed precision), as fp32."""
    if PRECISION != "bf16":
        return f
    def g(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return f(x).float()
    return g


def run(kind, out):
    torch.set_num_threads(int(__import__("os").environ.get("THREADS", "2")))
    files = sorted((out / "images").glob("*.jpg"))
    if kind == "hf":
        from transformers import CLIPModel, CLIPProcessor
        d = out / "clip_b32"
        model, proc = CLIPModel.from_pretrained(d).eval(), CLIPProcessor.from_pretrained(d)
        tok = lambda texts: proc.tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]
        text_feats = lambda ids: model.get_text_features(input_ids=ids).pooler_output
        image_feats = lambda px: model.get_image_features(pixel_values=px).pooler_output
        prep = lambda ims: proc(images=ims, return_tensors="pt")["pixel_values"]
        scale = model.logit_scale.exp()
    else:
        import open_clip
        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
        model.eval()
        tokenizer = open_clip.get_tokenizer("ViT-B-32")
        tok, text_feats, image_feats = tokenizer, model.encode_text, model.encode_image
        prep = lambda ims: torch.stack([preprocess(im) for im in ims])
        scale = model.logit_scale.exp()
    image_feats = at_precision(image_feats)
    with torch.no_grad():
        t0 = time.perf_counter()
        rows = [F.normalize(F.normalize(text_feats(tok([t.format(c) for t in TEMPLATES])), dim=-1).mean(0), dim=-1) for c in LABELS]
        w = torch.stack(rows)
        t1 = time.perf_counter()
        top = []
        for i in range(0, len(files), BATCH):
            ims = [Image.open(f).convert("RGB") for f in files[i:i + BATCH]]
            e = F.normalize(image_feats(prep(ims)), dim=-1)
            p, idx = (scale * e @ w.T).softmax(-1).topk(5, -1)
            top += [LABELS[j] for j in idx[:, 0].tolist()]
        t2 = time.perf_counter()
    print(json.dumps({"impl": kind, "precision": PRECISION, "images": len(files), "text_s": round(t1 - t0, 3), "images_s": round(t2 - t1, 3),
                      "images_per_s": round(len(files) / (t2 - t1), 2), "top1": top}))


def embed(kind, out):
    """The reference for `headstart embed` at ViT-B/32: decode, preprocess, image tower, Parquet."""
    import os
    import pyarrow as pa
    import pyarrow.parquet as pq
    t0 = time.perf_counter()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    root = out / "labelled"
    rows = sorted((c.name, f) for c in root.iterdir() if c.is_dir() for f in c.glob("*.jpg"))
    if kind == "embed_hf":
        from transformers import CLIPModel, CLIPProcessor
        d = out / "clip_b32"
        model, proc = CLIPModel.from_pretrained(d).eval(), CLIPProcessor.from_pretrained(d)
        image_feats = lambda px: model.get_image_features(pixel_values=px).pooler_output
        prep = lambda ims: proc(images=ims, return_tensors="pt")["pixel_values"]
    else:
        import open_clip
        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
        model.eval()
        image_feats = model.encode_image
        prep = lambda ims: torch.stack([preprocess(im) for im in ims])
    image_feats = at_precision(image_feats)
    t1 = time.perf_counter()
    chunks = []
    with torch.no_grad():
        for i in range(0, len(rows), BATCH):
            ims = [Image.open(f).convert("RGB") for _, f in rows[i:i + BATCH]]
            chunks.append(image_feats(prep(ims)).numpy().astype(np.float32))
    emb = np.concatenate(chunks)
    table = pa.table({
        "path": pa.array([str(f) for _, f in rows], pa.string()),
        "label": pa.array([c for c, _ in rows], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), emb.shape[1]),
    }).replace_schema_metadata({"model": kind})
    dest = out / f"{kind}.parquet"
    pq.write_table(table, str(dest) + ".tmp", compression="none")
    os.replace(str(dest) + ".tmp", dest)
    t2 = time.perf_counter()
    print(json.dumps({"impl": kind, "precision": PRECISION, "rows": len(rows), "dim": int(emb.shape[1]), "load_s": round(t1 - t0, 3),
                      "embed_s": round(t2 - t1, 3), "rows_per_s": round(len(rows) / (t2 - t1), 2)}))


if __name__ == "__main__":
    kind, out = sys.argv[1], Path(sys.argv[2])
    if kind == "make":
        make(out)
    elif kind.startswith("embed_"):
        embed(kind, out)
    else:
        run(kind, out)
