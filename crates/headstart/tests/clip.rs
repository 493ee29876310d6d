//! CLIP parity: tiny random models made by `transformers` and `open_clip`
//! (tests/fixtures/make_clip_fixtures.py), their tokens, embeddings and logits compared in fp32.

use std::path::{Path, PathBuf};

use headstart::models::clip::{tokenizer, Clip, ClipTokenizer};
use headstart::weights::Weights;
use tch::{Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/clip").join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

fn texts() -> Vec<String> {
    serde_json::from_str(&std::fs::read_to_string(fixture("texts.json")).unwrap()).unwrap()
}

/// Loads `name`, checks the load report, and compares against its golden outputs.
fn check(name: &str) {
    let (clip, report) = Clip::load(&fixture(name), Device::Cpu).unwrap();
    assert!(report.is_complete(), "{}", report.summary());
    assert!(report.unexpected.is_empty(), "unexpected: {:?}", report.unexpected);
    let g = Weights::open(fixture(&format!("{name}.golden.safetensors"))).unwrap();
    let ids = clip.tokenizer.encode(&texts()).unwrap();
    assert_eq!(max_diff(&ids, &g.tensor("input_ids").unwrap()), 0.0, "{name}: token ids differ from transformers'");
    let (img, txt) = tch::no_grad(|| (clip.encode_image(&g.tensor("pixel_values").unwrap()).unwrap(), clip.encode_texts(&texts()).unwrap()));
    let logits = clip.logits(&img, &txt);
    let di = max_diff(&img, &g.tensor("image_embeds").unwrap());
    let dt = max_diff(&txt, &g.tensor("text_embeds").unwrap());
    let dl = max_diff(&logits, &g.tensor("logits_per_image").unwrap());
    eprintln!("{name}: image {di:.2e}, text {dt:.2e}, logits {dl:.2e}");
    assert!(di < 1e-4 && dt < 1e-4, "{name}: image embeddings off by {di}, text by {dt}");
    assert!(dl < 1e-3, "{name}: logits off by {dl}");
    // The fixtures are random enough that a wrong activation or pooling shows.
    assert!(g.tensor("image_embeds").unwrap().abs().max().double_value(&[]) > 0.1);
    assert!(g.tensor("text_embeds").unwrap().abs().max().double_value(&[]) > 0.1);
}

#[test]
fn hf_quick_gelu_argmax_pooling() {
    check("clip_hf_quick");
}

#[test]
fn hf_gelu_eos_pooling_from_pytorch_bin() {
    check("clip_hf_gelu");
}

#[test]
fn open_clip_vit_layout() {
    check("clip_openclip_vit");
}

#[test]
fn open_clip_modified_resnet_from_pytorch_bin() {
    check("clip_openclip_rn");
    let (clip, _) = Clip::load(&fixture("clip_openclip_rn"), Device::Cpu).unwrap();
    let names: Vec<&str> = clip.vision.stages().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["stem", "layer1", "layer2", "layer3", "layer4", "attnpool"]);
    for (name, _) in clip.vs.variables() {
        let n = clip.vision.stages().iter().chain(clip.text.stages.iter()).filter(|s| s.contains(&name)).count();
        assert!(n == 1 || name == "logit_scale", "{name} is in {n} stages");
    }
    // A wrong input size is an error, not a panic.
    let e = clip.encode_image(&Tensor::zeros([1, 3, 32, 32], (tch::Kind::Float, Device::Cpu))).unwrap_err().to_string();
    assert!(e.contains("[B, 3, 64, 64]"), "{e}");
}

#[test]
fn configuration_shapes_the_model() {
    let (clip, _) = Clip::load(&fixture("clip_hf_gelu"), Device::Cpu).unwrap();
    assert_eq!(clip.input.size, 32);
    assert_eq!(clip.vision.num_features(), 24);
    assert_eq!(clip.vision.stages().len(), 4);
    assert!((clip.logit_scale() - 1.0 / 0.07).abs() < 1e-3);
    // Every variable belongs to exactly one stage of its tower (or is the logit scale).
    for (name, _) in clip.vs.variables() {
        let n = clip.vision.stages().iter().chain(clip.text.stages.iter()).filter(|s| s.contains(&name)).count();
        assert!(n == 1 || name == "logit_scale", "{name} is in {n} stages");
    }
}

#[test]
fn pooled_features_are_unit_embeddings() {
    let (clip, _) = Clip::load(&fixture("clip_openclip_vit"), Device::Cpu).unwrap();
    let g = Weights::open(fixture("clip_openclip_vit.golden.safetensors")).unwrap();
    let x = g.tensor("pixel_values").unwrap();
    let pooled = tch::no_grad(|| clip.vision.pool(&clip.vision.forward_features(&x, headstart::models::Mode::Eval)));
    let want = headstart::models::clip::normalize(&g.tensor("image_embeds").unwrap());
    assert!(max_diff(&pooled, &want) < 1e-5);
}

