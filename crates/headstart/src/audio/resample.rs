//! Band-limited rational resampling: a polyphase FIR with a Kaiser-windowed sinc low-pass
//! (β = 5, 10 zero crossings per side of the slower rate, cut-off at the lower Nyquist
//! frequency), the same design and output alignment as `scipy.signal.resample_poly`.
//!
//! The ratio `to / from` is reduced by its gcd to `up / down`; each output sample is a dot
//! product of about `20 · max(up, down) / up` input samples with one phase of the filter, the
//! signal being zero outside the clip. Output length is `ceil(n · up / down)`.

/// Modified Bessel function of the first kind, order 0 (power series).
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term, q) = (1.0, 1.0, x * x / 4.0);
    for k in 1..200 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The low-pass filter `resample_poly` designs: `firwin(2·half + 1, 1/max_rate, ('kaiser', 5))`
/// normalised to unit DC gain, times `up`.
fn design(up: u64, down: u64) -> (Vec<f64>, usize) {
    let max_rate = up.max(down) as f64;
    let half = 10 * up.max(down) as usize;
    let taps = 2 * half + 1;
    let cutoff = 1.0 / max_rate;
    let beta = 5.0;
    let i0_beta = bessel_i0(beta);
    let mut h: Vec<f64> = (0..taps)
        .map(|n| {
            let m = n as f64 - half as f64;
            let x = cutoff * m;
            let sinc = if x == 0.0 { 1.0 } else { (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x) };
            let r = 2.0 * n as f64 / (taps - 1) as f64 - 1.0;
            let w = bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
            cutoff * sinc * w
        })
        .collect();
    let sum: f64 = h.iter().sum();
    let scale = up as f64 / sum;
    h.iter_mut().for_each(|v| *v *= scale);
    (h, half)
}

/// Resamples `x` from `from` Hz to `to` Hz. Equal rates return a copy; an empty input gives an
/// empty output. Rates must be positive.
pub fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    assert!(from > 0 && to > 0, "sample rates must be positive");
    let g = gcd(from as u64, to as u64);
    let (up, down) = (to as u64 / g, from as u64 / g);
    if up == down || x.is_empty() {
        return x.to_vec();
    }
    let (h, half) = design(up, down);
    let (up, down) = (up as i64, down as i64);
    let n_in = x.len() as i64;
    let n_out = (n_in * up + down - 1) / down;
    // Leading zeros put the filter's centre on output sample 0, as resample_poly does.
    let pre_pad = down - (half as i64 % down);
    let pre_remove = (half as i64 + pre_pad) / down;
    let len = h.len() as i64;
    let mut out = Vec::with_capacity(n_out as usize);
    for i in 0..n_out {
        // Position in the zero-stuffed, filtered signal, relative to the unpadded filter.
        let t = (i + pre_remove) * down - pre_pad;
        let n_hi = t.div_euclid(up).min(n_in - 1);
        let n_lo = (t - len + 1 + up - 1).div_euclid(up).max(0);
        let mut acc = 0.0f64;
        let mut n = n_lo;
        while n <= n_hi {
            acc += h[(t - n * up) as usize] * x[n as usize] as f64;
            n += 1;
        }
        out.push(acc as f32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bessel_matches_known_values() {
        assert!((bessel_i0(0.0) - 1.0).abs() < 1e-15);
        assert!((bessel_i0(5.0) - 27.239_871_823_604_45).abs() < 1e-10);
    }

    #[test]
    fn lengths_and_identity() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.01).sin()).collect();
        assert_eq!(resample(&x, 16000, 16000), x);
        assert_eq!(resample(&x, 44100, 16000).len(), (1000 * 160usize).div_ceil(441));
        assert_eq!(resample(&x, 8000, 16000).len(), 2000);
        assert!(resample(&[], 8000, 16000).is_empty());
    }

    #[test]
    fn keeps_a_low_tone_and_removes_one_above_the_new_nyquist() {
        let rate = 48000.0;
        let tone = |f: f64| -> Vec<f32> { (0..48000).map(|i| (2.0 * std::f64::consts::PI * f * i as f64 / rate).sin() as f32).collect() };
        let rms = |v: &[f32]| (v[2000..v.len() - 2000].iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / (v.len() - 4000) as f64).sqrt();
        let kept = resample(&tone(1000.0), 48000, 16000);
        assert!((rms(&kept) - 0.5f64.sqrt()).abs() < 1e-3, "1 kHz tone rms {}", rms(&kept));
        let gone = resample(&tone(12000.0), 48000, 16000);
        assert!(rms(&gone) < 1e-3, "12 kHz tone should be filtered out, rms {}", rms(&gone));
    }
}
