//! Which modality a run is: decided from the model named, settings only one modality has, or
//! the data itself. A folder is judged by what most of its files are, so one stray file (a
//! `notes.txt` among images) does not flip it; the decision comes with its reason.

use std::path::Path;

use serde::Serialize;

use crate::models::registry::{self, Modality};

/// The modality chosen for a run, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detected {
    pub modality: Modality,
    pub reason: String,
}

/// What a run was given that bears on its modality.
#[derive(Debug, Clone, Default)]
pub struct Hints<'a> {
    /// The model named, if any.
    pub model: Option<&'a str>,
    /// A setting only text runs have was given (columns, max length, pooling, long-text).
    pub text_settings: bool,
}

/// Decides the modality of a run on `data`: the model named, then text-only settings, then
/// the data (file format, or what most files of a folder are).
pub fn detect(data: &Path, hints: &Hints) -> Detected {
    let found = |modality, reason: String| Detected { modality, reason };
    if let Some(m) = hints.model {
        if registry::find(m).is_some() {
            return found(Modality::Image, format!("`{m}` is an image model of the registry"));
        }
        if is_audio_model(m) {
            return found(Modality::Audio, format!("`{m}` is an audio model"));
        }
        if crate::blocks::clip::is_clip_model(m) {
            return found(Modality::Image, format!("`{m}` is a CLIP model (its image tower featurises the images)"));
        }
        if is_text_model(m) {
            return found(Modality::Text, format!("`{m}` is a text model"));
        }
    }
    if hints.text_settings {
        return found(Modality::Text, "text settings were given (columns, length, pooling or long-text)".into());
    }
    if data.is_dir() {
        return by_files(data);
    }
    let ext = data.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    match ext.as_str() {
        "tsv" | "jsonl" | "ndjson" => found(Modality::Text, format!("{} is a .{ext} table", data.display())),
        "csv" if csv_has_text_column(data) => found(Modality::Text, format!("{} has a `text` column", data.display())),
        "csv" => manifest(data),
        _ => found(Modality::Image, format!("{}: no text format recognised; read as images", data.display())),
    }
}

/// A text model: a model directory whose `config.json` names a supported transformer, a
/// registry text entry, or a hub repo id.
pub fn is_text_model(m: &str) -> bool {
    let p = Path::new(m);
    if p.is_dir() {
        return std::fs::read_to_string(p.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                v.get("model_type").and_then(|x| x.as_str()).map(|t| matches!(t, "bert" | "roberta" | "xlm-roberta" | "camembert" | "distilbert" | "gpt2"))
            })
            .unwrap_or(false);
    }
    registry::find_text(m).is_some() || m.contains('/')
}

/// An audio model: a registry audio entry, a Whisper / Wav2Vec2 / HuBERT directory, a
/// CTranslate2 `model.bin`, or a hub repo id naming one of those families.
pub fn is_audio_model(m: &str) -> bool {
    let p = Path::new(m);
    if p.is_file() {
        return p.file_name().is_some_and(|f| f == "model.bin");
    }
    if p.is_dir() {
        let model_type = std::fs::read_to_string(p.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("model_type").and_then(|x| x.as_str()).map(str::to_string));
        return p.join("model.bin").is_file() || matches!(model_type.as_deref(), Some("whisper" | "wav2vec2" | "hubert" | "wavlm"));
    }
    if registry::find_audio(m).is_some() {
        return true;
    }
    let lower = m.to_ascii_lowercase();
    lower.contains('/') && ["whisper", "wav2vec2", "hubert", "wavlm"].iter().any(|f| lower.contains(f))
}

fn is_audio(p: &Path) -> bool {
    let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    crate::blocks::audio::AUDIO_EXTENSIONS.contains(&ext.as_str())
}

/// A `path,label` manifest: audio when most of its first rows name audio files, else images.
fn manifest(d: &Path) -> Detected {
    let text = std::fs::read_to_string(d).unwrap_or_default();
    let paths: Vec<&str> = text.lines().take(200).filter_map(|l| l.split(',').next()).map(|p| p.trim().trim_matches('"')).collect();
    let audio = paths.iter().filter(|p| is_audio(Path::new(p))).count();
    if audio * 2 > paths.len() {
        return Detected { modality: Modality::Audio, reason: format!("{} is a `path,label` manifest of audio files", d.display()) };
    }
    Detected { modality: Modality::Image, reason: format!("{} is a `path,label` manifest (no `text` column)", d.display()) }
}

fn csv_has_text_column(d: &Path) -> bool {
    let mut header = String::new();
    let read = std::fs::File::open(d).map(std::io::BufReader::new).and_then(|mut r| std::io::BufRead::read_line(&mut r, &mut header));
    read.is_ok() && header.trim_start_matches('\u{feff}').split(',').any(|c| c.trim().trim_matches('"') == "text")
}

