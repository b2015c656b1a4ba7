//! A small SVG line chart: request-to-provider latency (p50, p95, p99)
//! against the offered rate of the open loop. Written by hand because it is
//! one chart of a few points; a plotting crate would bring fonts and a
//! rasteriser for nothing.

use std::fmt::Write as _;

use super::load::Percentiles;

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 50.0;
const TOP: f64 = 30.0;
const RIGHT: f64 = 20.0;

/// A line of the chart: name, colour, and the percentile it draws.
type Series = (&'static str, &'static str, fn(&Percentiles) -> f64);

/// The chart of `points` (offered notifications/s, latency percentiles).
pub fn latency(points: &[(f64, Percentiles)]) -> String {
    let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let max_y = points.iter().map(|p| p.1.p99).fold(1.0, f64::max) * 1.1;
    let x = |v: f64| LEFT + v / max_x * (W - LEFT - RIGHT);
    let y = |v: f64| H - BOTTOM - v / max_y * (H - BOTTOM - TOP);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">Request to provider call, by offered rate</text>"#,
        W / 2.0
    );
    // Axes, with five ticks each.
    let (x0, y0) = (x(0.0), y(0.0));
    let _ = writeln!(
        svg,
        r#"<path d="M{LEFT} {TOP} V{y0} H{}" stroke="black" fill="none"/>"#,
        W - RIGHT
    );
    for i in 0..=5 {
        let (vx, vy) = (max_x * i as f64 / 5.0, max_y * i as f64 / 5.0);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{vx:.0}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{vy:.0}</text>"#,
            x(vx),
            y0 + 18.0,
            x0 - 6.0,
            y(vy) + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered notifications/s</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">ms</text>"#,
        H / 2.0,
        H / 2.0
    );
    let series: [Series; 3] = [
        ("p50", "#1b9e77", |p| p.p50),
        ("p95", "#d95f02", |p| p.p95),
        ("p99", "#7570b3", |p| p.p99),
    ];
    for (i, (name, colour, value)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(rate, p)| format!("{:.1},{:.1}", x(*rate), y(value(p))))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" stroke="{colour}" stroke-width="2" fill="none"/>"#,
            path.join(" ")
        );
        for (rate, p) in points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                x(*rate),
                y(value(p))
            );
        }
        let ly = TOP + 10.0 + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            LEFT + 10.0,
            LEFT + 30.0,
            LEFT + 36.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
