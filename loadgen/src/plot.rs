//! Latency percentile charts as SVG, HdrHistogram style: the x axis is the percentile on a log
//! scale of 1 / (1 − p) (0%, 90%, 99%, 99.9%, …), the y axis the latency in microseconds.
//! One run (`--plot PATH.svg`) or several JSON results overlaid (`credshard-loadgen plot`).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// The percentiles each chart (and each JSON file) records.
pub const PERCENTILES: [f64; 14] =
    [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999, 100.0];
/// Nines shown on the x axis: 0 is 0%, 1 is 90%, … 6 is 99.9999%; 100% is drawn at the end.
const NINES_MAX: f64 = 6.0;
const WIDTH: f64 = 880.0;
const HEIGHT: f64 = 500.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 30.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 60.0;
const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/// One line of a chart: latency (µs) at each of [`PERCENTILES`].
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, u64)>,
}

impl Series {
    /// The series of a latency histogram.
    pub fn of(label: &str, histogram: &Histogram<u64>) -> Series {
        let points = PERCENTILES
            .iter()
            .map(|&percentile| {
                let value = if histogram.is_empty() {
                    0
                } else if percentile >= 100.0 {
                    histogram.max()
                } else {
                    histogram.value_at_quantile(percentile / 100.0)
                };
                (percentile, value)
            })
            .collect();
        Series { label: label.to_owned(), points }
    }

    /// Reads the `target` and `percentile_distribution` fields of a loadgen JSON file.
    ///
    /// # Errors
    /// A message naming the missing or malformed field.
    pub fn from_json(text: &str) -> Result<Series, String> {
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
        let label = json["target"].as_str().ok_or("no \"target\" field")?.to_owned();
        let distribution = json
            .get("percentile_distribution")
            .ok_or("no \"percentile_distribution\" field (a result of an older loadgen?)")?;
        let points: Vec<(f64, u64)> = serde_json::from_value(distribution.clone())
            .map_err(|_| "percentile_distribution is not a list of [percentile, latency] pairs".to_owned())?;
        if points.len() < 2 {
            return Err("percentile_distribution has fewer than two points".to_owned());
        }
        Ok(Series { label, points })
    }
}

/// Nines of a percentile: log10(1 / (1 − p)), capped at [`NINES_MAX`].
fn nines(percentile: f64) -> f64 {
    if percentile >= 100.0 {
        return NINES_MAX;
    }
    (1.0 / (1.0 - percentile / 100.0)).log10().min(NINES_MAX)
}

/// A round axis maximum at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|step| step * magnitude)
        .find(|&ceiling| ceiling >= value)
        .unwrap_or(value)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The chart of `series` as a standalone SVG document.
pub fn svg(title: &str, series: &[Series]) -> String {
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let y_max = nice_ceiling(
        series.iter().flat_map(|line| line.points.iter().map(|(_, value)| *value as f64)).fold(0.0, f64::max)
            * 1.05,
    );
    let x_of = |percentile: f64| MARGIN_LEFT + nines(percentile) / NINES_MAX * plot_width;
    let y_of = |value: f64| MARGIN_TOP + plot_height - value / y_max * plot_height;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and axes.
    for tick in 0..=NINES_MAX as usize {
        let x = MARGIN_LEFT + tick as f64 / NINES_MAX * plot_width;
        let label =
            if tick == 0 { "0%".to_owned() } else { format!("{}%", 100.0 - 100.0 / 10f64.powi(tick as i32)) };
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{MARGIN_TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            MARGIN_TOP + plot_height
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            MARGIN_TOP + plot_height + 18.0
        );
    }
    for tick in 0..=5 {
        let value = y_max * tick as f64 / 5.0;
        let y = y_of(value);
        let _ = writeln!(
            out,
            r##"<line x1="{MARGIN_LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            MARGIN_LEFT + plot_width
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{value:.0}</text>"#,
            MARGIN_LEFT - 8.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        MARGIN_LEFT + plot_width / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(20 {}) rotate(-90)" text-anchor="middle">latency (µs)</text>"#,
        MARGIN_TOP + plot_height / 2.0
    );
    // One polyline per series, and the legend.
    for (index, line) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let points: Vec<String> = line
            .points
            .iter()
            .map(|&(percentile, value)| format!("{:.1},{:.1}", x_of(percentile), y_of(value as f64)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let legend_y = MARGIN_TOP + 16.0 + 18.0 * index as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="3"/>"#,
            MARGIN_LEFT + 12.0,
            MARGIN_LEFT + 36.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            MARGIN_LEFT + 42.0,
            legend_y + 4.0,
            escape(&line.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_round_trips_through_json_and_draws_every_line() {
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        for value in 1..=10_000u64 {
            histogram.record(value).unwrap();
        }
        let series = Series::of("credshard://127.0.0.1:7373", &histogram);
        assert_eq!(series.points.len(), PERCENTILES.len());
        assert!(series.points.windows(2).all(|pair| pair[0].1 <= pair[1].1), "monotonic");
        let json = serde_json::json!({"target": series.label, "percentile_distribution": series.points});
        assert_eq!(Series::from_json(&json.to_string()).unwrap(), series);
        let escaped = Series { label: "a \"quoted\"\nlabel".to_owned(), ..series.clone() };
        let json = serde_json::json!({"target": escaped.label, "percentile_distribution": escaped.points});
        assert_eq!(Series::from_json(&json.to_string()).unwrap(), escaped, "escapes in the label");
        let other = Series { label: "redis://x <&>".to_owned(), ..series.clone() };
        let chart = svg("GET latency", &[series, other]);
        assert_eq!(chart.matches("<polyline").count(), 2);
        assert!(chart.contains("redis://x &lt;&amp;&gt;") && chart.contains("99.9%"));
        assert!(Series::from_json("{\"target\": \"x\"}").is_err());
    }

    #[test]
    fn axis_helpers() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(100.0), NINES_MAX);
        assert_eq!(nice_ceiling(730.0), 1000.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
    }
}
