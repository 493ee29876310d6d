//! Mutation fuzzing of every parser that reads user files: images (JPEG, PNG, WebP, BMP, TIFF,
//! GIF), weight files (safetensors, zip and legacy `.pth`, sharded HF folders), labelled text
//! (CSV, TSV, JSONL) and image CSV manifests.
//!
//! Valid seeds are built in-process, then mutated with a fixed-seed generator: bit flips,
//! overwrites with boundary values, truncation, chunk duplication and removal, and edits that
//! know the format (image dimensions with PNG checksums repaired, safetensors header numbers
//! with the length prefix repaired, tensor shapes, strides and storage sizes in pickles,
//! shard names in an index, quotes and delimiters in CSV). Every case must return (accepted or
//! refused) without a panic, within [`CASE_LIMIT`]; each family prints its counts.
//!
//! `HEADSTART_FUZZ_SEED=<n>` changes the seed and `HEADSTART_FUZZ_SCALE=<k>` multiplies the
//! number of cases for a longer run; `HEADSTART_FUZZ_SEEDS=<dir>` also writes the valid seeds
//! as starting corpora for the cargo-fuzz targets (`fuzz/`). A failing case is saved under the test's temporary
//! folder and named in the failure message with its seed, so it can be replayed.

mod fuzzing;

use std::cell::RefCell;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use headstart::data::Rng;
use headstart::text::data::Columns;
use tch::{Kind, Tensor};

use fuzzing::Scratch;

/// The most one case may take.
const CASE_LIMIT: Duration = Duration::from_secs(1);
/// Growth of the process's peak memory during one case worth printing (the families run in
/// parallel, so this points at suspects rather than proving anything).
const RSS_NOTE_KIB: u64 = 128 << 10;

// ---------------------------------------------------------------- harness

thread_local! {
    /// Set while this thread runs fuzz cases: the panic hook then records instead of printing.
    static CAPTURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that records the message and location of a panic raised by a
/// fuzz case, and defers to the default hook for everything else.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        *slot = info.to_string();
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                default(info);
            }
        }));
    });
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Cases to run: `n` times `HEADSTART_FUZZ_SCALE`.
fn cases(n: usize) -> usize {
    n * env_u64("HEADSTART_FUZZ_SCALE", 1).max(1) as usize
}

/// Counts for one family of inputs, and the failures found.
struct Tally {
    family: &'static str,
    seed: u64,
    cases: usize,
    accepted: usize,
    refused: usize,
    panics: usize,
    slow: usize,
    slowest: (Duration, String),
    /// Cases during which the process's peak memory grew by more than [`RSS_NOTE_KIB`].
    grew: Vec<String>,
    failures: Vec<String>,
    started: Instant,
    saved: PathBuf,
}

impl Tally {
    fn new(family: &'static str) -> Tally {
        install_hook();
        let saved = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
        let seed = env_u64("HEADSTART_FUZZ_SEED", 0x5eed);
        let slowest = (Duration::ZERO, String::new());
        Tally { family, seed, cases: 0, accepted: 0, refused: 0, panics: 0, slow: 0, slowest, grew: vec![], failures: vec![], started: Instant::now(), saved }
    }

    /// A generator for the next case, independent of the other cases and families.
    fn rng(&self) -> Rng {
        let salt = self.family.bytes().fold(0u64, |h, b| h.wrapping_mul(0x100_0000_01b3) ^ b as u64);
        let mut r = Rng(self.seed ^ salt ^ ((self.cases as u64) << 24));
        r.next_u64();
        r
    }

    /// Runs one case. `name` says which seed and mutation it came from; `input` is saved when
    /// the case fails.
    fn run(&mut self, name: &str, input: &[u8], f: impl FnOnce() -> Result<bool, String>) {
        self.cases += 1;
        CAPTURE.with(|c| *c.borrow_mut() = Some(String::new()));
        let rss0 = peak_rss_kib();
        let t0 = Instant::now();
        let out = catch_unwind(AssertUnwindSafe(f));
        let took = t0.elapsed();
        let grew = peak_rss_kib().saturating_sub(rss0);
        let panic_msg = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
        let label = format!("{} case {} ({name}, seed {:#x})", self.family, self.cases, self.seed);
        if took > self.slowest.0 {
            self.slowest = (took, label.clone());
        }
        if grew > RSS_NOTE_KIB {
            self.grew.push(format!("{label}: peak RSS +{} MiB", grew / 1024));
        }
        match out {
            Ok(Ok(true)) => self.accepted += 1,
            Ok(Ok(false)) => self.refused += 1,
            Ok(Err(m)) => self.fail(&label, input, &format!("wrong result: {m}")),
            Err(_) => {
                self.panics += 1;
                self.fail(&label, input, &format!("PANIC: {panic_msg}"));
            }
        }
        if took > CASE_LIMIT {
            self.slow += 1;
            self.fail(&label, input, &format!("took {took:?}"));
        }
    }

    fn fail(&mut self, label: &str, input: &[u8], why: &str) {
        let _ = std::fs::create_dir_all(&self.saved);
        let file = self.saved.join(format!("{}-seed{:x}-{}.bin", self.family.replace(" ", "_"), self.seed, self.cases));
        let _ = std::fs::write(&file, input);
        self.failures.push(format!("{label}: {why} [input saved to {}]", file.display()));
    }

    /// Prints the counts; returns the problems (too few cases, failing cases).
    fn finish(self, min_cases: usize) -> Vec<String> {
        let secs = self.started.elapsed().as_secs_f64();
        println!(
            "fuzz {:<14} cases {:>5}  accepted {:>5}  refused {:>5}  panics {}  over {:?}: {}  time {secs:.1} s  slowest {:.0} ms ({})  peak RSS {} MiB",
            self.family,
            self.cases,
            self.accepted,
            self.refused,
            self.panics,
            CASE_LIMIT,
            self.slow,
            self.slowest.0.as_secs_f64() * 1e3,
            self.slowest.1,
            peak_rss_kib() / 1024,
        );
        for g in &self.grew {
            println!("  memory: {g}");
        }
        let mut problems = self.failures;
        if self.cases < min_cases {
            problems.push(format!("{}: only {} cases ran, expected at least {min_cases}", self.family, self.cases));
        }
        problems
    }
}

