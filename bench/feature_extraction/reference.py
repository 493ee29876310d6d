"""The classic PyTorch feature-extraction recipe, as the reference for `headstart train`.

torchvision mobilenet_v2 with the packaged ImageNet weights, every parameter frozen,
classifier[1] replaced by a 10-way Linear, Adam lr 1e-3, cross-entropy, batch 32, 10 epochs;
the frozen backbone runs on every batch of every epoch (train mode while training, eval mode
for evaluation, as in the PyTorch transfer-learning tutorial). Preprocessing: RGB, Resize(256),
CenterCrop(224), ImageNet mean/std. Prints one JSON line with timings and test accuracy.

Usage: python reference.py TRAIN_DIR TEST_DIR WEIGHTS [--threads N] [--epochs N]
"""
import argparse, json, time

import torch
import torch.nn as nn
from torchvision import datasets, models, transforms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train"); ap.add_argument("test"); ap.add_argument("weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    a = ap.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tf = transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")),
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    train = datasets.ImageFolder(a.train, tf)
    test = datasets.ImageFolder(a.test, tf)
    tl = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, num_workers=a.workers)
    vl = torch.utils.data.DataLoader(test, batch_size=32, shuffle=False, num_workers=a.workers)
    model = models.mobilenet_v2()
    model.load_state_dict(torch.load(a.weights, map_location="cpu", weights_only=True))
    for p in model.parameters():
        p.requires_grad = False
    model.classifier[1] = nn.Linear(model.last_channel, len(train.classes))
    opt = torch.optim.Adam(model.classifier[1].parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    epochs = []
    for epoch in range(a.epochs):
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for x, y in tl:
            opt.zero_grad()
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
        epochs.append({"epoch": epoch + 1, "train_loss": loss_sum / total, "train_acc": correct / total,
                       "elapsed_s": time.perf_counter() - t0})
        print(json.dumps(epochs[-1]), flush=True)
    t_train = time.perf_counter() - t0
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for x, y in vl:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    t_all = time.perf_counter() - t0
    print(json.dumps({"tool": "pytorch", "train_s": t_train, "train_and_test_s": t_all,
                      "test_accuracy": correct / total, "n_train": len(train), "n_test": total}))


if __name__ == "__main__":
    main()
