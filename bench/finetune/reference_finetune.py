"""Last-stage fine-tuning, the PyTorch way, as the reference for `headstart train --mode finetune`.

torchvision mobilenet_v2 with the packaged ImageNet weights; every parameter frozen except the
last stage (features.18) and the classifier, whose classifier[1] is replaced by a 10-way Linear;
AdamW lr 1e-3, weight decay 0.01, constant rate, cross-entropy, batch 32, 5 epochs, no
augmentation; the frozen stages run on every batch of every epoch. Then test accuracy.

Usage: python reference_finetune.py TRAIN_DIR TEST_DIR WEIGHTS [--threads N] [--epochs N] [--all] [--lr LR]
(--all: full fine-tuning, every parameter trained.)
"""
import argparse, json, time

import torch
import torch.nn as nn
from torchvision import datasets, models, transforms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train"); ap.add_argument("test"); ap.add_argument("weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--all", action="store_true", help="unfreeze every parameter (full fine-tuning)")
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tf = transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")),
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    train, test = datasets.ImageFolder(a.train, tf), datasets.ImageFolder(a.test, tf)
    tl = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, num_workers=2)
    vl = torch.utils.data.DataLoader(test, batch_size=32, shuffle=False, num_workers=2)
    m = models.mobilenet_v2()
    m.load_state_dict(torch.load(a.weights, map_location="cpu", weights_only=True))
    m.classifier[1] = nn.Linear(m.last_channel, len(train.classes))
    for n, p in m.named_parameters():
        p.requires_grad = a.all or n.startswith("features.18.") or n.startswith("classifier.")
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(a.epochs):
        m.train()
        for x, y in tl:
            opt.zero_grad()
            loss = loss_fn(m(x), y)
            loss.backward()
            opt.step()
        print(json.dumps({"epoch": epoch + 1, "elapsed_s": time.perf_counter() - t0}), flush=True)
    t_train = time.perf_counter() - t0
    m.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in vl:
            correct += (m(x).argmax(1) == y).sum().item()
            total += len(y)
    print(json.dumps({"tool": "pytorch", "train_s": t_train, "train_and_test_s": time.perf_counter() - t0,
                      "test_accuracy": correct / total}))


if __name__ == "__main__":
    main()
