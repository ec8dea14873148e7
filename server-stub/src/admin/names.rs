//! Product display names for `flex-admin`'s tables: people read "AutoCAD",
//! scripts get the ids (`--json` prints the server's answer as it is).

use std::collections::HashMap;

use flex_protocol::api::Product;
use flex_protocol::ProductId;

use super::cli::{Command, DefaultsCmd, SubscriptionsCmd, UsersCmd};

/// The rate sheet's names by product id. Empty when unknown: ids are shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names(HashMap<ProductId, String>);

impl Names {
    pub fn new(products: &[Product]) -> Names {
        Names(
            products
                .iter()
                .map(|p| (p.id.clone(), p.name.clone()))
                .collect(),
        )
    }

    /// What people call product `id`: its name, else the id itself.
    pub fn label<'a, Q: AsRef<str> + ?Sized>(&'a self, id: &'a Q) -> &'a str {
        let id = id.as_ref();
        self.0.get(id).map_or(id, String::as_str)
    }

    /// Several products, by name, comma-separated.
    pub fn list(&self, ids: &[ProductId]) -> String {
        ids.iter()
            .map(|id| self.label(id))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether the human output of `command` names products, so the rate sheet is
/// worth fetching first.
pub fn needed(command: &Command) -> bool {
    matches!(
        command,
        Command::Users(UsersCmd::Add { .. } | UsersCmd::List)
            | Command::Subscriptions(
                SubscriptionsCmd::Add { .. } | SubscriptionsCmd::Remove { .. }
            )
            | Command::Defaults(DefaultsCmd::Show | DefaultsCmd::Set { .. })
            | Command::Charges { .. }
            | Command::Recommend { .. }
            | Command::Estimate(_)
    ) || matches!(command, Command::Report(r) if !r.csv)
}

#[cfg(test)]
mod tests {
    use flex_protocol::api::{ChargeModel, Executables};
    use serde_json::json;

    use super::*;
    use crate::admin::render::render;

    fn names() -> Names {
        let product = |id: &str, name: &str| Product {
            id: id.parse().unwrap(),
            name: name.into(),
            charge: ChargeModel::Daily { tokens: 7 },
            executables: Executables::default(),
            sample: false,
        };
        Names::new(&[product("autocad", "AutoCAD"), product("revit", "Revit")])
    }

    fn show(command: Command, body: serde_json::Value) -> String {
        render(&command, "GET /x", &body.to_string(), &names()).unwrap()
    }

    #[test]
    fn tables_name_products_as_people_know_them() {
        let charges = show(
            Command::Charges {
                user: None,
                product: None,
            },
            json!({"charges": [
                {"id": 1, "claim_id": "c1", "user": "ann@example.com", "product": "autocad",
                 "kind": "window", "source": "tokens", "tokens": 7, "lots": [],
                 "created_at": "2026-03-16T08:00:00Z"},
                {"id": 2, "claim_id": "c2", "user": "ann@example.com", "product": "gone-from-the-sheet",
                 "kind": "window", "source": "tokens", "tokens": 1, "lots": [],
                 "created_at": "2026-03-16T09:00:00Z"}
            ]}),
        );
        assert!(charges.contains(" AutoCAD "), "{charges}");
        assert!(!charges.contains("autocad"), "{charges}");
        // A product no longer on the rate sheet keeps its id.
        assert!(charges.contains("gone-from-the-sheet"), "{charges}");

        let users = show(
            Command::Users(UsersCmd::List),
            json!({"users": [{"email": "ann@example.com", "first_name": "Ann", "last_name": "Lee",
                              "flex_assigned": true, "subscriptions": ["revit", "autocad"]}]}),
        );
        assert!(users.contains("Revit, AutoCAD"), "{users}");

        let defaults = show(
            Command::Defaults(DefaultsCmd::Show),
            json!({"mode": "deny", "products": ["revit"]}),
        );
        assert_eq!(
            defaults,
            "Flex users may open every product but: Revit (mode deny)\n"
        );
        let removed = render(
            &Command::Subscriptions(SubscriptionsCmd::Remove {
                email: flex_protocol::Email::parse("ann@example.com").unwrap(),
                product: "revit".parse().unwrap(),
            }),
            "DELETE /x",
            "",
            &names(),
        )
        .unwrap();
        assert_eq!(
            removed,
            "removed the subscription of ann@example.com to Revit\n"
        );
    }

    #[test]
    fn only_commands_that_name_products_fetch_the_rate_sheet() {
        assert!(needed(&Command::Charges {
            user: None,
            product: None
        }));
        assert!(needed(&Command::Users(UsersCmd::List)));
        assert!(!needed(&Command::Products));
        assert!(!needed(&Command::Notices));
    }
}
