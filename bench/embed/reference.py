"""The PyTorch + pyarrow way to export embeddings, as the reference for `headstart embed`.

torchvision mobilenet_v2 with the packaged ImageNet weights, classifier replaced by Identity
(the pooled 1,280-wide features), eval mode, no autograd; ImageFolder + DataLoader (batch 32,
2 workers) with Resize(256), CenterCrop(224), ImageNet mean/std. Rows: path, label, embedding
(fixed_size_list<float32>[1280]); Parquet key-value metadata: model, weights sha256,
preprocessing. Written to a temporary file and renamed, as headstart does. Prints one JSON line.

Usage: python reference.py DATA_DIR WEIGHTS OUT.parquet [--threads N] [--workers N]
"""
import argparse, hashlib, json, os, time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchvision import datasets, models, transforms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data"); ap.add_argument("weights"); ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(a.threads)
    tf = transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")),
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = datasets.ImageFolder(a.data, tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=False, num_workers=a.workers)
    model = models.mobilenet_v2()
    model.load_state_dict(torch.load(a.weights, map_location="cpu", weights_only=True))
    model.classifier = torch.nn.Identity()
    model.eval()
    with open(a.weights, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    chunks = []
    with torch.no_grad():
        for x, _ in dl:
            chunks.append(model(x).numpy().astype(np.float32))
    emb = np.concatenate(chunks)
    dim = emb.shape[1]
    table = pa.table({
        "path": pa.array([p for p, _ in ds.samples], pa.string()),
        "label": pa.array([ds.classes[c] for _, c in ds.samples], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim),
    })
    meta = {"model": "mobilenet_v2", "weights_sha256": sha,
            "preprocessing": json.dumps({"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})}
    table = table.replace_schema_metadata(meta)
    tmp = a.out + ".tmp"
    pq.write_table(table, tmp, compression="none")
    os.replace(tmp, a.out)
    print(json.dumps({"tool": "pytorch+pyarrow", "rows": len(ds), "dim": dim, "wall_in_process_s": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