/// Fails the test listing every problem of every family.
fn check(problems: Vec<String>) {
    assert!(problems.is_empty(), "{} failing cases:\n{}", problems.len(), problems.join("\n"));
}

/// With `HEADSTART_FUZZ_SEEDS=<dir>`, writes `seeds` to `<dir>/<target>/` as a starting corpus
/// for the cargo-fuzz target of that name.
fn save_seeds(target: &str, seeds: &[(String, Vec<u8>)]) {
    let Ok(root) = std::env::var("HEADSTART_FUZZ_SEEDS") else { return };
    let dir = PathBuf::from(root).join(target);
    std::fs::create_dir_all(&dir).expect("seed corpus folder");
    for (name, bytes) in seeds {
        let file: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        std::fs::write(dir.join(file), bytes).expect("writing a seed");
    }
}

/// Peak resident memory of this process, from /proc (0 where unavailable).
fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

// ---------------------------------------------------------------- generic mutations

/// Boundary values for 32-bit fields.
const INTERESTING_U32: &[u32] = &[0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff];
/// Boundary values for 64-bit fields.
const INTERESTING_U64: &[u64] = &[0, 1, 8, 0xffff_ffff, 0x1_0000_0000, 0x7fff_ffff_ffff_ffff, 0x8000_0000_0000_0000, u64::MAX, 1 << 40];

fn pick<'a, T>(rng: &mut Rng, v: &'a [T]) -> &'a T {
    &v[rng.below(v.len())]
}

/// A position in `data` (0 for an empty buffer).
fn pos(rng: &mut Rng, data: &[u8]) -> usize {
    if data.is_empty() {
        0
    } else {
        rng.below(data.len())
    }
}

/// Writes `bytes` at `at`, clipped to the buffer.
fn overwrite(data: &mut [u8], at: usize, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        if let Some(x) = data.get_mut(at + i) {
            *x = b;
        }
    }
}

/// One blind mutation; returns its name.
fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>) -> &'static str {
    let at = pos(rng, data);
    match rng.below(10) {
        0 => {
            if let Some(b) = data.get_mut(at) {
                *b ^= 1 << rng.below(8);
            }
            "bit flip"
        }
        1 => {
            let v = *pick(rng, &[0u8, 1, 0x7f, 0x80, 0xfe, 0xff]);
            overwrite(data, at, &[v]);
            "byte"
        }
        2 => {
            let v = *pick(rng, INTERESTING_U32);
            let b = if rng.below(2) == 0 { v.to_le_bytes() } else { v.to_be_bytes() };
            overwrite(data, at, &b);
            "u32"
        }
        3 => {
            let v = *pick(rng, INTERESTING_U64);
            overwrite(data, at, &v.to_le_bytes());
            "u64"
        }
        4 => {
            data.truncate(at);
            "truncate"
        }
        5 => {
            let len = 1 + rng.below(64.min(data.len().max(1)));
            let end = (at + len).min(data.len());
            let chunk = data[at..end].to_vec();
            let to = pos(rng, data);
            data.splice(to..to, chunk);
            "duplicate"
        }
        6 => {
            let len = 1 + rng.below(64);
            let end = (at + len).min(data.len());
            data.drain(at..end);
            "remove"
        }
        7 => {
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, bytes);
            "insert"
        }
        8 => {
            let n = 1 + rng.below(16);
            for i in 0..n {
                let v = rng.next_u64() as u8;
                overwrite(data, at + i, &[v]);
            }
            "random bytes"
        }
        _ => {
            if let Some(b) = data.get_mut(at) {
                *b = b.wrapping_add(if rng.below(2) == 0 { 1 } else { 0xff });
            }
            "off by one"
        }
    }
}

/// One to four blind mutations of `seed`; returns the bytes and a description.
fn mutate(rng: &mut Rng, seed: &[u8]) -> (Vec<u8>, String) {
    let mut data = seed.to_vec();
    let n = 1 + rng.below(4);
    let names: Vec<&str> = (0..n).map(|_| mutate_once(rng, &mut data)).collect();
    (data, names.join("+"))
}

// ---------------------------------------------------------------- images

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// Recomputes every PNG chunk checksum that can be found, so mutations reach past the CRC check.
fn fix_png_crcs(data: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= data.len() {
        let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = at.checked_add(8).and_then(|x| x.checked_add(len)).filter(|&e| e + 4 <= data.len()) else { return };
        let crc = crc32(&data[at + 4..end]);
        data[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

/// Byte offsets of the width/height fields of an image: (offset, size in bytes, big-endian).
fn dimension_fields(data: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut out = vec![];
    if data.starts_with(b"\x89PNG") {
        out.extend([(16, 4, true), (20, 4, true)]);
    } else if data.starts_with(b"BM") {
        out.extend([(18, 4, false), (22, 4, false), (28, 2, false), (10, 4, false)]);
    } else if data.starts_with(b"GIF") {
        out.extend([(6, 2, false), (8, 2, false)]);
        if let Some(i) = data.iter().skip(13).position(|&b| b == 0x2c) {
            out.extend([(13 + i + 5, 2, false), (13 + i + 7, 2, false)]);
        }
    } else if data.starts_with(b"\xff\xd8") {
        if let Some(i) = data.windows(2).position(|w| w[0] == 0xff && (w[1] == 0xc0 || w[1] == 0xc2)) {
            out.extend([(i + 5, 2, true), (i + 7, 2, true)]);
        }
    } else if data.starts_with(b"RIFF") {
        out.extend([(21, 4, false), (4, 4, false), (16, 4, false)]);
    } else if data.starts_with(b"II*\0") {
        let ifd = data.get(4..8).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
        let n = data.get(ifd..ifd.saturating_add(2)).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
        for e in 0..n {
            let at = ifd + 2 + 12 * e;
            if let Some(tag) = data.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]])) {
                if matches!(tag, 256 | 257 | 258 | 273 | 277 | 278 | 279) {
                    out.push((at + 8, 4, false));
                }
            }
        }
    }
    out
}

