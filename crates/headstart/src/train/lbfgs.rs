//! Limited-memory BFGS (Nocedal & Wright, "Numerical Optimization", Alg. 7.4/7.5) with a
//! backtracking Armijo line search, on a flat parameter vector; gradients by autograd.

use std::collections::VecDeque;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

const MEMORY: usize = 10;

fn value_and_grad(f: &dyn Fn(&Tensor) -> Tensor, x: &Tensor) -> Result<(f64, Tensor)> {
    let x = x.detach().set_requires_grad(true);
    let loss = f(&x);
    let g = Tensor::f_run_backward(&[&loss], &[&x], false, false)?.pop().expect("one gradient");
    Ok((loss.double_value(&[]), g))
}

/// Minimises `f` from `x0`; stops when the gradient's max-norm falls below `gtol`, the loss
/// stalls, or after `max_iter` iterations. Returns the minimiser and the iterations used.
pub fn minimize(f: &dyn Fn(&Tensor) -> Tensor, x0: &Tensor, max_iter: usize, gtol: f64) -> Result<(Tensor, usize)> {
    let mut x = x0.detach().copy();
    let (mut fx, mut g) = value_and_grad(f, &x)?;
    if !fx.is_finite() {
        return Err(Error::Model(format!("loss is not finite at the start ({fx})")));
    }
    let mut hist: VecDeque<(Tensor, Tensor, f64)> = VecDeque::new(); // (s, y, 1/(y·s))
    let dot = |a: &Tensor, b: &Tensor| a.dot(b).double_value(&[]);
    for it in 0..max_iter {
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
            hist.clear();
            d = -&g;
            slope = dot(&g, &d);
        }
        let mut t = if hist.is_empty() { (1.0 / g.abs().sum(Kind::Double).double_value(&[])).min(1.0) } else { 1.0 };
        let (mut xn, mut fn_, mut gn);
        let mut tries = 0;
        loop {
            xn = &x + &d * t;
            (fn_, gn) = value_and_grad(f, &xn)?;
            if fn_.is_finite() && fn_ <= fx + 1e-4 * t * slope {
                break;
            }
            t *= 0.5;
            tries += 1;
            if tries > 40 {
                return Ok((x, it)); // no decrease possible along d: at the precision limit
            }
        }
        let s = &xn - &x;
        let y = &gn - &g;
        let ys = dot(&y, &s);
        if ys > 1e-12 {
            if hist.len() == MEMORY {
                hist.pop_front();
            }
            hist.push_back((s, y, 1.0 / ys));
        }
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
