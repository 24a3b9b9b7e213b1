//! Load on the JSON API of a running proxy: each worker, as a requester of its own, opens a
//! request, has it approved by an approver, and lists its requests, over and over until the
//! time or the iteration budget runs out. Prints one row per operation: count, requests/s,
//! p50 and p99 latency, errors, and the totals.
//!
//! `scripts/bench/api` starts the proxy on SQLite and on PostgreSQL, creates the users and
//! runs this; by hand:
//!
//! ```text
//! cargo run --release --example api_load -- --url https://127.0.0.1:8443 --ca certs/ca.pem \
//!     --profile bench --workers 16 --duration 10s
//! ```
//!
//! Requester `i` is `{requester_prefix}{i}` (one per worker), approver `j` is
//! `{approver_prefix}{j}`, and every password is `{user}{password_suffix}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use reqwest::{Client, Method};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "Load benchmark of the jitgate API: request + approve + list")]
struct Args {
    /// The proxy's URL, e.g. https://127.0.0.1:8443
    #[arg(long)]
    url: String,
    /// PEM of the CA that signed the proxy's certificate (its certs_dir/ca.pem)
    #[arg(long)]
    ca: std::path::PathBuf,
    /// Profile to request; it must need one approval from the approvers' group
    #[arg(long, default_value = "bench")]
    profile: String,
    /// Concurrent workers, each with a requester of its own
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Approvers shared by the workers (worker i uses approver i % approvers)
    #[arg(long, default_value_t = 4)]
    approvers: usize,
    /// How long to run, e.g. 10s, 1m
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many iterations (request + approve + list) in all, whichever comes first
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    #[arg(long, default_value = "bench-req-")]
    requester_prefix: String,
    #[arg(long, default_value = "bench-apr-")]
    approver_prefix: String,
    #[arg(long, default_value = "-bench-password", allow_hyphen_values = true)]
    password_suffix: String,
    /// Name of this run in the table, e.g. sqlite or postgres
    #[arg(long, default_value = "api")]
    label: String,
    /// Print the table without its header line
    #[arg(long)]
    no_header: bool,
}

/// A bound on every call, so that a stuck proxy cannot keep the benchmark running.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
enum Op {
    Request,
    Approve,
    List,
}

const OPS: [Op; 3] = [Op::Request, Op::Approve, Op::List];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Request => "request",
            Op::Approve => "approve",
            Op::List => "list",
        }
    }
}

/// Latencies of the calls that succeeded, and how many failed, for one operation.
#[derive(Default)]
struct Samples {
    ok: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl Samples {
    fn record(&mut self, started: Instant, result: Result<Value>) -> Option<Value> {
        match result {
            Ok(v) => {
                self.ok.push(started.elapsed());
                Some(v)
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
                None
            }
        }
    }

    fn merge(&mut self, other: Samples) {
        self.ok.extend(other.ok);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

struct Api {
    http: Client,
    base: String,
}

impl Api {
    /// Calls the API and returns the JSON body of a 2xx answer; anything else is an error.
    /// `parse = false` reads the whole body without parsing it (listing cost is the server's).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        parse: bool,
    ) -> Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&bytes).trim());
        }
        if parse {
            Ok(serde_json::from_slice(&bytes)?)
        } else {
            Ok(Value::Null)
        }
    }

    async fn login(&self, user: &str, password: &str) -> Result<String> {
        let v = self
            .call(
                Method::POST,
                "/api/v1/login",
                None,
                Some(json!({ "user": user, "password": password })),
                true,
            )
            .await
            .with_context(|| format!("logging in {user}"))?;
        v["token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the login answer for {user} has no token"))
    }
}

struct Worker {
    requester: String,
    approver: String,
}

/// One worker's loop: request, approve, list, until the deadline or the shared budget.
async fn work(api: Arc<Api>, w: Worker, profile: String, deadline: Instant, budget: Arc<AtomicU64>) -> [Samples; 3] {
    let mut samples: [Samples; 3] = Default::default();
    let [requests, approvals, lists] = &mut samples;
    let new_request = json!({ "profile": profile, "reason": "api load benchmark", "duration": "30m" });
    while Instant::now() < deadline && take_one(&budget) {
        let started = Instant::now();
        let result = api
            .call(
                Method::POST,
                "/api/v1/requests",
                Some(&w.requester),
                Some(new_request.clone()),
                true,
            )
            .await;
        let id = requests
            .record(started, result)
            .and_then(|r| r["id"].as_str().map(str::to_owned));
        if let Some(id) = id {
            let started = Instant::now();
            let result = api
                .call(
                    Method::POST,
                    &format!("/api/v1/requests/{id}/approve"),
                    Some(&w.approver),
                    Some(json!({})),
                    true,
                )
                .await
                .and_then(|r| match r["state"].as_str() {
                    Some("active") => Ok(r),
                    other => bail!("approved request {id} is {other:?}, not active"),
                });
            approvals.record(started, result);
        }
        let started = Instant::now();
        let result = api
            .call(Method::GET, "/api/v1/requests", Some(&w.requester), None, false)
            .await;
        lists.record(started, result);
    }
    samples
}

