//! Handlers of the admin's reading side: usage reports, recommendations, the
//! estimator and the forecast. Parameters are checked by the rules, which name
//! the bad one.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flex_protocol::reports::{Estimate, EstimateRequest, Forecast, RecommendationList, ReportBy};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{Admin, ApiJson};
use super::AppState;
use crate::rules::calendar::Period;
use crate::rules::reports::to_csv;

/// Query of `GET /v1/admin/reports/usage`.
#[derive(Debug, Default, Deserialize)]
pub struct UsageQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub by: Option<String>,
    pub format: Option<String>,
}

/// `by`: `product` (the default) or `user`.
pub fn parse_by(by: Option<&str>) -> Result<ReportBy, ApiError> {
    match by.map(str::trim) {
        None | Some("product") => Ok(ReportBy::Product),
        Some("user") => Ok(ReportBy::User),
        Some(other) => Err(ApiError::invalid(format!(
            "by '{}' is not a report key: use by=product or by=user",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

pub async fn usage(
    _: Admin,
    State(st): State<AppState>,
    Query(q): Query<UsageQuery>,
) -> Result<Response, ApiError> {
    let by = parse_by(q.by.as_deref())?;
    let period = Period::parse(q.from.as_deref(), q.to.as_deref())
        .map_err(|e| ApiError::invalid(e.message))?;
    let csv = match q.format.as_deref().map(str::trim) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "format '{}' is not known: use format=json or format=csv",
                other.chars().take(40).collect::<String>()
            )))
        }
    };
    let report = st.store.run(move |s| s.usage_report(by, period)).await?;
    if csv {
        let name = format!(
            "attachment; filename=\"usage-by-{}-{}-{}.csv\"",
            by.as_str(),
            report.from,
            report.to
        );
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (header::CONTENT_DISPOSITION, name),
            ],
            to_csv(&report),
        )
            .into_response());
    }
    Ok(Json(report).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct MonthQuery {
    pub month: Option<String>,
}

pub async fn recommendations(
    _: Admin,
    State(st): State<AppState>,
    Query(q): Query<MonthQuery>,
) -> Result<Json<RecommendationList>, ApiError> {
    let Some(month) = q.month else {
        return Err(ApiError::invalid(
            "month is missing: give it as YYYY-MM, e.g. month=2026-11",
        ));
    };
    Ok(Json(
        st.store.run(move |s| s.recommendations(&month)).await?,
    ))
}

pub async fn estimate(
    _: Admin,
    State(st): State<AppState>,
    ApiJson(req): ApiJson<EstimateRequest>,
) -> Result<Json<Estimate>, ApiError> {
    Ok(Json(st.store.run(move |s| s.estimate(&req)).await?))
}

pub async fn forecast(_: Admin, State(st): State<AppState>) -> Result<Json<Forecast>, ApiError> {
    Ok(Json(st.store.run(|s| s.forecast()).await?))
}
