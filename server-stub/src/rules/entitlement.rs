//! R4 entitlement and R7 default assignments: a subscription first (0 tokens),
//! else Flex for the products the default assignments allow, else denied.

use flex_protocol::api::{DefaultAssignments, Source};
use flex_protocol::ProductId;

/// What the store knows about the user and product.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The user exists.
    pub known: bool,
    pub flex_assigned: bool,
    /// The user holds a subscription to the product.
    pub subscribed: bool,
    pub defaults: &'a DefaultAssignments,
}

/// The source that pays for `product`, or the `not_entitled` message.
pub fn decide(user: &str, product: &ProductId, f: &Facts<'_>) -> Result<Source, String> {
    decide_as(user, product, product.as_str(), f)
}

/// Like [`decide`], naming the product in the message by `name`, its display
/// name ("Maya" rather than `maya`).
pub fn decide_as(
    user: &str,
    product: &ProductId,
    name: &str,
    f: &Facts<'_>,
) -> Result<Source, String> {
    if !f.known {
        return Err(format!(
            "{user} is not a known user; ask your license admin to add you to Flex"
        ));
    }
    if f.subscribed {
        return Ok(Source::Subscription);
    }
    if f.flex_assigned && f.defaults.allows(product) {
        return Ok(Source::Tokens);
    }
    Err(format!(
        "{user} has no subscription to {name} and Flex does not include it; ask your license admin"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flex_protocol::api::AssignmentMode;

    fn pid(s: &str) -> ProductId {
        ProductId::parse(s).unwrap()
    }

    fn facts(subscribed: bool, flex: bool, d: &DefaultAssignments) -> Facts<'_> {
        Facts {
            known: true,
            flex_assigned: flex,
            subscribed,
            defaults: d,
        }
    }

    #[test]
    fn a_revit_subscriber_on_flex_pays_tokens_only_for_navisworks() {
        let all = DefaultAssignments {
            mode: AssignmentMode::All,
            products: vec![],
        };
        assert_eq!(
            decide("u", &pid("revit"), &facts(true, true, &all)),
            Ok(Source::Subscription)
        );
        assert_eq!(
            decide("u", &pid("navisworks"), &facts(false, true, &all)),
            Ok(Source::Tokens)
        );
    }

    #[test]
    fn flex_is_limited_by_the_default_assignments() {
        let allow = DefaultAssignments {
            mode: AssignmentMode::Allow,
            products: vec![pid("autocad")],
        };
        let deny = DefaultAssignments {
            mode: AssignmentMode::Deny,
            products: vec![pid("autocad")],
        };
        assert_eq!(
            decide("u", &pid("autocad"), &facts(false, true, &allow)),
            Ok(Source::Tokens)
        );
        assert!(decide("u", &pid("maya"), &facts(false, true, &allow)).is_err());
        assert!(decide("u", &pid("autocad"), &facts(false, true, &deny)).is_err());
        // A subscription wins over the assignments.
        assert_eq!(
            decide("u", &pid("autocad"), &facts(true, false, &deny)),
            Ok(Source::Subscription)
        );
    }

    #[test]
    fn unknown_and_unassigned_users_are_told_why() {
        let all = DefaultAssignments {
            mode: AssignmentMode::All,
            products: vec![],
        };
        let unknown = Facts {
            known: false,
            ..facts(false, false, &all)
        };
        assert!(decide("zed@x.com", &pid("autocad"), &unknown)
            .unwrap_err()
            .contains("not a known user"));
        assert!(
            decide("ann@x.com", &pid("autocad"), &facts(false, false, &all))
                .unwrap_err()
                .contains("has no subscription to autocad")
        );
    }
}
