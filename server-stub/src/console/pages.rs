//! Overview, token usage, recommendations and the estimator.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use chrono::{Datelike, NaiveDate};
use flex_protocol::api::{ChargeModel, NoticeKind};
use flex_protocol::reports::{Estimate, EstimateInput, ReportBy, UsageReport};
use maud::{html, Markup};

use super::charts;
use super::{field_error, layout, num, server_error, Authed};
use crate::api::AppState;
use crate::rules::calendar::{self, Period};
use crate::rules::Invalid;
use crate::store::StoreError;

/// Rows of the usage table shown on the page; the CSV has them all.
const MAX_ROWS_SHOWN: usize = 500;
/// Empty rows the estimator form offers.
const ESTIMATOR_ROWS: usize = 5;

fn today(st: &AppState) -> NaiveDate {
    calendar::date_of(calendar::local_day(st.store.now(), st.store.timezone()))
}

pub async fn overview(a: Authed, State(st): State<AppState>) -> Response {
    let data = st
        .store
        .run(|s| {
            Ok((
                s.balance()?,
                s.forecast_plan()?,
                s.balance_history(30)?,
                s.notices()?,
            ))
        })
        .await;
    let (balance, plan, history, notices) = match data {
        Ok(d) => d,
        Err(e) => return server_error(e),
    };
    let tz = st.store.timezone();
    let day = |t| calendar::date_of(calendar::local_day(t, tz));
    let projection: Vec<(NaiveDate, u64)> =
        plan.projection.iter().map(|(t, b)| (day(*t), *b)).collect();
    let now = st.store.now();
    let expiries: Vec<(NaiveDate, String)> = balance
        .lots
        .iter()
        .filter(|l| l.expires_at > now)
        .map(|l| (day(l.expires_at), format!("lot {} expires", l.id)))
        .collect();
    let f = &plan.forecast;
    let content = html! {
        section.cards {
            div.card.big { span.label { "Balance" } span.value #balance { (num(balance.balance)) " tokens" } }
            div.card { span.label { "Burn rate (30 days)" } span.value { (f.burn_per_day) " / day" } }
            div.card { span.label { "Runs out" } span.value {
                @match (f.empty_on, f.days_left) {
                    (Some(on), Some(days)) => { (on) " (" (days) " days)" },
                    _ => "not at this rate",
                }
            } }
            div.card { span.label { "Low-balance line" } span.value { (num(balance.low_balance_threshold)) " tokens" } }
        }
        section {
            h2 { "Balance and forecast" }
            @if balance.lots.is_empty() {
                p.empty { "No tokens bought yet: buy a pack with " code { "flex-admin tokens buy 500" } "." }
            } @else {
                (charts::burn_down(&history, &projection, &expiries, 760, 260))
            }
        }
        @if !f.expiring_unused.is_empty() {
            section {
                h2 { "Tokens that will expire unused at this rate" }
                table {
                    thead { tr { th { "Lot" } th.num { "Remaining" } th { "Expires" } th.num { "Projected unused" } } }
                    tbody { @for l in &f.expiring_unused {
                        tr { td { (l.lot_id) } td.num { (num(l.remaining)) } td { (day(l.expires_at)) } td.num.warn { (num(l.projected_unused)) } }
                    } }
                }
            }
        }
        section {
            h2 { "Token lots" }
            @if balance.lots.is_empty() { p.empty { "No lots." } } @else {
                table {
                    thead { tr { th { "Lot" } th.num { "Bought" } th.num { "Remaining" } th { "Purchased" } th { "Expires" } } }
                    tbody { @for l in &balance.lots {
                        tr class=[(l.expires_at <= now).then_some("expired")] {
                            td { (l.id) } td.num { (num(l.tokens)) } td.num { (num(l.remaining)) }
                            td { (day(l.purchased_at)) } td { (day(l.expires_at)) @if l.expires_at <= now { " (expired)" } }
                        }
                    } }
                }
            }
        }
        section {
            h2 { "Latest notices" }
            @if notices.is_empty() { p.empty { "No notices." } } @else {
                ul.notices { @for n in notices.iter().take(10) {
                    li class=(match n.kind { NoticeKind::OutOfTokens | NoticeKind::DeviceUsers => "bad", NoticeKind::LowBalance => "warn", NoticeKind::TokensExpiring => "info" }) {
                        time { (n.created_at.format("%Y-%m-%d %H:%M UTC")) } " " (n.message)
                    }
                } }
            }
        }
    };
    layout("Overview", "Overview", &a.session.csrf, content).into_response()
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    by: Option<String>,
}

/// The period and key of a usage page; a bad field gets its error.
fn usage_params(
    st: &AppState,
    q: &UsageQuery,
) -> (ReportBy, Result<Period, Invalid>, String, String) {
    let today = today(st);
    let first = today.with_day(1).expect("day 1");
    let from = q
        .from
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| first.to_string());
    let to =
        q.to.clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| today.to_string());
    let by = match q.by.as_deref() {
        Some("user") => ReportBy::User,
        _ => ReportBy::Product,
    };
    (by, Period::parse(Some(&from), Some(&to)), from, to)
}

