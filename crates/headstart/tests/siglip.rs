//! SigLIP parity: a tiny random `SiglipModel` made by `transformers`
//! (tests/fixtures/make_siglip_fixtures.py), its embeddings, logits and sigmoid probabilities
//! compared in fp32.

use std::path::PathBuf;

use headstart::models::clip::siglip::Siglip;
use headstart::weights::Weights;
use tch::Tensor;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/clip").join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

#[test]
fn siglip_matches_transformers() {
    let (m, report) = Siglip::load(&fixture("siglip_tiny")).unwrap();
    assert!(report.is_complete(), "{}", report.summary());
    assert!(report.unexpected.is_empty(), "unexpected: {:?}", report.unexpected);
    let g = Weights::open(fixture("siglip_tiny.golden.safetensors")).unwrap();
    let img = m.encode_image(&g.tensor("pixel_values").unwrap()).unwrap();
    let txt = m.encode_ids(&g.tensor("input_ids").unwrap()).unwrap();
    let (di, dt) = (max_diff(&img, &g.tensor("image_embeds").unwrap()), max_diff(&txt, &g.tensor("text_embeds").unwrap()));
    let dl = max_diff(&m.logits(&img, &txt), &g.tensor("logits_per_image").unwrap());
    let dp = max_diff(&m.probabilities(&img, &txt), &g.tensor("probs").unwrap());
    eprintln!("siglip: image {di:.2e}, text {dt:.2e}, logits {dl:.2e}, probs {dp:.2e}");
    assert!(di < 1e-4 && dt < 1e-4, "image embeddings off by {di}, text by {dt}");
    assert!(dl < 1e-3 && dp < 1e-4, "logits off by {dl}, probabilities by {dp}");
    // Random enough that a wrong activation, pooling or attention direction shows.
    assert!(g.tensor("image_embeds").unwrap().abs().max().double_value(&[]) > 0.1);
    assert!(g.tensor("text_embeds").unwrap().abs().max().double_value(&[]) > 0.1);
}

#[test]
fn siglip_refuses_bad_inputs() {
    let (m, _) = Siglip::load(&fixture("siglip_tiny")).unwrap();
    assert!(m.encode_image(&Tensor::zeros([1, 3, 16, 16], tch::kind::FLOAT_CPU)).is_err());
    assert!(m.encode_ids(&Tensor::from_slice(&[0i64, 99]).view([1, 2])).is_err());
    assert!(m.encode_ids(&Tensor::zeros([1, 17], (tch::Kind::Int64, tch::Device::Cpu))).is_err());
    let err = Siglip::load(&fixture("clip_hf_quick")).err().unwrap().to_string();
    assert!(err.contains("siglip"), "{err}");
}
