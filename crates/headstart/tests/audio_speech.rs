//! Speech of known content: eight command words spoken by `espeak-ng` (Debian package
//! `espeak-ng`) in several accents, voice variants, speeds and pitches, classified by a head on
//! the real Whisper tiny.en's features (`scripts/fetch-assets whisper_tiny_en`). The head trains
//! on some voices and is scored on accents and voice variants it never heard. Skipped, loudly,
//! when `espeak-ng` is not installed or the weights are absent.

use std::path::Path;
use std::process::Command;

use headstart::audio::window::AudioWindow;
use headstart::blocks::audio::{train_audio, AudioOptions, AudioPredictor, AudioTrainRequest};
use headstart::progress::Silent;

const WORDS: [&str; 8] = ["yes", "no", "up", "down", "left", "right", "stop", "go"];

/// A voice: espeak-ng accent, voice variant, words per minute, pitch (0-99).
type Voice = (&'static str, &'static str, u32, u32);

fn espeak() -> bool {
    Command::new("espeak-ng").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Every word in every voice as `dir/<word>/<accent>_<variant>_<speed>_<pitch>.wav`.
fn speak(dir: &Path, voices: &[Voice]) {
    for word in WORDS {
        std::fs::create_dir_all(dir.join(word)).unwrap();
        for &(accent, variant, speed, pitch) in voices {
            let file = dir.join(word).join(format!("{accent}_{variant}_{speed}_{pitch}.wav"));
            let o = Command::new("espeak-ng")
                .args(["-v", &format!("{accent}+{variant}"), "-s", &speed.to_string(), "-p", &pitch.to_string(), "-w"])
                .arg(&file)
                .arg(word)
                .output()
                .unwrap();
            assert!(o.status.success() && file.is_file(), "espeak-ng failed on {word} in {accent}+{variant}: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

#[test]
fn whisper_tiny_en_tells_spoken_words_apart_in_unheard_voices() {
    let asset = headstart::assets::asset_dir().join("whisper-tiny.en/model.bin");
    if !asset.is_file() {
        eprintln!("SKIPPED: {} is absent; run scripts/fetch-assets whisper_tiny_en", asset.display());
        return;
    }
    if !espeak() {
        eprintln!("SKIPPED: espeak-ng is not installed (apt-get install espeak-ng)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (train, test) = (tmp.path().join("train"), tmp.path().join("test"));
    let mut heard = vec![];
    for accent in ["en-us", "en-gb", "en-gb-scotland", "en-029"] {
        for (variant, pitch) in [("m1", 40), ("f2", 60)] {
            for speed in [130, 190] {
                heard.push((accent, variant, speed, pitch));
            }
        }
    }
    speak(&train, &heard);
    // Other accents and voice variants, speeds and pitches in between.
    let unheard: Vec<Voice> = vec![
        ("en-gb-x-rp", "m3", 160, 50),
        ("en-us-nyc", "f4", 150, 70),
        ("en-gb-x-gbcwmd", "m5", 175, 30),
        ("en-gb-x-gbclan", "f1", 145, 55),
        ("en-gb-x-rp", "klatt", 120, 65),
    ];
    speak(&test, &unheard);
    let req = AudioTrainRequest {
        model: "whisper_tiny_en".into(),
        audio: AudioOptions { window: Some(AudioWindow::Clip), ..AudioOptions::default() },
        out: tmp.path().join("run"),
        ..AudioTrainRequest::for_data(train.clone())
    };
    let o = train_audio(&req, false, &Silent).unwrap();
    assert_eq!((o.n_train + o.n_val, o.skipped), (WORDS.len() * heard.len(), 0), "{o:?}");
    let p = AudioPredictor::load(&tmp.path().join("run/bundle"), None).unwrap();
    let (report, skipped) = p.evaluate(&test, None, &Silent).unwrap();
    assert_eq!((report.n, skipped.len()), (WORDS.len() * unheard.len(), 0));
    println!(
        "whisper tiny.en, {} words, {} voices heard, {} unheard: accuracy {:.3} on the unheard ({} clips; chance {:.3})",
        WORDS.len(),
        heard.len(),
        unheard.len(),
        report.accuracy,
        report.n,
        1.0 / WORDS.len() as f64
    );
    assert!(report.accuracy >= 0.9, "accuracy {} on voices the head never heard", report.accuracy);
}
