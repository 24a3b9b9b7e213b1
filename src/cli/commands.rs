//! Client commands: they call the proxy's API with the saved token.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::client::{Api, Session};
use super::table::{self, field, relative};
use super::{CliError, CliResult, Output};
use crate::time::parse_duration;

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The proxy's URL, e.g. https://127.0.0.1:8443 (default: the last one you logged in to)
    #[arg(long)]
    proxy: Option<String>,
    /// Log in as this local user with a password, instead of through the identity provider
    #[arg(long)]
    user: Option<String>,
    /// Read the local user's password from standard input instead of prompting
    #[arg(long, requires = "user")]
    password_stdin: bool,
    /// Which identity provider to log in through, when the proxy has several
    #[arg(long, conflicts_with = "user")]
    idp: Option<String>,
    /// Use the device grant: print a code to enter on any device's browser, and wait
    #[arg(long, conflicts_with = "user")]
    device: bool,
    /// Do not try to open a browser; only print the login URL
    #[arg(long, conflicts_with = "user")]
    no_browser: bool,
    /// PEM file of the CA that signed the proxy's certificate (e.g. the proxy's certs/ca.pem)
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RequestArgs {
    /// Profile to request (see `jitgate profiles`)
    profile: String,
    /// Why you need it: a ticket or incident id and a few words
    #[arg(long, default_value = "", hide_default_value = true)]
    reason: String,
    /// For how long, e.g. 30m, 2h (at most the profile's max_duration)
    #[arg(long = "for", value_name = "DURATION")]
    duration: String,
    /// Wait until the request is decided, then print the outcome
    #[arg(long)]
    wait: bool,
}

pub fn read_secret(from_stdin: bool, prompt: &str) -> Result<String, CliError> {
    let secret = if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Refused(format!("reading the password from stdin: {e}")))?;
        s.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Usage(
                "no terminal to prompt on; pass --password-stdin".into(),
            ));
        }
        rpassword::prompt_password(prompt).map_err(|e| CliError::Refused(format!("reading the password: {e}")))?
    };
    if secret.is_empty() {
        return Err(CliError::Usage("the password is empty".into()));
    }
    Ok(secret)
}

pub async fn login(args: LoginArgs, out: Output) -> CliResult {
    let previous = Session::load().ok();
    let proxy = match (&args.proxy, &previous) {
        (Some(p), _) => p.clone(),
        (None, Some(s)) => s.proxy.clone(),
        (None, None) => {
            return Err(CliError::Usage(
                "--proxy is required the first time (e.g. --proxy https://127.0.0.1:8443)".into(),
            ))
        }
    };
    let ca_pem = match &args.ca_cert {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|e| CliError::Usage(format!("--ca-cert {}: {e}", path.display())))?,
        ),
        None => previous
            .as_ref()
            .filter(|s| s.proxy == proxy)
            .and_then(|s| s.ca_pem.clone()),
    };
    let api = Api::new(&proxy, ca_pem.as_deref(), None)?;
    let resp: Value = match &args.user {
        Some(user) => {
            let password = read_secret(args.password_stdin, &format!("Password for {user}: "))?;
            api.post("/api/v1/login", json!({ "user": user, "password": password }))
                .await?
        }
        None if args.device => super::oidc_login::device(&api, args.idp.as_deref()).await?,
        None => super::oidc_login::loopback(&api, args.idp.as_deref(), !args.no_browser).await?,
    };
    let session = Session::from_login(&proxy, ca_pem, &resp)?;
    let path = session.save()?;
    let api = Api::new(&session.proxy, session.ca_pem.as_deref(), Some(session.token.clone()))?;
    // Logged in either way: an SSH certificate that could not be had is worth a warning.
    let ssh = match super::ssh::renew_cert(&api).await {
        Ok((files, _)) => Some(files.cert),
        Err(e) => {
            eprintln!("jitgate: logged in, but got no SSH certificate ({e})");
            None
        }
    };
    match out {
        Output::Json => table::json(&json!({
            "user": session.user,
            "groups": session.groups,
            "expires_at": session.expires_at,
            "proxy": session.proxy,
            "ssh_certificate": ssh,
        })),
        Output::Table | Output::Id => {
            println!(
                "Logged in to {} as {} (groups: {}); token valid until {}, saved in {}",
                session.proxy,
                session.user,
                session.groups.join(", "),
                session.expires_at,
                path.display()
            );
            if let Some(cert) = &ssh {
                println!("SSH certificate for the proxy, valid as long: {}", cert.display());
            }
        }
    }
    Ok(())
}

