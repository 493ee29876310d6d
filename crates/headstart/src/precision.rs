//! Which precision a frozen forward pass runs at, and how `auto` is resolved.
//!
//! [`Precision`] (in [`crate::engine`]) is `fp32`, `bf16` (CPU autocast) or `auto`. `auto` is
//! resolved once per run, for the network's [`Family`] on the machine it runs on
//! ([`Hardware::detect`] reads the CPU flags at run time), under the policy [`AUTO_BF16`];
//! only the concrete precision is recorded (run config, feature-cache key, bundle).
//! Convolutional networks run channels-last at every precision ([`channels_last`]).

use crate::engine::Precision;

/// The precision of frozen feature extraction when none is asked for.
pub const DEFAULT_EXTRACT_PRECISION: Precision = Precision::Auto;

/// Network families, which `auto` treats differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Convolutional networks (ResNet, MobileNet, EfficientNet, ConvNeXt, VGG): fed
    /// channels-last batches at every precision.
    Conv,
    /// Text encoders (BERT, MiniLM, DistilBERT, RoBERTa, GPT-2) embedding text.
    Text,
    /// Everything else (ViT, CLIP's towers, audio encoders).
    Other,
}

/// The network families `auto` runs in bf16 on hardware that computes it natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoPolicy {
    pub conv: bool,
    pub text: bool,
    pub other: bool,
}

/// bf16 only where measured accuracy allows it: a head trained on bf16 features must come
/// within 0.2 points of one trained on fp32 features (`bench/precision/accuracy.sh`,
/// `bench/long_text/run.sh`). MobileNetV2 on a CPU with AVX-512 BF16 lost 0.40 points on a
/// Fashion-MNIST subset and 0.25 on an RGB photo-patch set, so `auto` keeps fp32 for images.
/// Text embeddings lost nothing on either text set (MiniLM: 0.00 points on UCI Sentiment
/// sentences, 0.00 on Reuters articles read in chunks and truncated), so `auto` embeds text in
/// bf16. Networks not measured (ViT, CLIP, audio encoders) stay fp32. `bf16` and `fp32` stay
/// available when asked for.
pub const AUTO_BF16: AutoPolicy = AutoPolicy { conv: false, text: true, other: false };

/// What the machine computes natively, for [`Precision::resolve_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardware {
    pub cpu_bf16: bool,
    pub cuda: bool,
}

impl Hardware {
    /// This machine, checked at run time.
    pub fn detect() -> Hardware {
        Hardware { cpu_bf16: cpu_has_bf16(), cuda: tch::Cuda::is_available() }
    }
}

/// Whether this CPU has native bf16 arithmetic: x86 AVX-512 BF16 (which every AMX CPU also
/// has), or Arm BF16.
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("bf16")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

impl Precision {
    /// The concrete precision (`fp32` or `bf16`) for a network of `family` on this machine.
    pub fn resolve(self, family: Family) -> Precision {
        match self {
            Precision::Auto => self.resolve_on(family, Hardware::detect()),
            concrete => concrete,
        }
    }

    /// [`resolve`](Self::resolve) on the given hardware, under [`AUTO_BF16`].
    pub fn resolve_on(self, family: Family, hw: Hardware) -> Precision {
        self.resolve_with(family, hw, AUTO_BF16)
    }

    /// [`resolve`](Self::resolve) on the given hardware under the given policy.
    pub fn resolve_with(self, family: Family, hw: Hardware, policy: AutoPolicy) -> Precision {
        let allowed = match family {
            Family::Conv => policy.conv,
            Family::Text => policy.text,
            Family::Other => policy.other,
        };
        match self {
            Precision::Auto if allowed && (hw.cpu_bf16 || hw.cuda) => Precision::Bf16,
            Precision::Auto => Precision::Fp32,
            concrete => concrete,
        }
    }

    /// `fp32`, `bf16` or `auto`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Precision, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "auto" => Ok(Precision::Auto),
            other => Err(format!("`{other}` is not auto, fp32 or bf16")),
        }
    }
}

/// The precision to run a trained head's encoder at: the one it was trained on unless
/// `requested` (`auto` resolved for `family` on this machine), with a warning when the two
/// differ (features at another precision are close to, but not, the ones the head was fitted
/// on).
pub fn inference_precision(trained: Precision, requested: Option<Precision>, family: Family) -> (Precision, Option<String>) {
    inference_precision_on(trained, requested, family, Hardware::detect())
}

/// [`inference_precision`] on the given hardware.
pub fn inference_precision_on(trained: Precision, requested: Option<Precision>, family: Family, hw: Hardware) -> (Precision, Option<String>) {
    let trained = trained.resolve_on(family, hw);
    let Some(requested) = requested else { return (trained, None) };
    let p = requested.resolve_on(family, hw);
    let warning = (p != trained).then(|| {
        let how = if requested == Precision::Auto { format!("auto resolves to {p} here") } else { format!("{p} was asked for") };
        format!("the head was trained on {trained} features but {how}; predictions may differ slightly (without setting `precision` it runs at {trained})")
    });
    (p, warning)
}

