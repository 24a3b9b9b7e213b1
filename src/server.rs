//! `jitgate serve`: generates or loads keys, opens the store, binds the HTTPS listener and
//! runs the sweeper that ends grants on time.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::ca::x509;
use crate::config::{redact_url, Config};
use crate::front::api::{self, ApiState, LoginLimiter};
use crate::front::apps;
use crate::front::kube;
use crate::front::ssh::{self, SshFront};
use crate::front::tls;
use crate::front::web::Site;
use crate::identity::oidc::Providers;
use crate::identity::session::Sessions;
use crate::identity::TokenIssuer;
use crate::live::Live;
use crate::notify::slack::Chat;
use crate::notify::{ChatPolicy, Notifier};
use crate::store;
use crate::time::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Certs(#[from] x509::CertError),
    #[error("cannot open the store {url}: {source}")]
    Store { url: String, source: store::StoreError },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// The sweeper never sleeps longer than this, so grants ended on another replica and new
/// grants from elsewhere are picked up within a second.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Expired sessions and login flows are harmless (every read checks expiry); they are
/// deleted this often to keep the tables small.
const LOGIN_PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// Finished notices are kept this long (the audit log keeps each delivery for good).
const NOTICE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    let server = &config.server;
    let app_hosts: Vec<String> = config.apps.iter().map(|a| a.host.clone()).collect();
    let certs = x509::ensure_with(&server.certs_dir, &server.base_domain, &app_hosts)?;
    let ssh_cas = crate::ca::ssh::ensure(&server.certs_dir)?;
    let mut generated = certs.generated.clone();
    generated.extend(&ssh_cas.generated);
    let url = redact_url(&config.store.url);
    let store = store::open(&config.store.url)
        .await
        .map_err(|source| ServeError::Store {
            url: url.clone(),
            source,
        })?;
    let listener = TcpListener::bind(server.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|e| ServeError::Setup(e.to_string()))?;
    let ssh_listener = TcpListener::bind(config.ssh.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.ssh.listen,
            source,
        })?;
    let ssh_addr = ssh_listener
        .local_addr()
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let public_url = server.public_url.clone().unwrap_or_else(|| format!("https://{addr}"));
    let tokens = TokenIssuer::new(
        &certs.token_key_pem,
        &certs.token_key_public_raw,
        public_url.clone(),
        server.token_lifetime,
    )
    .map_err(ServeError::Setup)?;
    let tls_config = tls::server_config(&certs.server_cert, &certs.server_key).map_err(ServeError::Setup)?;

    let issuers: Vec<String> = config.oidc.iter().map(|o| o.issuer.clone()).collect();
    let mut site =
        Site::new(&public_url, &server.base_domain, config.auth.local_users, &issuers).map_err(ServeError::Setup)?;
    let app_sites = apps::sites(&site, &config.apps);
    site.allow_form_redirects_to(app_sites.iter().map(|a| a.origin.clone()));
    let idps = Providers::new(&config.oidc, &format!("{public_url}/auth/callback")).map_err(ServeError::Setup)?;
    let policy = Arc::new(config.policy);
    let mut sources: Vec<String> = config.oidc.iter().map(|o| o.name.clone()).collect();
    if config.auth.local_users {
        sources.push("local".into());
    }
    let sessions = Sessions::new(
        Arc::clone(&store),
        config.auth.session_lifetime,
        server.token_lifetime,
        sources,
    );
    let (cut_reports, cuts) = tokio::sync::mpsc::unbounded_channel();
    let notify_places: std::collections::BTreeMap<String, String> = config
        .notify
        .targets
        .iter()
        .map(|t| (t.name.clone(), crate::notify::describe_target(t)))
        .collect();
    // A chat account acts for a user who could log in now and did so lately: within the
    // longer of a browser session's and a CLI token's life.
    let chat_policy = ChatPolicy {
        sources: sessions.sources().to_vec(),
        fresh_for: config.auth.session_lifetime.max(server.token_lifetime),
        fresh_for_idp: server.token_lifetime.min(config.auth.session_lifetime),
    };
    let chat = match &config.notify.slack {
        Some(app) => Some(Arc::new(
            Chat::new(app, config.notify.delivery.timeout, chat_policy.clone()).map_err(ServeError::Setup)?,
        )),
        None => None,
    };
    // It runs even with nothing to send, to keep its place in the audit log: turning
    // notices on later must not announce the past.
    let notifier = Arc::new(
        Notifier::new(
            Arc::clone(&store),
            Arc::clone(&policy),
            config.notify,
            chat_policy,
            &public_url,
        )
        .map_err(ServeError::Setup)?,
    );
    let broker = Arc::new(Broker::new(
        policy,
        store,
        Live::reporting(cut_reports),
        server.request_ttl,
    ));
    // Logouts taken by other replicas are followed from this point, before this one can
    // approve or open anything.
    broker
        .follow_logins()
        .await
        .map_err(|e| ServeError::Setup(format!("cannot read the audit log's head: {e}")))?;
    let ssh_cas = Arc::new(ssh_cas);
    let jump = ssh::JumpAddress::new(ssh_addr, &public_url);
    let recordings = server.data_dir.join("recordings");
    create_private_dir(&recordings)?;
    let ssh_front = Arc::new(SshFront::new(
        Arc::clone(&broker),
        Arc::clone(&ssh_cas),
        &config.ssh,
        recordings,
        sessions.sources().to_vec(),
        jump.names.clone(),
    ));
    let state = Arc::new(ApiState {
        broker: Arc::clone(&broker),
        tokens: Arc::new(tokens),
        limiter: LoginLimiter::new(5, 20, Duration::from_secs(300)),
        metrics: metrics_handle(),
        sessions,
        idps: Arc::new(idps),
        site,
        token_refresh: config.auth.token_refresh,
        ssh: api::ssh::SshState {
            hosts: config.ssh.hosts.iter().map(|h| h.name.clone()).collect(),
            cas: ssh_cas,
            front: Arc::clone(&ssh_front),
            jump: jump.clone(),
        },
        apps: app_sites,
        kube_clusters: {
            let mut names: Vec<String> = config.kube.iter().map(|c| c.name.clone()).collect();
            names.sort();
            names
        },
        chat,
        notify_places: Arc::new(notify_places),
    });
    let apps_front = Arc::new(apps::AppsFront::new(Arc::clone(&state), &config.apps).map_err(ServeError::Setup)?);
    let kube_front = Arc::new(kube::KubeFront::new(Arc::clone(&state), &config.kube));
    let routes = tls::Routes {
        router: api::router(Arc::clone(&state)),
        apps: apps_front,
        kube: kube_front,
        base_domain: server.base_domain.to_ascii_lowercase(),
        own_host: state.site.host.to_ascii_lowercase(),
    };

    println!("jitgate listening on {public_url}  (config: {})", config.source);
    println!("  store:   {url}");
    println!(
        "  ssh:     {ssh_addr}  (ssh -J USER@{} LOGIN@HOST, or the ProxyCommand `jitgate ssh-config` prints)",
        jump.address
    );
    for (app, config) in state.apps.iter().zip(&config.apps) {
        println!(
            "  app:     {} -> {}",
            app.origin,
            config.upstream.as_str().trim_end_matches('/')
        );
    }
    for cluster in &config.kube {
        println!(
            "  kube:    {public_url}{}{} -> {}  (jitgate kubeconfig --cluster {})",
            kube::PREFIX,
            cluster.name,
            cluster.server.as_str().trim_end_matches('/'),
            cluster.name
        );
    }
    for (name, place) in state.notify_places.iter() {
        println!("  notify:  {name} -> {place}");
    }
    if state.chat.is_some() {
        println!("  slack:   interactivity request URL {public_url}/integrations/slack/interactions");
    }
    println!(
        "  CA:      {}  SHA-256 {}",
        certs.ca_cert.display(),
        certs.ca_fingerprint
    );
    if !generated.is_empty() {
        println!(
            "  generated on this start into {}: {}",
            certs.dir.display(),
            generated.join(", ")
        );
    }
    let ca = certs.ca_cert.display();
    if !config.oidc.is_empty() {
        let names: Vec<&str> = config.oidc.iter().map(|o| o.name.as_str()).collect();
        println!(
            "  log in through {}: open {public_url}/ in a browser,",
            names.join(", ")
        );
        println!("    or run: jitgate login --proxy {public_url} --ca-cert {ca}");
    }
    if config.auth.local_users {
        println!("  first local user: jitgate users add alice --group dba --password-stdin");
        println!("    then log in: jitgate login --proxy {public_url} --user alice --ca-cert {ca} --password-stdin");
    }
    tracing::info!(%public_url, store = %url, "serving");

    tokio::spawn(sweep_forever(Arc::clone(&broker), shutdown.clone()));
    tokio::spawn(Arc::clone(&broker).record_cuts(cuts));
    tokio::spawn(notifier.run(shutdown.clone()));
    tokio::spawn(ssh_front.serve_jump(ssh_listener, shutdown.clone()));
    let shards = crate::front::shards::Shards::start(&shutdown).map_err(ServeError::Setup)?;
    tls::serve(listener, tls_config, routes, server.idle_timeout, shards, shutdown).await;
    Ok(())
}

