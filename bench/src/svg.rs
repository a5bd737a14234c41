//! Plain SVG charts for the benchmark results (no dependency): line
//! charts of one or more series over a numeric x axis, and grouped bars.

use std::fmt::Write as _;
use std::path::Path;

const W: f64 = 700.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 70.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn label(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e9 {
        return format!("{}", v as i64);
    }
    let t = format!("{v:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn frame(out: &mut String, title: &str, xlabel: &str, ylabel: &str, ymax: f64) {
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>
"#,
        LEFT + pw / 2.0,
        esc(title),
        LEFT + pw / 2.0,
        H - 10.0,
        esc(xlabel),
        TOP + ph / 2.0,
        esc(ylabel)
    );
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let y = TOP + ph - ph * i as f64 / 5.0;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            label(v)
        );
    }
    let _ = writeln!(
        out,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="black"/><line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        TOP + ph,
        TOP + ph,
        LEFT + pw,
        TOP + ph
    );
}

fn legend(out: &mut String, names: &[String]) {
    for (k, n) in names.iter().enumerate() {
        let y = TOP + 10.0 + 20.0 * k as f64;
        let x = W - RIGHT + 15.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            y - 10.0,
            COLORS[k % COLORS.len()],
            x + 18.0,
            y,
            esc(n)
        );
    }
}

/// Lines over x: each series is (name, points).
pub fn lines(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> std::io::Result<()> {
    let pts = series.iter().flat_map(|s| s.1.iter());
    let xmax = nice_max(pts.clone().map(|p| p.0).fold(0.0, f64::max));
    let ymax = nice_max(pts.map(|p| p.1).fold(0.0, f64::max));
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let mut out = String::new();
    frame(&mut out, title, xlabel, ylabel, ymax);
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .collect();
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.dedup();
    for x in xs {
        let px = LEFT + pw * x / xmax;
        let _ = writeln!(
            out,
            r#"<text x="{px}" y="{}" text-anchor="middle">{}</text>"#,
            TOP + ph + 16.0,
            label(x)
        );
    }
    for (k, (_, p)) in series.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        let d: Vec<String> = p
            .iter()
            .map(|(x, y)| {
                format!(
                    "{:.1},{:.1}",
                    LEFT + pw * x / xmax,
                    TOP + ph - ph * y / ymax
                )
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
            d.join(" ")
        );
        for (x, y) in p {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                LEFT + pw * x / xmax,
                TOP + ph - ph * y / ymax
            );
        }
    }
    let names: Vec<String> = series.iter().map(|s| s.0.clone()).collect();
    legend(&mut out, &names);
    out.push_str("</svg>\n");
    std::fs::write(path, out)
}

/// Grouped bars: one group per label, one bar per series in it.
pub fn bars(
    path: &Path,
    title: &str,
    ylabel: &str,
    names: &[String],
    groups: &[(String, Vec<f64>)],
) -> std::io::Result<()> {
    let ymax = nice_max(
        groups
            .iter()
            .flat_map(|g| g.1.iter().copied())
            .fold(0.0, f64::max),
    );
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let mut out = String::new();
    frame(&mut out, title, "", ylabel, ymax);
    let gw = pw / groups.len().max(1) as f64;
    let bw = gw * 0.8 / names.len().max(1) as f64;
    for (g, (lab, vals)) in groups.iter().enumerate() {
        let gx = LEFT + gw * g as f64 + gw * 0.1;
        for (k, v) in vals.iter().enumerate() {
            let h = ph * v / ymax;
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                gx + bw * k as f64,
                TOP + ph - h,
                bw * 0.9,
                h,
                COLORS[k % COLORS.len()]
            );
        }
        // Slanted, so that long names do not run into each other.
        let (lx, ly) = (gx + gw * 0.4, TOP + ph + 14.0);
        let _ = writeln!(
            out,
            r#"<text x="{lx:.1}" y="{ly}" text-anchor="end" transform="rotate(-25 {lx:.1} {ly})">{}</text>"#,
            esc(lab)
        );
    }
    legend(&mut out, names);
    out.push_str("</svg>\n");
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_bounds_are_round() {
        assert_eq!(nice_max(0.37), 0.5);
        assert_eq!(nice_max(94.0), 100.0);
        assert_eq!(nice_max(4096.0), 5000.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(label(0.4), "0.4");
        assert_eq!(label(1.25), "1.25");
        assert_eq!(label(5000.0), "5000");
    }

    #[test]
    fn charts_are_well_formed() {
        let dir = std::env::temp_dir().join(format!("bench-svg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("l.svg");
        lines(
            &p,
            "t <&>",
            "x",
            "y",
            &[("a".into(), vec![(1.0, 2.0), (2.0, 3.0)])],
        )
        .unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("t &lt;&amp;&gt;") && s.contains("<polyline"));
        let p = dir.join("b.svg");
        bars(
            &p,
            "b",
            "s",
            &["bare".into(), "dmtcp".into()],
            &[("open".into(), vec![1.0, 1.5])],
        )
        .unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert_eq!(s.matches("<rect").count(), 1 + 2 + 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
