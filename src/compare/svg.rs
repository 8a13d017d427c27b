//! Small SVG plots for the HTML report: line charts (pass@k, training curves) and
//! grouped bar charts (accuracy per category). Hand-written: a plotting crate would
//! cost more build time than these ~150 lines.

use std::fmt::Write;

const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 280.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 44.0;
pub const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Index into COLOURS, so that a model keeps its colour across plots.
    pub colour: usize,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A value printed short enough for an axis label.
fn label(v: f64) -> String {
    if v.abs() >= 1000.0 || (v != 0.0 && v.abs() < 0.01) {
        format!("{v:.1e}")
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn open(out: &mut String, title: &str, kind: &str) {
    let _ = write!(
        out,
        r#"<svg class="plot" data-kind="{kind}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11"><text x="{}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
}

fn axes(out: &mut String, x_label: &str, y_label: &str, (y_min, y_max): (f64, f64)) {
    let (x0, y0, x1, y1) = (LEFT, HEIGHT - BOTTOM, WIDTH - RIGHT, TOP);
    let _ = write!(
        out,
        r##"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/><text x="{}" y="{}" text-anchor="middle">{}</text><text x="14" y="{}" text-anchor="middle" transform="rotate(-90 14 {})">{}</text><text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end">{}</text>"##,
        (x0 + x1) / 2.0,
        HEIGHT - 8.0,
        escape(x_label),
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(y_label),
        x0 - 4.0,
        y0,
        label(y_min),
        x0 - 4.0,
        y1 + 8.0,
        label(y_max),
    );
}

fn legend(out: &mut String, names: &[(&str, usize)]) {
    for (i, &(name, colour)) in names.iter().enumerate() {
        let y = TOP + 4.0 + 14.0 * i as f64;
        let _ = write!(
            out,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            WIDTH - RIGHT - 120.0,
            y,
            COLOURS[colour % COLOURS.len()],
            WIDTH - RIGHT - 106.0,
            y + 9.0,
            escape(name)
        );
    }
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        low = low.min(v);
        high = high.max(v);
    }
    if !low.is_finite() {
        return (0.0, 1.0);
    }
    if high - low < 1e-12 {
        return (low - 0.5, high + 0.5);
    }
    (low, high)
}

/// Lines through each series' points; `y_range` fixes the y axis (e.g. 0..1).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_range: Option<(f64, f64)>,
) -> String {
    let mut out = String::new();
    open(&mut out, title, "line");
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x_min, x_max) = range(all().map(|p| p.0));
    let (y_min, y_max) = y_range.unwrap_or_else(|| range(all().map(|p| p.1)));
    axes(&mut out, x_label, y_label, (y_min, y_max));
    let _ = write!(
        out,
        r#"<text x="{LEFT}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        HEIGHT - BOTTOM + 14.0,
        label(x_min),
        WIDTH - RIGHT,
        HEIGHT - BOTTOM + 14.0,
        label(x_max)
    );
    let x = |v: f64| LEFT + (v - x_min) / (x_max - x_min).max(1e-12) * (WIDTH - LEFT - RIGHT);
    let y = |v: f64| {
        HEIGHT - BOTTOM - (v - y_min) / (y_max - y_min).max(1e-12) * (HEIGHT - TOP - BOTTOM)
    };
    for s in series {
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
            .collect();
        let colour = COLOURS[s.colour % COLOURS.len()];
        let _ = write!(
            out,
            r#"<polyline class="series" data-name="{}" fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            escape(&s.name),
            points.join(" ")
        );
        if s.points.len() <= 12 {
            for p in &points {
                let (cx, cy) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = write!(
                    out,
                    r#"<circle cx="{cx}" cy="{cy}" r="3" fill="{colour}"/>"#
                );
            }
        }
    }
    legend(
        &mut out,
        &series
            .iter()
            .map(|s| (s.name.as_str(), s.colour))
            .collect::<Vec<_>>(),
    );
    out.push_str("</svg>");
    out
}

/// Bars per category, one per series (values in 0..1).
pub fn bar_chart(title: &str, categories: &[String], series: &[(String, Vec<f64>)]) -> String {
    let mut out = String::new();
    open(&mut out, title, "bar");
    axes(&mut out, "category", "accuracy", (0.0, 1.0));
    let plot_width = WIDTH - LEFT - RIGHT - 130.0;
    let slot = plot_width / categories.len().max(1) as f64;
    let bar = slot * 0.8 / series.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        let x0 = LEFT + slot * c as f64 + slot * 0.1;
        for (s, (name, values)) in series.iter().enumerate() {
            let value = values.get(c).copied().unwrap_or(0.0).clamp(0.0, 1.0);
            let height = value * (HEIGHT - TOP - BOTTOM);
            let _ = write!(
                out,
                r#"<rect class="bar" data-name="{}" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {value:.3}</title></rect>"#,
                escape(name),
                x0 + bar * s as f64,
                HEIGHT - BOTTOM - height,
                bar,
                height,
                COLOURS[s % COLOURS.len()],
                escape(name)
            );
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x0 + slot * 0.4,
            HEIGHT - BOTTOM + 14.0,
            escape(category)
        );
    }
    legend(
        &mut out,
        &series
            .iter()
            .enumerate()
            .map(|(i, s)| (s.0.as_str(), i))
            .collect::<Vec<_>>(),
    );
    out.push_str("</svg>");
    out
}
