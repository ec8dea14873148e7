//! Users: the list with Flex on/off and subscriptions, adding one, the CSV
//! import with its per-line errors, and a user's own page.

use std::collections::BTreeMap;

use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{Datelike, Months};
use flex_protocol::api::{ImportError, NewSubscription, NewUser, User};
use flex_protocol::reports::Recommendation;
use flex_protocol::Email;
use maud::{html, Markup};

use super::{field_error, layout, num, server_error, Authed};
use crate::api::AppState;
use crate::rules::calendar::{self, Period};
use crate::store::StoreError;

/// What the users page shows besides the list.
#[derive(Default)]
struct Outcome {
    add_error: Option<(String, String)>,
    add_values: (String, String, String),
    import_errors: Vec<ImportError>,
    import_error: Option<String>,
    done: Option<String>,
}

fn encode(email: &str) -> String {
    crate::admin::call::encode(email)
}

/// The user a console path (`/admin/users/{email}...`) names, parsed once
/// here; a path that names no address gets a page that says so (400).
fn path_email(a: &Authed, raw: &str) -> Result<Email, (StatusCode, Markup)> {
    Email::parse(raw).map_err(|e| {
        let content = html! {
            p.error { (e.to_string()) }
            p { a href="/admin/users" { "All users" } }
        };
        (
            StatusCode::BAD_REQUEST,
            layout("Not a user", "Users", &a.session.csrf, content),
        )
    })
}

