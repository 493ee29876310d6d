//! Limited-memory BFGS (Nocedal & Wright, "Numerical Optimization", Alg. 7.4/7.5) with a
//! backtracking Armijo line search, on a flat parameter vector; the caller gives value and
//! gradient (in closed form, or by autograd).

use std::collections::VecDeque;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

const MEMORY: usize = 10;

#[cfg(test)]
fn value_and_grad(f: &dyn Fn(&Tensor) -> Tensor, x: &Tensor) -> Result<(f64, Tensor)> {
    let x = x.detach().set_requires_grad(true);
    let loss = f(&x);
    let g = Tensor::f_run_backward(&[&loss], &[&x], false, false)?.pop().expect("one gradient");
    Ok((loss.double_value(&[]), g))
}

/// Minimises `f` from `x0`, gradients by autograd; see [`minimize_with`].
#[cfg(test)]
pub fn minimize(f: &dyn Fn(&Tensor) -> Tensor, x0: &Tensor, max_iter: usize, gtol: f64) -> Result<(Tensor, usize)> {
    minimize_with(&|x: &Tensor| value_and_grad(f, x), x0, max_iter, gtol, &mut Memory::default())
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    a.dot(b).double_value(&[])
}

/// The curvature pairs `(s, y, 1/(y·s))` of the last iterations. Kept between related problems
/// (a regularisation path), it spares each warm-started solve from rebuilding them.
#[derive(Default)]
pub struct Memory {
    hist: VecDeque<(Tensor, Tensor, f64)>,
}

impl Memory {
    /// Keeps a pair only when its curvature is positive relative to its size.
    fn push(&mut self, s: Tensor, y: Tensor) {
        let ys = dot(&y, &s);
        if ys > f64::EPSILON * dot(&y, &y) && ys > 0.0 {
            if self.hist.len() == MEMORY {
                self.hist.pop_front();
            }
            self.hist.push_back((s, y, 1.0 / ys));
        }
    }

    /// Adapts the pairs to the objective plus `delta/2 · ‖x[..n]‖²` (an L2 strength changed by
    /// `delta` on the first `n` entries): its gradient differs by `delta · x[..n]`, so each `y`
    /// gains `delta · s[..n]`, exactly.
    pub fn shift_l2(&mut self, delta: f64, n: i64) {
        let old = std::mem::take(&mut self.hist);
        for (s, y, _) in old {
            let len = y.size()[0];
            let y = Tensor::cat(&[y.narrow(0, 0, n) + s.narrow(0, 0, n) * delta, y.narrow(0, n, len - n)], 0);
            self.push(s, y);
        }
    }
}

/// Minimises the function whose value and gradient `fg` gives, from `x0`, with the curvature
/// pairs in `memory` (updated); stops when the gradient's max-norm falls below `gtol`, the loss
/// stalls, or after `max_iter` iterations. Returns the minimiser and the iterations used.
pub fn minimize_with(fg: &dyn Fn(&Tensor) -> Result<(f64, Tensor)>, x0: &Tensor, max_iter: usize, gtol: f64, memory: &mut Memory) -> Result<(Tensor, usize)> {
    let mut x = x0.detach().copy();
    let (mut fx, mut g) = fg(&x)?;
    if !fx.is_finite() {
        return Err(Error::Diverged(format!("loss is not finite at the start ({fx})")));
    }
    for it in 0..max_iter {
        let hist = &memory.hist;
        let gmax = g.abs().max().double_value(&[]);
        if gmax < gtol {
            return Ok((x, it));
        }
        // Two-loop recursion: d = −H·g.
        let mut q = g.copy();
        let mut alphas = vec![];
        for (s, y, rho) in hist.iter().rev() {
            let a = rho * dot(s, &q);
            q -= y * a;
            alphas.push(a);
        }
        if let Some((s, y, _)) = hist.back() {
            q *= dot(s, y) / dot(y, y);
        }
        for ((s, y, rho), a) in hist.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q += s * (a - b);
        }
        let mut d = -q;
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            memory.hist.clear();
            d = -&g;
            slope = dot(&g, &d);
        }
        let mut t = if memory.hist.is_empty() { (1.0 / g.abs().sum(Kind::Double).double_value(&[])).min(1.0) } else { 1.0 };
        let (mut xn, mut fn_, mut gn);
        let mut tries = 0;
        loop {
            xn = &x + &d * t;
            (fn_, gn) = fg(&xn)?;
            if fn_.is_finite() && fn_ <= fx + 1e-4 * t * slope {
                break;
            }
            t *= 0.5;
            tries += 1;
            if tries > 40 {
                return Ok((x, it)); // no decrease possible along d: at the precision limit
            }
        }
        memory.push(&xn - &x, &gn - &g);
        let stalled = (fx - fn_).abs() <= 1e-12 * fx.abs().max(1.0);
        x = xn;
        fx = fn_;
        g = gn;
        if stalled {
            return Ok((x, it + 1));
        }
    }
    Ok((x, max_iter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_pairs_are_the_pairs_of_the_shifted_quadratic() {
        let a = Tensor::from_slice(&[3.0f64, 1.0, 0.0, 1.0, 2.0, 0.5, 0.0, 0.5, 1.0]).view([3, 3]);
        let mut m = Memory::default();
        for s in [[1.0f64, 0.0, 2.0], [0.0, 1.0, -1.0], [0.5, 0.5, 0.5]] {
            let s = Tensor::from_slice(&s);
            m.push(s.shallow_clone(), a.matmul(&s));
        }
        m.shift_l2(0.25, 2);
        let shifted = &a + Tensor::from_slice(&[0.25f64, 0.25, 0.0]).diag(0);
        assert_eq!(m.hist.len(), 3);
        for (s, y, rho) in &m.hist {
            assert!((y - shifted.matmul(s)).abs().max().double_value(&[]) < 1e-15);
            assert!((rho - 1.0 / y.dot(s).double_value(&[])).abs() < 1e-15);
        }
    }

    #[test]
    fn minimises_a_quadratic_and_rosenbrock() {
        let a = Tensor::from_slice(&[3.0f64, 1.0, 1.0, 2.0]).view([2, 2]);
        let b = Tensor::from_slice(&[1.0f64, -1.0]);
        let quad = |x: &Tensor| (x.matmul(&a.matmul(x)) * 0.5 - b.dot(x)).sum(Kind::Double);
        let (x, _) = minimize(&quad, &Tensor::zeros([2], (Kind::Double, tch::Device::Cpu)), 100, 1e-10).unwrap();
        // Solution of A x = b: [0.6, −0.8].
        let got: Vec<f64> = Vec::try_from(&x).unwrap();
        assert!((got[0] - 0.6).abs() < 1e-8 && (got[1] + 0.8).abs() < 1e-8, "{got:?}");
        let rosen = |x: &Tensor| {
            let (x0, x1) = (x.get(0), x.get(1));
            (-&x0 + 1.0).square() + (x1 - x0.square()).square() * 100.0
        };
        let (x, _) = minimize(&rosen, &Tensor::from_slice(&[-1.2f64, 1.0]), 500, 1e-9).unwrap();
        let got: Vec<f64> = Vec::try_from(&x).unwrap();
        assert!((got[0] - 1.0).abs() < 1e-4 && (got[1] - 1.0).abs() < 1e-4, "{got:?}");
    }
}