/// Sets a width, height (or a neighbouring layout field) to a boundary value.
fn edit_dimension(rng: &mut Rng, data: &mut [u8]) -> &'static str {
    let fields = dimension_fields(data);
    if fields.is_empty() {
        return "no dimension field";
    }
    let &(at, size, be) = pick(rng, &fields);
    let v = *pick(rng, &[0u32, 1, 2, 3, 255, 256, 4097, 10_000, 30_000, 65_535, 65_536, 0x7fff_ffff, 0xffff_ffff]);
    let bytes: Vec<u8> = match (size, be) {
        (2, true) => (v as u16).to_be_bytes().to_vec(),
        (2, false) => (v as u16).to_le_bytes().to_vec(),
        (_, true) => v.to_be_bytes().to_vec(),
        (_, false) => v.to_le_bytes().to_vec(),
    };
    overwrite(data, at, &bytes);
    "dimension"
}

/// A small colourful picture.
fn picture(w: u32, h: u32) -> image::RgbaImage {
    image::RgbaImage::from_fn(w, h, |x, y| {
        let alpha = if (x + y) % 3 == 0 { 128 } else { 255 };
        image::Rgba([(x * 37 % 256) as u8, (y * 53 % 256) as u8, ((x + y) * 11 % 256) as u8, alpha])
    })
}

fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(vec![]);
    img.write_to(&mut buf, format).unwrap_or_else(|e| panic!("encoding a {format:?} seed: {e}"));
    buf.into_inner()
}

/// A JPEG with an EXIF APP1 segment holding `orientation`.
fn jpeg_with_exif(img: &image::DynamicImage, orientation: u16) -> Vec<u8> {
    let jpeg = encode(image::DynamicImage::ImageRgb8(img.to_rgb8()), image::ImageFormat::Jpeg);
    let mut tiff = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
    tiff.extend(orientation.to_le_bytes());
    tiff.extend([0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xff, 0xe1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

/// An animated GIF of two frames.
fn gif_two_frames(img: &image::RgbaImage) -> Vec<u8> {
    let mut buf = vec![];
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut buf);
        let mut second = img.clone();
        image::imageops::flip_horizontal_in_place(&mut second);
        enc.encode_frames([image::Frame::new(img.clone()), image::Frame::new(second)]).expect("gif seed");
    }
    buf
}

/// Valid seeds in every supported format, with the format's name.
fn image_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use image::{DynamicImage as D, ImageFormat as F};
    let rgba = picture(13, 7);
    let rgb = D::ImageRgba8(rgba.clone()).to_rgb8();
    let grey = D::ImageRgba8(rgba.clone()).to_luma8();
    let rgb16 = D::ImageRgba8(rgba.clone()).to_rgb16();
    vec![
        ("png rgb", encode(D::ImageRgb8(rgb.clone()), F::Png)),
        ("png rgba", encode(D::ImageRgba8(rgba.clone()), F::Png)),
        ("png grey", encode(D::ImageLuma8(grey.clone()), F::Png)),
        ("png rgb16", encode(D::ImageRgb16(rgb16.clone()), F::Png)),
        ("jpeg", encode(D::ImageRgb8(rgb.clone()), F::Jpeg)),
        ("jpeg grey", encode(D::ImageLuma8(grey.clone()), F::Jpeg)),
        ("jpeg exif", jpeg_with_exif(&D::ImageRgba8(rgba.clone()), 6)),
        ("webp", encode(D::ImageRgba8(rgba.clone()), F::WebP)),
        ("webp rgb", encode(D::ImageRgb8(rgb.clone()), F::WebP)),
        ("bmp", encode(D::ImageRgb8(rgb.clone()), F::Bmp)),
        ("bmp rgba", encode(D::ImageRgba8(rgba.clone()), F::Bmp)),
        ("tiff", encode(D::ImageRgb8(rgb.clone()), F::Tiff)),
        ("tiff grey16", encode(D::ImageLuma16(D::ImageRgb16(rgb16).to_luma16()), F::Tiff)),
        ("gif", gif_two_frames(&rgba)),
    ]
}

#[test]
fn fuzz_images() {
    let seeds = image_seeds();
    save_seeds("image_decode", &seeds.iter().map(|(n, b)| (n.to_string(), b.clone())).collect::<Vec<_>>());
    let mut t = Tally::new("images");
    for (name, seed) in &seeds {
        t.run(&format!("{name} seed"), seed, || match fuzzing::decode_image(seed) {
            Ok(true) => Ok(true),
            other => Err(format!("the valid seed was not decoded: {other:?}")),
        });
    }
    for i in 0..cases(1200) {
        let mut rng = t.rng();
        let (name, seed) = &seeds[i % seeds.len()];
        let (mut data, mut how) = if rng.below(4) == 0 {
            let mut d = seed.clone();
            let how = edit_dimension(&mut rng, &mut d).to_string();
            (d, how)
        } else {
            mutate(&mut rng, seed)
        };
        if rng.below(5) == 0 {
            how += "+";
            how += edit_dimension(&mut rng, &mut data);
        }
        if data.starts_with(b"\x89PNG") && rng.below(4) != 0 {
            fix_png_crcs(&mut data);
            how += "+crc";
        }
        t.run(&format!("{name}: {how}"), &data, || fuzzing::decode_image(&data));
    }
    check(t.finish(1000));
}

// ---------------------------------------------------------------- weight files

/// A tiny pickle writer for checkpoints.
mod pkl {
    pub fn s(x: &str) -> Vec<u8> {
        let mut v = vec![b'X'];
        v.extend((x.len() as u32).to_le_bytes());
        v.extend(x.as_bytes());
        v
    }
    pub fn int(i: i64) -> Vec<u8> {
        match i32::try_from(i) {
            Ok(i) => {
                let mut v = vec![b'J'];
                v.extend(i.to_le_bytes());
                v
            }
            Err(_) => {
                let mut v = vec![0x8a, 8];
                v.extend(i.to_le_bytes());
                v
            }
        }
    }
    pub fn tuple(items: &[i64]) -> Vec<u8> {
        let mut v = vec![b'('];
        for &i in items {
            v.extend(int(i));
        }
        v.push(b't');
        v
    }
    pub fn global(module: &str, name: &str) -> Vec<u8> {
        format!("c{module}\n{name}\n").into_bytes()
    }
}

/// One tensor of a checkpoint: name, storage class, storage key, storage numel, offset, shape,
/// stride.
#[derive(Clone, Debug)]
struct PthTensor {
    name: String,
    class: &'static str,
    key: String,
    numel: i64,
    offset: i64,
    shape: Vec<i64>,
    stride: Vec<i64>,
}

