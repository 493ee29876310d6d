"""An RGB image set from the scikit-image test photos: which photo a patch comes from.

Classes: astronaut, chelsea (cat), coffee, rocket. Each image is a square patch of random
side (24 to 96 px) at a random place in its photo, resized to 64x64 and written as PNG.
Small patches of flat regions are ambiguous, so accuracy stays below 100% and differences
between feature precisions can show. Train and test patches use different seeds.

Usage: python make_patches.py ASSETS_DIR OUT_DIR [TRAIN_PER_CLASS] [TEST_PER_CLASS]
"""
import random, sys
from pathlib import Path

from PIL import Image

assets, out = Path(sys.argv[1]), Path(sys.argv[2])
per = {"train": int(sys.argv[3]) if len(sys.argv) > 3 else 150, "test": int(sys.argv[4]) if len(sys.argv) > 4 else 100}
photos = {"astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg"}
for split, seed in [("train", 1), ("test", 2)]:
    rng = random.Random(seed)
    for name, file in photos.items():
        im = Image.open(assets / file).convert("RGB")
        d = out / split / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per[split]):
            side = rng.randint(24, 96)
            x, y = rng.randint(0, im.width - side), rng.randint(0, im.height - side)
            im.crop((x, y, x + side, y + side)).resize((64, 64), Image.BILINEAR).save(d / f"{i:04d}.png")
