//! Server-side commands: they read the configuration and work on its store directly.

use std::path::Path;
use std::sync::Arc;

use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use super::commands::read_secret;
use super::table;
use super::{CliError, CliResult, ConfigArg, Output};
use crate::audit::{self, AuditDraft, AuditEvent};
use crate::broker::Broker;
use crate::config::{redact_url, Config};
use crate::identity::local::{hash_password, validate_new_password};
use crate::live::Live;
use crate::store::{self, Store, UserRecord};
use crate::time::Timestamp;

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Add a local user
    Add {
        /// User name: letters, digits, '-', '_', '.' or '@'
        name: String,
        /// Group membership (repeat for several)
        #[arg(long = "group", short = 'g')]
        groups: Vec<String>,
        /// Read the password from standard input instead of prompting
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List local users
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Disable a user: they can no longer log in, their tokens stop working, and their
    /// active grants are revoked (the proxy closes their open connections)
    Disable {
        /// User name
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain; exit 1 naming the first bad event. Prints the head
    /// (SEQ:HASH): keep it outside the database and pass it back with --expect-head
    Verify {
        /// A head an earlier verify printed (SEQ:HASH). The chain must still hold that
        /// event unchanged: whoever can write the database could cut events off the end
        /// and rewrite the head to match, but cannot make an event saved elsewhere
        /// reappear
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Vec<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print events as JSON lines
    Export {
        /// Only events at or after this time (RFC 3339, e.g. 2026-01-31T00:00:00Z)
        #[arg(long)]
        since: Option<String>,
        /// Output format
        #[arg(long, value_parser = ["jsonl"], default_value = "jsonl")]
        format: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List SSH sessions: user, host, login, grant, start, end, bytes and recording
    Sessions {
        /// Only sessions that started at or after this time (RFC 3339)
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Tell the story of one grant: who asked, why, who approved, what was accessed, how it ended
    Evidence {
        grant_id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn load_config(path: Option<&Path>) -> Result<Config, CliError> {
    Config::load(path).map_err(|e| CliError::Usage(e.to_string().trim_end().to_owned()))
}

async fn open_store(config: &Config) -> Result<Arc<dyn Store>, CliError> {
    store::open(&config.store.url)
        .await
        .map_err(|e| CliError::Refused(format!("cannot open the store {}: {e}", redact_url(&config.store.url))))
}

fn store_failed(e: store::StoreError) -> CliError {
    CliError::Refused(e.to_string())
}

pub async fn serve(c: ConfigArg) -> CliResult {
    let config = load_config(c.config.as_deref())?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
        stop.cancel();
    });
    crate::server::run(config, shutdown)
        .await
        .map_err(|e| CliError::Refused(e.to_string()))
}

pub fn check_config(path: &Path) -> CliResult {
    let config = load_config(Some(path))?;
    println!("{}", config.summary());
    Ok(())
}

fn valid_name(kind: &str, s: &str) -> Result<(), CliError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "{kind} {s:?} must be 1-64 characters of letters, digits, '-', '_', '.' or '@'"
        )))
    }
}

pub async fn users(cmd: UsersCommand, out: Output) -> CliResult {
    match cmd {
        UsersCommand::Add {
            name,
            groups,
            password_stdin,
            config,
        } => {
            valid_name("user name", &name)?;
            for g in &groups {
                valid_name("group", g)?;
            }
            let config = load_config(config.config.as_deref())?;
            let password = read_secret(password_stdin, &format!("New password for {name}: "))?;
            validate_new_password(&password).map_err(CliError::Usage)?;
            let hash = tokio::task::spawn_blocking(move || hash_password(&password))
                .await
                .map_err(|e| CliError::Refused(e.to_string()))?
                .map_err(CliError::Refused)?;
            let store = open_store(&config).await?;
            let user = UserRecord {
                name: name.clone(),
                groups: groups.clone(),
                password_hash: hash,
                disabled: false,
                created_at: Timestamp::now(),
            };
            let event =
                AuditDraft::new("user.added", "admin-cli", &name).details(serde_json::json!({ "groups": groups }));
            store.add_user(&user, event).await.map_err(store_failed)?;
            println!(
                "Added user {name} (groups: {})",
                if groups.is_empty() {
                    "none".into()
                } else {
                    groups.join(", ")
                }
            );
            Ok(())
        }
        UsersCommand::List { config } => {
            let config = load_config(config.config.as_deref())?;
            let users = open_store(&config).await?.users().await.map_err(store_failed)?;
            let list: Vec<_> = users
                .iter()
                .map(|u| {
                    serde_json::json!({ "name": u.name, "source": u.source(), "groups": u.groups, "disabled": u.disabled, "created_at": u.created_at })
                })
                .collect();
            if table::machine(out, &list, "name") {
                return Ok(());
            }
            let rows: Vec<Vec<String>> = users
                .iter()
                .map(|u| {
                    vec![
                        u.name.clone(),
                        u.source().to_owned(),
                        u.groups.join(","),
                        if u.disabled { "disabled" } else { "active" }.into(),
                        u.created_at.to_string(),
                    ]
                })
                .collect();
            table::print(&["USER", "SOURCE", "GROUPS", "STATUS", "CREATED"], &rows);
            Ok(())
        }
        UsersCommand::Disable { name, config } => {
            let config = load_config(config.config.as_deref())?;
            let store = open_store(&config).await?;
            let event = AuditDraft::new("user.disabled", "admin-cli", &name);
            if !store
                .set_user_disabled(&name, true, event)
                .await
                .map_err(store_failed)?
            {
                return Err(CliError::Refused(format!(
                    "no user named {name:?}; `jitgate users list` shows them"
                )));
            }
            // Disabling ends access now: every active grant is withdrawn, and the server
            // cuts their open connections at its next look at the store (within a second).
            let policy = Arc::new(config.policy);
            let broker = Broker::new(policy, store, Live::new(), config.server.request_ttl);
            let ended = broker
                .withdraw_user_grants(&name, "admin-cli", "user disabled", Timestamp::now())
                .await
                .map_err(|e| {
                    CliError::Refused(format!(
                        "disabled user {name}, but could not revoke their grants ({e}); run the command again"
                    ))
                })?;
            println!("Disabled user {name}: they can no longer log in, and their tokens stop working now");
            if !ended.is_empty() {
                println!(
                    "Revoked their active grants ({}); the proxy closes their open connections within a second",
                    ended.join(", ")
                );
            }
            Ok(())
        }
    }
}

