//! How soon a new request reaches Slack and a webhook receiver: the time from the request's
//! creation (its `created_at`, stamped by the proxy as it opens it) to the stand-in Slack
//! receiving `chat.postMessage`, and to the webhook receiver taking the signed delivery.
//! Beside them, the round trip of `POST /api/v1/requests` itself, the API call that caused
//! them, measured in the same run. Goal: p99 < 200 ms to the Slack API call.
//!
//! It starts everything itself: the Slack Web API stand-in and the webhook receiver of the
//! tests (in this process, on loopback), and `jitgate serve` (the binary given) with a fresh
//! store, a profile that needs one approval and notifies both, and one requester per worker.
//! `scripts/bench/notify` builds the release binary and runs this:
//!
//! ```text
//! cargo run --release --example notify_latency -- --bin target/release/jitgate \
//!     --requests 400 --workers 4 [--store postgres://…]
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

// The tests' own stand-in Slack and webhook receiver.
#[allow(dead_code)]
#[path = "../tests/common/slack.rs"]
mod slack;
#[allow(dead_code)]
#[path = "../tests/common/webhook.rs"]
mod webhook;

use slack::Slack;
use webhook::Receiver;

/// What the stand-ins name their secrets with.
fn random_suffix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{:x}{:x}", nanos & 0xffff_ffff_ffff, std::process::id())
}

#[derive(Parser, Debug)]
#[command(about = "Latency of request notices to Slack and webhooks, from the request's creation")]
struct Args {
    /// The jitgate binary to serve with
    #[arg(long)]
    bin: std::path::PathBuf,
    /// Requests in all
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Concurrent requesters
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Requests per second in all, spread over the workers; 0 for as fast as they go (which
    /// measures how many notices per second the proxy sustains, not their latency)
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Store URL (default: a fresh SQLite file in the work directory)
    #[arg(long)]
    store: Option<String>,
}

const CHANNEL: &str = "C0BENCH";

fn millis_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn row(label: &str, mut ms: Vec<f64>) -> f64 {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = percentile(&ms, 0.99);
    println!(
        "{label:<44} {:>6} {:>9.1} {:>9.1} {:>9.1}",
        ms.len(),
        percentile(&ms, 0.50),
        p99,
        ms.last().copied().unwrap_or(f64::NAN)
    );
    p99
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.workers == 0 || args.requests == 0 {
        bail!("--workers and --requests must be at least 1");
    }
    let work = tempfile::tempdir()?;
    let dir = work.path();
    let slack = Slack::start(&[("#bench", CHANNEL)], &[]);
    let hook = Receiver::start();
    std::fs::write(dir.join("slack.token"), &slack.token)?;
    std::fs::write(dir.join("hook.secret"), &hook.secret)?;
    let store = args
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/data/jitgate.db", dir.display()));
    let config = dir.join("jitgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
ssh.listen = "127.0.0.1:0"

[server]
listen = "127.0.0.1:0"
data_dir = "{d}/data"
certs_dir = "{d}/certs"
request_ttl = "1h"

[store]
url = "{store}"

[[profiles]]
name = "bench"
max_duration = "1h"
requesters = ["group:bench"]
approvers = ["group:leads"]
approvals_required = 1
require_reason = false
ssh = {{ hosts = {{ env = "bench" }}, logins = ["bench"] }}
notify = ["chan", "hook"]

[slack]
api_url = "{api}"
bot_token_file = "{d}/slack.token"

[[notify]]
name = "chan"
kind = "slack"
channel = "{CHANNEL}"

[[notify]]
name = "hook"
kind = "webhook"
url = "{hook_url}"
secret_file = "{d}/hook.secret"
events = ["request.created"]

[notifications]
allow_networks = ["127.0.0.1"]
"#,
            d = dir.display(),
            api = slack.api_url,
            hook_url = hook.url,
        ),
    )?;
    let users: Vec<String> = (0..args.workers).map(|i| format!("bench-{i}")).collect();
    for u in &users {
        let mut add = Command::new(&args.bin)
            .args(["users", "add", u, "--group", "bench", "--password-stdin", "--config"])
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        add.stdin
            .take()
            .unwrap()
            .write_all(format!("{u}-bench-password\n").as_bytes())?;
        if !add.wait()?.success() {
            bail!("jitgate users add {u} failed");
        }
    }
    let mut server = Command::new(&args.bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(dir.join("serve.log"))?))
        .spawn()?;
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().context("jitgate serve exited before listening")??;
        if let Some(rest) = line.strip_prefix("jitgate listening on ") {
            break rest.split_whitespace().next().unwrap_or_default().to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let pem = std::fs::read(dir.join("certs/ca.pem"))?;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .build()?;

    let result = run(&args, &http, &url, &users, &slack, &hook).await;
    let _ = server.kill();
    let _ = server.wait();
    if result.is_err() || std::env::var_os("NOTIFY_LATENCY_KEEP").is_some() {
        let kept = work.keep();
        eprintln!("notify_latency: the proxy's log is kept in {}", kept.display());
    }
    result
}

