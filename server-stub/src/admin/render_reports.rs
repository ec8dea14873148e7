//! Human output of the reading commands: `report`, `recommend`, `estimate` and
//! `forecast`. Pure text from the `flex_protocol::reports` types.

use chrono::SecondsFormat;
use flex_protocol::reports::{Estimate, Forecast, RecommendationList, ReportBy, UsageReport};

use super::names::Names;
use super::table::Table;

/// A usage report; products by their display `names`.
pub fn usage(r: &UsageReport, names: &Names) -> String {
    let mut out = format!(
        "usage by {} from {} to {} ({}): {} tokens\n",
        r.by.as_str(),
        r.from,
        r.to,
        r.timezone,
        r.total_tokens
    );
    if r.rows.is_empty() {
        out.push_str("no usage in this period\n");
        return out;
    }
    let (key, count) = match r.by {
        ReportBy::Product => ("PRODUCT", "USERS"),
        ReportBy::User => ("USER", "PRODUCTS"),
    };
    let mut t =
        Table::new(&[key, "TOKENS", "USAGE DAYS", count, "WEEKS (tokens/days)"]).right(&[1, 2, 3]);
    for row in &r.rows {
        let weeks = row
            .weeks
            .iter()
            .map(|w| {
                format!(
                    "{}: {}/{}",
                    w.week_start.format("%m-%d"),
                    w.tokens,
                    w.usage_days
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let key = match r.by {
            ReportBy::Product => names.label(&row.key).to_owned(),
            ReportBy::User => row.key.clone(),
        };
        t.row([
            key,
            row.tokens.to_string(),
            row.usage_days.to_string(),
            row.users.or(row.products).unwrap_or(0).to_string(),
            weeks,
        ]);
    }
    out.push_str(&t.render());
    out
}

pub fn recommendations(r: &RecommendationList, names: &Names) -> String {
    if r.recommendations.is_empty() {
        return format!(
            "no recommendations for {}: everyone is on the cheaper plan\n",
            r.month
        );
    }
    let mut t =
        Table::new(&["USER", "PRODUCT", "DAYS", "NOW", "MOVE TO", "TOKENS", "WHY"]).right(&[2, 5]);
    for x in &r.recommendations {
        t.row([
            x.email.clone(),
            names.label(&x.product).to_owned(),
            x.usage_days.to_string(),
            x.current.as_str().to_owned(),
            x.recommend.as_str().to_owned(),
            x.tokens.to_string(),
            x.reason.clone(),
        ]);
    }
    format!("recommendations for {}:\n{}", r.month, t.render())
}

pub fn estimate(e: &Estimate, names: &Names) -> String {
    let mut t =
        Table::new(&["PRODUCT", "USERS", "DAYS/MONTH", "TOKENS/MONTH", "NOTE"]).right(&[1, 2, 3]);
    for r in &e.rows {
        t.row([
            names.label(&r.product).to_owned(),
            r.users.to_string(),
            format!("{}", r.days_per_month),
            r.tokens_per_month.to_string(),
            if r.subscription_cheaper {
                "more than 7 days: a subscription is cheaper".to_owned()
            } else {
                String::new()
            },
        ]);
    }
    let packs = e
        .packs
        .iter()
        .map(|p| format!("{} × {}", p.count, p.size))
        .collect::<Vec<_>>()
        .join(" + ");
    format!(
        "{}tokens per month: {}\ntokens for {} month(s): {}\nbuy: {} = {} tokens\n",
        t.render(),
        e.tokens_per_month,
        e.months,
        e.tokens_total,
        if packs.is_empty() {
            "nothing".to_owned()
        } else {
            packs
        },
        e.packs_tokens
    )
}

pub fn forecast(f: &Forecast) -> String {
    let mut out = format!(
        "balance:        {} tokens\nburn rate:      {} tokens/day (last 30 days)\n",
        f.balance, f.burn_per_day
    );
    match (f.days_left, f.empty_on) {
        (Some(days), Some(on)) => out.push_str(&format!("runs out:       {on} ({days} days)\n")),
        _ => out.push_str("runs out:       never at this rate (nothing charged in 30 days)\n"),
    }
    if f.expiring_unused.is_empty() {
        out.push_str("no lot is projected to expire with tokens left\n");
        return out;
    }
    let mut t = Table::new(&["LOT", "REMAINING", "EXPIRES", "PROJECTED UNUSED"]).right(&[0, 1, 3]);
    for l in &f.expiring_unused {
        t.row([
            l.lot_id.to_string(),
            l.remaining.to_string(),
            l.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            l.projected_unused.to_string(),
        ]);
    }
    out.push_str("\nlots that will expire with tokens left at this rate:\n");
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_table_and_empty_state() {
        let r: UsageReport = serde_json::from_value(json!({
            "from": "2026-11-01", "to": "2026-11-30", "timezone": "UTC", "by": "user", "total_tokens": 119,
            "rows": [{"key": "ada@x.com", "tokens": 119, "usage_days": 17, "products": 1,
                      "weeks": [{"week_start": "2026-10-26", "tokens": 7, "usage_days": 1}]}]
        }))
        .unwrap();
        assert_eq!(
            usage(&r, &Names::default()),
            "usage by user from 2026-11-01 to 2026-11-30 (UTC): 119 tokens\n\
             USER       TOKENS  USAGE DAYS  PRODUCTS  WEEKS (tokens/days)\n\
             ada@x.com     119          17         1  10-26: 7/1\n"
        );
        let empty = UsageReport {
            rows: vec![],
            total_tokens: 0,
            ..r
        };
        assert!(usage(&empty, &Names::default()).ends_with("no usage in this period\n"));
    }

    #[test]
    fn estimate_lists_the_packs() {
        let e: Estimate = serde_json::from_value(json!({
            "months": 12, "tokens_per_month": 280, "tokens_total": 3360, "packs_tokens": 3400,
            "packs": [{"size": 2500, "count": 1}, {"size": 500, "count": 1}, {"size": 100, "count": 4}],
            "rows": [{"product": "autocad", "users": 10, "days_per_month": 4.0, "tokens_per_month": 280, "subscription_cheaper": false}]
        }))
        .unwrap();
        assert!(
            estimate(&e, &Names::default())
                .ends_with("buy: 1 × 2500 + 1 × 500 + 4 × 100 = 3400 tokens\n"),
            "{}",
            estimate(&e, &Names::default())
        );
    }

    #[test]
    fn forecast_without_burn() {
        let f: Forecast = serde_json::from_value(json!({
            "balance": 500, "burn_per_day": 0.0, "days_left": null, "empty_on": null,
            "expiring_unused": [{"lot_id": 1, "remaining": 500, "expires_at": "2027-11-02T10:00:00Z", "projected_unused": 500}]
        }))
        .unwrap();
        let out = forecast(&f);
        assert!(out.contains("never at this rate"), "{out}");
        assert!(out.contains("2027-11-02T10:00:00Z"), "{out}");
    }
}
