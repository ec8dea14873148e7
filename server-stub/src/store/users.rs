//! Users, Flex assignment, subscriptions and default assignments (R4, R7).

use flex_protocol::api::{
    AssignmentMode, DefaultAssignments, NewSubscription, NewUser, Subscription, User,
};
use flex_protocol::{Email, ProductId};

use super::db::{params, Conn};
use super::{parse_ts, ts, Result, Store, StoreError};

/// Checks a person's name field: present, not absurdly long, no control characters.
pub fn check_name(field: &str, raw: &str) -> std::result::Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if name.chars().count() > 100 || name.chars().any(|c| c.is_control()) {
        return Err(format!("{field} '{name}' is not a valid name"));
    }
    Ok(name.to_string())
}

/// The user `email` names. The address was checked and normalised when it was
/// read ([`Email`]); the claim path passes the text of its request's `Email`.
pub(crate) fn load_user(conn: &Conn<'_>, email: &str) -> Result<Option<User>> {
    let row = conn.query_opt(
        "SELECT email, first_name, last_name, flex_assigned FROM users WHERE email = ?1",
        params![email],
        |r| {
            Ok(User {
                email: r.get(0)?,
                first_name: r.get(1)?,
                last_name: r.get(2)?,
                flex_assigned: r.get(3)?,
                subscriptions: Vec::new(),
            })
        },
    )?;
    let Some(mut user) = row else { return Ok(None) };
    user.subscriptions = conn.query_all(
        "SELECT product FROM subscriptions WHERE email = ?1 ORDER BY product",
        params![email],
        |r| r.get(0),
    )?;
    Ok(Some(user))
}

pub(crate) fn has_subscription(conn: &Conn<'_>, email: &str, product: &ProductId) -> Result<bool> {
    Ok(conn
        .query_opt(
            "SELECT 1 FROM subscriptions WHERE email = ?1 AND product = ?2",
            params![email, product],
            |_| Ok(()),
        )?
        .is_some())
}

pub(crate) fn load_defaults(conn: &Conn<'_>) -> Result<DefaultAssignments> {
    let (mode, products): (String, String) = conn.query_one(
        "SELECT mode, products FROM default_assignments WHERE id = 1",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mode = match mode.as_str() {
        "all" => AssignmentMode::All,
        "allow" => AssignmentMode::Allow,
        "deny" => AssignmentMode::Deny,
        other => return Err(StoreError::Corrupt(format!("assignment mode '{other}'"))),
    };
    let products = serde_json::from_str(&products)
        .map_err(|e| StoreError::Corrupt(format!("assignment products: {e}")))?;
    Ok(DefaultAssignments { mode, products })
}

impl Store {
    pub fn add_user(&self, new: NewUser) -> Result<User> {
        let email = new.email;
        let first = check_name("first_name", &new.first_name)
            .map_err(|m| StoreError::invalid("first_name", m))?;
        let last = check_name("last_name", &new.last_name)
            .map_err(|m| StoreError::invalid("last_name", m))?;
        let now = self.now();
        self.write(|tx| {
            if load_user(tx, &email)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "user '{email}' already exists"
                )));
            }
            tx.execute(
                "INSERT INTO users (email, first_name, last_name, flex_assigned, created_at)
                 VALUES (?1, ?2, ?3, 0, ?4)",
                params![email, first, last, ts(now)],
            )?;
            Ok(load_user(tx, &email)?.expect("just inserted"))
        })
    }

    /// One user, with their subscriptions.
    pub fn user(&self, email: &Email) -> Result<Option<User>> {
        self.read(|c| load_user(c, email))
    }

    pub fn list_users(&self) -> Result<Vec<User>> {
        self.read(|c| {
            let mut users = c.query_all(
                "SELECT email, first_name, last_name, flex_assigned FROM users ORDER BY email",
                params![],
                |r| {
                    Ok(User {
                        email: r.get(0)?,
                        first_name: r.get(1)?,
                        last_name: r.get(2)?,
                        flex_assigned: r.get(3)?,
                        subscriptions: Vec::new(),
                    })
                },
            )?;
            let mut subs: std::collections::HashMap<String, Vec<ProductId>> = Default::default();
            c.query_each(
                "SELECT email, product FROM subscriptions ORDER BY email, product",
                params![],
                |r| {
                    subs.entry(r.get(0)?).or_default().push(r.get(1)?);
                    Ok(())
                },
            )?;
            for u in &mut users {
                u.subscriptions = subs.remove(u.email.as_str()).unwrap_or_default();
            }
            Ok(users)
        })
    }

    pub fn set_flex(&self, email: &Email, assigned: bool) -> Result<User> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE users SET flex_assigned = ?1 WHERE email = ?2",
                params![assigned, email],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: "user",
                    key: email.to_string(),
                });
            }
            Ok(load_user(tx, email)?.expect("updated"))
        })
    }

    pub fn add_subscription(&self, new: NewSubscription) -> Result<Subscription> {
        let NewSubscription { email, product } = new;
        if self.rates().get(&product).is_none() {
            return Err(StoreError::invalid(
                "product",
                format!("product '{product}' is not on the rate sheet"),
            ));
        }
        let now = self.now();
        self.write(|tx| {
            if load_user(tx, &email)?.is_none() {
                return Err(StoreError::NotFound {
                    what: "user",
                    key: email.to_string(),
                });
            }
            // Assigning twice keeps the first assignment date.
            tx.execute(
                "INSERT INTO subscriptions (email, product, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
                params![email, product, ts(now)],
            )?;
            let created: String = tx.query_one(
                "SELECT created_at FROM subscriptions WHERE email = ?1 AND product = ?2",
                params![email, product],
                |r| r.get(0),
            )?;
            Ok(Subscription {
                email: email.clone(),
                product: product.clone(),
                created_at: parse_ts(&created)?,
            })
        })
    }

    pub fn remove_subscription(&self, email: &Email, product: &ProductId) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute(
                "DELETE FROM subscriptions WHERE email = ?1 AND product = ?2",
                params![email, product],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: "subscription",
                    key: format!("{email}/{product}"),
                });
            }
            Ok(())
        })
    }

    pub fn default_assignments(&self) -> Result<DefaultAssignments> {
        self.read(load_defaults)
    }

    pub fn set_default_assignments(&self, d: DefaultAssignments) -> Result<DefaultAssignments> {
        for p in &d.products {
            if self.rates().get(p).is_none() {
                return Err(StoreError::invalid(
                    "products",
                    format!("product '{p}' is not on the rate sheet"),
                ));
            }
        }
        let mode = match d.mode {
            AssignmentMode::All => "all",
            AssignmentMode::Allow => "allow",
            AssignmentMode::Deny => "deny",
        };
        let mut products = d.products.clone();
        products.sort();
        products.dedup();
        let json = serde_json::to_string(&products).expect("strings serialize");
        self.write(|tx| {
            tx.execute(
                "UPDATE default_assignments SET mode = ?1, products = ?2 WHERE id = 1",
                params![mode, json],
            )?;
            load_defaults(tx)
        })
    }
}