/// Session recordings are for auditors only: the directory is the proxy user's alone.
fn create_private_dir(dir: &std::path::Path) -> Result<(), ServeError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |e: std::io::Error| ServeError::Setup(format!("cannot create {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(failed)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)
}

/// Ends grants and pending requests when they fall due, waking early when grants change.
async fn sweep_forever(broker: Arc<Broker>, shutdown: CancellationToken) {
    let mut last_purge = std::time::Instant::now();
    loop {
        let now = Timestamp::now();
        if last_purge.elapsed() >= LOGIN_PURGE_INTERVAL {
            last_purge = std::time::Instant::now();
            if let Err(e) = broker.store().purge_logins(now).await {
                tracing::warn!(error = %e, "cannot purge expired sessions and login flows");
            }
            let before = Timestamp::from_millis(now.as_millis() - NOTICE_RETENTION.as_millis() as i64);
            if let Err(e) = broker.store().purge_notices(before).await {
                tracing::warn!(error = %e, "cannot purge old notices");
            }
        }
        let wait = match broker.sweep(now).await {
            Ok(next) => next.map_or(MAX_SWEEP_INTERVAL, |t| now.until(t).min(MAX_SWEEP_INTERVAL)),
            Err(e) => {
                tracing::error!(error = %e, "sweep failed; retrying");
                MAX_SWEEP_INTERVAL
            }
        };
        if let Ok(n) = broker.pending_count().await {
            metrics::gauge!("jitgate_pending_requests").set(n as f64);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = broker.changed() => {}
        }
    }
}

/// The process-wide Prometheus recorder; installed once, whatever number of servers run.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .expect("buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}