pub async fn usage(a: Authed, State(st): State<AppState>, Query(q): Query<UsageQuery>) -> Response {
    let (by, period, from, to) = usage_params(&st, &q);
    let (report, error) = match period {
        Ok(p) => match st.store.run(move |s| s.usage_report(by, p)).await {
            Ok(r) => (Some(r), None),
            Err(e) => return server_error(e),
        },
        Err(e) => (None, Some(e)),
    };
    let err = |f: &str| {
        error
            .as_ref()
            .filter(|e| e.field == f)
            .map(|e| e.message.as_str())
    };
    let content = html! {
        form.filters method="get" action="/admin/usage" {
            div.field { label for="from" { "From" } input #from type="date" name="from" value=(from); (field_error(err("from"))) }
            div.field { label for="to" { "To (inclusive)" } input #to type="date" name="to" value=(to); (field_error(err("to"))) }
            div.field { label for="by" { "By" }
                select #by name="by" {
                    option value="product" selected[by == ReportBy::Product] { "product" }
                    option value="user" selected[by == ReportBy::User] { "user" }
                }
            }
            button type="submit" { "Show" }
        }
        @if let Some(r) = &report { (usage_body(r, &from, &to)) }
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (
        status,
        layout("Token usage", "Token usage", &a.session.csrf, content),
    )
        .into_response()
}

fn week_bars(weeks: &[(NaiveDate, u64)]) -> Vec<(String, u64)> {
    weeks
        .iter()
        .map(|(d, v)| (d.format("%m-%d").to_string(), *v))
        .collect()
}

/// Every week of the period, so charts show the quiet weeks too.
fn all_weeks(r: &UsageReport) -> Vec<NaiveDate> {
    let first = calendar::week_start(calendar::day_number(r.from));
    let last = calendar::week_start(calendar::day_number(r.to));
    (0..=(last - first) / 7)
        .map(|i| calendar::date_of(first + 7 * i))
        .collect()
}

fn usage_body(r: &UsageReport, from: &str, to: &str) -> Markup {
    let weeks = all_weeks(r);
    let mut totals: BTreeMap<NaiveDate, u64> = weeks.iter().map(|w| (*w, 0)).collect();
    for row in &r.rows {
        for w in &row.weeks {
            *totals.entry(w.week_start).or_default() += w.tokens;
        }
    }
    let totals: Vec<(NaiveDate, u64)> = totals.into_iter().collect();
    let (key, count) = match r.by {
        ReportBy::Product => ("Product", "Users"),
        ReportBy::User => ("User", "Products"),
    };
    let csv = format!("/admin/usage.csv?from={from}&to={to}&by={}", r.by.as_str());
    html! {
        p.summary {
            strong #total-tokens { (num(r.total_tokens)) } " tokens from " (r.from) " to " (r.to)
            " (" (r.timezone) ", weeks from Monday) · " a href=(csv) { "Download CSV" }
        }
        @if r.rows.is_empty() {
            p.empty { "No usage in this period." }
        } @else {
            (charts::bars("tokens per week", "tokens", &week_bars(&totals), 760, 200))
            table.usage {
                thead { tr { th { (key) } th.num { "Tokens" } th.num { "Usage days" } th.num { (count) } th { "Usage days per week" } } }
                tbody {
                    @for row in r.rows.iter().take(MAX_ROWS_SHOWN) {
                        @let per: HashMap<NaiveDate, u64> = row.weeks.iter().map(|w| (w.week_start, w.usage_days)).collect();
                        @let bars: Vec<(NaiveDate, u64)> = weeks.iter().map(|w| (*w, per.get(w).copied().unwrap_or(0))).collect();
                        tr {
                            td { @if r.by == ReportBy::User {
                                a href={"/admin/users/" (row.key)} { (row.key) }
                            } @else { (row.key) } }
                            td.num { (num(row.tokens)) }
                            td.num { (row.usage_days) }
                            td.num { (row.users.or(row.products).unwrap_or(0)) }
                            td { (charts::sparkline(&format!("{}: usage days per week", row.key), &week_bars(&bars), 160, 28)) }
                        }
                    }
                }
            }
            @if r.rows.len() > MAX_ROWS_SHOWN {
                p.note { "The first " (MAX_ROWS_SHOWN) " of " (r.rows.len()) " rows; the CSV has them all." }
            }
        }
    }
}

pub async fn usage_csv(
    _: Authed,
    State(st): State<AppState>,
    Query(q): Query<UsageQuery>,
) -> Response {
    let (by, period, _, _) = usage_params(&st, &q);
    let period = match period {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, e.message).into_response(),
    };
    match st.store.run(move |s| s.usage_report(by, period)).await {
        Ok(r) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!(
                        "attachment; filename=\"usage-by-{}-{}-{}.csv\"",
                        by.as_str(),
                        r.from,
                        r.to
                    ),
                ),
            ],
            crate::rules::reports::to_csv(&r),
        )
            .into_response(),
        Err(e) => server_error(e),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct MonthQuery {
    month: Option<String>,
}

