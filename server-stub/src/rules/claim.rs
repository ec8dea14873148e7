//! The order in which the claim rules apply, written once: the store (on
//! either backend) and the agent's fake server both call [`decide`].
//!
//! 1. A product not on the rate sheet is refused (`unknown_product`).
//! 2. A job with results (R6) is paid by whoever is entitled (R4): its cost,
//!    or nothing on a subscription; results on a daily product are invalid.
//! 3. A renewal names the window it renews; one of another user or product,
//!    or unknown, is invalid; a refunded one (R13) is a conflict: the product
//!    must claim a new window.
//! 4. A claim inside a window already open for the user and product (or a
//!    renewal another device already made) is free, whatever the entitlement
//!    says now (R7: changes affect new windows only). A refunded window covers
//!    nothing: closing at 4:59 and reopening at 5:01 is a new charge.
//! 5. Otherwise the user must be entitled (R4, R7), and a new window opens at
//!    the daily rate (R5), or for nothing on a subscription.
//!
//! Paying is the caller's part: it spends the cost in R3 order (see
//! [`crate::ledger`]) and, when the balance is short, answers
//! [`out_of_tokens`] instead.
//!
//! Facts are asked for through [`Facts`] as the rules need them, so a claim
//! inside an open window never loads the user's entitlement.

use chrono::{DateTime, Duration, Utc};
use flex_protocol::api::{ChargeKind, ChargeModel, ClaimRequest, DefaultAssignments, Source};
use flex_protocol::{Email, ErrorCode, ProductId, WindowId};

use super::{entitlement, per_result, windows, Conflict, Invalid};

/// A window as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowFact {
    pub id: WindowId,
    pub user: Email,
    pub product: ProductId,
    pub source: Source,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// When the window was refunded as a short run (R13), if it was.
    pub refunded_at: Option<DateTime<Utc>>,
}

/// What is known about the user, for R4 and R7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFacts {
    pub known: bool,
    pub flex_assigned: bool,
    /// The user holds a subscription to the product asked for.
    pub subscribed: bool,
    pub defaults: DefaultAssignments,
}

/// A product on the rate sheet.
#[derive(Debug, Clone, Copy)]
pub struct ProductFact<'a> {
    /// The display name, for messages read by people.
    pub name: &'a str,
    pub charge: ChargeModel,
}

/// Where the rules get their facts; each backend (and the fake) loads them.
pub trait Facts {
    type Error: From<Invalid> + From<Conflict>;
    /// The product on the rate sheet, if it is there.
    fn product(&self, id: &ProductId) -> Option<ProductFact<'_>>;
    /// How long a window lasts (policy; a day in production).
    fn window_len(&self) -> Duration;
    /// The window with this id, refunded or not.
    fn window(&mut self, id: &WindowId) -> Result<Option<WindowFact>, Self::Error>;
    /// The earliest window of `user`/`product` that overlaps `[from, to)`,
    /// leaving out refunded ones (they cover nothing).
    fn covering(
        &mut self,
        user: &str,
        product: &ProductId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<WindowFact>, Self::Error>;
    /// The user's standing for `product`.
    fn user(&mut self, user: &str, product: &ProductId) -> Result<UserFacts, Self::Error>;
}

/// A new window the claim opens once paid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWindow {
    pub source: Source,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// `Window`, or `Renewal` of the window in `renews`.
    pub kind: ChargeKind,
    pub renews: Option<WindowId>,
}

/// What a claim comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Refused, charging nothing.
    Deny { reason: ErrorCode, message: String },
    /// Inside a window already open: free.
    Covered(WindowFact),
    /// Open `window`, paying `cost` tokens (0 on a subscription).
    Open { window: NewWindow, cost: u64 },
    /// A per-result job costing `cost` tokens (0 on a subscription).
    Job { source: Source, cost: u64 },
}

