//! A corpus of malformed and hostile weight files. Every one must give an error that names
//! the file and the problem, quickly, without a panic, without running code and without
//! allocating what the file merely claims.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use headstart::weights::Weights;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)).unwrap()
}

/// Peak resident memory of this process, from /proc.
fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// ---- a tiny pickle writer for crafting files ----
fn s(x: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((x.len() as u32).to_le_bytes());
    v.extend(x.as_bytes());
    v
}
fn int(i: i32) -> Vec<u8> {
    let mut v = vec![b'J'];
    v.extend(i.to_le_bytes());
    v
}
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A state-dict pickle with one float tensor `w` of `shape` over a storage of `numel`.
fn state_dict(numel: i32, shape: i32, storage_pid_len6: bool) -> Vec<u8> {
    let tail: &[u8] = if storage_pid_len6 { b"Nt" } else { b"t" };
    cat(&[
        b"\x80\x02}",
        &s("w"),
        b"ctorch._utils\n_rebuild_tensor_v2\n(",
        &cat(&[b"(", &s("storage"), b"ctorch\nFloatStorage\n", &s("0"), &s("cpu"), &int(numel), tail, b"Q"]),
        &int(0),
        &cat(&[b"(", &int(shape), b"t"]),
        &cat(&[b"(", &int(1), b"t"]),
        b"\x89ccollections\nOrderedDict\n)RtRs.",
    ])
}

fn legacy(state: &[u8], storage_count: u64, data: &[u8]) -> Vec<u8> {
    let magic = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
    cat(&[magic, b"\x80\x02M\xe9\x03.", b"\x80\x02}.", state, &cat(&[b"\x80\x02]", &s("0"), b"a."]), &storage_count.to_le_bytes(), data])
}