/// Last month: the one an admin reviews.
fn last_month(st: &AppState) -> String {
    let first = today(st).with_day(1).expect("day 1");
    first
        .pred_opt()
        .unwrap_or(first)
        .format("%Y-%m")
        .to_string()
}

pub async fn recommendations(
    a: Authed,
    State(st): State<AppState>,
    Query(q): Query<MonthQuery>,
) -> Response {
    let month = q
        .month
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| last_month(&st));
    let m = month.clone();
    let (list, error) = match st.store.run(move |s| s.recommendations(&m)).await {
        Ok(l) => (Some(l), None),
        Err(StoreError::Invalid(e)) => (None, Some(e.message)),
        Err(e) => return server_error(e),
    };
    let content = html! {
        form.filters method="get" action="/admin/recommendations" {
            div.field { label for="month" { "Month" } input #month type="month" name="month" value=(month); (field_error(error.as_deref())) }
            button type="submit" { "Show" }
        }
        p.hint { "More than 7 usage days in a month on Flex: a subscription is cheaper. A subscription used 7 days or fewer: Flex is cheaper." }
        @if let Some(l) = &list {
            @if l.recommendations.is_empty() {
                p.empty { "No recommendations for " (l.month) ": everyone is on the cheaper plan." }
            } @else {
                table {
                    thead { tr { th { "User" } th { "Product" } th.num { "Usage days" } th { "Now" } th { "Move to" } th.num { "Tokens" } th { "Why" } } }
                    tbody { @for r in &l.recommendations {
                        tr {
                            td { a href={"/admin/users/" (r.email)} { (r.email) } }
                            td { (r.product) } td.num { (r.usage_days) } td { (r.current.as_str()) }
                            td { strong { (r.recommend.as_str()) } } td.num { (num(r.tokens)) } td { (r.reason) }
                        }
                    } }
                }
            }
        }
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (
        status,
        layout(
            "Recommendations",
            "Recommendations",
            &a.session.csrf,
            content,
        ),
    )
        .into_response()
}

/// What the estimator form holds, as typed.
#[derive(Debug, Clone, Default)]
struct EstimatorForm {
    months: String,
    rows: Vec<(String, String, String)>,
    from: String,
    to: String,
}

fn daily_products(st: &AppState) -> Vec<(String, String)> {
    st.store
        .rates()
        .products()
        .iter()
        .filter(|p| matches!(p.charge, ChargeModel::Daily { .. }))
        .map(|p| (p.id.to_string(), p.name.clone()))
        .collect()
}

fn estimator_page(
    st: &AppState,
    csrf: &str,
    form: &EstimatorForm,
    result: Option<&Estimate>,
    error: Option<&Invalid>,
) -> Markup {
    let err = |f: &str| error.filter(|e| e.field == f).map(|e| e.message.as_str());
    let products = daily_products(st);
    let mut rows = form.rows.clone();
    rows.resize(ESTIMATOR_ROWS.max(rows.len()), Default::default());
    let other = error.filter(|e| {
        !e.field.starts_with("rows.") && e.field != "months" && e.field != "from_usage"
    });
    let content = html! {
        // novalidate: the server checks every field and says what is wrong next to it.
        form.card method="post" action="/admin/estimator" novalidate {
            input type="hidden" name="csrf" value=(csrf);
            div.field { label for="months" { "Months" } input #months type="number" name="months" min="1" max="120" value=(form.months); (field_error(err("months"))) }
            table.form-rows {
                thead { tr { th { "Product" } th { "Users" } th { "Days per month" } } }
                tbody { @for (i, (p, u, d)) in rows.iter().enumerate() {
                    @let n = i + 1;
                    tr {
                        td { select name={"product_" (n)} aria-label={"product of row " (n)} {
                            option value="" { "—" }
                            @for (id, name) in &products { option value=(id) selected[p == id] { (name) } }
                        } (field_error(err(&format!("rows.{n}.product")))) }
                        td { input type="number" name={"users_" (n)} min="1" value=(u) aria-label={"users of row " (n)}; (field_error(err(&format!("rows.{n}.users")))) }
                        td { input type="number" name={"days_" (n)} min="0.1" max="31" step="0.1" value=(d) aria-label={"days per month of row " (n)}; (field_error(err(&format!("rows.{n}.days_per_month")))) }
                    }
                } }
            }
            @if let Some(e) = other { p.field-error role="alert" { (e.message) } }
            button type="submit" name="mode" value="rows" { "Estimate" }
        }
        form.card method="post" action="/admin/estimator" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="months" value=(form.months);
            p { "Or estimate from the real Flex usage of a period:" }
            div.filters {
                div.field { label for="usage_from" { "From" } input #usage_from type="date" name="from" value=(form.from); }
                div.field { label for="usage_to" { "To" } input #usage_to type="date" name="to" value=(form.to); }
                button type="submit" name="mode" value="usage" { "Estimate from usage" }
            }
            (field_error(err("from_usage")))
        }
        @if let Some(e) = result {
            section #estimate {
                h2 { "Result" }
                table {
                    thead { tr { th { "Product" } th.num { "Users" } th.num { "Days / month" } th.num { "Tokens / month" } th { "" } } }
                    tbody { @for r in &e.rows {
                        tr { td { (r.product) } td.num { (r.users) } td.num { (r.days_per_month) } td.num { (num(r.tokens_per_month)) }
                            td { @if r.subscription_cheaper { span.warn { "more than 7 days: a subscription is cheaper" } } } }
                    } }
                }
                p.summary { "Tokens per month: " strong { (num(e.tokens_per_month)) } " · for " (e.months) " month(s): " strong #tokens-total { (num(e.tokens_total)) } }
                p.summary #packs { "Buy: "
                    @for (i, p) in e.packs.iter().enumerate() { @if i > 0 { " + " } strong { (p.count) " × " (num(p.size)) } }
                    " = " (num(e.packs_tokens)) " tokens"
                }
            }
        }
    };
    layout("Estimator", "Estimator", csrf, content)
}

pub async fn estimator(a: Authed, State(st): State<AppState>) -> Response {
    let form = EstimatorForm {
        months: "12".into(),
        ..Default::default()
    };
    estimator_page(&st, &a.session.csrf, &form, None, None).into_response()
}

pub async fn estimate(
    a: Authed,
    State(st): State<AppState>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = a.check(f.get("csrf").map(String::as_str)) {
        return r.into_response();
    }
    let get = |k: &str| f.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let mut form = EstimatorForm {
        months: get("months"),
        from: get("from"),
        to: get("to"),
        rows: Vec::new(),
    };
    for n in 1..=crate::rules::estimate::MAX_ROWS {
        let (p, u, d) = (
            get(&format!("product_{n}")),
            get(&format!("users_{n}")),
            get(&format!("days_{n}")),
        );
        if !f.contains_key(&format!("product_{n}")) {
            break;
        }
        form.rows.push((p, u, d));
    }
    let result = match parse_estimator(&form, get("mode") == "usage") {
        Ok(Parsed::Usage(req)) => st.store.run(move |s| s.estimate(&req)).await,
        Ok(Parsed::Rows(months, rows)) => crate::rules::estimate::estimate_numbered(
            months,
            &rows,
            |p| st.store.rates().get(p).map(|p| p.charge),
            &st.store.policy().pack_sizes,
        )
        .map_err(StoreError::Invalid),
        Err(e) => Err(StoreError::Invalid(e)),
    };
    match result {
        Ok(e) => estimator_page(&st, &a.session.csrf, &form, Some(&e), None).into_response(),
        Err(StoreError::Invalid(e)) => (
            StatusCode::BAD_REQUEST,
            estimator_page(&st, &a.session.csrf, &form, None, Some(&e)),
        )
            .into_response(),
        Err(e) => server_error(e),
    }
}

enum Parsed {
    Usage(flex_protocol::reports::EstimateRequest),
    Rows(i64, Vec<(usize, EstimateInput)>),
}

/// The form as rows or a usage period; text that is not a number is named
/// like the rules name a bad value.
fn parse_estimator(form: &EstimatorForm, from_usage: bool) -> Result<Parsed, Invalid> {
    let months: i64 = form.months.parse().map_err(|_| {
        Invalid::new(
            "months",
            format!("months '{}' is not a whole number", form.months),
        )
    })?;
    if from_usage {
        let from = calendar::date_param("from", Some(&form.from))
            .map_err(|e| Invalid::new("from_usage", e.message))?;
        let to = calendar::date_param("to", Some(&form.to))
            .map_err(|e| Invalid::new("from_usage", e.message))?;
        return Ok(Parsed::Usage(flex_protocol::reports::EstimateRequest {
            months,
            rows: None,
            from_usage: Some(flex_protocol::reports::UsagePeriod { from, to }),
        }));
    }
    let mut rows = Vec::new();
    for (i, (p, u, d)) in form.rows.iter().enumerate() {
        let n = i + 1;
        if p.is_empty() && u.is_empty() && d.is_empty() {
            continue;
        }
        if p.is_empty() {
            return Err(Invalid::new(
                format!("rows.{n}.product"),
                format!("row {n}: choose a product"),
            ));
        }
        let product = flex_protocol::ProductId::parse(p)
            .map_err(|e| Invalid::new(format!("rows.{n}.product"), format!("row {n}: {e}")))?;
        let users = u.parse().map_err(|_| {
            Invalid::new(
                format!("rows.{n}.users"),
                format!("row {n} ({p}): users '{u}' is not a whole number"),
            )
        })?;
        let days: f64 = d.parse().map_err(|_| {
            Invalid::new(
                format!("rows.{n}.days_per_month"),
                format!("row {n} ({p}): days per month '{d}' is not a number"),
            )
        })?;
        rows.push((
            n,
            EstimateInput {
                product,
                users,
                days_per_month: days,
            },
        ));
    }
    if rows.is_empty() {
        return Err(Invalid::new(
            "rows.1.product",
            "fill in at least one row: a product, its users and their days per month",
        ));
    }
    Ok(Parsed::Rows(months, rows))
}
