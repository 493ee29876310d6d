//! The layer-sum head (SUPERB's weighted sum of an encoder's layers): each feature row holds
//! `S` pooled hidden states of width `W`, stacked layer after layer (`[B, S·W]`). Every layer
//! is standardised per feature with the mean and standard deviation of the training rows
//! (fixed, so that layers of very different scale do not dominate), the layers are mixed by
//! the softmax of `S` learned logits (starting at zero: equal weights), and a linear layer maps
//! the mix `[B, W]` to logits. The logits and the linear layer (starting at zero) train
//! together with Adam like the linear head ([`super::sgd`]), the epoch count chosen on held-out
//! rows.
//!
//! Head tensors: `layer_mean`, `layer_std` `[S, W]`, `layer_weights` `[S]`, `weight` `[C, W]`,
//! `bias` `[C]`.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// The layer logits learn at this multiple of the head's rate. Adam moves a parameter by about
/// the rate each step, and a head on features takes a few hundred steps: at the linear head's
/// 1e-3 the softmax would stay close to equal weights.
pub const LAYER_WEIGHT_LR_SCALE: f64 = 20.0;

/// A layer whose feature varies less than this over the training rows is not scaled.
const MIN_STD: f64 = 1e-6;

/// Width of one hidden state in rows of `d` values holding `layers` of them.
pub fn width(d: i64, layers: i64) -> Result<i64> {
    if layers < 1 || d % layers != 0 || d == 0 {
        return Err(Error::Usage(format!("a layer-sum head needs feature rows of whole stacked hidden states: {d} values do not split into {layers} layers")));
    }
    Ok(d / layers)
}

/// Mean and standard deviation `[S, W]` of every layer's features over the rows `x` `[N, S·W]`
/// (a feature that does not vary keeps a deviation of 1, as scikit-learn's `StandardScaler`).
pub fn moments(x: &Tensor, layers: i64) -> Result<(Tensor, Tensor)> {
    let (n, d) = x.size2()?;
    let w = width(d, layers)?;
    let x = x.to_kind(Kind::Float).view([n, layers, w]);
    let mean = x.mean_dim([0i64].as_slice(), false, Kind::Float);
    let sd = x.std_dim([0i64].as_slice(), false, false);
    let sd = sd.where_self(&sd.gt(MIN_STD), &sd.ones_like());
    Ok((mean, sd))
}

/// The softmax-weighted sum of the standardised layers of `x` `[B, S·W]`: `[B, W]`.
pub fn mix(x: &Tensor, mean: &Tensor, sd: &Tensor, logits: &Tensor) -> Tensor {
    let (s, w) = (mean.size()[0], mean.size()[1]);
    let z = (x.to_kind(Kind::Float).view([-1, s, w]) - mean) / sd;
    let a = logits.softmax(0, Kind::Float).view([1, s, 1]);
    (z * a).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
}

