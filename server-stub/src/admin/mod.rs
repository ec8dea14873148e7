//! `flex-admin`, the administrator's command line for a flex-server.
//!
//! A run goes through four steps, each in its own module so that all but the
//! network step are tested without a server: [`cli`] parses the arguments,
//! [`call`] turns the subcommand into one HTTP call built from the
//! `flex_protocol::api` types, [`client`] sends it with the admin token and maps
//! every failure to a message that says what to do next, and [`render`] formats
//! the answer as text (with [`table`] for lists) unless `--json` asks for the
//! server's JSON as-is. The binary in `src/bin/flex-admin.rs` only calls [`run`]
//! and turns its error into exit status 1.

pub mod call;
pub mod cli;
pub mod client;
pub mod error;
pub mod fleet;
pub mod names;
pub mod render;
pub mod render_reports;
pub mod table;

use std::io::Write;

pub use cli::Cli;
pub use error::AdminError;

use call::{plan, Body};
use cli::{Command, UsersCmd};
use client::{check, resolve_token, AdminClient};
use flex_protocol::api::ImportResult;

/// Runs one `flex-admin` command, writing its output to `out`.
///
/// `env_token` is the value of `FLEX_ADMIN_TOKEN`, passed in so that tests do
/// not depend on the environment. A refused import has already been listed on
/// `out` when [`AdminError::ImportRejected`] is returned.
pub async fn run(
    cli: &Cli,
    env_token: Option<String>,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let call = plan(&cli.command);
    let token = if call.auth {
        Some(resolve_token(env_token, cli.global.token_file.as_deref())?)
    } else {
        None
    };
    let csv = match &call.body {
        Body::CsvFile(path) => Some(std::fs::read(path).map_err(|source| AdminError::CsvFile {
            path: path.clone(),
            source,
        })?),
        _ => None,
    };
    let client = AdminClient::new(&cli.global.server, cli.global.ca_file.as_deref())?;
    let reply = client.send(&call, token.as_deref(), csv).await?;
    let what = call.describe();
    let json = cli.global.json;

    if let Command::Users(UsersCmd::Import { .. }) = cli.command {
        // 422 carries the import result with the bad lines: show them, then fail.
        if reply.status == 422 {
            let result: ImportResult = render::decode(&what, &reply.body)?;
            write_answer(out, json, &reply.body, || Ok(render::import(&result)))?;
            return Err(AdminError::ImportRejected {
                count: result.errors.len().max(1),
            });
        }
    }

    if let Err(err) = check(&call, &reply) {
        if let (true, AdminError::Api { body, .. }) = (json, &err) {
            write_json(out, body)?;
        }
        return Err(err);
    }

    let names = if !json && names::needed(&cli.command) {
        product_names(&client, token.as_deref()).await
    } else {
        names::Names::default()
    };
    write_answer(out, json, &reply.body, || {
        render::render(&cli.command, &what, &reply.body, &names)
    })?;

    if let Command::Users(UsersCmd::Import { .. }) = cli.command {
        let result: ImportResult = render::decode(&what, &reply.body)?;
        if !result.errors.is_empty() {
            return Err(AdminError::ImportRejected {
                count: result.errors.len(),
            });
        }
    }
    Ok(())
}

/// The rate sheet's display names, for tables that name products. Without
/// them (an older server, a failed call) the tables show product ids.
async fn product_names(client: &AdminClient, token: Option<&str>) -> names::Names {
    let call = call::Call {
        method: call::Method::Get,
        path: format!("{}/admin/products", flex_protocol::API_PREFIX),
        body: Body::None,
        auth: true,
    };
    match client.send(&call, token, None).await {
        Ok(reply) if reply.status == 200 => {
            render::decode::<flex_protocol::api::ProductList>("GET /v1/admin/products", &reply.body)
                .map(|list| names::Names::new(&list.products))
                .unwrap_or_default()
        }
        _ => names::Names::default(),
    }
}

/// Writes `body` as pretty JSON under `--json`, else the human rendering.
fn write_answer(
    out: &mut dyn Write,
    json: bool,
    body: &str,
    human: impl FnOnce() -> Result<String, AdminError>,
) -> Result<(), AdminError> {
    if json {
        write_json(out, body)
    } else {
        out.write_all(human()?.as_bytes())?;
        Ok(())
    }
}

/// Pretty-prints a JSON body; an empty body (204) prints nothing.
fn write_json(out: &mut dyn Write, body: &str) -> Result<(), AdminError> {
    if body.trim().is_empty() {
        return Ok(());
    }
    writeln!(out, "{}", render::pretty_json("the answer", body)?)?;
    Ok(())
}

#[cfg(test)]
mod tests;