fn users_page(csrf: &str, users: &[User], o: &Outcome) -> Markup {
    let err = |f: &str| {
        o.add_error
            .as_ref()
            .filter(|(k, _)| k == f)
            .map(|(_, m)| m.as_str())
    };
    let (email, first, last) = &o.add_values;
    let content = html! {
        @if let Some(d) = &o.done { p.done role="status" { (d) } }
        section {
            h2 { "Import users (CSV)" }
            form.card method="post" action="/admin/users/import" enctype="multipart/form-data" {
                input type="hidden" name="csrf" value=(csrf);
                div.field {
                    label for="file" { "CSV file with the columns First Name, Last Name, Email" }
                    input #file type="file" name="file" accept=".csv,text/csv" required aria-invalid=[o.import_error.as_ref().map(|_| "true")];
                    (field_error(o.import_error.as_deref()))
                }
                @if !o.import_errors.is_empty() {
                    table.errors #import-errors {
                        thead { tr { th.num { "Line" } th { "Problem" } } }
                        tbody { @for e in &o.import_errors { tr { td.num { (e.line) } td { (e.message) } } } }
                    }
                }
                p.hint { "Every line is checked first: a file with errors changes nothing. Imported users are assigned to Flex." }
                button type="submit" { "Import" }
            }
        }
        section {
            h2 { "Add a user" }
            form.card.inline method="post" action="/admin/users" {
                input type="hidden" name="csrf" value=(csrf);
                div.field { label for="email" { "Email" } input #email type="email" name="email" value=(email) required; (field_error(err("email"))) }
                div.field { label for="first_name" { "First name" } input #first_name name="first_name" value=(first) required; (field_error(err("first_name"))) }
                div.field { label for="last_name" { "Last name" } input #last_name name="last_name" value=(last) required; (field_error(err("last_name"))) }
                button type="submit" { "Add" }
            }
        }
        section {
            h2 { (users.len()) " users" }
            @if users.is_empty() {
                p.empty { "No users yet: import a CSV or add one above." }
            } @else {
                table #users {
                    thead { tr { th { "Email" } th { "Name" } th { "Flex" } th { "Subscriptions" } } }
                    tbody { @for u in users {
                        tr {
                            td { a href={"/admin/users/" (encode(&u.email))} { (u.email) } }
                            td { (u.first_name) " " (u.last_name) }
                            td { (flex_toggle(csrf, u, "/admin/users")) }
                            td { @if u.subscriptions.is_empty() { "—" } @else { (u.subscriptions.join(", ")) } }
                        }
                    } }
                }
            }
        }
    };
    layout("Users", "Users", csrf, content)
}

fn flex_toggle(csrf: &str, u: &User, back: &str) -> Markup {
    html! {
        form.toggle method="post" action={"/admin/users/" (encode(&u.email)) "/flex"} {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="back" value=(back);
            input type="hidden" name="assigned" value=(if u.flex_assigned { "off" } else { "on" });
            span class=(if u.flex_assigned { "on" } else { "off" }) { (if u.flex_assigned { "on" } else { "off" }) }
            button type="submit" class="small" aria-label={"turn Flex " (if u.flex_assigned { "off" } else { "on" }) " for " (u.email)} {
                (if u.flex_assigned { "Turn off" } else { "Turn on" })
            }
        }
    }
}

async fn render_users(st: &AppState, csrf: &str, status: StatusCode, o: Outcome) -> Response {
    match st.store.run(|s| s.list_users()).await {
        Ok(users) => (status, users_page(csrf, &users, &o)).into_response(),
        Err(e) => server_error(e),
    }
}

pub async fn list(a: Authed, State(st): State<AppState>) -> Response {
    render_users(&st, &a.session.csrf, StatusCode::OK, Outcome::default()).await
}

#[derive(serde::Deserialize)]
pub struct AddForm {
    csrf: Option<String>,
    #[serde(default)]
    email: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
}

pub async fn add(a: Authed, State(st): State<AppState>, Form(f): Form<AddForm>) -> Response {
    if let Err(r) = a.check(f.csrf.as_deref()) {
        return r.into_response();
    }
    let mut o = Outcome {
        add_values: (f.email.clone(), f.first_name.clone(), f.last_name.clone()),
        ..Default::default()
    };
    // The same checks as the API, each error next to its field: the address
    // is parsed here, where the form's text enters; the names by the store.
    let email = match Email::parse(&f.email) {
        Ok(e) => e,
        Err(e) => {
            o.add_error = Some(("email".into(), e.to_string()));
            return render_users(&st, &a.session.csrf, StatusCode::BAD_REQUEST, o).await;
        }
    };
    let new = NewUser {
        email,
        first_name: f.first_name,
        last_name: f.last_name,
    };
    match st.store.run(move |s| s.add_user(new)).await {
        Ok(u) => {
            o.done = Some(format!("Added {}.", u.email));
            o.add_values = Default::default();
            render_users(&st, &a.session.csrf, StatusCode::OK, o).await
        }
        // The store names the field it refused; the form shows it there.
        Err(StoreError::Invalid(e)) => {
            o.add_error = Some((e.field, e.message));
            render_users(&st, &a.session.csrf, StatusCode::BAD_REQUEST, o).await
        }
        Err(StoreError::Conflict(m)) => {
            o.add_error = Some(("email".into(), m));
            render_users(&st, &a.session.csrf, StatusCode::BAD_REQUEST, o).await
        }
        Err(e) => server_error(e),
    }
}

pub async fn import(a: Authed, State(st): State<AppState>, mut form: Multipart) -> Response {
    let (mut csrf, mut file) = (None, None);
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                match field.bytes().await {
                    Ok(b) if name == "csrf" => {
                        csrf = Some(String::from_utf8_lossy(&b).into_owned())
                    }
                    Ok(b) if name == "file" => file = Some(b),
                    Ok(_) => {}
                    Err(e) => {
                        let o = Outcome {
                            import_error: Some(format!(
                                "cannot read the upload: {}",
                                e.body_text()
                            )),
                            ..Default::default()
                        };
                        return render_users(&st, &a.session.csrf, e.status(), o).await;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                let o = Outcome {
                    import_error: Some(format!("cannot read the upload: {}", e.body_text())),
                    ..Default::default()
                };
                return render_users(&st, &a.session.csrf, e.status(), o).await;
            }
        }
    }
    if let Err(r) = a.check(csrf.as_deref()) {
        return r.into_response();
    }
    let Some(file) = file.filter(|f| !f.is_empty()) else {
        let o = Outcome {
            import_error: Some("choose a CSV file to import".into()),
            ..Default::default()
        };
        return render_users(&st, &a.session.csrf, StatusCode::BAD_REQUEST, o).await;
    };
    match st.store.run(move |s| s.import_users(&file)).await {
        Ok(r) => {
            let o = Outcome {
                done: Some(format!(
                    "Imported: {} created, {} updated, {} assigned to Flex.",
                    r.created, r.updated, r.assigned
                )),
                ..Default::default()
            };
            render_users(&st, &a.session.csrf, StatusCode::OK, o).await
        }
        Err(StoreError::Import(errors)) => {
            let o = Outcome {
                import_error: Some(format!(
                    "{} line(s) of the file are wrong; nothing was imported. Fix them and import the file again.",
                    errors.len()
                )),
                import_errors: errors,
                ..Default::default()
            };
            render_users(&st, &a.session.csrf, StatusCode::UNPROCESSABLE_ENTITY, o).await
        }
        Err(StoreError::Invalid(e)) => {
            let o = Outcome {
                import_error: Some(e.message),
                ..Default::default()
            };
            render_users(&st, &a.session.csrf, StatusCode::BAD_REQUEST, o).await
        }
        Err(e) => server_error(e),
    }
}

