"""Writes a messy image folder for the reliability benchmark: valid images in many layouts,
and damaged ones (truncated, bit-flipped, header-damaged, junk, decompression bombs).

Usage: make_messy.py OUT_DIR [--seed S]
Two classes (`a`, `b`) of generated pictures; every damaged file is derived from a valid one.
Prints how many files of each kind it wrote.
"""
import io, random, struct, sys, zlib
from pathlib import Path

from PIL import Image, ImageDraw

out = Path(sys.argv[1])
seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 0
rng = random.Random(seed)
counts = {}


def picture(label, w, h):
    """Class a: circles; class b: stripes; random colours."""
    img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        c = tuple(rng.randrange(256) for _ in range(3))
        if label == "a":
            x, y, r = rng.randrange(w), rng.randrange(h), rng.randrange(4, max(5, min(w, h) // 3))
            d.ellipse([x - r, y - r, x + r, y + r], fill=c)
        else:
            x = rng.randrange(w)
            d.rectangle([x, 0, x + max(2, w // 12), h], fill=c)
    return img


def encode(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def write(label, name, data, kind):
    p = out / label / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    counts[kind] = counts.get(kind, 0) + 1


def png_with_size(data, w, h):
    data = bytearray(data)
    data[16:20] = struct.pack(">I", w)
    data[20:24] = struct.pack(">I", h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


FORMATS = [("JPEG", "jpg", {"quality": 85}), ("PNG", "png", {}), ("WEBP", "webp", {}), ("BMP", "bmp", {}), ("TIFF", "tif", {}), ("GIF", "gif", {})]
n = 0
for i in range(600):
    label = "ab"[i % 2]
    w, h = rng.randrange(24, 400), rng.randrange(24, 400)
    img = picture(label, w, h)
    fmt, ext, kw = FORMATS[i % len(FORMATS)]
    good = encode(img, fmt, **kw)
    write(label, f"ok_{i}.{ext}", good, "valid")
    kind = i % 6
    if kind == 0:
        cut = rng.randrange(len(good) // 4, len(good) - 1)
        write(label, f"trunc_{i}.{ext}", good[:cut], "truncated")
    elif kind == 1:
        bad = bytearray(good)
        for _ in range(rng.randrange(1, 20)):
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        write(label, f"flip_{i}.{ext}", bytes(bad), "bit-flipped")
    elif kind == 2:
        bad = bytearray(good)
        for k in range(rng.randrange(2, min(40, len(bad)))):
            bad[rng.randrange(min(64, len(bad)))] = rng.randrange(256)
        write(label, f"hdr_{i}.{ext}", bytes(bad), "header-damaged")
    elif kind == 3:
        write(label, f"junk_{i}.{ext}", bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000))), "junk")
    elif kind == 4 and i % 12 == 4:
        small = encode(picture(label, 64, 64), "PNG")
        big = rng.choice([(100_000, 100_000), (1, 300_000_000), (40_000, 40_000), (65_535, 65_535)])
        write(label, f"bomb_{i}.png", png_with_size(small, *big), "bomb")

# Valid but unusual: grey, palette, 16-bit, alpha, CMYK, EXIF-rotated, extreme shapes.
for i in range(60):
    label = "ab"[i % 2]
    img = picture(label, rng.randrange(40, 300), rng.randrange(40, 300))
    variants = [
        ("grey.png", encode(img.convert("L"), "PNG")),
        ("palette.png", encode(img.convert("P"), "PNG")),
        ("grey16.png", encode(img.convert("L").convert("I;16"), "PNG")),
        ("rgba.png", encode(img.convert("RGBA"), "PNG")),
        ("cmyk.jpg", encode(img.convert("CMYK"), "JPEG")),
    ]
    exif = Image.Exif()
    exif[0x0112] = rng.choice([3, 6, 8])
    variants.append(("exif.jpg", encode(img, "JPEG", exif=exif.tobytes())))
    for name, data in variants:
        write(label, f"unusual_{i}_{name}", data, "valid, unusual")
for i, (w, h) in enumerate([(1, 5000), (5000, 1), (2, 12000), (12000, 2), (1, 40000), (3000, 3000)]):
    label = "ab"[i % 2]
    img = picture(label, w, h)
    write(label, f"shape_{w}x{h}.png", encode(img.convert("P") if w == 1 else img, "PNG"), "valid, extreme shape")

for k, v in counts.items():
    print(f"{k:22} {v}")
print(f"{'total':22} {sum(counts.values())}")