fn elem_size(class: &str) -> usize {
    match class {
        "DoubleStorage" | "LongStorage" => 8,
        "FloatStorage" | "IntStorage" => 4,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        _ => 1,
    }
}

/// A protocol-2 state-dict pickle as torch writes it: an OrderedDict (with `_metadata` set by
/// BUILD), memoised globals, `_rebuild_tensor_v2` and persistent ids (six items for the legacy
/// format).
fn state_dict_pickle(tensors: &[PthTensor], legacy: bool) -> Vec<u8> {
    let mut v = b"\x80\x02".to_vec();
    v.extend(pkl::global("collections", "OrderedDict"));
    v.extend(b"q\x00)Rq\x01(");
    for (i, t) in tensors.iter().enumerate() {
        v.extend(pkl::s(&t.name));
        v.extend(tensor_pickle(t, legacy));
        v.extend([b'r']);
        v.extend((i as u32 + 2).to_le_bytes());
    }
    v.extend(b"u}");
    v.extend(pkl::s("_metadata"));
    v.extend(b"}sb.");
    v
}

/// `_rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())`, reduced.
fn tensor_pickle(t: &PthTensor, legacy: bool) -> Vec<u8> {
    let mut v = pkl::global("torch._utils", "_rebuild_tensor_v2");
    v.extend(b"((");
    v.extend(pkl::s("storage"));
    v.extend(pkl::global("torch", t.class));
    v.extend(pkl::s(&t.key));
    v.extend(pkl::s("cpu"));
    v.extend(pkl::int(t.numel));
    if legacy {
        v.push(b'N');
    }
    v.extend(b"tQ");
    v.extend(pkl::int(t.offset));
    v.extend(pkl::tuple(&t.shape));
    v.extend(pkl::tuple(&t.stride));
    v.push(0x89);
    v.extend(pkl::global("collections", "OrderedDict"));
    v.extend(b")RtR");
    v
}

/// Each distinct storage key with its byte size and declared numel, in first-use order.
fn storages(tensors: &[PthTensor]) -> Vec<(String, usize, i64)> {
    let mut out: Vec<(String, usize, i64)> = vec![];
    for t in tensors {
        if !out.iter().any(|(k, ..)| *k == t.key) {
            // Written as declared, but never more than 64 KiB: a declaration larger than the
            // bytes that follow is one of the cases.
            out.push((t.key.clone(), elem_size(t.class).saturating_mul(t.numel.max(0) as usize).min(1 << 16), t.numel));
        }
    }
    out
}

fn storage_bytes(n: usize, salt: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)).collect()
}

/// A zip checkpoint (`archive/data.pkl`, `archive/data/<key>`, `byteorder`, `version`).
fn zip_pth(tensors: &[PthTensor], pickle: &[u8]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(vec![]);
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let mut put = |name: &str, data: &[u8]| {
            z.start_file(name, opts).unwrap();
            z.write_all(data).unwrap();
        };
        put("archive/data.pkl", pickle);
        put("archive/byteorder", b"little");
        for (i, (key, bytes, _)) in storages(tensors).into_iter().enumerate() {
            put(&format!("archive/data/{key}"), &storage_bytes(bytes, i as u8));
        }
        put("archive/version", b"3\n");
        z.finish().unwrap();
    }
    buf.into_inner()
}

/// A legacy (pre-zip) checkpoint: magic, protocol, system info, state dict, key list, storages.
fn legacy_pth(tensors: &[PthTensor], pickle: &[u8]) -> Vec<u8> {
    let mut v = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    v.extend(b"\x80\x02M\xe9\x03.");
    v.extend(b"\x80\x02}q\x00(");
    v.extend(pkl::s("protocol_version"));
    v.extend(pkl::int(1001));
    v.extend(pkl::s("little_endian"));
    v.extend(b"\x88u.");
    v.extend(pickle);
    let st = storages(tensors);
    v.extend(b"\x80\x02]q\x00(");
    for (key, ..) in &st {
        v.extend(pkl::s(key));
    }
    v.extend(b"e.");
    for (i, (_, bytes, numel)) in st.iter().enumerate() {
        v.extend((*numel as u64).to_le_bytes());
        v.extend(storage_bytes(*bytes, i as u8));
    }
    v
}

/// A valid little state dict: a conv weight, a strided view, a shared storage, an empty
/// tensor, a scalar, and a nested checkpoint-style name.
fn base_tensors() -> Vec<PthTensor> {
    let t = |name: &str, class: &'static str, key: &str, numel: i64, offset: i64, shape: &[i64], stride: &[i64]| PthTensor {
        name: name.into(),
        class,
        key: key.into(),
        numel,
        offset,
        shape: shape.to_vec(),
        stride: stride.to_vec(),
    };
    vec![
        t("conv.weight", "FloatStorage", "0", 24, 0, &[2, 3, 2, 2], &[12, 4, 2, 1]),
        t("conv.weight_t", "FloatStorage", "0", 24, 1, &[3, 2], &[1, 3]),
        t("bn.running_mean", "DoubleStorage", "1", 4, 0, &[4], &[1]),
        t("bn.num_batches_tracked", "LongStorage", "2", 1, 0, &[], &[]),
        t("fc.bias", "HalfStorage", "3", 5, 0, &[5], &[1]),
        t("empty", "FloatStorage", "4", 0, 0, &[0, 7], &[7, 1]),
        t("mask", "BoolStorage", "5", 6, 0, &[2, 3], &[3, 1]),
    ]
}

