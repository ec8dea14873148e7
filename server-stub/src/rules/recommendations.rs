//! Recommendations (R10): a Flex user on a product more than 7 days in a month
//! should move to a subscription; a subscription holder on it 7 days or fewer
//! (none included) should move to Flex.

use std::collections::HashMap;

use flex_protocol::api::ChargeModel;
use flex_protocol::reports::{Plan, Recommendation};
use flex_protocol::ProductId;

/// Usage days in a month above which a subscription is cheaper than Flex.
pub const SUBSCRIPTION_DAYS: u64 = 7;

/// A (user, product) pair's usage in the month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairUsage {
    pub user: String,
    pub product: ProductId,
    pub usage_days: u64,
    pub tokens: u64,
}

/// The advice for `month` (`YYYY-MM`), given the month's usage, today's
/// subscriptions (email, product) and each product's charge model. Sorted by
/// usage days (descending), then email and product.
pub fn recommend(
    month: &str,
    usage: &[PairUsage],
    subscriptions: &[(String, ProductId)],
    charge: impl Fn(&str) -> Option<ChargeModel>,
) -> Vec<Recommendation> {
    let mut by_pair: HashMap<(&str, &str), &PairUsage> = HashMap::new();
    for u in usage {
        by_pair.insert((u.user.as_str(), u.product.as_str()), u);
    }
    let mut out = Vec::new();
    for (user, product) in subscriptions {
        let days = by_pair
            .get(&(user.as_str(), product.as_str()))
            .map_or(0, |u| u.usage_days);
        if days > SUBSCRIPTION_DAYS {
            continue;
        }
        let rate = match charge(product.as_str()) {
            Some(ChargeModel::Daily { tokens }) => tokens,
            _ => 0,
        };
        let reason = if days == 0 {
            format!("the subscription was not used in {month}; Flex would have cost nothing")
        } else {
            format!(
                "used on {days} day(s) in {month}, {SUBSCRIPTION_DAYS} or fewer: Flex would have cost {} tokens",
                days * rate
            )
        };
        out.push(Recommendation {
            email: user.clone(),
            product: product.clone(),
            usage_days: days,
            current: Plan::Subscription,
            recommend: Plan::Flex,
            tokens: days * rate,
            reason,
        });
    }
    let held: std::collections::HashSet<(&str, &str)> = subscriptions
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    for u in usage {
        if u.usage_days > SUBSCRIPTION_DAYS
            && !held.contains(&(u.user.as_str(), u.product.as_str()))
        {
            out.push(Recommendation {
                email: u.user.clone(),
                product: u.product.clone(),
                usage_days: u.usage_days,
                current: Plan::Flex,
                recommend: Plan::Subscription,
                tokens: u.tokens,
                reason: format!(
                    "used on {} days in {month}, more than {SUBSCRIPTION_DAYS}: {} tokens were charged and a subscription is cheaper",
                    u.usage_days, u.tokens
                ),
            });
        }
    }
    out.sort_by(|a, b| {
        b.usage_days
            .cmp(&a.usage_days)
            .then_with(|| a.email.cmp(&b.email))
            .then_with(|| a.product.cmp(&b.product))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(user: &str, product: &str, days: u64, tokens: u64) -> PairUsage {
        PairUsage {
            user: user.into(),
            product: ProductId::parse(product).unwrap(),
            usage_days: days,
            tokens,
        }
    }

    fn rates(p: &str) -> Option<ChargeModel> {
        match p {
            "autocad" => Some(ChargeModel::Daily { tokens: 7 }),
            "revit" => Some(ChargeModel::Daily { tokens: 10 }),
            _ => None,
        }
    }

    #[test]
    fn a_flex_user_on_autocad_17_days_should_subscribe() {
        let r = recommend(
            "2026-11",
            &[usage("ada@x.com", "autocad", 17, 119)],
            &[],
            rates,
        );
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].current, r[0].recommend, r[0].tokens),
            (Plan::Flex, Plan::Subscription, 119)
        );
        assert!(
            r[0].reason.contains("17 days in 2026-11"),
            "{}",
            r[0].reason
        );
    }

    #[test]
    fn seven_days_is_not_more_than_seven() {
        assert!(recommend(
            "2026-11",
            &[usage("ada@x.com", "autocad", 7, 49)],
            &[],
            rates
        )
        .is_empty());
    }

    #[test]
    fn a_subscription_holder_on_revit_3_days_should_move_to_flex() {
        let subs = vec![
            ("bob@x.com".to_string(), ProductId::parse("revit").unwrap()),
            ("cy@x.com".to_string(), ProductId::parse("revit").unwrap()),
            (
                "dee@x.com".to_string(),
                ProductId::parse("autocad").unwrap(),
            ),
        ];
        let used = [
            usage("bob@x.com", "revit", 3, 0),
            usage("dee@x.com", "autocad", 20, 0),
        ];
        let r = recommend("2026-11", &used, &subs, rates);
        // Dee uses hers 20 days: no advice. Cy never opened Revit.
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].email.as_str(), r[0].usage_days, r[0].tokens),
            ("bob@x.com", 3, 30)
        );
        assert_eq!(
            (r[0].current, r[0].recommend),
            (Plan::Subscription, Plan::Flex)
        );
        assert_eq!(
            (r[1].email.as_str(), r[1].usage_days, r[1].tokens),
            ("cy@x.com", 0, 0)
        );
        assert!(r[1].reason.contains("not used"), "{}", r[1].reason);
    }
}
