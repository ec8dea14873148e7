//! JSON bodies of the admin's reading side (R10, R11 and the forecast): usage
//! reports, recommendations, the token estimator and the balance forecast.
//!
//! Definitions clients rely on: a *usage day* of (user, product) is a charge
//! window granted for them, of either source, counted on the date of the
//! window's start in the tenant's time zone (`policy.timezone`); renewals count,
//! per-result jobs count tokens but no usage day. Tokens are the tokens charged
//! in the period. Weeks start on Monday in the tenant's time zone. Dates are
//! `YYYY-MM-DD` in that zone.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::ProductId;

/// What a usage report's rows are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportBy {
    Product,
    User,
}

impl ReportBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportBy::Product => "product",
            ReportBy::User => "user",
        }
    }
}

/// One week of a usage row; weeks without usage are left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeekUsage {
    /// The Monday the week starts on (it may lie before the report's `from`).
    pub week_start: NaiveDate,
    pub tokens: u64,
    pub usage_days: u64,
}

/// One row of a usage report: a product (`by=product`) or a user (`by=user`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The product id or the user's email.
    pub key: String,
    pub tokens: u64,
    pub usage_days: u64,
    /// Distinct users of the product (`by=product` rows only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u64>,
    /// Distinct products the user used (`by=user` rows only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub products: Option<u64>,
    pub weeks: Vec<WeekUsage>,
}

/// `GET /v1/admin/reports/usage?from&to&by`: rows sorted by tokens, descending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    pub from: NaiveDate,
    /// Inclusive.
    pub to: NaiveDate,
    pub timezone: String,
    pub by: ReportBy,
    pub total_tokens: u64,
    pub rows: Vec<UsageRow>,
}

/// How a user gets a product today, or should.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    Flex,
    Subscription,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Flex => "flex",
            Plan::Subscription => "subscription",
        }
    }
}

/// One advice of `GET /v1/admin/recommendations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recommendation {
    pub email: String,
    pub product: ProductId,
    pub usage_days: u64,
    pub current: Plan,
    pub recommend: Plan,
    /// Tokens charged for it in the month (Flex), or what Flex would have
    /// charged at the daily rate (subscription).
    pub tokens: u64,
    pub reason: String,
}

/// `GET /v1/admin/recommendations?month=YYYY-MM`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecommendationList {
    /// `YYYY-MM`.
    pub month: String,
    pub recommendations: Vec<Recommendation>,
}

/// One planned use of a product in an estimate request. Numbers are signed on
/// the wire so that a negative one is answered with the row it is in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimateInput {
    pub product: ProductId,
    pub users: i64,
    pub days_per_month: f64,
}

/// A past period whose real usage becomes the estimate's rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsagePeriod {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// `POST /v1/admin/estimate`: either `rows` or `from_usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimateRequest {
    pub months: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<EstimateInput>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_usage: Option<UsagePeriod>,
}

/// Packs of one size to buy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackCount {
    pub size: u64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimateRow {
    pub product: ProductId,
    pub users: u64,
    pub days_per_month: f64,
    pub tokens_per_month: u64,
    /// More than 7 days a month: a subscription is cheaper than Flex.
    pub subscription_cheaper: bool,
}

/// The answer of `POST /v1/admin/estimate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub months: u64,
    pub tokens_per_month: u64,
    pub tokens_total: u64,
    /// The fewest tokens at or over `tokens_total`, then the fewest packs;
    /// largest size first.
    pub packs: Vec<PackCount>,
    /// What the packs add up to.
    pub packs_tokens: u64,
    pub rows: Vec<EstimateRow>,
}

/// A lot projected to expire with tokens left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiringLot {
    pub lot_id: i64,
    pub remaining: u64,
    pub expires_at: DateTime<Utc>,
    pub projected_unused: u64,
}

/// `GET /v1/admin/forecast`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    pub balance: u64,
    /// Average tokens charged per day over the last 30 days.
    pub burn_per_day: f64,
    /// Whole days until the balance is spent or expired; null when nothing was
    /// charged in 30 days.
    pub days_left: Option<u64>,
    /// The date (tenant time zone) the tokens run out; null like `days_left`.
    pub empty_on: Option<NaiveDate>,
    pub expiring_unused: Vec<ExpiringLot>,
}