#[derive(serde::Deserialize)]
pub struct FlexForm {
    csrf: Option<String>,
    assigned: Option<String>,
    back: Option<String>,
}

pub async fn set_flex(
    a: Authed,
    State(st): State<AppState>,
    Path(email): Path<String>,
    Form(f): Form<FlexForm>,
) -> Response {
    if let Err(r) = a.check(f.csrf.as_deref()) {
        return r.into_response();
    }
    let email = match path_email(&a, &email) {
        Ok(e) => e,
        Err(r) => return r.into_response(),
    };
    let on = f.assigned.as_deref() == Some("on");
    let e = email.clone();
    match st.store.run(move |s| s.set_flex(&e, on)).await {
        Ok(_) => {}
        Err(e @ StoreError::NotFound { .. }) => {
            return (StatusCode::NOT_FOUND, e.to_string()).into_response()
        }
        Err(e) => return server_error(e),
    }
    // Only back to a console page.
    let back = match f.back.as_deref() {
        Some("/admin/users") => "/admin/users".to_owned(),
        _ => format!("/admin/users/{}", encode(&email)),
    };
    Redirect::to(&back).into_response()
}

#[derive(serde::Deserialize)]
pub struct SubscriptionForm {
    csrf: Option<String>,
    #[serde(default)]
    product: String,
}

pub async fn add_subscription(
    a: Authed,
    State(st): State<AppState>,
    Path(email): Path<String>,
    Form(f): Form<SubscriptionForm>,
) -> Response {
    if let Err(r) = a.check(f.csrf.as_deref()) {
        return r.into_response();
    }
    let email = match path_email(&a, &email) {
        Ok(e) => e,
        Err(r) => return r.into_response(),
    };
    let product = match flex_protocol::ProductId::parse(&f.product) {
        Ok(p) => p,
        Err(e) => {
            return detail_page(
                &st,
                &a,
                &email,
                StatusCode::BAD_REQUEST,
                Some(e.to_string()),
            )
            .await
        }
    };
    let new = NewSubscription {
        email: email.clone(),
        product,
    };
    match st.store.run(move |s| s.add_subscription(new)).await {
        Ok(_) => Redirect::to(&format!("/admin/users/{}", encode(&email))).into_response(),
        Err(StoreError::Invalid(e)) => {
            detail_page(&st, &a, &email, StatusCode::BAD_REQUEST, Some(e.message)).await
        }
        Err(e) => server_error(e),
    }
}

pub async fn remove_subscription(
    a: Authed,
    State(st): State<AppState>,
    Path(email): Path<String>,
    Form(f): Form<SubscriptionForm>,
) -> Response {
    if let Err(r) = a.check(f.csrf.as_deref()) {
        return r.into_response();
    }
    let email = match path_email(&a, &email) {
        Ok(e) => e,
        Err(r) => return r.into_response(),
    };
    let e = email.clone();
    // No subscription names a product id that breaks the rule: nothing to remove.
    let removed = match flex_protocol::ProductId::parse(&f.product) {
        Ok(product) => {
            st.store
                .run(move |s| s.remove_subscription(&e, &product))
                .await
        }
        Err(_) => Ok(()),
    };
    match removed {
        Ok(()) | Err(StoreError::NotFound { .. }) => {
            Redirect::to(&format!("/admin/users/{}", encode(&email))).into_response()
        }
        Err(e) => server_error(e),
    }
}

pub async fn detail(a: Authed, State(st): State<AppState>, Path(email): Path<String>) -> Response {
    match path_email(&a, &email) {
        Ok(email) => detail_page(&st, &a, &email, StatusCode::OK, None).await,
        Err(r) => r.into_response(),
    }
}

