//! Zero-shot benchmark, the headstart side (bench/zero_shot/run.sh):
//! `zero_shot_bench MODEL_DIR IMAGES_DIR [fp32|bf16]` prints one JSON line with the seconds to
//! embed the prompts and the images/s of classifying every `.jpg` (decode, preprocess, forward,
//! top-k), the image tower at the given precision (default fp32).

use std::time::Instant;

use headstart::models::clip::Clip;
use headstart::zero_shot::ZeroShot;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (model, images) = (std::path::Path::new(&args[1]), std::path::Path::new(&args[2]));
    let labels: Vec<String> = "cat dog bird car plane ship horse truck frog deer".split(' ').map(String::from).collect();
    let templates: Vec<String> = ["a photo of a {}.", "a blurry photo of a {}.", "a drawing of a {}."].iter().map(|s| s.to_string()).collect();
    let mut files: Vec<_> = std::fs::read_dir(images)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "jpg")).collect();
    files.sort();
    let precision: headstart::engine::Precision = args.get(3).map_or("fp32", String::as_str).parse()?;
    let (mut clip, _) = Clip::load(model, tch::Device::Cpu)?;
    clip.set_precision(precision);
    let t0 = Instant::now();
    let zs = ZeroShot::new(&clip, &labels, &templates)?;
    let t1 = Instant::now();
    let preds = zs.classify_files(&clip, &files, 5)?;
    let t2 = Instant::now();
    let top1: Vec<&str> = preds.iter().map(|p| p.top[0].label.as_str()).collect();
    let secs = (t2 - t1).as_secs_f64();
    let v = serde_json::json!({"impl": "headstart", "precision": precision.name(), "images": files.len(), "text_s": (t1 - t0).as_secs_f64(), "images_s": secs,
        "images_per_s": files.len() as f64 / secs, "top1": top1});
    println!("{v}");
    Ok(())
}