/// Edits tensor metadata to boundary values: shapes, strides, offsets, storage sizes, keys
/// and classes; the storages are written to match the edited declarations (or not).
fn mutate_tensors(rng: &mut Rng, tensors: &mut [PthTensor]) -> &'static str {
    const BIG: &[i64] = &[0, 1, 2, 7, 25, 1 << 20, 1 << 31, (1 << 31) - 1, 1 << 40, 1 << 62, i64::MAX, -1, i64::MIN];
    let i = rng.below(tensors.len());
    let t = &mut tensors[i];
    match rng.below(8) {
        0 if !t.shape.is_empty() => {
            let d = rng.below(t.shape.len());
            t.shape[d] = *pick(rng, BIG);
            "shape"
        }
        1 if !t.stride.is_empty() => {
            let d = rng.below(t.stride.len());
            t.stride[d] = *pick(rng, BIG);
            "stride"
        }
        2 => {
            t.offset = *pick(rng, BIG);
            "offset"
        }
        3 => {
            t.numel = *pick(rng, &[0, 1, 23, 25, 1 << 20, 1 << 40, -1]);
            "storage numel"
        }
        4 => {
            let n = *pick(rng, &[1 << 20, 1 << 30, 1 << 40, 1 << 62, i64::MAX]);
            t.shape = vec![n, n, 0];
            t.stride = vec![0, 0, 1];
            "huge shape with a zero"
        }
        5 => {
            let n = *pick(rng, &[1 << 16, 1 << 20, 1 << 31, 1 << 40]);
            t.shape = vec![n, n];
            t.stride = vec![0, 0];
            "broadcast"
        }
        6 => {
            t.key = pick(rng, &["0", "1", "9", "../0", ""]).to_string();
            "key"
        }
        _ => {
            t.class = *pick(rng, &["FloatStorage", "DoubleStorage", "LongStorage", "ByteStorage", "BoolStorage", "BFloat16Storage", "QInt8Storage"]);
            "class"
        }
    }
}

/// Inserts or replaces pickle opcodes (stack, memo, container and reduce operations, odd
/// integers), so cases reach deep into the unpickler rather than stopping at the first byte.
fn mutate_pickle(rng: &mut Rng, pickle: &[u8]) -> (Vec<u8>, String) {
    const OPS: &[&[u8]] = &[
        b"(",
        b")",
        b"t",
        b"l",
        b"d",
        b"}",
        b"]",
        b"e",
        b"u",
        b"s",
        b"a",
        b"0",
        b"1",
        b"2",
        b"N",
        b"\x88",
        b"R",
        b"b",
        b"Q",
        b".",
        b"h\x00",
        b"h\x01",
        b"h\x02",
        b"h\xff",
        b"q\x00",
        b"q\x01",
        b"\x94",
        b"j\xff\xff\xff\xff",
        b"J\xff\xff\xff\xff",
        b"K\x00",
        b"\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09",
        b"\x8a\x00",
        b"\x85",
        b"\x86",
        b"\x87",
        b"\x8f",
        b"\x90",
        b"\x91",
        b"\x93",
        b"X\xff\xff\xff\x7f",
        b"\x8c\x05torch",
        b"ctorch\nFloatStorage\n",
        b"ctorch._utils\n_rebuild_parameter\n",
        b"cos\nsystem\n",
        b"I00\n",
        b"I99999999999999999999\n",
        b"F1e999\n",
        b"g0\n",
        b"p0\n",
        b"V\xff\n",
    ];
    let mut data = pickle.to_vec();
    let n = 1 + rng.below(4);
    for _ in 0..n {
        let at = pos(rng, &data);
        let op = *pick(rng, OPS);
        if rng.below(2) == 0 {
            data.splice(at..at, op.iter().copied());
        } else {
            let end = (at + 1 + rng.below(6)).min(data.len());
            data.splice(at..end, op.iter().copied());
        }
    }
    (data, format!("{n} pickle ops"))
}

/// Safetensors seeds written by the library itself.
fn safetensors_seeds(scratch: &Scratch) -> Vec<Vec<u8>> {
    let sets: Vec<Vec<(String, Tensor)>> = vec![
        vec![
            ("a.weight".into(), Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).view([2, 3])),
            ("a.bias".into(), Tensor::from_slice(&[1i64, 2, 3, 4])),
            ("h".into(), Tensor::ones([1, 2, 2], (Kind::Half, tch::Device::Cpu))),
            ("m".into(), Tensor::from_slice(&[true, false, true])),
            ("z".into(), Tensor::zeros([0, 5], (Kind::Float, tch::Device::Cpu))),
        ],
        vec![("only".into(), Tensor::from_slice(&[0.5f64, 1.5]))],
    ];
    sets.iter()
        .enumerate()
        .map(|(i, set)| {
            let p = scratch.path().join(format!("seed{i}.safetensors"));
            headstart::weights::save_safetensors(&p, set).expect("safetensors seed");
            std::fs::read(&p).unwrap()
        })
        .collect()
}

/// Edits one number or string inside the JSON header and, usually, fixes the length prefix.
fn mutate_safetensors_header(rng: &mut Rng, data: &[u8]) -> (Vec<u8>, &'static str) {
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let mut header = String::from_utf8_lossy(&data[8..8 + n]).into_owned();
    let body = &data[8 + n..];
    const SWAPS: &[(&str, &[&str])] = &[
        ("F32", &["F64", "I8", "BOOL", "F8_E4M3", "U64", "X"]),
        ("I64", &["F16", "U8"]),
        ("[", &["[18446744073709551615,", "[-1,", "[4294967296,", "[1e30,", "[[", "[\"a\","]),
        (",", &[",,", ",0,", ",18446744073709551615,"]),
        ("\"data_offsets\"", &["\"data_offsetz\"", "\"data_offsets\":[0,0],\"x\""]),
        ("\"shape\"", &["\"shape\":[4294967296,4294967296],\"y\"", "\"shapes\""]),
        ("{", &["{\"__metadata__\":{\"a\":1},", "{\"x\":{},", "{{"]),
    ];
    let (from, to) = pick(rng, SWAPS);
    let hits: Vec<usize> = header.match_indices(from).map(|(i, _)| i).collect();
    if let Some(&at) = (!hits.is_empty()).then(|| pick(rng, &hits)) {
        let options: &[&str] = to;
        let with: &str = options[rng.below(options.len())];
        header.replace_range(at..at + from.len(), with);
    }
    let prefix = if rng.below(4) == 0 { n as u64 } else { header.len() as u64 };
    let mut out = prefix.to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(body);
    (out, "header edit")
}

fn run_weight_case(t: &mut Tally, scratch: &Scratch, name: &str, data: &[u8]) {
    t.run(name, data, || fuzzing::weight_bytes(scratch, "case.bin", data));
}

