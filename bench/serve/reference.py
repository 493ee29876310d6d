"""The reference server for bench/serve: FastAPI + uvicorn + PyTorch, the usual way to put a
torchvision model behind HTTP.

torchvision mobilenet_v2 with the packaged ImageNet weights as the frozen backbone, and the
headstart bundle's own head (head.safetensors: a 1280 -> K linear layer) on its pooled
features, so both servers compute the same thing. Preprocessing as the bundle records it for
MobileNetV2: RGB, to a float tensor, Resize(256) bilinear with antialiasing on the tensor (as
headstart resamples), CenterCrop(224), ImageNet mean/std.
POST /v1/predict takes {"inputs": [base64 image, ...], "top_k": k} and answers
{"predictions": [{"top": [[label, prob], ...]}]}; one request at a time per worker thread of
FastAPI's thread pool, no batching across requests.

Usage: python reference.py BUNDLE_DIR WEIGHTS --port P [--threads N]
"""
import argparse, base64, io, tomllib

import torch
import torch.nn as nn
import uvicorn
from fastapi import FastAPI, HTTPException
from PIL import Image
from safetensors.torch import load_file
from torchvision import models, transforms


def build(bundle, weights):
    meta = tomllib.load(open(f"{bundle}/bundle.toml", "rb"))
    labels = meta["labels"]
    net = models.mobilenet_v2()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    head = load_file(f"{bundle}/head.safetensors")
    linear = nn.Linear(head["weight"].shape[1], head["weight"].shape[0])
    linear.load_state_dict({"weight": head["weight"], "bias": head["bias"]})
    net.classifier = nn.Sequential(linear)
    net.eval()
    # Bundle format 2 keeps the preprocessing under [encoder]; format 1 at the top level.
    inp = (meta.get("encoder") or meta)["pretrained_cfg"]["input"]
    tf = transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")), transforms.ToTensor(),
        transforms.Resize(int(inp["size"] / inp["crop_pct"]), antialias=True), transforms.CenterCrop(inp["size"]),
        transforms.Normalize(inp["mean"], inp["std"])])
    return net, tf, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle"); ap.add_argument("weights")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    net, tf, labels = build(a.bundle, a.weights)
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/v1/predict")
    def predict(req: dict):
        inputs = req.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise HTTPException(400, "inputs")
        k = min(int(req.get("top_k", 5)), len(labels))
        try:
            x = torch.stack([tf(Image.open(io.BytesIO(base64.b64decode(s)))) for s in inputs])
        except Exception as e:
            raise HTTPException(400, f"inputs: {e}")
        with torch.inference_mode():
            p = net(x).softmax(-1)
        v, i = p.topk(k, -1)
        return {"predictions": [{"top": [[labels[j], float(q)] for q, j in zip(vr, ir)]} for vr, ir in zip(v.tolist(), i.tolist())]}

    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
