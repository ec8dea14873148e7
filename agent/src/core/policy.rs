//! The server policy as the core reads it: defaults until the first contact, and
//! the per-source offline limit and warning offsets.

use std::time::Duration;

use flex_protocol::api::{Policy, Source};

/// DESIGN.md defaults, used until the server's policy is known.
pub fn default_policy() -> Policy {
    Policy {
        window_secs: 24 * 3600,
        flex_offline_limit_secs: 24 * 3600,
        subscription_offline_limit_secs: 30 * 24 * 3600,
        offline_warning_secs: vec![2 * 3600, 30 * 60, 5 * 60],
        subscription_warning_secs: 3 * 24 * 3600,
        heartbeat_interval_secs: 600,
        renewal_grace_secs: 30 * 60,
        close_grace_secs: 30,
        low_balance_ratio: 0.2,
        timezone: "UTC".into(),
        pack_sizes: vec![100, 500, 1000, 2500, 5000, 10000],
        short_use_grace_secs: 300,
        idle_after_secs: 900,
        idle_cpu_percent: 2.0,
        renewal_notice_secs: 900,
    }
}

/// How long a session of `source` may run without server contact.
pub(super) fn offline_limit(policy: &Policy, source: Source) -> Duration {
    Duration::from_secs(match source {
        Source::Tokens => policy.flex_offline_limit_secs,
        Source::Subscription => policy.subscription_offline_limit_secs,
    })
}

/// Seconds before the limit at which to warn, largest first, each sent once.
///
/// Token-backed sessions use the policy's offsets. Subscription-backed ones are
/// warned when their last `subscription_warning_secs` begin, then once a day, then
/// at the token offsets that fall inside that stretch, so the final hours are
/// announced the same way for both.
pub(super) fn warning_offsets(policy: &Policy, source: Source) -> Vec<u64> {
    let mut offsets: Vec<u64> = match source {
        Source::Tokens => policy.offline_warning_secs.clone(),
        Source::Subscription => {
            let span = policy.subscription_warning_secs;
            let mut v: Vec<u64> = (0..)
                .map(|day| span.saturating_sub(day * 86_400))
                .take_while(|&s| s > 0)
                .collect();
            v.extend(policy.offline_warning_secs.iter().filter(|&&s| s < span));
            v
        }
    };
    let limit = offline_limit(policy, source).as_secs();
    offsets.retain(|&s| s > 0 && s < limit);
    offsets.sort_unstable_by(|a, b| b.cmp(a));
    offsets.dedup();
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_warnings_cover_the_last_three_days() {
        let p = default_policy();
        assert_eq!(
            warning_offsets(&p, Source::Subscription),
            vec![3 * 86_400, 2 * 86_400, 86_400, 7200, 1800, 300]
        );
        assert_eq!(warning_offsets(&p, Source::Tokens), vec![7200, 1800, 300]);
    }

    #[test]
    fn offsets_beyond_the_limit_are_dropped() {
        let mut p = default_policy();
        p.flex_offline_limit_secs = 600;
        assert_eq!(warning_offsets(&p, Source::Tokens), vec![300]);
    }
}
