//! Peak memory of `train` on a folder of extreme images: 1 × N and N × 1 strips, a 1-px-tall
//! palette PNG, a 16-bit TIFF near the pixel cap and a header that declares a bomb. Resizing
//! such strips before cropping would take gigabytes (a 1 × 20,000 strip whose shorter side goes
//! to 256 px becomes 256 × 5,120,000 floats); the crop-first preprocessing and the decode
//! budget keep the whole run small. In its own test binary, so the peak resident size of waited
//! children (`RUSAGE_CHILDREN`) is that run's alone.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use image::{ImageBuffer, Luma, Rgb};

/// The limit set for any folder.
const LIMIT_BYTES: u64 = 1536 << 20;

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let body = [&kind[..], data].concat();
    out.extend(&body);
    out.extend(crc32(&body).to_be_bytes());
}

/// A palette PNG (8-bit indices) with stored (uncompressed) deflate blocks.
fn palette_png(width: u32, height: u32, index: impl Fn(u32, u32) -> u8) -> Vec<u8> {
    let mut raw = vec![];
    for y in 0..height {
        raw.push(0u8);
        raw.extend((0..width).map(|x| index(x, y)));
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65535).collect();
    for (k, b) in blocks.iter().enumerate() {
        z.push((k + 1 == blocks.len()) as u8);
        z.extend((b.len() as u16).to_le_bytes());
        z.extend((!(b.len() as u16)).to_le_bytes());
        z.extend(*b);
    }
    let (mut a, mut bsum) = (1u32, 0u32);
    for &x in &raw {
        a = (a + x as u32) % 65521;
        bsum = (bsum + a) % 65521;
    }
    z.extend(((bsum << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = vec![];
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 3, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    let palette: Vec<u8> = (0..=255u8).flat_map(|i| [i, 255 - i, i / 2]).collect();
    chunk(&mut png, b"PLTE", &palette);
    chunk(&mut png, b"IDAT", &z);
    chunk(&mut png, b"IEND", &[]);
    png
}

/// A decompression bomb: a small PNG whose header declares `w × h` pixels.
fn declared_png(w: u32, h: u32) -> Vec<u8> {
    let mut png = palette_png(64, 1, |x, _| x as u8);
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn extreme_images(dir: &Path) {
    let (bag, trouser) = (dir.join("Bag"), dir.join("Trouser"));
    let strip = |w: u32, h: u32| ImageBuffer::from_fn(w, h, |x, y| Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 7 * 30) as u8]));
    strip(20_000, 1).save(bag.join("wide_1x20000.png")).unwrap();
    strip(1, 20_000).save(bag.join("tall_20000x1.png")).unwrap();
    strip(3, 9_000).save(trouser.join("tall_9000x3.bmp")).unwrap();
    std::fs::write(trouser.join("palette_1x60000.png"), palette_png(60_000, 1, |x, _| (x % 256) as u8)).unwrap();
    // 16-bit RGB TIFF of 99 Mpx (the cap is 100 Mpx): 594 MB uncompressed.
    let (w, h) = (9_000u32, 11_000u32);
    let big: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(w, h, |x, y| Rgb([(x * 7) as u16, (y * 5) as u16, ((x ^ y) * 3) as u16]));
    let mut f = std::io::BufWriter::new(std::fs::File::create(trouser.join("rgb16_99mpx.tiff")).unwrap());
    big.write_to(&mut f, image::ImageFormat::Tiff).unwrap();
    f.flush().unwrap();
    drop(big);
    // 16-bit grey, same size.
    let grey: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_fn(w, h, |x, y| Luma([(x * 3 + y) as u16]));
    grey.save(bag.join("grey16_99mpx.tiff")).unwrap();
    drop(grey);
    // Bombs: headers that declare more pixels than the cap.
    std::fs::write(bag.join("bomb_100000x100000.png"), declared_png(100_000, 100_000)).unwrap();
    std::fs::write(trouser.join("bomb_1x200000000.png"), declared_png(1, 200_000_000)).unwrap();
}

fn peak_rss_of_children() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage struct.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn train_on_extreme_images_stays_within_the_memory_limit() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    common::sample_set(&data);
    extreme_images(&data);
    let out = d.path().join("run");
    let run = Command::new(env!("CARGO_BIN_EXE_headstart"))
        .args(["train", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--no-cache", "--progress", "none", "--json"])
        .output()
        .unwrap();
    let peak = peak_rss_of_children();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "train failed: {}\n{stdout}", String::from_utf8_lossy(&run.stderr));
    println!("peak RSS of train: {} MiB", peak >> 20);
    assert!(peak <= LIMIT_BYTES, "peak RSS {} MiB over the {} MiB limit", peak >> 20, LIMIT_BYTES >> 20);
    // Every valid extreme image was used; only the two bombs were refused, from their headers.
    let o: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(o["n_train"].as_u64().unwrap() + o["n_val"].as_u64().unwrap(), 24 + 6, "{o}");
    let errors = std::fs::read_to_string(out.join("errors.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = errors.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{errors}");
    for r in &rows {
        assert!(r["path"].as_str().unwrap().contains("bomb_"), "{r}");
        assert!(r["reason"].as_str().unwrap().contains("pixel cap"), "{r}");
    }
}
