//! The `jitgate` command line: server-side commands (`serve`, `check-config`, `users`,
//! `audit`) work on the configured store; client commands talk to a running proxy with the
//! token `jitgate login` saved. Errors end as one line on stderr and exit 1 (refused or
//! failed) or 2 (usage or configuration).

mod admin;
mod client;
mod commands;
mod kube;
mod links;
mod oidc_login;
mod ssh;
mod table;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The operation was refused or failed: exit 1.
    #[error("{0}")]
    Refused(String),
    /// Bad usage or configuration: exit 2.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused(_) => 1,
            CliError::Usage(_) => 2,
        }
    }
}

pub type CliResult = Result<(), CliError>;

#[derive(Parser, Debug)]
#[command(
    name = "jitgate",
    version,
    about = "Just-in-time, just-enough-privilege access to SSH, Kubernetes and web consoles",
    long_about = "jitgate is an identity-aware access proxy. Nobody holds standing privileges: you log in, \
request a named access profile with a reason and a duration, someone else approves it, and only then \
does the proxy let you through, until the grant expires or is revoked. Every step is audited.\n\n\
Server side: serve, check-config, users, audit.  Client side: login, profiles, request, requests, \
approve, deny, cancel, grants, revoke, status, ssh-config, kubeconfig, logout."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Output format for client commands
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Log format (logs go to stderr)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable tables and sentences
    Table,
    /// The API's JSON, for scripts
    Json,
    /// Only ids (or names), one per line: `REQ=$(jitgate request … -o id)`
    Id,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Server-side commands read this configuration (the embedded default when omitted).