#[test]
fn preprocessing_matches_clip_image_processor() {
    let (clip, _) = Clip::load(&fixture("clip_hf_quick"), Device::Cpu).unwrap();
    let x = clip.load_image(&fixture("photo.png")).unwrap().unsqueeze(0);
    let want = Weights::open(fixture("clip_preprocess.golden.safetensors")).unwrap().tensor("pixel_values").unwrap();
    let d = max_diff(&x, &want);
    let mean = (&x - &want).abs().mean(tch::Kind::Float).double_value(&[]);
    eprintln!("preprocessing against CLIPImageProcessor: max {d:.3e}, mean {mean:.3e}");
    // PIL resamples in fixed point and rounds to 8 bits between its two passes; this resamples
    // in float. On this deliberately blocky image: a third of a grey level (1/255/std ≈ 0.015)
    // on average, up to ~9 levels at the sharpest edges (without the clipping of overshoot:
    // mean 0.0077, max 0.31).
    assert!(mean < 0.006 && d < 0.15, "max {d}, mean {mean}");
}

#[test]
fn tokenizer_truncates_keeping_end_of_text() {
    let tk = ClipTokenizer::load(&fixture("tokenizer/tokenizer.json"), 77).unwrap();
    let ids = tk.ids(&"a photo of the cat ".repeat(40)).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!((ids[0], ids[76]), (tk.sot as i64, tk.eot as i64));
    let short = tk.ids("A   PHOTO").unwrap();
    assert_eq!(short, tk.ids("a photo").unwrap());
    assert_eq!(tk.ids("cat &amp; dog").unwrap(), tk.ids("cat & dog").unwrap());
    assert_eq!(tokenizer::clean(" A\u{a0}B "), "a b");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn bad_directories_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |dir: &Path| Clip::load(dir, Device::Cpu).err().expect("must fail").to_string();
    assert!(err(tmp.path()).contains("neither config.json"));
    // No tokenizer.
    let d = tmp.path().join("no_tok");
    copy_dir(&fixture("clip_hf_quick"), &d);
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    assert!(err(&d).contains("no tokenizer.json"), "{}", err(&d));
    // An unknown activation, named with its field.
    let d = tmp.path().join("bad_act");
    copy_dir(&fixture("clip_hf_quick"), &d);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replacen("\"quick_gelu\"", "\"swish\"", 1);
    std::fs::write(d.join("config.json"), cfg).unwrap();
    assert!(err(&d).contains("hidden_act` = \"swish\""), "{}", err(&d));
    // Shapes that disagree with the weights: the load report names the tensors.
    let d = tmp.path().join("bad_shape");
    copy_dir(&fixture("clip_hf_quick"), &d);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("\"projection_dim\": 24", "\"projection_dim\": 16");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    assert!(err(&d).contains("visual_projection.weight"), "{}", err(&d));
    // open_clip options this implementation does not have.
    let d = tmp.path().join("attn_pool");
    copy_dir(&fixture("clip_openclip_vit"), &d);
    let cfg = std::fs::read_to_string(d.join("open_clip_config.json")).unwrap().replace("\"patch_size\": 8", "\"patch_size\": 8, \"attentional_pool\": true");
    std::fs::write(d.join("open_clip_config.json"), cfg).unwrap();
    assert!(err(&d).contains("vision_cfg.attentional_pool` = true is not supported"), "{}", err(&d));
}

#[test]
fn zero_shot_prompt_ensembling_matches_the_paper_recipe() {
    use headstart::zero_shot::ZeroShot;
    let (clip, _) = Clip::load(&fixture("clip_hf_quick"), Device::Cpu).unwrap();
    let spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("zero_shot.json")).unwrap()).unwrap();
    let strings = |k: &str| -> Vec<String> { spec[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect() };
    let (classes, templates) = (strings("classes"), strings("templates"));
    let g = Weights::open(fixture("clip_zero_shot.golden.safetensors")).unwrap();
    let zs = ZeroShot::new(&clip, &classes, &templates).unwrap();
    let dw = max_diff(&zs.weights, &g.tensor("class_weights").unwrap());
    let pix = Weights::open(fixture("clip_hf_quick.golden.safetensors")).unwrap().tensor("pixel_values").unwrap();
    let dp = max_diff(&zs.probabilities(&clip, &pix).unwrap(), &g.tensor("probs").unwrap());
    eprintln!("zero-shot: class weights {dw:.2e}, probabilities {dp:.2e}");
    assert!(dw < 1e-4 && dp < 1e-4, "class weights off by {dw}, probabilities by {dp}");
    // A single template differs from the ensemble: the test can tell them apart.
    let single = ZeroShot::new(&clip, &classes, &templates[..1]).unwrap();
    assert!(max_diff(&single.weights, &g.tensor("class_weights").unwrap()) > 1e-2);
    // No template given: CLIP's default prompt.
    let default = ZeroShot::new(&clip, &classes, &[]).unwrap();
    assert_eq!(default.templates, vec!["a photo of a {}.".to_string()]);
    assert_eq!(max_diff(&default.weights, &single.weights), 0.0);
}