fn fuzz_safetensors(t: &mut Tally, scratch: &Scratch, n: usize) {
    let seeds = safetensors_seeds(scratch);
    save_seeds("safetensors", &seeds.iter().enumerate().map(|(i, b)| (format!("seed{i}"), b.clone())).collect::<Vec<_>>());
    for (i, s) in seeds.iter().enumerate() {
        t.run(&format!("safetensors seed {i}"), s, || match fuzzing::weight_bytes(scratch, "case.bin", s) {
            Ok(true) => Ok(true),
            other => Err(format!("the valid seed was refused: {other:?}")),
        });
    }
    for i in 0..n {
        let mut rng = t.rng();
        let seed = &seeds[i % seeds.len()];
        let (data, how) = if rng.below(2) == 0 {
            let (d, h) = mutate_safetensors_header(&mut rng, seed);
            (d, h.to_string())
        } else {
            mutate(&mut rng, seed)
        };
        run_weight_case(t, scratch, &format!("safetensors {how}"), &data);
    }
}

/// Both `.pth` layouts: the seed itself, metadata edits, and blind byte mutations.
fn fuzz_pth(t: &mut Tally, scratch: &Scratch, n: usize, legacy: bool) {
    let kind = if legacy { "legacy pth" } else { "zip pth" };
    let build = |tensors: &[PthTensor]| {
        let p = state_dict_pickle(tensors, legacy);
        if legacy {
            legacy_pth(tensors, &p)
        } else {
            zip_pth(tensors, &p)
        }
    };
    let base = base_tensors();
    let pickle = state_dict_pickle(&base, legacy);
    let seed = build(&base);
    save_seeds("pth", &[(kind.to_string(), seed.clone())]);
    t.run(&format!("{kind} seed"), &seed, || match fuzzing::weight_bytes(scratch, "case.bin", &seed) {
        Ok(true) => Ok(true),
        other => Err(format!("the valid seed was refused: {other:?}")),
    });
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/resnet_basic_tiny.pth");
    let real = if legacy { std::fs::read(fixture).ok() } else { None };
    for _ in 0..n {
        let mut rng = t.rng();
        let (data, how) = match rng.below(4) {
            0 => {
                let mut ts = base.clone();
                let hows: Vec<&str> = (0..1 + rng.below(2)).map(|_| mutate_tensors(&mut rng, &mut ts)).collect();
                (build(&ts), hows.join("+"))
            }
            3 => {
                // The state-dict pickle itself, in an otherwise valid file.
                let (p, how) = if rng.below(2) == 0 { mutate_pickle(&mut rng, &pickle) } else { mutate(&mut rng, &pickle) };
                (if legacy { legacy_pth(&base, &p) } else { zip_pth(&base, &p) }, format!("state dict {how}"))
            }
            1 if real.is_some() && rng.below(3) == 0 => {
                // A real legacy file from torch.save: mutate within its pickles (the first few KiB).
                let real = real.as_ref().unwrap();
                let head = real.len().min(4096);
                let (mut d, how) = mutate(&mut rng, &real[..head]);
                d.extend(&real[head..]);
                (d, format!("fixture {how}"))
            }
            _ => {
                let (d, how) = mutate(&mut rng, &seed);
                (d, how)
            }
        };
        run_weight_case(t, scratch, &format!("{kind} {how}"), &data);
    }
}

/// Two shards and their index.
fn hf_seed(scratch: &Scratch) -> (String, Vec<u8>, Vec<u8>) {
    let a = scratch.path().join("a.safetensors");
    let b = scratch.path().join("b.safetensors");
    let f = |n: i64| Tensor::arange(n, (Kind::Float, tch::Device::Cpu));
    headstart::weights::save_safetensors(&a, &[("enc.0.weight".into(), f(6).view([2, 3])), ("enc.0.bias".into(), f(2))]).unwrap();
    headstart::weights::save_safetensors(&b, &[("head.weight".into(), f(4).view([2, 2]))]).unwrap();
    let index = r#"{"metadata": {"total_size": 48}, "weight_map": {
        "enc.0.weight": "model-00001-of-00002.safetensors",
        "enc.0.bias": "model-00001-of-00002.safetensors",
        "head.weight": "model-00002-of-00002.safetensors"}}"#;
    (index.to_string(), std::fs::read(a).unwrap(), std::fs::read(b).unwrap())
}

fn mutate_index(rng: &mut Rng, index: &str) -> (String, &'static str) {
    const SWAPS: &[(&str, &[&str])] = &[
        (
            "model-00002-of-00002.safetensors",
            &["../b.safetensors", "/etc/passwd", ".hidden", "missing.safetensors", "", "model-00001-of-00002.safetensors", "a\\b"],
        ),
        ("\"weight_map\"", &["\"weightmap\"", "\"weight_map\": [], \"x\"", "\"weight_map\": null, \"y\""]),
        ("\"enc.0.bias\"", &["\"nope\"", "\"head.weight\"", "\"\""]),
        (": \"model", &[": 7, \"x\": \"model", ": [\"model", ": {\"a\": \"model"]),
        ("48", &["-1", "1e400", "18446744073709551616"]),
        ("}}", &["}", "}}}", "}}\n{}", ""]),
    ];
    let (from, to) = pick(rng, SWAPS);
    let mut out = index.to_string();
    let hits: Vec<usize> = out.match_indices(from).map(|(i, _)| i).collect();
    if let Some(&at) = (!hits.is_empty()).then(|| pick(rng, &hits)) {
        let options: &[&str] = to;
        let with: &str = options[rng.below(options.len())];
        out.replace_range(at..at + from.len(), with);
    }
    (out, "index edit")
}

fn fuzz_hf_index(t: &mut Tally, scratch: &Scratch, n: usize) {
    let (index, a, b) = hf_seed(scratch);
    let names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    save_seeds("hf_index", &[("index".to_string(), index.clone().into_bytes())]);
    t.run("hf index seed", index.as_bytes(), || match fuzzing::hf_folder(scratch, index.as_bytes(), &[(names[0], &a), (names[1], &b)]) {
        Ok(true) => Ok(true),
        other => Err(format!("the valid seed was refused: {other:?}")),
    });
    for _ in 0..n {
        let mut rng = t.rng();
        let (idx, how) = match rng.below(3) {
            0 | 1 => {
                let (s, h) = mutate_index(&mut rng, &index);
                (s.into_bytes(), h.to_string())
            }
            _ => mutate(&mut rng, index.as_bytes()),
        };
        let (shard_b, how) = if rng.below(5) == 0 {
            let (d, h) = mutate(&mut rng, &b);
            (d, format!("{how}+shard {h}"))
        } else {
            (b.clone(), how)
        };
        t.run(&format!("hf index {how}"), &idx, || fuzzing::hf_folder(scratch, &idx, &[(names[0], &a), (names[1], &shard_b)]));
    }
}

