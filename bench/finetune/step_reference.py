"""Training-step throughput of the PyTorch eager recipe (reference for step_throughput.rs).

python step_reference.py MODEL full|last STEPS [BATCH] [fp32|bf16]   (MODEL: mobilenet_v2 | resnet50)
bf16: the forward pass under torch.autocast("cpu", dtype=torch.bfloat16).
Random weights and inputs; AdamW(weight_decay=0.01) on the trainable parameters; model.train();
for `last`, every parameter outside the last stage and the classifier has requires_grad=False.
"""
import json, sys, time

import torch
from torchvision import models


def main():
    name, mode, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    precision = sys.argv[5] if len(sys.argv) > 5 else "fp32"
    torch.manual_seed(0)
    m = getattr(models, name)()
    if mode == "last":
        last = {"mobilenet_v2": ["features.18", "classifier"], "resnet50": ["layer4", "fc"]}[name]
        for n, p in m.named_parameters():
            p.requires_grad = any(n.startswith(k + ".") for k in last)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    m.train()
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(1000, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = m(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    mean = sum(times[2:]) / steps
    print(json.dumps({"tool": "pytorch", "model": name, "mode": mode, "precision": precision, "batch": batch, "steps": steps,
                      "s_per_step": mean, "images_per_s": batch / mean}))


if __name__ == "__main__":
    main()