async fn detail_page(
    st: &AppState,
    a: &Authed,
    email: &Email,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let email = email.clone();
    let tz = st.store.timezone();
    let today = calendar::date_of(calendar::local_day(st.store.now(), tz));
    let first = today.with_day(1).expect("day 1");
    let from = first
        .checked_sub_months(Months::new(11))
        .expect("a year ago");
    let last_month = first
        .pred_opt()
        .unwrap_or(first)
        .format("%Y-%m")
        .to_string();
    let this_month = first.format("%Y-%m").to_string();
    let e = email.clone();
    let data = st
        .store
        .run(move |s| {
            let user = s.user(&e)?;
            let months = s.user_months(&e, Period { from, to: today })?;
            let mut advice: Vec<(String, Recommendation)> = Vec::new();
            for m in [&last_month, &this_month] {
                for r in s.recommendations(m)?.recommendations {
                    if r.email == e.as_str() {
                        advice.push((m.clone(), r));
                    }
                }
            }
            Ok((user, months, advice))
        })
        .await;
    let (user, months, advice) = match data {
        Ok(d) => d,
        Err(e) => return server_error(e),
    };
    let csrf = &a.session.csrf;
    let Some(user) = user else {
        let content = html! {
            p.empty { "There is no user " (email) "." }
            p { a href="/admin/users" { "All users" } }
        };
        return (
            StatusCode::NOT_FOUND,
            layout("Unknown user", "Users", csrf, content),
        )
            .into_response();
    };
    let mut products: Vec<String> = months.iter().map(|m| m.product.clone()).collect();
    products.sort();
    products.dedup();
    let mut grid: BTreeMap<String, BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    for m in &months {
        grid.entry(m.month.clone())
            .or_default()
            .insert(m.product.clone(), (m.usage_days, m.tokens));
    }
    let all_products = st.store.rates().products().to_vec();
    let content = html! {
        section.cards {
            div.card { span.label { "Name" } span.value { (user.first_name) " " (user.last_name) } }
            div.card { span.label { "Flex" } span.value { (flex_toggle(csrf, &user, "")) } }
            div.card { span.label { "Subscriptions" } span.value #subscriptions {
                @if user.subscriptions.is_empty() { "none" } @else { (user.subscriptions.join(", ")) }
            } }
        }
        section {
            h2 { "Recommendation" }
            @if advice.is_empty() {
                p.empty { "None: " (user.email) " is on the cheaper plan for every product." }
            } @else {
                ul.advice { @for (m, r) in &advice {
                    li { strong { (r.product) ": move to " (r.recommend.as_str()) } " (" (m) ") — " (r.reason) }
                } }
            }
        }
        section {
            h2 { "Usage days per product per month" }
            @if grid.is_empty() {
                p.empty { "No usage in the last 12 months." }
            } @else {
                table #user-usage {
                    thead { tr { th { "Month" } @for p in &products { th.num { (p) } } } }
                    tbody { @for (m, row) in grid.iter().rev() {
                        tr { td { (m) } @for p in &products {
                            td.num { @if let Some((d, t)) = row.get(p) { (d) " days" @if *t > 0 { span.muted { " · " (num(*t)) " tokens" } } } @else { "—" } }
                        } }
                    } }
                }
            }
        }
        section {
            h2 { "Subscriptions" }
            @if !user.subscriptions.is_empty() {
                ul.subs { @for p in &user.subscriptions {
                    li { (p) " "
                        form.toggle method="post" action={"/admin/users/" (encode(&user.email)) "/subscriptions/remove"} {
                            input type="hidden" name="csrf" value=(csrf);
                            input type="hidden" name="product" value=(p);
                            button.small type="submit" { "Remove" }
                        }
                    }
                } }
            }
            form.card.inline method="post" action={"/admin/users/" (encode(&user.email)) "/subscriptions"} {
                input type="hidden" name="csrf" value=(csrf);
                div.field { label for="product" { "Add a subscription" }
                    select #product name="product" {
                        @for p in &all_products { option value=(p.id) { (p.name) } }
                    }
                    (field_error(error.as_deref()))
                }
                button type="submit" { "Add" }
            }
        }
    };
    (status, layout(&user.email, "Users", csrf, content)).into_response()
}