#[test]
fn zero_shot_inputs_are_checked() {
    use headstart::zero_shot::{check_template, parse_labels, read_templates};
    assert_eq!(parse_labels(" cat, dog ,bird").unwrap(), vec!["cat", "dog", "bird"]);
    assert!(parse_labels("cat,,dog").unwrap_err().contains("empty class name"));
    assert!(parse_labels("cat,dog,cat").unwrap_err().contains("given twice"));
    assert!(check_template("a photo").unwrap_err().contains("no `{}`"));
    assert!(check_template("{} and {}").unwrap_err().contains("more than one"));
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("templates.txt");
    std::fs::write(&p, "# CLIP prompts\na photo of a {}.\n\nitap of a {}.\n").unwrap();
    assert_eq!(read_templates(&p).unwrap(), vec!["a photo of a {}.", "itap of a {}."]);
    std::fs::write(&p, "a photo of a {}.\na photo\n").unwrap();
    let e = read_templates(&p).unwrap_err().to_string();
    assert!(e.contains("templates.txt") && e.contains("line 2"), "{e}");
}

#[test]
fn zero_shot_on_processor_pixels() {
    // The inputs of the CLI test, prepared by CLIPImageProcessor: model and ensemble exact.
    let (clip, _) = Clip::load(&fixture("clip_hf_quick"), Device::Cpu).unwrap();
    let g = Weights::open(fixture("clip_cli.golden.safetensors")).unwrap();
    let labels: Vec<String> = ["cat", "dog", "bird"].iter().map(|s| s.to_string()).collect();
    let templates: Vec<String> = ["a photo of a {}.", "a photo of the {}."].iter().map(|s| s.to_string()).collect();
    let zs = headstart::zero_shot::ZeroShot::new(&clip, &labels, &templates).unwrap();
    let d = max_diff(&zs.probabilities(&clip, &g.tensor("pixel_values").unwrap()).unwrap(), &g.tensor("probs").unwrap());
    assert!(d < 1e-5, "probabilities off by {d}");
    // And the Rust preprocessing of the same files stays close to the processor's.
    let files: Vec<PathBuf> = (0..3).map(|i| fixture(&format!("images/img{i}.png"))).collect();
    let x = Tensor::stack(&files.iter().map(|f| clip.load_image(f).unwrap()).collect::<Vec<_>>(), 0);
    let px = g.tensor("pixel_values").unwrap();
    let (dmax, dmean) = (max_diff(&x, &px), (&x - &px).abs().mean(tch::Kind::Float).double_value(&[]));
    eprintln!("smooth images against CLIPImageProcessor: max {dmax:.3e}, mean {dmean:.3e}");
    assert!(dmean < 0.005 && dmax < 0.03, "max {dmax}, mean {dmean}");
}

#[test]
fn models_resolve_from_directories_files_and_the_hub_cache() {
    use headstart::models::clip::resolve_in;
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let dir = fixture("clip_hf_quick");
    assert_eq!(resolve_in(&cache, dir.to_str().unwrap()).unwrap(), dir);
    assert_eq!(resolve_in(&cache, dir.join("model.safetensors").to_str().unwrap()).unwrap(), dir);
    // The hub cache layout: refs/main holds the commit, snapshots/<commit>/ the files.
    let repo = cache.join("models--openai--clip-tiny");
    let hash = "0123456789abcdef0123456789abcdef01234567";
    copy_dir(&dir, &repo.join("snapshots").join(hash));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), hash).unwrap();
    let snap = resolve_in(&cache, "openai/clip-tiny").unwrap();
    assert_eq!(snap, repo.join("snapshots").join(hash));
    assert_eq!(resolve_in(&cache, &format!("openai/clip-tiny@{hash}")).unwrap(), snap);
    let (clip, _) = Clip::load(&snap, Device::Cpu).unwrap();
    assert_eq!(clip.cfg.embed_dim, 24);
    let e = resolve_in(&cache, "openai/clip-missing").unwrap_err().to_string();
    assert!(e.contains("not in the hub cache"), "{e}");
    let e = resolve_in(&cache, "/no/such/dir").unwrap_err().to_string();
    assert!(e.contains("/no/such/dir"), "{e}");
}

#[test]
fn zero_shot_head_reproduces_zero_shot_on_pooled_features() {
    let (clip, _) = Clip::load(&fixture("clip_openclip_vit"), Device::Cpu).unwrap();
    let classes: Vec<String> = ["cat", "dog", "car"].iter().map(|s| s.to_string()).collect();
    let zs = headstart::zero_shot::ZeroShot::new(&clip, &classes, &[]).unwrap();
    let (w, b) = zs.linear_head();
    assert_eq!((w.size(), b.size()), (vec![3, 24], vec![3]));
    let x = Weights::open(fixture("clip_openclip_vit.golden.safetensors")).unwrap().tensor("pixel_values").unwrap();
    let pooled = tch::no_grad(|| clip.vision.pool(&clip.vision.forward_features(&x, headstart::models::Mode::Eval)));
    let head = pooled.linear(&w, Some(&b));
    let want = zs.logits(&clip.encode_image(&x).unwrap());
    assert!(max_diff(&head, &want) < 1e-4, "{}", max_diff(&head, &want));
    assert!(want.abs().max().double_value(&[]) > 0.5);
}
