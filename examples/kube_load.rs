//! A kubectl-like GET load on a Kubernetes API, against several targets in one run: the API
//! server directly, `kubectl proxy` in front of it, and jitgate. Each worker has its own
//! client (HTTP/2 where the target offers it, as client-go) and asks for one object over
//! and over with a bearer token. Prints requests/s, p50 and p99 per target, and each
//! target's ratio and added latency against the first one.
//!
//! `scripts/bench/kube` sets up a cluster, the peers and the proxy and runs this; by hand:
//!
//! ```text
//! cargo run --release --example kube_load -- --path /api/v1/namespaces/bench/pods/web-1 \
//!     --target direct=https://127.0.0.1:6443,TOKEN,/tmp/kube/pki/apiserver.crt \
//!     --target jitgate=https://127.0.0.1:8443/k8s/lab,TOKEN,certs/ca.pem
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Parser, Debug)]
#[command(about = "kubectl-like GET load on Kubernetes API targets, compared in one run")]
struct Args {
    /// NAME=URL[,TOKEN[,CA_PEM]]; the first is the baseline the others are compared with
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// The API path every request asks for
    #[arg(long, default_value = "/api/v1/namespaces/bench/pods/web-1")]
    path: String,
    /// Concurrent workers per target, each with a client of its own
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// How long to load each target, e.g. 10s
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured load before each target's run
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
}

struct Target {
    name: String,
    url: String,
    token: Option<String>,
    ca: Option<std::path::PathBuf>,
}

fn parse_target(s: &str) -> Result<Target> {
    let (name, rest) = s.split_once('=').context("--target is NAME=URL[,TOKEN[,CA_PEM]]")?;
    let mut parts = rest.split(',');
    let url = parts
        .next()
        .context("--target needs a URL")?
        .trim_end_matches('/')
        .to_owned();
    let token = parts.next().filter(|t| !t.is_empty()).map(str::to_owned);
    let ca = parts.next().filter(|c| !c.is_empty()).map(Into::into);
    Ok(Target {
        name: name.to_owned(),
        url,
        token,
        ca,
    })
}

type HttpClient =
    Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Empty<Bytes>>;

fn client(ca: Option<&std::path::Path>) -> Result<HttpClient> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| ca.display().to_string())?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert?)?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

struct Outcome {
    /// Each measured request's latency in microseconds.
    latencies: Vec<u32>,
    errors: u64,
    elapsed: Duration,
}

async fn load(target: &Target, args: &Args) -> Result<Outcome> {
    let uri: hyper::Uri = format!("{}{}", target.url, args.path).parse()?;
    // One request first: a target that does not answer 200 is a set-up error, not a number.
    let probe = client(target.ca.as_deref())?;
    let resp = probe.request(request(&uri, target.token.as_deref())?).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status != 200 {
        bail!("{}: {status}: {}", target.name, String::from_utf8_lossy(&body));
    }
    let start = Instant::now();
    let warm_until = start + args.warmup;
    let until = warm_until + args.duration;
    let mut tasks = Vec::new();
    for _ in 0..args.workers {
        let c = client(target.ca.as_deref())?;
        let uri = uri.clone();
        let token = target.token.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            loop {
                let t = Instant::now();
                if t >= until {
                    break;
                }
                let Ok(req) = request(&uri, token.as_deref()) else {
                    break;
                };
                let ok = match c.request(req).await {
                    Ok(resp) => {
                        let good = resp.status() == 200;
                        good && resp.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if t >= warm_until {
                    if ok {
                        latencies.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort_unstable();
    Ok(Outcome {
        latencies,
        errors,
        elapsed: args.duration,
    })
}

fn request(uri: &hyper::Uri, token: Option<&str>) -> Result<hyper::Request<Empty<Bytes>>> {
    let mut b = hyper::Request::get(uri.clone())
        .header("accept", "application/json")
        .header("user-agent", "kube_load (kubectl-like)");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    Ok(b.body(Empty::new())?)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let targets = args
        .targets
        .iter()
        .map(|t| parse_target(t))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "GET {} with {} workers, {:?} each (after {:?} of warm-up)",
        args.path, args.workers, args.duration, args.warmup
    );
    println!(
        "{:<14} {:>10} {:>9} {:>9} {:>7} {:>10} {:>12} {:>12}",
        "target", "req/s", "p50 ms", "p99 ms", "errors", "ratio", "added p50", "added p99"
    );
    let mut base: Option<(f64, f64, f64)> = None;
    for t in &targets {
        let o = load(t, &args).await?;
        let rps = o.latencies.len() as f64 / o.elapsed.as_secs_f64();
        let (p50, p99) = (percentile(&o.latencies, 0.50), percentile(&o.latencies, 0.99));
        let (ratio, added50, added99) = match base {
            None => {
                base = Some((rps, p50, p99));
                ("1.00x".to_owned(), "-".to_owned(), "-".to_owned())
            }
            Some((brps, b50, b99)) => (
                format!("{:.2}x", rps / brps),
                format!("{:+.2} ms", p50 - b50),
                format!("{:+.2} ms", p99 - b99),
            ),
        };
        println!(
            "{:<14} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>10} {:>12} {:>12}",
            t.name, rps, p50, p99, o.errors, ratio, added50, added99
        );
    }
    Ok(())
}