pub async fn logout(out: Output) -> CliResult {
    let (api, session) = Api::from_session().await?;
    // Forget the token only once the proxy no longer accepts it: a logout that failed (the
    // proxy unreachable, its store down) can be tried again.
    api.logout().await?;
    Session::forget()?;
    super::ssh::forget_cert()?;
    match out {
        Output::Json => table::json(&json!({ "logged_out": true, "user": session.user })),
        Output::Table | Output::Id => {
            println!("Logged out {}; the token is revoked at {}", session.user, session.proxy)
        }
    }
    Ok(())
}

pub async fn status(out: Output) -> CliResult {
    let (api, session) = Api::from_session().await?;
    let me: Value = api.get("/api/v1/whoami").await?;
    let grants: Vec<Value> = api.get("/api/v1/grants").await?;
    let mine: Vec<&Value> = grants.iter().filter(|g| g["user"] == me["user"]).collect();
    match out {
        Output::Json => table::json(&json!({ "proxy": session.proxy, "identity": me, "active_grants": mine })),
        Output::Table | Output::Id => {
            println!("Proxy:  {}", session.proxy);
            println!(
                "User:   {} (groups: {}){}",
                field(&me, "user"),
                field(&me, "groups"),
                if me["admin"] == true { ", admin" } else { "" }
            );
            println!("Token:  expires {}", relative(&me, "token_expires_at"));
            if mine.is_empty() {
                println!("Grants: none active; `jitgate profiles` shows what you can request");
            } else {
                println!("Grants:");
                for g in mine {
                    println!(
                        "  {}  {}  expires {}",
                        field(g, "id"),
                        field(g, "profile"),
                        relative(g, "expires_at")
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn profiles(out: Output) -> CliResult {
    let (api, _) = Api::from_session().await?;
    let list: Vec<Value> = api.get("/api/v1/profiles").await?;
    if table::machine(out, &list, "name") {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let mut you = Vec::new();
            if p["can_request"] == true {
                you.push("request");
            }
            if p["can_approve"] == true {
                you.push("approve");
            }
            let approvals = match p["approvals_required"].as_u64() {
                Some(0) => "auto".to_owned(),
                Some(n) => n.to_string(),
                None => "-".to_owned(),
            };
            vec![
                field(p, "name"),
                field(p, "max_duration"),
                approvals,
                you.join("+"),
                field(p, "description"),
            ]
        })
        .collect();
    table::print(&["PROFILE", "MAX", "APPROVALS", "YOU MAY", "DESCRIPTION"], &rows);
    Ok(())
}

pub async fn request(args: RequestArgs, out: Output) -> CliResult {
    parse_duration(&args.duration).map_err(|e| CliError::Usage(format!("--for: {e}")))?;
    let (api, _) = Api::from_session().await?;
    let mut r: Value = api
        .post(
            "/api/v1/requests",
            json!({ "profile": args.profile, "reason": args.reason, "duration": args.duration }),
        )
        .await?;
    let id = field(&r, "id");
    if args.wait && r["state"] == "pending" {
        eprintln!(
            "Request {id} for {} is pending; waiting for a decision (Ctrl-C stops waiting, the request stays)…",
            args.profile
        );
        while r["state"] == "pending" {
            tokio::time::sleep(Duration::from_secs(1)).await;
            r = api.get(&format!("/api/v1/requests/{id}")).await?;
        }
    }
    show_request(&r, out);
    match r["state"].as_str() {
        Some("pending" | "active") => Ok(()),
        Some(state) => Err(CliError::Refused(format!(
            "request {id} ended {state}{}",
            r["decision_reason"]
                .as_str()
                .map(|why| format!(": {why}"))
                .unwrap_or_default()
        ))),
        None => Ok(()),
    }
}

fn show_request(r: &Value, out: Output) {
    match out {
        Output::Json => return table::json(r),
        Output::Id => return println!("{}", field(r, "id")),
        Output::Table => {}
    }
    let id = field(r, "id");
    let profile = field(r, "profile");
    match r["state"].as_str().unwrap_or("?") {
        "pending" => {
            let have = r["approvals"].as_array().map_or(0, Vec::len);
            let need = r["approvals_required"].as_u64().unwrap_or(1);
            println!("Request {id} for {profile} is pending: {have} of {need} approvals. An approver runs: jitgate approve {id}");
        }
        "active" => println!(
            "Request {id} for {profile} is active: grant {} for {}",
            field(r, "grant_id"),
            field(r, "duration")
        ),
        state => println!(
            "Request {id} for {profile} is {state}{}",
            r["decision_reason"]
                .as_str()
                .map(|why| format!(": {why}"))
                .unwrap_or_default()
        ),
    }
}

pub async fn requests(pending: bool, out: Output) -> CliResult {
    let (api, _) = Api::from_session().await?;
    let list: Vec<Value> = api
        .get(if pending {
            "/api/v1/requests?pending=true"
        } else {
            "/api/v1/requests"
        })
        .await?;
    if table::machine(out, &list, "id") {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let approvals = format!(
                "{}/{}",
                r["approvals"].as_array().map_or(0, Vec::len),
                r["approvals_required"]
            );
            vec![
                field(r, "id"),
                field(r, "profile"),
                r["requester"]["user"].as_str().unwrap_or("-").to_owned(),
                field(r, "state"),
                field(r, "duration"),
                approvals,
                relative(r, "created_at"),
                field(r, "reason"),
            ]
        })
        .collect();
    table::print(
        &[
            "ID",
            "PROFILE",
            "REQUESTER",
            "STATE",
            "FOR",
            "APPROVALS",
            "CREATED",
            "REASON",
        ],
        &rows,
    );
    Ok(())
}

pub async fn request_detail(id: &str, out: Output) -> CliResult {
    let (api, _) = Api::from_session().await?;
    let r: Value = api.get(&format!("/api/v1/requests/{}", urlencode(id))).await?;
    if out != Output::Table {
        show_request(&r, out);
        return Ok(());
    }
    show_request(&r, out);
    println!("  requester: {}", r["requester"]["user"].as_str().unwrap_or("-"));
    println!("  reason:    {}", field(&r, "reason"));
    println!("  for:       {}", field(&r, "duration"));
    println!("  created:   {}", relative(&r, "created_at"));
    for a in r["approvals"].as_array().into_iter().flatten() {
        println!("  approved:  by {} {}", field(a, "approver"), relative(a, "at"));
    }
    let announced = r["announced"].as_array().cloned().unwrap_or_default();
    if announced.is_empty() {
        println!("  announced: nowhere so far (notices go to its profile's [[notify]] targets and approvers linked to Slack)");
    }
    for a in &announced {
        let error = a["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default();
        println!(
            "  announced: {}: {} ({}){error}",
            field(a, "place"),
            field(a, "state"),
            field(a, "event")
        );
    }
    Ok(())
}

pub async fn decide(id: &str, verb: &str, reason: Option<String>, out: Output) -> CliResult {
    let (api, _) = Api::from_session().await?;
    let body = match reason {
        Some(r) => json!({ "reason": r }),
        None => json!({}),
    };
    let r: Value = api
        .post(&format!("/api/v1/requests/{}/{verb}", urlencode(id)), body)
        .await?;
    show_request(&r, out);
    Ok(())
}

pub async fn grants(all: bool, profile: Option<&str>, out: Output) -> CliResult {
    let (api, _) = Api::from_session().await?;
    let mut list: Vec<Value> = api
        .get(if all {
            "/api/v1/grants?all=true"
        } else {
            "/api/v1/grants"
        })
        .await?;
    if let Some(p) = profile {
        list.retain(|g| g["profile"] == p);
    }
    if table::machine(out, &list, "id") {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|g| {
            let ends = if g["state"] == "active" {
                relative(g, "expires_at")
            } else {
                relative(g, "ended_at")
            };
            vec![
                field(g, "id"),
                field(g, "profile"),
                field(g, "user"),
                field(g, "state"),
                ends,
                field(g, "request_id"),
            ]
        })
        .collect();
    table::print(&["GRANT", "PROFILE", "USER", "STATE", "ENDS/ENDED", "REQUEST"], &rows);
    Ok(())
}

pub async fn revoke(id: &str, reason: Option<String>, out: Output) -> CliResult {
    let (api, _) = Api::from_session().await?;
    let g: Value = api
        .post(
            &format!("/api/v1/grants/{}/revoke", urlencode(id)),
            json!({ "reason": reason }),
        )
        .await?;
    match out {
        Output::Json => table::json(&g),
        Output::Id => println!("{}", field(&g, "id")),
        Output::Table => println!(
            "Grant {} of {} for {} is revoked; its connections are cut",
            field(&g, "id"),
            field(&g, "profile"),
            field(&g, "user")
        ),
    }
    Ok(())
}

/// Ids are ours (letters, digits, '-'), but a mistyped one must not change the path.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
