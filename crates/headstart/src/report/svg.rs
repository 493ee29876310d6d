//! Hand-written inline SVG: line charts and a heat map, no scripts and nothing fetched.

use std::fmt::Write;

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// A line chart of `series`; `log_x` plots x on a log scale; `mark` draws a vertical line.
pub fn line_chart(title: &str, x_label: &str, series: &[Series], log_x: bool, mark: Option<(f64, &str)>) -> String {
    let (w, h, l, r, t, b) = (520.0, 300.0, 56.0, 16.0, 28.0, 44.0);
    let tx = |x: f64| if log_x { x.max(1e-300).log10() } else { x };
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    let mut out = format!("<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\">");
    let _ = write!(out, "<title>{}</title><text x=\"{}\" y=\"18\" text-anchor=\"middle\" class=\"ct\">{}</text>", esc(title), w / 2.0, esc(title));
    if pts.is_empty() {
        let _ = write!(out, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text></svg>", w / 2.0, h / 2.0);
        return out;
    }
    let (mut x0, mut x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(tx(p.0)), b.max(tx(p.0))));
    let (mut y0, mut y1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if x1 - x0 < 1e-12 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let px = |x: f64| l + (tx(x) - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| t + (1.0 - (y - y0) / (y1 - y0)) * (h - t - b);
    let _ = write!(out, "<rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" class=\"frame\"/>", w - l - r, h - t - b);
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = write!(
            out,
            "<line x1=\"{l}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" class=\"grid\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" class=\"tick\">{}</text>",
            w - r,
            py(y),
            py(y),
            l - 4.0,
            py(y) + 4.0,
            num(y)
        );
        let xv = x0 + (x1 - x0) * i as f64 / 4.0;
        let shown = if log_x { 10f64.powf(xv) } else { xv };
        let xp = l + (w - l - r) * i as f64 / 4.0;
        let _ = write!(out, "<text x=\"{xp:.1}\" y=\"{}\" text-anchor=\"middle\" class=\"tick\">{}</text>", h - b + 16.0, num(shown));
    }
    let _ = write!(out, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" class=\"tick\">{}</text>", l + (w - l - r) / 2.0, h - 8.0, esc(x_label));
    if let Some((x, label)) = mark {
        // The label sits left of the line when the line is near the right edge.
        let (lx, anchor) = if px(x) > w - r - 60.0 { (px(x) - 3.0, "end") } else { (px(x) + 3.0, "start") };
        let _ = write!(out, "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{t}\" y2=\"{1}\" class=\"mark\"/>", px(x), h - b);
        let _ = write!(out, "<text x=\"{lx:.1}\" y=\"{}\" text-anchor=\"{anchor}\" class=\"tick\">{}</text>", h - b - 6.0, esc(label));
    }
    for (k, s) in series.iter().enumerate() {
        let path: Vec<String> = s.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        if path.is_empty() {
            continue;
        }
        let _ = write!(out, "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>", s.color, path.join(" "));
        if path.len() < 30 {
            for p in &path {
                let (cx, cy) = p.split_once(',').expect("x,y");
                let _ = write!(out, "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"2.5\" fill=\"{}\"/>", s.color);
            }
        }
        let ly = t + 14.0 + 14.0 * k as f64;
        let _ = write!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" class=\"tick\">{}</text>",
            w - r - 90.0,
            ly - 9.0,
            s.color,
            w - r - 76.0,
            ly,
            esc(&s.name)
        );
    }
    out + "</svg>"
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The confusion matrix (`m[true][predicted]`) as a heat map, each row shaded by its share.
pub fn heat_map(labels: &[String], m: &[Vec<usize>]) -> String {
    let k = labels.len().max(1);
    let cell = (420.0 / k as f64).clamp(18.0, 48.0);
    let left = 10.0 + 7.0 * labels.iter().map(|l| l.chars().count()).max().unwrap_or(4).min(18) as f64;
    let top = left;
    let (w, h) = (left + cell * k as f64 + 10.0, top + cell * k as f64 + 30.0);
    let mut out = format!("<svg class=\"heat\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\"><title>confusion matrix</title>");
    for (i, l) in labels.iter().enumerate() {
        let short: String = l.chars().take(18).collect();
        let c = top + cell * (i as f64 + 0.5);
        let _ = write!(out, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" class=\"tick\">{}</text>", left - 4.0, c + 4.0, esc(&short));
        let x = left + cell * (i as f64 + 0.5);
        let _ = write!(out, "<text transform=\"translate({x:.1},{}) rotate(-60)\" class=\"tick\">{}</text>", top - 4.0, esc(&short));
    }
    for (t, row) in m.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (p, &n) in row.iter().enumerate() {
            let share = if total > 0 { n as f64 / total as f64 } else { 0.0 };
            let (x, y) = (left + cell * p as f64, top + cell * t as f64);
            let fill = if t == p {
                format!("rgba(31,119,180,{:.3})", 0.08 + 0.92 * share)
            } else {
                format!("rgba(214,39,40,{:.3})", if n > 0 { 0.15 + 0.85 * share } else { 0.0 })
            };
            let _ = write!(out, "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"{fill}\" class=\"cell\"><title>true {} → predicted {}: {n}</title></rect>", esc(&labels[t]), esc(&labels[p]));
            if n > 0 {
                let color = if share > 0.6 { "#fff" } else { "#222" };
                let _ = write!(
                    out,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{color}\" class=\"tick\">{n}</text>",
                    x + cell / 2.0,
                    y + cell / 2.0 + 4.0
                );
            }
        }
    }
    let _ = write!(out, "<text x=\"{}\" y=\"{}\" class=\"tick\">rows: true class · columns: predicted</text></svg>", left, h - 8.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_and_escape_labels() {
        let s = line_chart("a<b", "epoch", &[Series { name: "x&y".into(), color: "#000", points: vec![(1.0, 0.5), (2.0, f64::NAN), (3.0, 0.2)] }], false, None);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("a&lt;b") && s.contains("x&amp;y") && !s.contains("NaN"));
        assert_eq!(s.matches("<circle").count(), 2);
        let h = heat_map(&["a".into(), "b".into()], &[vec![3, 1], vec![0, 2]]);
        assert_eq!(h.matches("<rect").count(), 4);
        assert!(h.contains("true a → predicted b: 1"));
    }
}