/// Logits `[B, C]` of the layer-sum head.
pub fn forward(x: &Tensor, mean: &Tensor, sd: &Tensor, logits: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    mix(x, mean, sd, logits).linear(weight, bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{fit, HeadKind, Split, TrainConfig};

    /// `n` rows of `s` stacked layers of width `w`; class `c` of `k` lifts feature `c` of layer
    /// `signal` by 3 (unit noise there); every other layer is noise of scale 20.
    fn rows(n: usize, s: i64, w: i64, k: i64, signal: i64, seed: i64) -> (Tensor, Tensor) {
        tch::manual_seed(seed);
        let y = Tensor::randint(k, [n as i64], (Kind::Int64, tch::Device::Cpu));
        let x = Tensor::randn([n as i64, s, w], tch::kind::FLOAT_CPU) * 20.0;
        let clean = Tensor::randn([n as i64, w], tch::kind::FLOAT_CPU) + y.one_hot(w).to_kind(Kind::Float) * 3.0;
        x.narrow(1, signal, 1).squeeze_dim(1).copy_(&clean);
        (x.view([n as i64, s * w]), y)
    }

    fn accuracy(logits: &Tensor, y: &Tensor) -> f64 {
        logits.argmax(-1, false).eq_tensor(y).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
    }

    #[test]
    fn moments_are_per_layer_and_feature() {
        let x = Tensor::from_slice(&[1.0f32, 10.0, 5.0, 5.0, 3.0, 30.0, 5.0, 5.0]).view([2, 4]);
        let (m, sd) = moments(&x, 2).unwrap();
        assert_eq!(Vec::<f32>::try_from(m.flatten(0, -1)).unwrap(), vec![2.0, 20.0, 5.0, 5.0]);
        // The constant features keep a deviation of 1.
        assert_eq!(Vec::<f32>::try_from(sd.flatten(0, -1)).unwrap(), vec![1.0, 10.0, 1.0, 1.0]);
        assert!(moments(&x, 3).is_err());
    }

    /// One layer of five carries the classes, the others louder noise: the softmax puts its
    /// largest weight there, the held-out rows are classified, and the head survives a bundle.
    #[test]
    fn learns_the_layer_that_carries_the_classes() {
        let (s, w, k, signal) = (5, 8, 3, 3);
        let (xtr, ytr) = rows(240, s, w, k, signal, 1);
        let (xva, yva) = rows(60, s, w, k, signal, 2);
        let (xte, yte) = rows(300, s, w, k, signal, 3);
        let cfg = TrainConfig { head: HeadKind::LayerSum, layers: Some(s as usize), cv: crate::train::Cv::Off, ..TrainConfig::default() };
        let f = fit(&cfg, Split { x: &xtr, y: &ytr }, Split { x: &xva, y: &yva }, k, &mut |_| {}).unwrap();
        assert_eq!((f.head.spec.kind, f.head.spec.layers, f.head.spec.in_features), (HeadKind::LayerSum, Some(s), s * w));
        let weights = f.head.layer_weights().unwrap();
        assert_eq!(weights.len(), s as usize);
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-6, "{weights:?}");
        let best = (0..s as usize).max_by(|&a, &b| weights[a].total_cmp(&weights[b])).unwrap();
        assert_eq!(best, signal as usize, "layer weights {weights:?}");
        assert!(weights[signal as usize] > 0.4, "the signal layer should dominate: {weights:?}");
        let logits = f.head.forward(&xte).unwrap();
        let acc = accuracy(&logits, &yte);
        assert!(acc > 0.85, "held-out accuracy {acc} (weights {weights:?})");

        // Through a bundle's head file and spec (TOML) and back: the same logits.
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        let spec_toml = toml::to_string(&f.head.spec).unwrap();
        assert!(spec_toml.contains("kind = \"layer_sum\"") && spec_toml.contains("layers = 5"), "{spec_toml}");
        crate::bundle::write(&bundle, &f.head, None, |_| Ok(spec_toml.clone())).unwrap();
        let spec: crate::train::HeadSpec = toml::from_str(&std::fs::read_to_string(bundle.join(crate::bundle::META)).unwrap()).unwrap();
        let back = crate::bundle::read_head(&bundle, &spec).unwrap();
        let again = back.forward(&xte).unwrap();
        assert!(again.allclose(&logits, 1e-6, 1e-6, false), "{}", (&again - &logits).abs().max().double_value(&[]));
    }

    /// A head's tensors are checked against its spec (shapes, positive deviations), and the
    /// layer-sum head is refused without the number of stacked layers.
    #[test]
    fn validate_checks_shapes_and_positive_deviations() {
        let (s, w, k, signal) = (3, 4, 2, 0);
        let (x, y) = rows(60, s, w, k, signal, 4);
        let cfg = TrainConfig { head: HeadKind::LayerSum, layers: Some(s as usize), epochs: 2, cv: crate::train::Cv::Off, ..TrainConfig::default() };
        let f = fit(&cfg, Split { x: &x, y: &y }, Split { x: &x.narrow(0, 0, 0), y: &y.narrow(0, 0, 0) }, k, &mut |_| {}).unwrap();
        f.head.validate().unwrap();
        let mut bad = crate::train::Head { spec: f.head.spec.clone(), tensors: f.head.tensors.iter().map(|(n, t)| (n.clone(), t.copy())).collect() };
        for (n, t) in bad.tensors.iter_mut() {
            if n == "layer_std" {
                let _ = t.fill_(0.0);
            }
        }
        assert!(bad.validate().unwrap_err().to_string().contains("layer_std"));
        bad.spec.layers = Some(5);
        assert!(bad.validate().is_err());
        // Other heads do not take the setting; the layer-sum head needs it.
        let none = TrainConfig { layers: None, ..cfg.clone() };
        let e = fit(&none, Split { x: &x, y: &y }, Split { x: &x, y: &y }, k, &mut |_| {}).err().unwrap();
        assert_eq!(e.cause(), crate::error::Cause::Usage, "{e}");
    }
}