/// Applies the claim rules, in their one order, to `req` at `now`.
pub fn decide<F: Facts>(
    facts: &mut F,
    req: &ClaimRequest,
    now: DateTime<Utc>,
) -> Result<Decision, F::Error> {
    let user = req.user.as_str();
    let Some(product) = facts.product(&req.product) else {
        return Ok(Decision::Deny {
            reason: ErrorCode::UnknownProduct,
            message: format!("product '{}' is not on the rate sheet", req.product),
        });
    };
    let (name, charge) = (product.name.to_owned(), product.charge);

    if let Some(results) = req.results {
        if charge.per_result_cost(results).is_none() {
            return Err(Invalid::new(
                "results",
                format!(
                    "product '{}' is charged per day; results are only for per-result products",
                    req.product
                ),
            )
            .into());
        }
        let source = match entitled(facts, user, &req.product, &name)? {
            Ok(source) => source,
            Err(denied) => return Ok(denied),
        };
        let cost = per_result::job_cost(charge, results, source).expect("a per-result product");
        return Ok(Decision::Job { source, cost });
    }

    let renews_end = match &req.renews {
        Some(old_id) => {
            let old = facts.window(old_id)?.ok_or_else(|| {
                Invalid::new(
                    "renews",
                    format!("renews: window '{old_id}' does not exist"),
                )
            })?;
            if old.user != req.user || old.product != req.product {
                return Err(Invalid::new(
                    "renews",
                    format!(
                        "renews: window '{old_id}' belongs to {} / {}, not {user} / {}",
                        old.user, old.product, req.product
                    ),
                )
                .into());
            }
            if let Some(at) = old.refunded_at {
                return Err(Conflict::new(format!(
                    "window '{old_id}' was refunded at {} as a short run and cannot be renewed; claim a new window",
                    at.format("%Y-%m-%d %H:%M:%S UTC")
                ))
                .into());
            }
            Some(old.end)
        }
        None => None,
    };
    let (start, end, kind) = windows::requested(now, renews_end, facts.window_len());
    let (from, to) = windows::lookup(kind, now, start, end);
    if let Some(w) = facts.covering(user, &req.product, from, to)? {
        return Ok(Decision::Covered(w));
    }

    let source = match entitled(facts, user, &req.product, &name)? {
        Ok(source) => source,
        Err(denied) => return Ok(denied),
    };
    Ok(Decision::Open {
        window: NewWindow {
            source,
            start,
            end,
            kind,
            renews: req.renews.clone(),
        },
        cost: windows::cost(source, charge),
    })
}

/// R4 and R7 for this user and product: the source that pays, or the denial.
fn entitled<F: Facts>(
    facts: &mut F,
    user: &str,
    product: &ProductId,
    name: &str,
) -> Result<Result<Source, Decision>, F::Error> {
    let u = facts.user(user, product)?;
    let f = entitlement::Facts {
        known: u.known,
        flex_assigned: u.flex_assigned,
        subscribed: u.subscribed,
        defaults: &u.defaults,
    };
    Ok(
        entitlement::decide_as(user, product, name, &f).map_err(|message| Decision::Deny {
            reason: ErrorCode::NotEntitled,
            message,
        }),
    )
}