#[test]
fn fuzz_weight_files() {
    let scratch = Scratch::new();
    let mut problems = vec![];
    let mut t = Tally::new("safetensors");
    fuzz_safetensors(&mut t, &scratch, cases(350));
    problems.extend(t.finish(350));
    let mut t = Tally::new("zip pth");
    fuzz_pth(&mut t, &scratch, cases(350), false);
    problems.extend(t.finish(350));
    let mut t = Tally::new("legacy pth");
    fuzz_pth(&mut t, &scratch, cases(350), true);
    problems.extend(t.finish(350));
    let mut t = Tally::new("hf index");
    fuzz_hf_index(&mut t, &scratch, cases(250));
    problems.extend(t.finish(250));
    check(problems);
}

// ---------------------------------------------------------------- text data and manifests

/// Text-aware edits: quotes, delimiters, line breaks, a BOM, bad UTF-8, JSON punctuation.
fn mutate_text(rng: &mut Rng, seed: &[u8]) -> (Vec<u8>, String) {
    const TOKENS: &[&[u8]] = &[
        b"\"",
        b"\"\"",
        b",",
        b"\t",
        b"\n",
        b"\r",
        b"\r\n",
        b"\xef\xbb\xbf",
        b"\xff",
        b"\xc3",
        b"\0",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b"\\",
        b"\\u0000",
        b"1e999",
        b"null",
        b" ",
    ];
    let mut data = seed.to_vec();
    let mut hows = vec![];
    for _ in 0..1 + rng.below(4) {
        let at = pos(rng, &data);
        match rng.below(5) {
            0 | 1 => {
                let tok = *pick(rng, TOKENS);
                data.splice(at..at, tok.iter().copied());
                hows.push("insert token");
            }
            2 => {
                let tok = *pick(rng, TOKENS);
                let end = (at + 1).min(data.len());
                data.splice(at..end, tok.iter().copied());
                hows.push("replace with token");
            }
            3 => {
                // duplicate a line many times, or a run of one character
                let line_start = data[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let line_end = data[at..].iter().position(|&b| b == b'\n').map_or(data.len(), |i| at + i + 1);
                let line = data[line_start..line_end].to_vec();
                for _ in 0..1 + rng.below(50) {
                    data.splice(line_end..line_end, line.iter().copied());
                }
                hows.push("repeat line");
            }
            _ => hows.push(mutate_once(rng, &mut data)),
        }
    }
    (data, hows.join("+"))
}

const CSV_SEED: &str =
    concat!("text,label,other\n\"hello, \"\"world\"\"\nsecond line\",pos,x\nplain text,neg,y\n,neg,z\n", "\"quoted\",pos,\n\u{e9}t\u{e9},neg,w\nlast,pos,v\n",);
const TSV_SEED: &str = "text\tlabel\n\"odd\tpos\nfine words\tneg\ntabs\there\tpos\n\t\nlast one\tneg\n";
const JSONL_SEED: &str = concat!(
    "{\"text\": \"a b\", \"label\": \"pos\", \"other\": \"x\"}\n\n{\"text\": \"c\", \"label\": 1}\n",
    "{\"text\": \"d\\n\\u00e9\", \"label\": true, \"other\": null}\n{\"label\": \"neg\"}\n",
    "{\"text\": \"e\", \"label\": \"neg\", \"extra\": [1, {\"x\": 2}]}\n",
);
const MANIFEST_SEED: &str = "path,label\n\"a,b.jpg\",cat\nimgs/c.png,dog\n\"say \"\"hi\"\".png\",cat\n\nd.jpg,\ne.jpg , dog \n";

#[test]
fn fuzz_text_and_manifests() {
    let scratch = Scratch::new();
    let mut t = Tally::new("text data");
    let seeds = [("csv", CSV_SEED), ("tsv", TSV_SEED), ("jsonl", JSONL_SEED), ("csv", CSV_SEED), ("jsonl", JSONL_SEED)];
    // The text_data target reads a mode byte first: 0 CSV, 1 TSV, 2 JSONL.
    save_seeds("text_data", &seeds[..3].iter().enumerate().map(|(i, (ext, s))| (ext.to_string(), [&[i as u8][..], s.as_bytes()].concat())).collect::<Vec<_>>());
    save_seeds("image_manifest", &[("manifest".to_string(), MANIFEST_SEED.as_bytes().to_vec())]);
    for (ext, seed) in &seeds[..3] {
        t.run(&format!("{ext} seed"), seed.as_bytes(), || match fuzzing::text_dataset(&scratch, ext, seed.as_bytes(), &Columns::default(), false) {
            Ok(true) => Ok(true),
            other => Err(format!("the valid seed was refused: {other:?}")),
        });
    }
    for i in 0..cases(600) {
        let mut rng = t.rng();
        let (ext, seed) = seeds[i % seeds.len()];
        let (data, how) = if rng.below(4) == 0 { mutate(&mut rng, seed.as_bytes()) } else { mutate_text(&mut rng, seed.as_bytes()) };
        let pair = (rng.below(3) == 0).then(|| "other".to_string());
        let cols = Columns { pair, ..Columns::default() };
        let lossy = rng.below(2) == 0;
        t.run(&format!("{ext} {how}"), &data, || fuzzing::text_dataset(&scratch, ext, &data, &cols, lossy));
    }
    let mut problems = t.finish(600);

    let mut m = Tally::new("image manifests");
    m.run("manifest seed", MANIFEST_SEED.as_bytes(), || match fuzzing::image_manifest(&scratch, MANIFEST_SEED.as_bytes()) {
        Ok(true) => Ok(true),
        other => Err(format!("the valid seed was refused: {other:?}")),
    });
    for _ in 0..cases(250) {
        let mut rng = m.rng();
        let (data, how) = if rng.below(4) == 0 { mutate(&mut rng, MANIFEST_SEED.as_bytes()) } else { mutate_text(&mut rng, MANIFEST_SEED.as_bytes()) };
        m.run(&format!("manifest {how}"), &data, || fuzzing::image_manifest(&scratch, &data));
    }
    problems.extend(m.finish(250));
    check(problems);
}

// ---------------------------------------------------------------- regressions found by fuzzing

fn one_tensor(shape: &[i64], stride: &[i64], numel: i64) -> Vec<PthTensor> {
    vec![PthTensor { name: "w".into(), class: "FloatStorage", key: "0".into(), numel, offset: 0, shape: shape.to_vec(), stride: stride.to_vec() }]
}

/// Both layouts of a checkpoint holding `tensors`, loaded; returns each result (as text).
fn load_both(tensors: &[PthTensor]) -> Vec<Result<Vec<(String, Vec<i64>)>, String>> {
    let scratch = Scratch::new();
    [false, true]
        .iter()
        .map(|&legacy| {
            let p = state_dict_pickle(tensors, legacy);
            let bytes = if legacy { legacy_pth(tensors, &p) } else { zip_pth(tensors, &p) };
            let path = scratch.write("t.pth", &bytes);
            let w = headstart::weights::Weights::open(&path).map_err(|e| e.to_string())?;
            w.names().iter().map(|n| Ok((n.clone(), w.tensor(n).map_err(|e| e.to_string())?.size()))).collect()
        })
        .collect()
}

/// A zero-sized tensor whose other dimensions multiply past 2^64 made `TensorInfo::numel`
/// overflow (a panic in debug builds, a wrong size in release).
#[test]
fn regression_pth_overflowing_shape_with_a_zero_dim_is_refused() {
    for r in load_both(&one_tensor(&[1 << 62, 1 << 62, 0], &[0, 0, 1], 4)) {
        let e = r.unwrap_err();
        assert!(e.contains("tensor `w`") && e.contains("element count overflows"), "{e}");
    }
    for r in load_both(&one_tensor(&[1 << 40, 0], &[1, 1], 0)) {
        assert_eq!(r.unwrap(), vec![("w".to_string(), vec![1 << 40, 0])]);
    }
}

/// Stride-0 (overlapping) views of a tiny storage made `Weights::tensor` allocate whatever the
/// shape said: a 400-byte file asked for 1 GiB here, and for terabytes with larger shapes.
/// Small expanded views (as `expand` leaves in real checkpoints) still load.
#[test]
fn regression_pth_overlapping_view_cannot_expand_to_gigabytes() {
    for r in load_both(&one_tensor(&[1 << 14, 1 << 14], &[0, 0], 4)) {
        let e = r.unwrap_err();
        assert!(e.contains("tensor `w`") && e.contains("overlapping strides") && e.contains("1024 MiB"), "{e}");
    }
    for r in load_both(&one_tensor(&[1, 512], &[0, 1], 512)) {
        assert_eq!(r.unwrap(), vec![("w".to_string(), vec![1, 512])]);
    }
    for r in load_both(&one_tensor(&[1000, 3], &[0, 1], 3)) {
        assert_eq!(r.unwrap(), vec![("w".to_string(), vec![1000, 3])]);
    }
}

/// A dict that holds itself under a long key: walking it built ever longer names, one per
/// nesting level (64 levels × a 256 KiB key: half a gigabyte of names from a small file).
#[test]
fn regression_pickle_self_nested_long_keys_cannot_build_huge_names() {
    let t = &one_tensor(&[2], &[1], 2)[0];
    let mut p = b"\x80\x02}q\x00(".to_vec();
    p.extend(pkl::s(&"k".repeat(256 << 10)));
    p.extend(b"h\x00");
    p.extend(pkl::s("w"));
    p.extend(tensor_pickle(t, false));
    p.extend(b"u.");
    let bytes = zip_pth(std::slice::from_ref(t), &p);
    let scratch = Scratch::new();
    let t0 = Instant::now();
    let e = headstart::weights::Weights::open(scratch.write("bomb.pth", &bytes)).unwrap_err().to_string();
    assert!(e.contains("tensor name") && e.contains("longer than"), "{}", &e[..e.len().min(300)]);
    assert!(t0.elapsed() < CASE_LIMIT, "took {:?}", t0.elapsed());
}

/// One tensor with a 1 MiB storage key, shared by 600 × 600 keys through two memoised dicts:
/// each visit copied the key, so a 1 MiB file asked for hundreds of gigabytes.
#[test]
fn regression_pickle_shared_tensor_bomb_is_refused() {
    let mut t = one_tensor(&[2], &[1], 2).remove(0);
    t.key = "k".repeat(1 << 20);
    let mut p = b"\x80\x02".to_vec();
    p.extend(tensor_pickle(&t, false));
    p.extend(b"q\x010}q\x02(");
    for _ in 0..600 {
        p.extend(pkl::s("a"));
        p.extend(b"h\x01");
    }
    p.extend(b"u0}(");
    for _ in 0..600 {
        p.extend(pkl::s("x"));
        p.extend(b"h\x02");
    }
    p.extend(b"u.");
    // (The zip holds a storage under a short key: the walk must fail before storages are read.)
    let bytes = zip_pth(&one_tensor(&[2], &[1], 2), &p);
    let scratch = Scratch::new();
    let t0 = Instant::now();
    let e = headstart::weights::Weights::open(scratch.write("shared.pth", &bytes)).unwrap_err().to_string();
    assert!(e.contains("metadata exceed the 64 MiB cap"), "{}", &e[..e.len().min(300)]);
    assert!(t0.elapsed() < CASE_LIMIT, "took {:?}", t0.elapsed());
}

/// A sharded index mapping many names to one shard: checking each name against the shard's
/// entries, and each entry against the names, was quadratic.
#[test]
fn regression_sharded_index_with_many_names_opens_in_linear_time() {
    const N: usize = 60_000;
    let mut header = String::from("{");
    let mut map = String::from("{\"weight_map\": {");
    for i in 0..N {
        let sep = if i + 1 < N { "," } else { "" };
        header += &format!("\"t{i}\":{{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[{i},{}]}}{sep}", i + 1);
        map += &format!("\"t{i}\": \"s.safetensors\"{sep}");
    }
    header += "}";
    map += "}}";
    let mut shard = (header.len() as u64).to_le_bytes().to_vec();
    shard.extend(header.as_bytes());
    shard.extend(vec![7u8; N]);
    let scratch = Scratch::new();
    let t0 = Instant::now();
    let dir = scratch.path().join("hf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors.index.json"), map).unwrap();
    std::fs::write(dir.join("s.safetensors"), shard).unwrap();
    let w = headstart::weights::Weights::open(&dir).unwrap();
    assert_eq!(w.names().len(), N);
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
}