async fn run(
    args: &Args,
    http: &reqwest::Client,
    url: &str,
    users: &[String],
    slack: &Slack,
    hook: &Receiver,
) -> Result<()> {
    let mut tokens = Vec::new();
    for u in users {
        let v: Value = http
            .post(format!("{url}/api/v1/login"))
            .json(&json!({"user": u, "password": format!("{u}-bench-password")}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        tokens.push(v["token"].as_str().context("no token")?.to_owned());
    }
    // Warm up the paths (connections, statements) before measuring.
    let (client, base) = (http.clone(), url.to_owned());
    let one = move |token: String| {
        let http = client.clone();
        let url = base.clone();
        async move {
            let started = Instant::now();
            let r: Value = http
                .post(format!("{url}/api/v1/requests"))
                .bearer_auth(token)
                .json(&json!({"profile": "bench", "duration": "10m"}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            Ok::<_, anyhow::Error>((r, started.elapsed()))
        }
    };
    one(tokens[0].clone()).await?;
    let warm_calls = slack.calls().len();

    let per_worker = args.requests.div_ceil(args.workers);
    // Each worker keeps its own schedule, offset from the others, so arrivals are even.
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(args.workers as f64 / args.rate));
    let workers = args.workers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, token) in tokens.into_iter().enumerate() {
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(per_worker);
            for i in 0..per_worker {
                if let Some(every) = interval {
                    let due = started + every.mul_f64(i as f64 + w as f64 / workers as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                out.push(one(token.clone()).await?);
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut created = std::collections::HashMap::new();
    let mut round_trips = Vec::new();
    for t in tasks {
        for (r, took) in t.await?? {
            let at = jitgate::time::Timestamp::parse_rfc3339(r["created_at"].as_str().context("created_at")?)
                .map_err(anyhow::Error::msg)?;
            created.insert(r["id"].as_str().unwrap().to_owned(), at.as_millis() as f64);
            round_trips.push(took.as_secs_f64() * 1000.0);
        }
    }
    let total = created.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && (slack.top_messages(CHANNEL).len() < total + 1 || hook.deliveries().len() < total + 1)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let posted: Vec<f64> = slack
        .calls()
        .iter()
        .skip(warm_calls)
        .filter(|c| c.method == "chat.postMessage" && c.outcome == "ok")
        .filter_map(|c| {
            let text = c.args["blocks"].to_string();
            let id = text.split("Request `").nth(1)?.split('`').next()?;
            Some(millis_since_epoch(c.at) - created.get(id)?)
        })
        .collect();
    let delivered: Vec<f64> = hook
        .deliveries()
        .iter()
        .filter_map(|d| {
            let id = d.body["data"]["request"]["id"].as_str()?;
            Some(millis_since_epoch(d.at) - created.get(id)?)
        })
        .collect();
    if posted.len() < total || delivered.len() < total {
        bail!(
            "only {} of {total} requests reached Slack and {} the webhook receiver within a minute",
            posted.len(),
            delivered.len()
        );
    }
    let pace = if args.rate > 0.0 {
        format!("at {} requests/s", args.rate)
    } else {
        "as fast as they go".to_owned()
    };
    println!(
        "{total} requests by {} concurrent requesters, {pace}, in {:.1} s; times in ms",
        args.workers,
        started.elapsed().as_secs_f64()
    );
    let first = created.values().copied().fold(f64::INFINITY, f64::min);
    let last = slack
        .calls()
        .iter()
        .map(|c| millis_since_epoch(c.at))
        .chain(hook.deliveries().iter().map(|d| millis_since_epoch(d.at)))
        .fold(0.0, f64::max);
    let notices = (posted.len() + delivered.len()) as f64;
    println!(
        "{notices} notices delivered in {:.2} s from the first request: {:.0} notices/s",
        (last - first) / 1000.0,
        notices * 1000.0 / (last - first)
    );
    println!("{:<44} {:>6} {:>9} {:>9} {:>9}", "", "count", "p50", "p99", "max");
    row("POST /api/v1/requests round trip", round_trips);
    let p99 = row("created -> Slack chat.postMessage received", posted);
    row("created -> signed webhook received", delivered);
    if args.rate > 0.0 {
        println!(
            "goal: p99 < 200 ms from creation to the Slack API call: {} ({p99:.1} ms)",
            if p99 < 200.0 { "met" } else { "MISSED" }
        );
    } else {
        println!(
            "(as fast as they go, requests arrive faster than notices/s above allows: latency here is the queue, {p99:.1} ms at p99)"
        );
    }
    Ok(())
}