/// The same values as `x` (a 4-d image batch) laid out channels-last: NHWC strides, NCHW
/// shape. libtorch's convolutions follow their input's layout and their outputs keep it, so a
/// network fed this runs channels-last throughout. Other tensors are returned as they are.
pub fn channels_last(x: &tch::Tensor) -> tch::Tensor {
    if x.dim() != 4 {
        return x.shallow_clone();
    }
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Whether `x` is a 4-d tensor laid out channels-last.
pub fn is_channels_last(x: &tch::Tensor) -> bool {
    if x.dim() != 4 {
        return false;
    }
    let (size, stride) = (x.size(), x.stride());
    stride[1] == 1 && stride[3] == size[1] && stride[2] == size[1] * size[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    const BF16_CPU: Hardware = Hardware { cpu_bf16: true, cuda: false };
    const PLAIN_CPU: Hardware = Hardware { cpu_bf16: false, cuda: false };
    const GPU: Hardware = Hardware { cpu_bf16: false, cuda: true };

    #[test]
    fn auto_is_bf16_only_for_allowed_families_on_bf16_hardware() {
        let conv = AutoPolicy { conv: true, text: false, other: false };
        assert_eq!(Precision::Auto.resolve_with(Family::Conv, BF16_CPU, conv), Precision::Bf16);
        assert_eq!(Precision::Auto.resolve_with(Family::Conv, GPU, conv), Precision::Bf16);
        assert_eq!(Precision::Auto.resolve_with(Family::Conv, PLAIN_CPU, conv), Precision::Fp32);
        assert_eq!(Precision::Auto.resolve_with(Family::Other, BF16_CPU, conv), Precision::Fp32);
        assert_eq!(Precision::Auto.resolve_with(Family::Other, GPU, conv), Precision::Fp32);
        for hw in [BF16_CPU, PLAIN_CPU, GPU] {
            for f in [Family::Conv, Family::Text, Family::Other] {
                // The shipped policy, and concrete precisions, which resolve to themselves.
                let allowed = match f {
                    Family::Conv => AUTO_BF16.conv,
                    Family::Text => AUTO_BF16.text,
                    Family::Other => AUTO_BF16.other,
                };
                assert_eq!(Precision::Auto.resolve_on(f, hw) == Precision::Bf16, allowed && (hw.cpu_bf16 || hw.cuda));
                assert_eq!(Precision::Fp32.resolve_on(f, hw), Precision::Fp32);
                assert_eq!(Precision::Bf16.resolve_on(f, hw), Precision::Bf16);
            }
        }
        // This machine: the flag read at run time decides.
        let here = Precision::Auto.resolve_with(Family::Conv, Hardware::detect(), conv);
        assert_eq!(here == Precision::Bf16, cpu_has_bf16() || tch::Cuda::is_available());
    }

    #[test]
    fn the_shipped_policy_keeps_fp32_where_bf16_cost_accuracy() {
        // Measured: images -0.40 and -0.25 points against a 0.2-point budget (fp32); text 0.00
        // on two sets (bf16 where the hardware has it); the rest unmeasured (fp32).
        for hw in [BF16_CPU, PLAIN_CPU, GPU] {
            assert_eq!(Precision::Auto.resolve_on(Family::Conv, hw), Precision::Fp32);
            assert_eq!(Precision::Auto.resolve_on(Family::Other, hw), Precision::Fp32);
        }
        assert_eq!(Precision::Auto.resolve_on(Family::Text, BF16_CPU), Precision::Bf16);
        assert_eq!(Precision::Auto.resolve_on(Family::Text, GPU), Precision::Bf16);
        assert_eq!(Precision::Auto.resolve_on(Family::Text, PLAIN_CPU), Precision::Fp32);
    }

    #[test]
    fn precision_names_parse_and_serialise() {
        for p in [Precision::Auto, Precision::Fp32, Precision::Bf16] {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
            assert_eq!(p.to_string(), p.name());
        }
        assert!("fp16".parse::<Precision>().unwrap_err().contains("fp16"));
    }

    #[test]
    fn inference_uses_the_trained_precision_and_warns_on_another() {
        assert_eq!(inference_precision_on(Precision::Bf16, None, Family::Conv, PLAIN_CPU), (Precision::Bf16, None));
        assert_eq!(inference_precision_on(Precision::Bf16, Some(Precision::Bf16), Family::Conv, PLAIN_CPU), (Precision::Bf16, None));
        let (p, w) = inference_precision_on(Precision::Bf16, Some(Precision::Fp32), Family::Conv, BF16_CPU);
        assert_eq!(p, Precision::Fp32);
        let w = w.expect("a warning");
        assert!(w.contains("trained on bf16") && w.contains("fp32 was asked for"), "{w}");
        // auto that resolves to the trained precision is no mismatch; one that does not is.
        assert_eq!(inference_precision_on(Precision::Fp32, Some(Precision::Auto), Family::Other, BF16_CPU), (Precision::Fp32, None));
        let (p, w) = inference_precision_on(Precision::Bf16, Some(Precision::Auto), Family::Conv, PLAIN_CPU);
        assert_eq!(p, Precision::Fp32);
        assert!(w.unwrap().contains("auto resolves to fp32"));
    }

    #[test]
    fn channels_last_keeps_values_and_shape_and_changes_strides() {
        let x = tch::Tensor::randn([2, 3, 5, 4], tch::kind::FLOAT_CPU);
        assert!(!is_channels_last(&x));
        let y = channels_last(&x);
        assert!(is_channels_last(&y));
        assert_eq!(y.size(), x.size());
        assert_eq!(y.stride(), vec![60, 1, 12, 3]);
        assert!(y.equal(&x));
        let v = tch::Tensor::randn([3, 4], tch::kind::FLOAT_CPU);
        assert_eq!(channels_last(&v).stride(), v.stride());
        assert!(!is_channels_last(&v));
    }
}
