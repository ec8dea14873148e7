//! Charts as inline SVG: no script, no external asset, colours from the
//! stylesheet's classes (inline `style` would break the CSP).

use chrono::{Datelike, Months, NaiveDate};
use maud::{html, Markup};

/// The axis top and the tick step for values up to `max`: a step of 1, 2 or 5
/// times a power of ten, at most five steps.
fn scale(max: f64) -> (f64, f64) {
    if max <= 0.0 {
        return (1.0, 1.0);
    }
    let raw = max / 5.0;
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
        .max(1.0);
    ((max / step).ceil() * step, step)
}

fn fmt(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn ticks(max: f64) -> (f64, Vec<f64>) {
    let (top, step) = scale(max);
    let n = (top / step).round() as usize;
    (top, (0..=n).map(|i| i as f64 * step).collect())
}

/// Vertical bars with a y axis, tick labels, x labels and a title per bar.
pub fn bars(label: &str, y_label: &str, bars: &[(String, u64)], width: u32, height: u32) -> Markup {
    let (left, right, top, bottom) = (48.0, 8.0, 10.0, 28.0);
    let w = width as f64 - left - right;
    let h = height as f64 - top - bottom;
    let (max, marks) = ticks(bars.iter().map(|b| b.1).max().unwrap_or(0) as f64);
    let n = bars.len().max(1) as f64;
    let slot = w / n;
    let every = ((bars.len() as f64) / 8.0).ceil().max(1.0) as usize;
    html! {
        svg class="chart" role="img" aria-label=(label) viewBox={"0 0 " (width) " " (height)} width=(width) height=(height) {
            title { (label) }
            @for v in &marks {
                @let y = top + h - h * v / max;
                line class="grid" x1=(left) x2=(left + w) y1=(y) y2=(y) {}
                text class="tick" x=(left - 6.0) y=(y + 4.0) text-anchor="end" { (fmt(*v)) }
            }
            text class="axis-label" x="12" y=(top + h / 2.0) transform={"rotate(-90 12 " (top + h / 2.0) ")"} text-anchor="middle" { (y_label) }
            @for (i, (name, v)) in bars.iter().enumerate() {
                @let bh = h * *v as f64 / max;
                @let x = left + slot * i as f64 + slot * 0.15;
                rect class="bar" x=(x) y=(top + h - bh) width=(slot * 0.7) height=(bh) {
                    title { (name) ": " (v) }
                }
                @if i % every == 0 {
                    text class="tick" x=(x + slot * 0.35) y=(top + h + 16.0) text-anchor="middle" { (name) }
                }
            }
            line class="axis" x1=(left) x2=(left + w) y1=(top + h) y2=(top + h) {}
            line class="axis" x1=(left) x2=(left) y1=(top) y2=(top + h) {}
        }
    }
}

/// A small bar chart for a table cell: no axes, a title on each bar.
pub fn sparkline(label: &str, bars: &[(String, u64)], width: u32, height: u32) -> Markup {
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let slot = width as f64 / bars.len().max(1) as f64;
    let h = height as f64 - 2.0;
    html! {
        svg class="spark" role="img" aria-label=(label) viewBox={"0 0 " (width) " " (height)} width=(width) height=(height) {
            line class="axis" x1="0" x2=(width) y1=(h + 1.0) y2=(h + 1.0) {}
            @for (i, (name, v)) in bars.iter().enumerate() {
                @let bh = h * *v as f64 / max;
                rect class="bar" x=(slot * i as f64 + slot * 0.15) y=(h + 1.0 - bh) width=(slot * 0.7) height=(bh) {
                    title { (name) ": " (v) }
                }
            }
        }
    }
}

/// The balance over time: the past as a solid line, the forecast dashed, a
/// dotted line at each lot's expiry.
pub fn burn_down(
    history: &[(NaiveDate, u64)],
    projection: &[(NaiveDate, u64)],
    expiries: &[(NaiveDate, String)],
    width: u32,
    height: u32,
) -> Markup {
    let (left, right, top, bottom) = (56.0, 16.0, 12.0, 34.0);
    let w = width as f64 - left - right;
    let h = height as f64 - top - bottom;
    let first = history.first().map(|p| p.0);
    let last = projection
        .iter()
        .map(|p| p.0)
        .chain(history.iter().map(|p| p.0))
        .max();
    let (Some(first), Some(last)) = (first, last) else {
        return html! {};
    };
    let span = ((last - first).num_days().max(1)) as f64;
    let (max, marks) = ticks(
        history
            .iter()
            .chain(projection.iter())
            .map(|p| p.1)
            .max()
            .unwrap_or(0) as f64,
    );
    let x = |d: NaiveDate| left + w * ((d - first).num_days() as f64 / span);
    let y = |v: u64| top + h - h * v as f64 / max;
    let line = |pts: &[(NaiveDate, u64)]| {
        pts.iter()
            .map(|(d, v)| format!("{:.1},{:.1}", x(*d), y(*v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let today = history.last().map(|p| p.0).unwrap_or(first);
    // A label at each month's start (every third month over long spans).
    let every = if span > 400.0 { 3 } else { 1 };
    let months: Vec<(NaiveDate, String)> =
        std::iter::successors(first.with_day(1), |d| d.checked_add_months(Months::new(1)))
            .skip(1)
            .take_while(|d| *d <= last)
            .filter(|d| d.month0() % every == 0)
            .map(|d| {
                (
                    d,
                    if d.month() == 1 {
                        d.format("%b %Y").to_string()
                    } else {
                        d.format("%b").to_string()
                    },
                )
            })
            .collect();
    html! {
        svg class="chart" role="img" aria-label="token balance: past 30 days and forecast" viewBox={"0 0 " (width) " " (height)} width=(width) height=(height) {
            title { "Token balance: the last 30 days and the forecast" }
            @for v in &marks {
                @let yy = top + h - h * v / max;
                line class="grid" x1=(left) x2=(left + w) y1=(yy) y2=(yy) {}
                text class="tick" x=(left - 6.0) y=(yy + 4.0) text-anchor="end" { (fmt(*v)) }
            }
            @for (d, name) in &months {
                line class="tick-mark" x1=(x(*d)) x2=(x(*d)) y1=(top + h) y2=(top + h + 4.0) {}
                text class="tick" x=(x(*d)) y=(top + h + 16.0) text-anchor="middle" { (name) }
            }
            text class="axis-label" x="12" y=(top + h / 2.0) transform={"rotate(-90 12 " (top + h / 2.0) ")"} text-anchor="middle" { "tokens" }
            @for (d, name) in expiries.iter().filter(|(d, _)| *d >= first && *d <= last) {
                line class="expiry" x1=(x(*d)) x2=(x(*d)) y1=(top) y2=(top + h) {}
                text class="expiry-label" x=(x(*d) - 4.0) y=(top + 10.0) text-anchor="end" { (name) }
            }
            polyline class="past" points=(line(history)) {}
            @if projection.len() > 1 {
                polyline class="forecast" points=(line(projection)) {}
            }
            line class="axis" x1=(left) x2=(left + w) y1=(top + h) y2=(top + h) {}
            line class="axis" x1=(left) x2=(left) y1=(top) y2=(top + h) {}
            line class="today" x1=(x(today)) x2=(x(today)) y1=(top) y2=(top + h) {}
            text class="today-label" x=(x(today) + 4.0) y=(top + h - 6.0) text-anchor="start" { "today" }
            text class="axis-label" x=(left + w / 2.0) y=(top + h + 30.0) text-anchor="middle" { "date (solid: balance, dashed: forecast, dotted: lot expiry)" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(ticks(0.0), (1.0, vec![0.0, 1.0]));
        assert_eq!(ticks(7.0).0, 8.0);
        assert_eq!(ticks(35.0), (40.0, vec![0.0, 10.0, 20.0, 30.0, 40.0]));
        assert_eq!(ticks(486.0).0, 500.0);
        assert_eq!(ticks(3.0), (3.0, vec![0.0, 1.0, 2.0, 3.0]));
    }

    #[test]
    fn bars_have_titles_and_axis_labels() {
        let svg = bars(
            "weekly tokens",
            "tokens",
            &[("11-02".into(), 49), ("11-09".into(), 0)],
            300,
            120,
        )
        .into_string();
        assert!(svg.contains("<title>11-02: 49</title>"), "{svg}");
        assert!(svg.contains(">tokens</text>"));
        assert!(!svg.contains("style="), "inline styles break the CSP");
    }
}
