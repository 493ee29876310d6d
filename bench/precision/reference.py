"""PyTorch side of bench/precision/run.sh. Prints one JSON line per measurement.

  reference.py peak                         matmul GFLOP/s, fp32 and bf16 (2048x2048, 2 threads)
  reference.py backbone STEPS               MobileNetV2 forward alone on random input, batch 32:
                                            fp32, fp32 channels-last, bf16 autocast channels-last
  reference.py train DIR WEIGHTS fp32|bf16  end to end: features of every image (DataLoader with
                                            2 workers, batch 32; bf16: channels-last + autocast),
                                            then a scikit-learn LogisticRegression on them
  reference.py embed MODEL_DIR CSV fp32|bf16  sentence-transformers encode, batch 32
"""
import json, sys, time

T0 = time.perf_counter()
import torch  # noqa: E402

torch.set_num_threads(2)


def peak():
    n = 2048
    for dtype in [torch.float32, torch.bfloat16]:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        for _ in range(3):
            a @ b
        reps, t = 0, time.perf_counter()
        while time.perf_counter() - t < 4.0:
            a @ b
            reps += 1
        dt = time.perf_counter() - t
        print(json.dumps({"tool": "pytorch", "what": "matmul_peak", "dtype": str(dtype).split(".")[1], "n": n, "gflops": 2 * n ** 3 * reps / dt / 1e9}), flush=True)


def mobilenet(weights=None):
    from torchvision import models
    m = models.mobilenet_v2()
    if weights:
        m.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return m.eval()


def features(m, x, bf16, cl):
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return torch.nn.functional.adaptive_avg_pool2d(m.features(x), 1).flatten(1).float()


def backbone(steps):
    m = mobilenet()
    x = torch.randn(32, 3, 224, 224)
    for bf16, cl in [(False, False), (False, True), (True, True)]:
        mm = m.to(memory_format=torch.channels_last) if cl else m
        times = []
        for _ in range(steps + 2):
            t = time.perf_counter()
            features(mm, x, bf16, cl)
            times.append(time.perf_counter() - t)
        mean = sum(times[2:]) / steps
        print(json.dumps({"tool": "pytorch", "what": "backbone", "precision": "bf16" if bf16 else "fp32",
                          "layout": "channels_last" if cl else "contiguous", "images_per_s": 32 / mean}), flush=True)


def train(folder, weights, precision):
    from sklearn.linear_model import LogisticRegression
    from torchvision import datasets, transforms
    bf16 = precision == "bf16"
    t_start = time.perf_counter()
    m = mobilenet(weights)
    if bf16:
        m = m.to(memory_format=torch.channels_last)
    tf = transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")), transforms.Resize(256), transforms.CenterCrop(224),
        transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = datasets.ImageFolder(folder, tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=False, num_workers=2)
    t_load = time.perf_counter()
    feats, ys, busy = [], [], 0.0
    for x, y in dl:
        t = time.perf_counter()
        feats.append(features(m, x, bf16, bf16))
        busy += time.perf_counter() - t
        ys.append(y)
    t_extract = time.perf_counter()
    X, Y = torch.cat(feats).numpy(), torch.cat(ys).numpy()
    clf = LogisticRegression(max_iter=1000).fit(X, Y)
    t_head = time.perf_counter()
    print(json.dumps({"tool": "pytorch", "what": "train", "precision": precision, "n": len(ds),
                      "import_s": t_start - T0, "load_s": t_load - t_start, "extract_s": t_extract - t_load, "backbone_s": busy,
                      "head_s": t_head - t_extract, "extract_images_per_s": len(ds) / (t_extract - t_load),
                      "train_accuracy": float(clf.score(X, Y))}), flush=True)


def embed(model_dir, csv_path, precision):
    import csv
    from sentence_transformers import SentenceTransformer
    texts = [r["text"] for r in csv.DictReader(open(csv_path, newline=""))]
    m = SentenceTransformer(model_dir, device="cpu")
    tokens = sum(len(m.tokenizer(t, truncation=True, max_length=m.max_seq_length)["input_ids"]) for t in texts)
    bf16 = precision == "bf16"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        m.encode(texts[:64], batch_size=32)
        t = time.perf_counter()
        m.encode(texts, batch_size=32)
        dt = time.perf_counter() - t
    print(json.dumps({"tool": "sentence-transformers", "what": "embed", "precision": precision, "n": len(texts), "tokens": tokens,
                      "seconds": dt, "sentences_per_s": len(texts) / dt}), flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "peak":
        peak()
    elif cmd == "backbone":
        backbone(int(sys.argv[2]))
    elif cmd == "train":
        train(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "embed":
        embed(sys.argv[2], sys.argv[3], sys.argv[4])
