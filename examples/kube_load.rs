//! A kubectl-like GET load on a Kubernetes API, against several targets in one run: the API
//! server directly, `kubectl proxy` in front of it, and jitgate. Every request asks for the
//! same object with a bearer token, over HTTP/2 where the target offers it (as client-go).
//!
//! Two phases, each with the targets interleaved in rounds: every round loads each target
//! in turn, in an order that changes from round to round (see `turns`), so that a drift
//! of the machine or of the API server over the run (its garbage collector, etcd's
//! compaction) and what one target leaves behind for the next are shared out rather than
//! landing on one target:
//!
//! - **throughput**: `--workers` workers per target, each with a connection of its own,
//!   each sending its next request when the last one is answered. With enough workers for
//!   the cores this saturates the machine, so its latencies are mostly queueing: they say
//!   how much CPU each path costs. With `--cpu NAME=PID` it prints each named process's CPU
//!   time per request.
//! - **latency at a fixed rate**: one client (one HTTP/2 connection where the target offers
//!   it, as kubectl or a controller has; a plain-HTTP target gets HTTP/1.1 and a connection
//!   per request in flight) sends requests on a fixed schedule, whatever is still in
//!   flight, at `--rate-fraction` of the slowest target's throughput, so that every target
//!   serves the same load and none is saturated. Its latencies say what a hop adds.
//!
//! Each target's ratio and added latency are against the first one. The p99 pooled over a
//! phase moves with any pause of a shared machine that lands in one target's turn, so each
//! table also gives, per target, the median over the rounds of what its p99 adds over the
//! first target's in the same round. `scripts/bench/kube`
//! sets up a cluster, the peers and the proxy and runs this; `scripts/bench/http` runs it
//! against a web app's static answer (any HTTPS GET will do, a cookie as a header); by hand:
//!
//! ```text
//! cargo run --release --example kube_load -- --path /api/v1/namespaces/bench/pods/web-1 \
//!     --target direct=https://127.0.0.1:6443,TOKEN,/tmp/kube/pki/apiserver.crt \
//!     --target jitgate=https://127.0.0.1:8443/k8s/lab,TOKEN,certs/ca.pem \
//!     --cpu apiserver=$(pgrep kube-apiserver) --cpu jitgate=$(pgrep -f 'jitgate serve')
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
    /// NAME=URL[,TOKEN[,CA_PEM[,HEADER:VALUE...]]]; the first is the baseline the others are
    /// compared with. Headers after the CA go with every request (e.g. the `Impersonate-*`
    /// headers a proxy adds, to see what they cost the API server alone); a value cannot
    /// hold a comma.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// The API path every request asks for
    #[arg(long, default_value = "/api/v1/namespaces/bench/pods/web-1")]
    path: String,
    /// Concurrent workers per target in the throughput phase, each with a connection of its own
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    workers: u32,
    /// How long each target is loaded in each phase, over all rounds, e.g. 10s
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured load on each target before the throughput phase's first round
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Rounds each phase's duration is split into, the targets taking turns in each; a
    /// multiple of the number of targets (twice it for an odd number) balances the order
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// The fixed-rate phase offers this fraction (0 to 1) of the slowest target's
    /// throughput; 0 skips it
    #[arg(long, default_value_t = 0.25, value_parser = parse_fraction)]
    rate_fraction: f64,
    /// NAME=PID: a process whose CPU time is counted while each target is loaded (repeatable)
    #[arg(long = "cpu")]
    cpu: Vec<String>,
    /// A second baseline (a target's NAME): each phase also prints what every target listed
    /// after it adds over it
    #[arg(long)]
    also_against: Option<String>,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

struct Target {
    name: String,
    uri: hyper::Uri,
    token: Option<String>,
    ca: Option<std::path::PathBuf>,
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
}