/// The refusal when the balance cannot pay what `decision` costs.
pub fn out_of_tokens(decision: &Decision, req: &ClaimRequest, name: &str, balance: u64) -> String {
    match (decision, req.results) {
        (Decision::Job { cost, .. }, Some(results)) => format!(
            "a job of {results} results costs {cost} tokens and the balance is {balance}; ask your license admin to buy tokens"
        ),
        (Decision::Open { cost, window }, _) => format!(
            "{name} costs {cost} tokens for {} and the balance is {balance}; ask your license admin to buy tokens",
            windows::length_text(window.end - window.start)
        ),
        _ => format!("the balance is {balance}; ask your license admin to buy tokens"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Refused;
    use flex_protocol::api::AssignmentMode;
    use std::collections::HashMap;

    fn field(e: &Refused) -> &str {
        match e {
            Refused::Invalid(e) => &e.field,
            Refused::Conflict(_) => "",
        }
    }

    /// Facts in memory, counting what the rules asked for.
    struct Mem {
        windows: Vec<WindowFact>,
        users: HashMap<String, UserFacts>,
        asked_user: usize,
    }

    impl Facts for Mem {
        type Error = Refused;
        fn product(&self, id: &ProductId) -> Option<ProductFact<'_>> {
            match id.as_str() {
                "autocad" => Some(ProductFact {
                    name: "AutoCAD",
                    charge: ChargeModel::Daily { tokens: 7 },
                }),
                "recap-photo" => Some(ProductFact {
                    name: "ReCap Photo",
                    charge: ChargeModel::PerResult { tokens: 1, per: 50 },
                }),
                _ => None,
            }
        }
        fn window_len(&self) -> Duration {
            Duration::hours(24)
        }
        fn window(&mut self, id: &WindowId) -> Result<Option<WindowFact>, Refused> {
            Ok(self.windows.iter().find(|w| w.id == id).cloned())
        }
        fn covering(
            &mut self,
            user: &str,
            product: &ProductId,
            from: DateTime<Utc>,
            to: DateTime<Utc>,
        ) -> Result<Option<WindowFact>, Refused> {
            Ok(self
                .windows
                .iter()
                .filter(|w| w.user == user && w.product == product)
                .filter(|w| w.refunded_at.is_none())
                .filter(|w| windows::overlaps(w.start, w.end, from, to))
                .min_by_key(|w| w.start)
                .cloned())
        }
        fn user(&mut self, user: &str, _product: &ProductId) -> Result<UserFacts, Refused> {
            self.asked_user += 1;
            Ok(self.users.get(user).cloned().unwrap_or(UserFacts {
                known: false,
                flex_assigned: false,
                subscribed: false,
                defaults: DefaultAssignments {
                    mode: AssignmentMode::All,
                    products: vec![],
                },
            }))
        }
    }

    fn at(h: u32) -> DateTime<Utc> {
        use chrono::TimeZone;
        Utc.with_ymd_and_hms(2026, 11, 2, h, 0, 0).unwrap()
    }

    fn req(product: &str, results: Option<u64>, renews: Option<&str>) -> ClaimRequest {
        ClaimRequest {
            claim_id: flex_protocol::ClaimId::parse("c1").unwrap(),
            user: flex_protocol::Email::parse("ada@example.com").unwrap(),
            product: ProductId::parse(product).unwrap(),
            version: None,
            results,
            renews: renews.map(|w| WindowId::parse(w).unwrap()),
        }
    }

    fn ada(flex: bool) -> Mem {
        let mut users = HashMap::new();
        users.insert(
            "ada@example.com".to_string(),
            UserFacts {
                known: true,
                flex_assigned: flex,
                subscribed: false,
                defaults: DefaultAssignments {
                    mode: AssignmentMode::All,
                    products: vec![],
                },
            },
        );
        Mem {
            windows: vec![],
            users,
            asked_user: 0,
        }
    }

    fn window(id: &str, start: u32) -> WindowFact {
        WindowFact {
            id: WindowId::parse(id).unwrap(),
            user: Email::parse("ada@example.com").unwrap(),
            product: ProductId::parse("autocad").unwrap(),
            source: Source::Tokens,
            start: at(start),
            end: at(start) + Duration::hours(24),
            refunded_at: None,
        }
    }

    #[test]
    fn a_first_launch_opens_a_window_at_the_daily_rate() {
        let d = decide(&mut ada(true), &req("autocad", None, None), at(8)).unwrap();
        let Decision::Open { window, cost } = d else {
            panic!("{d:?}")
        };
        assert_eq!(cost, 7);
        assert_eq!((window.start, window.kind), (at(8), ChargeKind::Window));
    }

    /// The order the fake and the store disagreed on: an open window covers
    /// the launch before entitlement is asked, so taking a user off Flex does
    /// not end the window already paid for (R7).
    #[test]
    fn an_open_window_covers_before_entitlement_is_asked() {
        let mut facts = ada(false);
        facts.windows.push(window("w1", 8));
        let d = decide(&mut facts, &req("autocad", None, None), at(10)).unwrap();
        assert_eq!(d, Decision::Covered(window("w1", 8)));
        assert_eq!(facts.asked_user, 0);
        // After the window ends the user is asked about, and refused.
        let d = decide(
            &mut facts,
            &req("autocad", None, None),
            at(9) + Duration::days(1),
        );
        assert!(matches!(
            d,
            Ok(Decision::Deny {
                reason: ErrorCode::NotEntitled,
                ..
            })
        ));
    }

    #[test]
    fn a_renewal_opens_at_the_old_end_unless_another_device_renewed_first() {
        let mut facts = ada(true);
        facts.windows.push(window("w1", 8));
        let renew = req("autocad", None, Some("w1"));
        let Decision::Open { window: w, cost } =
            decide(&mut facts, &renew, at(8) + Duration::days(1)).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (w.start, w.kind, cost),
            (at(8) + Duration::days(1), ChargeKind::Renewal, 7)
        );
        assert_eq!(w.renews.as_ref().map(WindowId::as_str), Some("w1"));
        facts.windows.push(WindowFact {
            id: WindowId::parse("w2").unwrap(),
            start: w.start,
            end: w.end,
            ..window("w1", 8)
        });
        let again = decide(&mut facts, &renew, at(8) + Duration::days(1)).unwrap();
        assert!(matches!(again, Decision::Covered(w) if w.id == "w2"));
        let err = decide(&mut facts, &req("autocad", None, Some("nope")), at(9)).unwrap_err();
        assert_eq!(field(&err), "renews");
    }

    #[test]
    fn jobs_cost_their_results_and_daily_products_take_none() {
        let d = decide(&mut ada(true), &req("recap-photo", Some(85), None), at(8)).unwrap();
        assert_eq!(
            d,
            Decision::Job {
                source: Source::Tokens,
                cost: 2
            }
        );
        let err = decide(&mut ada(true), &req("autocad", Some(5), None), at(8)).unwrap_err();
        assert_eq!(field(&err), "results");
        let d = decide(&mut ada(true), &req("nope", None, None), at(8)).unwrap();
        assert!(matches!(
            d,
            Decision::Deny {
                reason: ErrorCode::UnknownProduct,
                ..
            }
        ));
    }

    /// R13: a refunded window covers no launch (a reopen after the grace opens
    /// and pays a new window) and cannot be renewed.
    #[test]
    fn a_refunded_window_covers_nothing_and_cannot_be_renewed() {
        let mut facts = ada(true);
        facts.windows.push(WindowFact {
            refunded_at: Some(at(8) + Duration::minutes(5)),
            ..window("w1", 8)
        });
        let reopen = at(8) + Duration::seconds(5 * 60 + 1);
        let d = decide(&mut facts, &req("autocad", None, None), reopen).unwrap();
        let Decision::Open { window, cost } = d else {
            panic!("{d:?}")
        };
        assert_eq!((window.start, cost), (reopen, 7));
        let renew = decide(
            &mut facts,
            &req("autocad", None, Some("w1")),
            at(8) + Duration::days(1),
        );
        let Err(Refused::Conflict(c)) = renew else {
            panic!("{renew:?}")
        };
        assert!(
            c.message.contains("refunded at 2026-11-02 08:05:00 UTC")
                && c.message.contains("claim a new window"),
            "{c}"
        );
    }

    /// The refusal named a fixed "24 hours" whatever `policy.window` said.
    #[test]
    fn out_of_tokens_names_the_window_s_real_length() {
        let open = |hours| Decision::Open {
            window: NewWindow {
                source: Source::Tokens,
                start: at(8),
                end: at(8) + Duration::hours(hours),
                kind: ChargeKind::Window,
                renews: None,
            },
            cost: 7,
        };
        let req = req("autocad", None, None);
        assert_eq!(
            out_of_tokens(&open(8), &req, "AutoCAD", 3),
            "AutoCAD costs 7 tokens for 8 hours and the balance is 3; ask your license admin to buy tokens"
        );
        assert!(out_of_tokens(&open(24), &req, "AutoCAD", 3).contains("for 24 hours"));
    }
}