/// Takes one iteration from the shared budget; false once it is spent.
fn take_one(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// Nearest-rank percentile of sorted latencies.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn row(label: &str, op: &str, s: &mut Samples, elapsed: Duration) -> String {
    s.ok.sort_unstable();
    let count = s.ok.len() as u64 + s.errors;
    format!(
        "{label:<10} {op:<8} {count:>8} {rps:>9.1} {p50:>8} {p99:>8} {errors:>7}",
        rps = count as f64 / elapsed.as_secs_f64(),
        p50 = ms(percentile(&s.ok, 50.0)),
        p99 = ms(percentile(&s.ok, 99.0)),
        errors = s.errors,
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.workers == 0 || args.approvers == 0 {
        bail!("--workers and --approvers must be at least 1");
    }
    let pem = std::fs::read(&args.ca).with_context(|| format!("reading --ca {}", args.ca.display()))?;
    let http = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).context("--ca is not a PEM certificate")?)
        .timeout(CALL_TIMEOUT)
        .connect_timeout(CALL_TIMEOUT)
        .pool_max_idle_per_host(args.workers * 2)
        .build()?;
    let api = Arc::new(Api {
        http,
        base: args.url.trim_end_matches('/').to_owned(),
    });

    let password = |user: &str| format!("{user}{}", args.password_suffix);
    let approver_names: Vec<String> = (0..args.approvers)
        .map(|j| format!("{}{j}", args.approver_prefix))
        .collect();
    let mut approver_tokens = Vec::new();
    for name in &approver_names {
        approver_tokens.push(api.login(name, &password(name)).await?);
    }
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let name = format!("{}{i}", args.requester_prefix);
        workers.push(Worker {
            requester: api.login(&name, &password(&name)).await?,
            approver: approver_tokens[i % args.approvers].clone(),
        });
    }
    // The proxy answers 200 with the list; make sure the profile is there before timing.
    let profiles = api
        .call(Method::GET, "/api/v1/profiles", Some(&workers[0].requester), None, true)
        .await?;
    let known = profiles.as_array().is_some_and(|ps| {
        ps.iter()
            .any(|p| p["name"] == args.profile.as_str() && p["can_request"] == true)
    });
    if !known {
        bail!(
            "{}0 may not request profile {:?} on {}",
            args.requester_prefix,
            args.profile,
            args.url
        );
    }

    eprintln!(
        "{}: {} workers, {} approvers, for {:?} or {} iterations, against {}",
        args.label, args.workers, args.approvers, args.duration, args.count, args.url
    );
    let started = Instant::now();
    let deadline = started + args.duration;
    let budget = Arc::new(AtomicU64::new(args.count));
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|w| {
            tokio::spawn(work(
                Arc::clone(&api),
                w,
                args.profile.clone(),
                deadline,
                Arc::clone(&budget),
            ))
        })
        .collect();
    let mut by_op: [Samples; 3] = Default::default();
    for t in tasks {
        for (all, mine) in by_op.iter_mut().zip(t.await.context("a worker panicked")?) {
            all.merge(mine);
        }
    }
    let elapsed = started.elapsed();

    if !args.no_header {
        println!(
            "{:<10} {:<8} {:>8} {:>9} {:>8} {:>8} {:>7}",
            "backend", "op", "count", "req/s", "p50 ms", "p99 ms", "errors"
        );
    }
    let mut total = Samples::default();
    for (op, s) in OPS.iter().zip(by_op.iter_mut()) {
        println!("{}", row(&args.label, op.name(), s, elapsed));
        if let Some(e) = &s.first_error {
            eprintln!("{} {}: first error: {e}", args.label, op.name());
        }
        total.ok.extend_from_slice(&s.ok);
        total.errors += s.errors;
    }
    println!("{}", row(&args.label, "total", &mut total, elapsed));
    let cycles = by_op[Op::Request as usize].ok.len();
    eprintln!(
        "{}: {cycles} requests opened in {:.1}s ({:.1} full cycles/s)",
        args.label,
        elapsed.as_secs_f64(),
        cycles as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
