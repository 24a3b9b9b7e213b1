//! `jitgate link slack`, `jitgate unlink slack`, `jitgate links`: proving a Slack account is
//! yours, so that buttons you press there count as you.

use serde_json::{json, Value};

use super::client::Api;
use super::table::{self, field, relative};
use super::{CliError, CliResult, Output};

#[derive(clap::Args, Debug)]
pub struct LinkArgs {
    /// Where to link: only `slack` for now
    #[arg(value_parser = ["slack"])]
    pub provider: String,
    /// The email of your Slack account (default: your user name, when it is an email)
    #[arg(long, conflicts_with_all = ["slack_user", "code"])]
    pub email: Option<String>,
    /// Your Slack member id (U0123ABCD), instead of an email
    #[arg(long, conflicts_with = "code")]
    pub slack_user: Option<String>,
    /// The code the jitgate bot sent you in Slack: finishes the link
    #[arg(long)]
    pub code: Option<String>,
}

pub async fn link(args: LinkArgs, out: Output) -> CliResult {
    let (api, _) = Api::from_session().await?;
    if let Some(code) = args.code {
        let link: Value = api.post("/api/v1/links/slack/confirm", json!({ "code": code })).await?;
        if out == Output::Table {
            println!(
                "Linked Slack account {} to {}: buttons you press in Slack now count as you.",
                field(&link, "chat_user"),
                field(&link, "user")
            );
            return Ok(());
        }
        table::json(&link);
        return Ok(());
    }
    let mut body = json!({});
    if let Some(e) = args.email {
        body["email"] = json!(e);
    }
    if let Some(u) = args.slack_user {
        body["slack_user"] = json!(u);
    }
    let started: Value = api.post("/api/v1/links/slack", body).await?;
    match out {
        Output::Table => println!(
            "The jitgate bot sent a code to Slack account {} in a direct message.\nFinish with: jitgate link slack --code CODE   (within 10 minutes)",
            field(&started, "slack_user")
        ),
        _ => table::json(&started),
    }
    Ok(())
}

pub async fn unlink(provider: &str, out: Output) -> CliResult {
    if provider != "slack" {
        return Err(CliError::Usage(format!("{provider:?}: only slack can be unlinked")));
    }
    let (api, _) = Api::from_session().await?;
    let done: Value = api.delete("/api/v1/links/slack").await?;
    match out {
        Output::Table => println!("Unlinked your Slack account: its buttons no longer count as you."),
        _ => table::json(&done),
    }
    Ok(())
}

pub async fn links(all: bool, out: Output) -> CliResult {
    let (api, _) = Api::from_session().await?;
    let list: Vec<Value> = api
        .get(if all { "/api/v1/links?all=true" } else { "/api/v1/links" })
        .await?;
    if table::machine(out, &list, "user") {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|l| {
            vec![
                field(l, "user"),
                field(l, "provider"),
                field(l, "chat_user"),
                relative(l, "linked_at"),
            ]
        })
        .collect();
    table::print(&["USER", "WHERE", "ACCOUNT", "LINKED"], &rows);
    Ok(())
}
