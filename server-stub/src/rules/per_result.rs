//! R6 per-result charges: a job of n results on a `per_result {tokens, per}`
//! product costs `ceil(n / per) * tokens`, charged once per job; nothing when a
//! subscription pays.

use flex_protocol::api::{ChargeModel, Source};

/// The tokens a job costs; `None` when the product is charged per day.
pub fn job_cost(charge: ChargeModel, results: u64, source: Source) -> Option<u64> {
    let cost = charge.per_result_cost(results)?;
    Some(match source {
        Source::Tokens => cost,
        Source::Subscription => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHOTOS: ChargeModel = ChargeModel::PerResult { tokens: 1, per: 50 };

    #[test]
    fn eighty_five_photos_cost_two_tokens() {
        assert_eq!(job_cost(PHOTOS, 85, Source::Tokens), Some(2));
        assert_eq!(job_cost(PHOTOS, 50, Source::Tokens), Some(1));
        assert_eq!(job_cost(PHOTOS, 51, Source::Tokens), Some(2));
        assert_eq!(job_cost(PHOTOS, 85, Source::Subscription), Some(0));
        assert_eq!(
            job_cost(ChargeModel::Daily { tokens: 7 }, 85, Source::Tokens),
            None
        );
    }
}