fn zip_pth(entries: &[(&str, &[u8], bool)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(vec![]);
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        for (name, data, compressed) in entries {
            let method = if *compressed { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
            let opts = zip::write::SimpleFileOptions::default().compression_method(method);
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

fn safetensors_raw(header: &str, data: &[u8]) -> Vec<u8> {
    cat(&[&(header.len() as u64).to_le_bytes(), header.as_bytes(), data])
}

/// Files to refuse: name, bytes, and a word the error must hold (when one is expected).
type Corpus = Vec<(String, Vec<u8>, Option<&'static str>)>;

fn add(corpus: &mut Corpus, name: &str, bytes: Vec<u8>, expect: Option<&'static str>) {
    corpus.push((name.to_string(), bytes, expect));
}

/// Truncations of each valid format at many offsets, and files of the wrong kind.
fn truncated_and_foreign(c: &mut Corpus) {
    let st = fixture("resnet_bottleneck_tiny.safetensors");
    let header_end = 8 + u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    for cut in [1, 7, 8, 9, 50, header_end - 1, header_end + 3, st.len() / 2, st.len() - 1] {
        add(c, &format!("st_trunc_{cut}.safetensors"), st[..cut].to_vec(), None);
    }
    let zp = fixture("mobilenet_v2_tiny.pth");
    for cut in [4, 100, 1000, zp.len() / 2, zp.len() - 22, zp.len() - 1] {
        add(c, &format!("zip_trunc_{cut}.pth"), zp[..cut].to_vec(), None);
    }
    let lg = fixture("resnet_basic_tiny.pth");
    for cut in [2, 30, 200, 1000, lg.len() / 2, lg.len() - 1] {
        add(c, &format!("legacy_trunc_{cut}.pth"), lg[..cut].to_vec(), None);
    }
    add(c, "empty.pth", vec![], Some("empty"));
    add(c, "gif.safetensors", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(), Some("unrecognised"));
    let mut bad_magic = lg.clone();
    bad_magic[5] ^= 0xff;
    add(c, "wrong_magic.pth", bad_magic, Some("magic"));
    add(c, "zip_without_pickle.pth", zip_pth(&[("archive/readme.txt", b"hello", false)]), Some("data.pkl"));
}

/// Safetensors headers and legacy sizes that lie.
fn lying_sizes(c: &mut Corpus) {
    add(c, "st_header_huge.safetensors", cat(&[&(1u64 << 40).to_le_bytes(), b"{}"]), None);
    add(c, "st_header_past_end.safetensors", cat(&[&100u64.to_le_bytes(), b"{\"a\":1}"]), None);
    add(
        c,
        "st_overlap.safetensors",
        safetensors_raw(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#, &[0u8; 24]),
        None,
    );
    add(
        c,
        "st_shape_exceeds_file.safetensors",
        safetensors_raw(r#"{"a":{"dtype":"F32","shape":[1000000000],"data_offsets":[0,4000000000]}}"#, &[0u8; 16]),
        None,
    );
    add(c, "st_shape_vs_offsets.safetensors", safetensors_raw(r#"{"a":{"dtype":"F32","shape":[8],"data_offsets":[0,16]}}"#, &[0u8; 16]), None);

    // Legacy files whose declared sizes exceed what they hold.
    add(c, "legacy_storage_huge.pth", legacy(&state_dict(i32::MAX, 4, true), i32::MAX as u64, &[0u8; 16]), Some("more than"));
    add(c, "legacy_count_mismatch.pth", legacy(&state_dict(4, 4, true), 5, &[0u8; 16]), Some("declares"));
    add(c, "legacy_view_past_storage.pth", legacy(&state_dict(4, 100, true), 4, &[0u8; 16]), Some("needs"));
}

/// Hostile pickles (code execution attempts, running `evil_cmd`) and zip storages that are too
/// small or compressed.
fn hostile(c: &mut Corpus, evil_cmd: &str) {
    let evil_pickle = cat(&[b"\x80\x02cos\nsystem\n", &s(evil_cmd), b"\x85R."]);
    let evil_pickle4 = cat(&[b"\x80\x04", &s("posix"), &s("system"), b"\x93", &s(evil_cmd), b"\x85R."]);
    add(
        c,
        "legacy_os_system.pth",
        cat(&[b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.\x80\x02M\xe9\x03.\x80\x02}.", &evil_pickle]),
        Some("os.system"),
    );
    add(c, "raw_os_system.pkl", evil_pickle.clone(), Some("not allowed"));
    add(c, "raw_posix_system_proto4.pkl", evil_pickle4.clone(), Some("not allowed"));
    add(c, "zip_os_system.pth", zip_pth(&[("archive/data.pkl", &evil_pickle, false)]), Some("os.system"));
    add(c, "zip_posix_system.pth", zip_pth(&[("archive/data.pkl", &evil_pickle4, false)]), Some("posix.system"));
    let evil_reduce = cat(&[b"\x80\x02", b"cbuiltins\neval\n", &s("1"), b"\x85R."]);
    add(c, "zip_builtins_eval.pth", zip_pth(&[("archive/data.pkl", &evil_reduce, false)]), Some("builtins.eval"));
    let newobj = cat(&[b"\x80\x02ccollections\nOrderedDict\n)\x81."]);
    add(c, "zip_newobj.pth", zip_pth(&[("archive/data.pkl", &newobj, false)]), Some("NEWOBJ"));
    // Zip storages that are too small or compressed.
    let sd = state_dict(4, 4, false);
    add(c, "zip_storage_short.pth", zip_pth(&[("archive/data.pkl", &sd, false), ("archive/data/0", &[0u8; 8], false)]), Some("holds"));
    add(c, "zip_storage_missing.pth", zip_pth(&[("archive/data.pkl", &sd, false)]), Some("missing"));
    add(c, "zip_storage_compressed.pth", zip_pth(&[("archive/data.pkl", &sd, false), ("archive/data/0", &[0u8; 16], true)]), Some("compressed"));
}

/// Memo and nesting bombs.
fn bombs(c: &mut Corpus) {
    let mut laughs = b"\x80\x02}q\x00".to_vec();
    for _ in 0..40 {
        laughs.push(b'}');
        laughs.push(b'(');
        for k in 0..10 {
            laughs.extend(s(&k.to_string()));
            laughs.extend(b"h\x00");
        }
        laughs.extend(b"uq\x00");
    }
    laughs.push(b'.');
    add(c, "zip_dict_laughs.pth", zip_pth(&[("archive/data.pkl", &laughs, false)]), Some("too large"));
    let mut memo_spam = b"\x80\x02N".to_vec();
    for i in 0..1_100_000u32 {
        memo_spam.push(b'r');
        memo_spam.extend(i.to_le_bytes());
    }
    memo_spam.push(b'.');
    add(c, "zip_memo_spam.pth", zip_pth(&[("archive/data.pkl", &memo_spam, false)]), Some("memo"));
    let mut tuples = b"\x80\x02N".to_vec();
    tuples.extend(std::iter::repeat_n(0x85u8, 2_000_000));
    tuples.push(b'.');
    add(c, "zip_tuple_nesting.pth", zip_pth(&[("archive/data.pkl", &tuples, false)]), Some("cap"));
    let mut lists = b"\x80\x02]q\x00".to_vec();
    for _ in 0..400_000 {
        lists.extend(b"]h\x00aq\x00");
    }
    lists.push(b'.');
    add(c, "zip_list_nesting.pth", zip_pth(&[("archive/data.pkl", &lists, false)]), Some("cap"));
    let mut marks = b"\x80\x02".to_vec();
    marks.extend(std::iter::repeat_n(b'(', 100_000));
    add(c, "zip_mark_nesting.pth", zip_pth(&[("archive/data.pkl", &marks, false)]), Some("nesting"));
    let mut long_str = b"\x80\x02X\xff\xff\xff\x7f".to_vec();
    long_str.extend(b"abc");
    add(c, "zip_string_claims_2gib.pth", zip_pth(&[("archive/data.pkl", &long_str, false)]), Some("bytes"));
    let mut self_ref = b"\x80\x02}q\x00".to_vec();
    self_ref.extend(s("state_dict"));
    self_ref.extend(b"h\x00s.");
    add(c, "zip_self_reference.pth", zip_pth(&[("archive/data.pkl", &self_ref, false)]), Some("deeper"));
}

#[test]
fn malformed_weight_files_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("CANARY");
    let mut corpus: Corpus = vec![];
    truncated_and_foreign(&mut corpus);
    lying_sizes(&mut corpus);
    hostile(&mut corpus, &format!("touch {}", canary.display()));
    bombs(&mut corpus);
    assert!(corpus.len() >= 30, "corpus has {} files", corpus.len());
    let mut paths = vec![];
    for (name, bytes, expect) in &corpus {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        paths.push((p, *expect));
    }
    drop(corpus);

    let base = peak_rss_kib();
    for (p, expect) in &paths {
        let t = Instant::now();
        let r = std::panic::catch_unwind(|| Weights::open(p));
        let elapsed = t.elapsed();
        let err = match r {
            Err(_) => panic!("{}: panicked", p.display()),
            Ok(Ok(_)) => panic!("{}: loaded without error", p.display()),
            Ok(Err(e)) => e.to_string(),
        };
        assert!(err.contains(&*p.to_string_lossy()), "error does not name the file: {err}");
        assert!(err.len() > p.to_string_lossy().len() + 10, "error does not say what is wrong: {err}");
        if let Some(expect) = expect {
            assert!(err.contains(expect), "{}: expected `{expect}` in: {err}", p.display());
        }
        assert!(elapsed < Duration::from_secs(1), "{}: took {elapsed:?}", p.display());
    }
    let grew_mib = (peak_rss_kib() - base) as f64 / 1024.0;
    assert!(grew_mib < 64.0, "peak memory grew by {grew_mib:.1} MiB");
    assert!(!canary.exists(), "a hostile pickle ran code");
    // A sharded index may not point outside its directory.
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    std::fs::write(hf.join("model.safetensors.index.json"), r#"{"weight_map":{"a":"../evil.safetensors"}}"#).unwrap();
    let err = Weights::open(&hf).unwrap_err().to_string();
    assert!(err.contains("outside the directory"), "{err}");
}