/// A folder of class folders: images, `.txt` texts or audio, whichever most files are.
fn by_files(dir: &Path) -> Detected {
    let (mut images, mut texts, mut audio) = (0usize, 0usize, 0usize);
    let classes = std::fs::read_dir(dir).into_iter().flatten().flatten().filter(|e| e.path().is_dir());
    for class in classes {
        for f in std::fs::read_dir(class.path()).into_iter().flatten().flatten() {
            let ext = f.path().extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
            if ext == "txt" {
                texts += 1;
            } else if crate::data::IMAGE_EXTENSIONS.contains(&ext.as_str()) {
                images += 1;
            } else if is_audio(&f.path()) {
                audio += 1;
            }
        }
    }
    let (modality, what) = if audio > images && audio > texts {
        (Modality::Audio, "audio")
    } else if texts > images {
        (Modality::Text, "text")
    } else {
        (Modality::Image, "image")
    };
    let audio_count = if audio > 0 { format!(", {audio} audio files") } else { String::new() };
    Detected { modality, reason: format!("{}: {images} image files and {texts} .txt files{audio_count} in its class folders; read as {what}", dir.display()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        d
    }

    /// A class folder with a stray `notes.txt` made the whole folder read as text, and `train`
    /// then failed with "need at least two classes".
    #[test]
    fn a_stray_text_file_among_images_still_reads_as_images() {
        let d = folder(&["cat/1.png", "cat/2.jpg", "cat/notes.txt", "dog/1.png", "dog/2.png"]);
        let got = detect(d.path(), &Hints::default());
        assert_eq!(got.modality, Modality::Image, "{}", got.reason);
        assert!(got.reason.contains("4 image files and 1 .txt files"), "{}", got.reason);
    }

    #[test]
    fn folders_of_texts_read_as_text_even_with_a_stray_image() {
        let d = folder(&["pos/a.txt", "pos/b.txt", "neg/c.txt", "neg/d.TXT", "neg/cover.png"]);
        let got = detect(d.path(), &Hints::default());
        assert_eq!(got.modality, Modality::Text, "{}", got.reason);
    }

    #[test]
    fn the_model_and_text_settings_decide_before_the_data() {
        let d = folder(&["pos/a.txt", "pos/b.txt", "neg/c.txt"]);
        let got = detect(d.path(), &Hints { model: Some("resnet18"), text_settings: true });
        assert_eq!(got.modality, Modality::Image);
        assert!(got.reason.contains("image model"), "{}", got.reason);
        let got = detect(d.path(), &Hints { model: Some("all-minilm-l6-v2"), text_settings: false });
        assert_eq!(got.modality, Modality::Text);
        let imgs = folder(&["a/1.png", "b/1.png"]);
        assert_eq!(detect(imgs.path(), &Hints { model: None, text_settings: true }).modality, Modality::Text);
    }

    #[test]
    fn folders_and_manifests_of_audio_read_as_audio() {
        let d = folder(&["en/a.wav", "en/b.FLAC", "fr/c.ogg", "fr/d.mp3", "fr/notes.txt", "fr/cover.png"]);
        let got = detect(d.path(), &Hints::default());
        assert_eq!(got.modality, Modality::Audio, "{}", got.reason);
        assert!(got.reason.contains("4 audio files"), "{}", got.reason);
        let m = d.path().join("m.csv");
        std::fs::write(&m, "path,label\nen/a.wav,en\nfr/c.ogg,fr\n").unwrap();
        assert_eq!(detect(&m, &Hints::default()).modality, Modality::Audio);
        // The model decides first: an audio registry name or hub id, not a text model.
        let imgs = folder(&["a/1.png", "b/1.png"]);
        for m in ["whisper_tiny_en", "whisper-tiny.en", "facebook/wav2vec2-base", "openai/whisper-small"] {
            assert_eq!(detect(imgs.path(), &Hints { model: Some(m), text_settings: false }).modality, Modality::Audio, "{m}");
        }
        assert_eq!(detect(imgs.path(), &Hints { model: Some("bert-base/uncased"), text_settings: false }).modality, Modality::Text);
    }

    #[test]
    fn files_by_format_and_csv_header() {
        let d = tempfile::tempdir().unwrap();
        let (manifest, table, jsonl) = (d.path().join("m.csv"), d.path().join("t.csv"), d.path().join("t.jsonl"));
        std::fs::write(&manifest, "path,label\na.png,cat\n").unwrap();
        std::fs::write(&table, "\u{feff}\"text\",label\nhi,pos\n").unwrap();
        std::fs::write(&jsonl, "{}\n").unwrap();
        assert_eq!(detect(&manifest, &Hints::default()).modality, Modality::Image);
        assert_eq!(detect(&table, &Hints::default()).modality, Modality::Text);
        assert_eq!(detect(&jsonl, &Hints::default()).modality, Modality::Text);
    }
}