#[derive(Args, Debug, Clone)]
pub struct ConfigArg {
    /// Configuration file (TOML); without it, the embedded default
    #[arg(long, short = 'c', env = "JITGATE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy (HTTPS API and web on the configured address)
    Serve(ConfigArg),
    /// Validate a configuration file; exit 2 listing every error with its path
    CheckConfig {
        /// Configuration file (TOML)
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Manage local users (the embedded default's identity source), directly in the store
    #[command(subcommand)]
    Users(admin::UsersCommand),
    /// Verify, export and explain the hash-chained audit log, directly from the store
    #[command(subcommand)]
    Audit(admin::AuditCommand),

    /// Log in to a proxy and keep a short-lived token under $JITGATE_HOME
    Login(commands::LoginArgs),
    /// Revoke your token at the proxy and forget it
    Logout,
    /// Show who you are logged in as, and your active grants
    Status,
    /// Print the ~/.ssh/config block and known_hosts line for the proxy's SSH hosts
    SshConfig {
        /// Print instead the line a target's sshd trusts (its TrustedUserCAKeys file)
        #[arg(long)]
        target_ca: bool,
    },
    /// Carry one SSH session to the proxy over HTTPS (the ProxyCommand ssh-config prints)
    SshProxy {
        /// The login on the target (%r)
        login: String,
        /// The inventory name of the target (%h)
        host: String,
        /// The port ssh was asked for (%p); the inventory decides the real one
        #[arg(default_value_t = 22)]
        port: u16,
    },
    /// Print a kubeconfig for a cluster behind the proxy, or add it to yours with --merge
    #[command(long_about = "Print a kubeconfig whose context reaches CLUSTER through the proxy \
(server https://PROXY/k8s/CLUSTER, the proxy's CA) and whose user is an exec plugin: kubectl runs \
`jitgate kube-credential --cluster CLUSTER` for a short-lived token. With --merge, kubectl's own \
`config` commands add the cluster, user and context (named jitgate-CLUSTER) to your kubeconfig \
($KUBECONFIG or ~/.kube/config) and make the context current. kubectl still needs a grant: \
`jitgate request PROFILE` first.")]
    Kubeconfig {
        /// The cluster's name on the proxy ([[kube.clusters]])
        #[arg(long)]
        cluster: String,
        /// Add it to your kubeconfig with kubectl instead of printing it
        #[arg(long)]
        merge: bool,
    },
    /// The kubectl exec plugin: print an ExecCredential with a short-lived token for a cluster
    KubeCredential {
        /// The cluster's name on the proxy
        #[arg(long)]
        cluster: String,
    },
    /// List the access profiles you can request or approve
    Profiles,
    /// Request an access profile for a while, with a reason
    Request(commands::RequestArgs),
    /// List requests you made or can decide; with an id, show that one, where it was
    /// announced and who was asked
    Requests {
        /// One request (req-…) in detail
        id: Option<String>,
        /// Only requests still waiting for a decision
        #[arg(long, conflicts_with = "id")]
        pending: bool,
    },
    /// Approve someone else's pending request
    Approve {
        /// Request id (req-…)
        id: String,
        /// Why you approve (recorded in the audit log)
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a pending request
    Deny {
        /// Request id (req-…)
        id: String,
        /// Why you deny it (required; the requester sees it)
        #[arg(long)]
        reason: String,
    },
    /// Cancel your own pending request
    Cancel {
        /// Request id (req-…)
        id: String,
    },
    /// List active grants you hold or oversee
    Grants {
        /// Include grants that have expired or were revoked
        #[arg(long)]
        all: bool,
        /// Only grants of this profile
        #[arg(long)]
        profile: Option<String>,
    },
    /// End a grant now; every connection it opened is cut
    Revoke {
        /// Grant id (grant-…)
        id: String,
        /// Why (recorded in the audit log)
        #[arg(long)]
        reason: Option<String>,
    },
    /// Link your Slack account: the bot sends you a code there, then run this again with --code
    Link(links::LinkArgs),
    /// Unlink your Slack account: its buttons stop counting as you
    Unlink {
        /// Only `slack` for now
        #[arg(value_parser = ["slack"])]
        provider: String,
    },
    /// List your linked chat accounts (--all: everyone's, for admins)
    Links {
        /// Everyone's links (admins only)
        #[arg(long)]
        all: bool,
    },
}

pub fn run(cli: Cli) -> CliResult {
    let Cli { global, command } = cli;
    init_logging(&global, matches!(command, Command::Serve(_)));
    // ssh-proxy only pipes bytes: on one thread the task that copies also waits on the
    // sockets, where a multi-thread runtime would wake it from a worker for every chunk.
    let mut builder = if matches!(command, Command::SshProxy { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| CliError::Refused(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(dispatch(global, command))
}

async fn dispatch(global: Global, command: Command) -> CliResult {
    let out = global.output;
    match command {
        Command::Serve(c) => admin::serve(c).await,
        Command::CheckConfig { config } => admin::check_config(&config),
        Command::Users(cmd) => admin::users(cmd, out).await,
        Command::Audit(cmd) => admin::audit(cmd, out).await,
        Command::Login(args) => commands::login(args, out).await,
        Command::Logout => commands::logout(out).await,
        Command::Status => commands::status(out).await,
        Command::SshConfig { target_ca } => ssh::ssh_config(target_ca, out).await,
        Command::SshProxy { login, host, port } => ssh::ssh_proxy(&login, &host, port).await,
        Command::Kubeconfig { cluster, merge } => kube::kubeconfig(&cluster, merge, out).await,
        Command::KubeCredential { cluster } => kube::kube_credential(&cluster).await,
        Command::Profiles => commands::profiles(out).await,
        Command::Request(args) => commands::request(args, out).await,
        Command::Requests { id: Some(id), .. } => commands::request_detail(&id, out).await,
        Command::Requests { id: None, pending } => commands::requests(pending, out).await,
        Command::Approve { id, reason } => commands::decide(&id, "approve", reason, out).await,
        Command::Deny { id, reason } => commands::decide(&id, "deny", Some(reason), out).await,
        Command::Cancel { id } => commands::decide(&id, "cancel", None, out).await,
        Command::Grants { all, profile } => commands::grants(all, profile.as_deref(), out).await,
        Command::Revoke { id, reason } => commands::revoke(&id, reason, out).await,
        Command::Link(args) => links::link(args, out).await,
        Command::Unlink { provider } => links::unlink(&provider, out).await,
        Command::Links { all } => links::links(all, out).await,
    }
}

fn init_logging(global: &Global, serving: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if serving { "info,sqlx=warn" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match global.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