fn parse_target(s: &str, path: &str) -> Result<Target> {
    let Some((name, rest)) = s.split_once('=').filter(|(n, _)| !n.is_empty()) else {
        bail!("--target {s:?}: expected NAME=URL[,TOKEN[,CA_PEM[,HEADER:VALUE...]]]");
    };
    let mut parts = rest.split(',');
    let url = parts.next().unwrap_or_default().trim_end_matches('/');
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        bail!("--target {name}: {url:?} is not an http:// or https:// URL");
    }
    let token = parts.next().filter(|t| !t.is_empty()).map(str::to_owned);
    let ca = parts.next().filter(|c| !c.is_empty()).map(Into::into);
    let headers = parts
        .map(|h| {
            let Some((n, v)) = h.split_once(':') else {
                bail!("--target {name}: {h:?} is not HEADER:VALUE");
            };
            match (n.trim().parse(), v.trim().parse()) {
                (Ok(n), Ok(v)) => Ok((n, v)),
                _ => bail!("--target {name}: {h:?} is not a valid header"),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let uri = match format!("{url}{path}").parse() {
        Ok(u) => u,
        Err(e) => bail!("--target {name}: {url}{path}: {e}"),
    };
    Ok(Target {
        name: name.to_owned(),
        uri,
        token,
        ca,
        headers,
    })
}

struct Counted {
    name: String,
    pid: u32,
}

fn parse_cpu(s: &str) -> Result<Counted> {
    let Some((name, pid)) = s.split_once('=').filter(|(n, _)| !n.is_empty()) else {
        bail!("--cpu {s:?}: expected NAME=PID");
    };
    let Ok(pid) = pid.parse::<u32>() else {
        bail!("--cpu {name}: {pid:?} is not a process id");
    };
    if let Err(e) = cpu_ticks(pid) {
        bail!("--cpu {name}: process {pid}: {e}");
    }
    Ok(Counted {
        name: name.to_owned(),
        pid,
    })
}

/// User and system time of a process (all its threads) in clock ticks, from /proc.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = stat.rsplit_once(')').context("unexpected /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line; field 3 is the first here.
    Ok(f.get(11).context("short /proc stat")?.parse::<u64>()?
        + f.get(12).context("short /proc stat")?.parse::<u64>()?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
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
    // A target waits while the others take their turns: its connections must still be there.
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(None)
        .build(connector))
}

fn request(t: &Target) -> Result<hyper::Request<Empty<Bytes>>> {
    let mut b = hyper::Request::get(t.uri.clone())
        .header("accept", "application/json")
        .header("user-agent", "kube_load (kubectl-like)");
    if let Some(tok) = &t.token {
        b = b.header("authorization", format!("Bearer {tok}"));
    }
    for (n, v) in &t.headers {
        b = b.header(n, v);
    }
    Ok(b.body(Empty::new())?)
}

/// One request, answered 200 with its whole body read.
async fn get(c: &HttpClient, req: hyper::Request<Empty<Bytes>>) -> bool {
    match c.request(req).await {
        Ok(resp) => resp.status() == 200 && resp.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

/// A target's measurements in one phase, summed over its rounds.
#[derive(Default)]
struct Tally {
    /// Each measured request's latency in microseconds.
    latencies: Vec<u32>,
    errors: u64,
    elapsed: Duration,
    /// CPU ticks of each counted process while this target was loaded.
    ticks: Vec<u64>,
    /// Each round's own p99 in ms, in round order.
    round_p99: Vec<f64>,
}

impl Tally {
    fn add(&mut self, mut latencies: Vec<u32>, errors: u64, elapsed: Duration, ticks: Vec<u64>) {
        latencies.sort_unstable();
        self.round_p99.push(percentile(&latencies, 0.99));
        self.latencies.extend(latencies);
        self.errors += errors;
        self.elapsed += elapsed;
        if self.ticks.is_empty() {
            self.ticks = ticks;
        } else {
            self.ticks.iter_mut().zip(ticks).for_each(|(a, b)| *a += b);
        }
    }
}

/// Closed loop: each worker sends its next request when the last is answered, until `until`;
/// only what is sent from `from` on is recorded.
async fn closed(t: &Arc<Target>, workers: &[HttpClient], from: Instant, until: Instant) -> (Vec<u32>, u64) {
    let mut tasks = Vec::new();
    for c in workers {
        let (c, t) = (c.clone(), Arc::clone(t));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 14);
            let mut errors = 0u64;
            loop {
                let start = Instant::now();
                if start >= until {
                    break;
                }
                let Ok(req) = request(&t) else { break };
                let ok = get(&c, req).await;
                if start >= from {
                    if ok {
                        latencies.push(micros(start.elapsed()));
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
    for task in tasks {
        if let Ok((l, e)) = task.await {
            latencies.extend(l);
            errors += e;
        } else {
            errors += 1;
        }
    }
    (latencies, errors)
}

/// Open loop: a request every `1/rate` seconds for `span`, whatever is still in flight, each
/// timed from when it is sent.
async fn paced(t: &Arc<Target>, c: &HttpClient, rate: f64, span: Duration) -> Result<(Vec<u32>, u64)> {
    let period = Duration::from_secs_f64(1.0 / rate);
    let runtime = tokio::runtime::Handle::current();
    let (t, c) = (Arc::clone(t), c.clone());
    // tokio's timers tick in whole milliseconds: paced by them, requests would leave in
    // bursts of rate/1000 and queue behind each other. A thread's sleep keeps to the
    // microsecond.
    let tasks = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for k in 0u32.. {
            let due = start + period * k;
            if due - start >= span {
                break;
            }
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let (c, t) = (c.clone(), Arc::clone(&t));
            tasks.push(runtime.spawn(async move {
                let Ok(req) = request(&t) else { return None };
                let sent = Instant::now();
                get(&c, req).await.then(|| micros(sent.elapsed()))
            }));
        }
        tasks
    })
    .await?;
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok(Some(l)) => latencies.push(l),
            _ => errors += 1,
        }
    }
    Ok((latencies, errors))
}

/// The order of the targets in round `r`: a balanced Latin square (Williams design). Over
/// every `n` rounds (`2n` for an odd `n`, the second `n` mirrored) each target holds each
/// place equally often and comes right after each other target equally often.
fn turns(r: usize, n: usize) -> Vec<usize> {
    // The first row: 0, 1, n-1, 2, n-2, ...; each later row adds one to every entry.
    let first = (0..n).map(|k| if k % 2 == 1 { k.div_ceil(2) } else { (n - k / 2) % n });
    let mut order: Vec<usize> = first.map(|x| (x + r) % n).collect();
    if n % 2 == 1 && (r / n) % 2 == 1 {
        order.reverse();
    }
    order
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// A counted process that is gone would read as using no CPU: that ends the run instead.
fn snapshot(counted: &[Counted]) -> Result<Vec<u64>> {
    counted
        .iter()
        .map(|c| match cpu_ticks(c.pid) {
            Ok(t) => Ok(t),
            Err(e) => bail!("--cpu {}: process {} can no longer be read: {e}", c.name, c.pid),
        })
        .collect()
}

fn since(before: &[u64], counted: &[Counted]) -> Result<Vec<u64>> {
    Ok(snapshot(counted)?
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect())
}

/// What `a` adds over `b` at p99, round by round (within a round the two are loaded one
/// soon after the other), and the median of that over the rounds: a pause of the machine or
/// of the API server that lands in one target's turn moves the pooled p99 of that target
/// alone, and this hardly.
fn paired_p99(a: &Tally, b: &Tally) -> f64 {
    // A round with no answer at all has no p99: it is left out rather than counted.
    let mut d: Vec<f64> = a
        .round_p99
        .iter()
        .zip(&b.round_p99)
        .map(|(x, y)| x - y)
        .filter(|d| d.is_finite())
        .collect();
    d.sort_unstable_by(f64::total_cmp);
    match d.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => d[n / 2],
        n => (d[n / 2 - 1] + d[n / 2]) / 2.0,
    }
}

/// The latency table of one phase, and what the targets after `also` add over it; returns
/// each target's requests/s.
fn report(targets: &[Arc<Target>], tallies: &mut [Tally], with_ratio: bool, also: Option<usize>) -> Vec<f64> {
    println!(
        "{:<14} {:>10} {:>9} {:>9} {:>7} {:>10} {:>12} {:>12} {:>14}",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        if with_ratio { "ratio" } else { "" },
        "added p50",
        "added p99",
        "rounds' p99*"
    );
    let mut base: Option<(f64, f64, f64)> = None;
    let mut rates = Vec::new();
    let mut seen = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let tally = &mut tallies[i];
        tally.latencies.sort_unstable();
        let rps = tally.latencies.len() as f64 / tally.elapsed.as_secs_f64();
        rates.push(rps);
        let (p50, p99) = (percentile(&tally.latencies, 0.50), percentile(&tally.latencies, 0.99));
        seen.push((rps, p50, p99));
        let errors = tally.errors;
        let (ratio, added50, added99, paired) = match base {
            None => {
                base = Some((rps, p50, p99));
                ("1.00x".to_owned(), "-".to_owned(), "-".to_owned(), "-".to_owned())
            }
            Some((brps, b50, b99)) => (
                format!("{:.2}x", rps / brps),
                format!("{:+.2} ms", p50 - b50),
                format!("{:+.2} ms", p99 - b99),
                format!("{:+.2} ms", paired_p99(&tallies[i], &tallies[0])),
            ),
        };
        println!(
            "{:<14} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>10} {:>12} {:>12} {:>14}",
            t.name,
            rps,
            p50,
            p99,
            errors,
            if with_ratio { ratio.as_str() } else { "" },
            added50,
            added99,
            paired
        );
    }
    println!(
        "* rounds' p99: the median over the rounds of what each round's p99 adds over the first target's in that round"
    );
    if let Some(a) = also {
        let (arps, a50, a99) = seen[a];
        for (i, (t, (rps, p50, p99))) in targets.iter().zip(&seen).enumerate().skip(a + 1) {
            let ratio = if with_ratio {
                format!("{:.2}x the requests/s, ", rps / arps)
            } else {
                String::new()
            };
            println!(
                "{} over {}: {ratio}{:+.2} ms at p50, {:+.2} ms at p99 ({:+.2} ms by the rounds' p99*)",
                t.name,
                targets[a].name,
                p50 - a50,
                p99 - a99,
                paired_p99(&tallies[i], &tallies[a])
            );
        }
    }
    rates
}

fn report_cpu(targets: &[Arc<Target>], tallies: &[Tally], counted: &[Counted]) {
    if counted.is_empty() {
        return;
    }
    let hz = ticks_per_second();
    println!(
        "CPU per request in µs, while each target was loaded (read in {:.0} ms ticks at each turn's start and end):",
        1000.0 / hz
    );
    print!("{:<14}", "target");
    for c in counted {
        print!(" {:>14}", c.name);
    }
    println!(" {:>10}", "all");
    for (t, tally) in targets.iter().zip(tallies) {
        let n = tally.latencies.len().max(1) as f64;
        print!("{:<14}", t.name);
        let mut all = 0.0;
        for ticks in &tally.ticks {
            let us = *ticks as f64 / hz / n * 1e6;
            all += us;
            print!(" {:>14.0}", us);
        }
        println!(" {:>10.0}", all);
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let targets = args
        .targets
        .iter()
        .map(|t| parse_target(t, &args.path).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    let counted = args.cpu.iter().map(|c| parse_cpu(c)).collect::<Result<Vec<_>>>()?;
    let also = match &args.also_against {
        None => None,
        Some(name) => match targets.iter().position(|t| &t.name == name) {
            Some(0) => {
                bail!("--also-against {name}: that is the first target, which every table compares with already")
            }
            Some(i) if i + 1 == targets.len() => {
                bail!("--also-against {name}: no target is listed after it, so there is nothing to compare")
            }
            Some(i) => Some(i),
            None => bail!("--also-against {name}: no --target has that name"),
        },
    };
    let n = targets.len();
    let cycle = if n % 2 == 1 { 2 * n } else { n };
    if n > 1 && !(args.rounds as usize).is_multiple_of(cycle) {
        eprintln!(
            "note: with {n} targets the order of turns is balanced over a multiple of {cycle} rounds; {} rounds leave some targets in some places more often",
            args.rounds
        );
    }
    let rounds = args.rounds;
    let slice = args.duration / rounds;

    // One request first: a target that does not answer 200 is a set-up error, not a number.
    let mut workers = Vec::new();
    for t in &targets {
        let probe = client(t.ca.as_deref())?;
        let resp = match probe.request(request(t)?).await {
            Ok(r) => r,
            Err(e) => bail!("{}: {}: {e:?}", t.name, t.uri),
        };
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status != 200 {
            bail!("{}: {status}: {}", t.name, String::from_utf8_lossy(&body));
        }
        workers.push(
            (0..args.workers)
                .map(|_| client(t.ca.as_deref()))
                .collect::<Result<Vec<_>>>()?,
        );
    }

    println!(
        "GET {}: each phase {:?} per target, in {rounds} rounds with the targets taking turns",
        args.path, args.duration
    );
    println!(
        "\nthroughput: {} workers per target, each with its own connection, each waiting for its answer",
        args.workers
    );
    for (t, w) in targets.iter().zip(&workers) {
        // Recording from the end on records nothing: the warm-up's answers are dropped.
        let until = Instant::now() + args.warmup;
        closed(t, w, until, until).await;
    }
    let mut tallies: Vec<Tally> = targets.iter().map(|_| Tally::default()).collect();
    for r in 0..rounds as usize {
        for i in turns(r, targets.len()) {
            let before = snapshot(&counted)?;
            let start = Instant::now();
            let (l, e) = closed(&targets[i], &workers[i], start, start + slice).await;
            // Requests count by when they were sent, so the slice is the span: the answers
            // still awaited after it only add to the CPU read here.
            tallies[i].add(l, e, slice, since(&before, &counted)?);
        }
    }
    let rates = report(&targets, &mut tallies, true, also);
    report_cpu(&targets, &tallies, &counted);

    if args.rate_fraction <= 0.0 {
        return Ok(());
    }
    // Of the slowest target's, so that every target keeps up; at least one a second.
    let (slowest, slowest_rate) = targets
        .iter()
        .zip(&rates)
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(t, r)| (t.name.as_str(), *r))
        .unwrap_or(("-", 0.0));
    let rate = (slowest_rate * args.rate_fraction).max(1.0);
    println!(
        "\nlatency at a fixed rate: {rate:.0} requests/s ({} of the slowest throughput, {slowest}'s) from one client, sent whatever is in flight",
        args.rate_fraction
    );
    let mut paced_clients = Vec::new();
    for t in &targets {
        let c = client(t.ca.as_deref())?;
        if !get(&c, request(t)?).await {
            bail!("{}: the fixed-rate client's first request failed", t.name);
        }
        paced_clients.push(c);
    }
    let mut tallies: Vec<Tally> = targets.iter().map(|_| Tally::default()).collect();
    for r in 0..rounds as usize {
        for i in turns(r, targets.len()) {
            let (l, e) = paced(&targets[i], &paced_clients[i], rate, slice).await?;
            tallies[i].add(l, e, slice, Vec::new());
        }
    }
    report(&targets, &mut tallies, false, also);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::turns;

    #[test]
    fn every_target_holds_every_place_and_follows_every_other_equally_often() {
        for n in 1..=6 {
            let rounds = if n % 2 == 1 { 2 * n } else { n };
            let mut place = vec![vec![0; n]; n];
            let mut after = vec![vec![0; n]; n];
            for r in 0..rounds {
                let order = turns(r, n);
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "round {r} of {n}: {order:?}");
                for (p, &t) in order.iter().enumerate() {
                    place[t][p] += 1;
                }
                for w in order.windows(2) {
                    after[w[0]][w[1]] += 1;
                }
            }
            let per_place = rounds / n;
            assert!(place.iter().flatten().all(|&c| c == per_place), "{n}: {place:?}");
            let per_pair = if n % 2 == 1 { 2 } else { 1 };
            for (a, row) in after.iter().enumerate() {
                for (b, &c) in row.iter().enumerate() {
                    assert_eq!(c, if a == b { 0 } else { per_pair }, "{n}: {after:?}");
                }
            }
        }
    }
}