/// Reads the whole chain in pages, in seq order.
async fn all_events(store: &dyn Store, since: Option<Timestamp>) -> Result<Vec<AuditEvent>, CliError> {
    const PAGE: u32 = 10_000;
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = store.audit_events(after, since, PAGE).await.map_err(store_failed)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() as u32 == PAGE;
        events.extend(page);
        if !full {
            break;
        }
    }
    Ok(events)
}

/// The whole chain, checked from the first event to the recorded head.
async fn verified_chain(store: &dyn Store) -> Result<(Vec<AuditEvent>, u64), CliError> {
    let events = all_events(store, None).await?;
    let head = store.audit_head().await.map_err(store_failed)?;
    let n = audit::verify_to_head(&events, head.as_ref()).map_err(|e| CliError::Refused(e.to_string()))?;
    Ok((events, n))
}

/// `--since`: an RFC 3339 time, or a one-line usage error naming the flag.
fn since_arg(since: Option<&str>) -> Result<Option<Timestamp>, CliError> {
    since
        .map(Timestamp::parse_rfc3339)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--since: {e}")))
}

pub async fn audit(cmd: AuditCommand, out: Output) -> CliResult {
    match cmd {
        AuditCommand::Sessions { since, config } => {
            let since = since_arg(since.as_deref())?;
            let config = load_config(config.config.as_deref())?;
            let store = open_store(&config).await?;
            let sessions = audit::ssh_sessions(&all_events(&*store, since).await?);
            if table::machine(out, &sessions, "session") {
                return Ok(());
            }
            if sessions.is_empty() {
                println!("no SSH sessions recorded");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = sessions
                .iter()
                .map(|s| {
                    let bytes = match (s["bytes_up"].as_u64(), s["bytes_down"].as_u64()) {
                        (Some(up), Some(down)) => format!("{up}↑ {down}↓"),
                        _ => "-".into(),
                    };
                    let end = match (s["end"].as_str(), s["cut"].as_str()) {
                        (Some(end), Some(_)) => format!("{end} (cut)"),
                        (Some(end), None) => end.to_owned(),
                        (None, _) => "open".into(),
                    };
                    let recording = s["recordings"]
                        .as_array()
                        .map(|r| {
                            r.iter()
                                .map(|r| match (r["file"].as_str(), r["sha256"].as_str()) {
                                    (Some(f), Some(h)) => format!("{f} sha256:{}", &h[..h.len().min(16)]),
                                    _ => table::field(r, "error"),
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .filter(|r| !r.is_empty())
                        .unwrap_or_else(|| "-".into());
                    vec![
                        table::field(s, "user"),
                        table::field(s, "host"),
                        table::field(s, "login"),
                        table::field(s, "grant"),
                        table::field(s, "start"),
                        end,
                        bytes,
                        recording,
                    ]
                })
                .collect();
            table::print(
                &["USER", "HOST", "LOGIN", "GRANT", "START", "END", "BYTES", "RECORDING"],
                &rows,
            );
            Ok(())
        }
        AuditCommand::Verify { expect_head, config } => {
            let expected = expect_head
                .iter()
                .map(|h| audit::AuditHead::parse(h).map_err(|e| CliError::Usage(format!("--expect-head: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let config = load_config(config.config.as_deref())?;
            let store = open_store(&config).await?;
            let (events, n) = verified_chain(&*store).await?;
            for head in &expected {
                audit::holds_head(&events, head).map_err(|e| CliError::Refused(e.to_string()))?;
            }
            match events.last() {
                Some(last) => println!("audit chain OK: {n} events verified; head {}:{}", last.seq, last.hash),
                None => println!("audit chain OK: {n} events verified; the log is empty"),
            }
            Ok(())
        }
        AuditCommand::Export {
            since,
            format: _,
            config,
        } => {
            let since = since_arg(since.as_deref())?;
            let config = load_config(config.config.as_deref())?;
            let store = open_store(&config).await?;
            for e in all_events(&*store, since).await? {
                println!("{}", e.to_json());
            }
            Ok(())
        }
        AuditCommand::Evidence { grant_id, config } => {
            let config = load_config(config.config.as_deref())?;
            let store = open_store(&config).await?;
            // Evidence rests on an intact chain: verify it all first.
            let (events, n) = verified_chain(&*store).await.map_err(|e| match e {
                CliError::Refused(why) => CliError::Refused(format!("{why}; the evidence cannot be trusted")),
                usage => usage,
            })?;
            let story = audit::evidence(&events, &grant_id)
                .ok_or_else(|| CliError::Refused(format!("no grant {grant_id:?} in the audit log")))?;
            print!("{story}");
            println!("Audit chain verified: {n} events, none altered.");
            Ok(())
        }
    }
}
