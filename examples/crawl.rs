//! A small polite crawler: a generated site of 500 pages across 5 local "hosts" (127.0.0.1 to
//! 127.0.0.5), crawled by following links from the first page (499 of the pages are reachable),
//! with per-host limits, politeness, timeouts and a progress line.
//!
//! - `max_per_key(4)`: at most 4 requests to one host at once. Pages of a busy host wait on
//!   their host, not on a worker, so the other hosts keep the workers busy.
//! - `min_interval_per_key(10 ms)`: two requests to one host start at least 10 ms apart.
//! - `task_timeout(1 s)`: a few pages never answer in time; their tasks end `TimedOut` at the
//!   deadline and a fresh worker takes the stuck one's place.
//!
//! `cargo run --release --example crawl`

#[path = "support/server.rs"]
mod server;

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use server::{Reply, Rng, Server};
use slowpool::{AsyncPool, TaskError, TaskId};

const HOSTS: usize = 5;
const PAGES_PER_HOST: u64 = 100;

/// What fetching one page gives.
struct Fetched {
    host: String,
    links: Vec<String>,
    took: Duration,
}

/// The generated site: page `n` of host `h` links to five pages across the hosts.
fn page(host: usize, n: u64, hosts: &[String]) -> Reply {
    let mut rng = Rng::new(host as u64 * 1_000 + n);
    let links: String = (0..5)
        .map(|_| {
            let to_host = rng.range(0..HOSTS as u64) as usize;
            let to_page = rng.range(0..PAGES_PER_HOST);
            format!(
                "<a href=\"http://{}/page/{to_page}\">p</a>\n",
                hosts[to_host]
            )
        })
        .collect();
    // One page in a hundred hangs for far longer than the crawler waits.
    let delay = if rng.range(0..100) == 0 {
        3_000
    } else {
        rng.range(5..40)
    };
    Reply {
        status: 200,
        body: format!("<html><body>{links}</body></html>"),
        delay: Duration::from_millis(delay),
    }
}

fn fetch(agent: &ureq::Agent, url: &str) -> Result<Fetched, String> {
    let started = Instant::now();
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    let mut body = String::new();
    response
        .body_mut()
        .as_reader()
        .read_to_string(&mut body)
        .map_err(|e| e.to_string())?;
    let links = body
        .split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    Ok(Fetched {
        host: host_of(url).to_string(),
        links,
        took: started.elapsed(),
    })
}

fn host_of(url: &str) -> &str {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or(url)
}

#[derive(Default)]
struct HostSummary {
    ok: usize,
    failed: usize,
    timed_out: usize,
    total: Duration,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Five hosts: the same generated site served on five loopback addresses.
    let listeners: Vec<std::net::TcpListener> = (1..=HOSTS)
        .map(|i| std::net::TcpListener::bind(format!("127.0.0.{i}:0")))
        .collect::<Result<_, _>>()?;
    let hosts: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    drop(listeners);
    for (h, addr) in hosts.iter().enumerate() {
        let names = hosts.clone();
        Server::start_on(addr, move |path| {
            let n = path
                .rsplit('/')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            page(h, n, &names)
        });
    }

    let agent: ureq::Agent = ureq::Agent::config_builder()
        // Per-phase timeouts: a global one would make ureq resolve every address on a
        // thread of its own.
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_recv_body(Some(Duration::from_secs(5)))
        .build()
        .into();
    let pool = AsyncPool::builder()
        .max_workers(32)
        .thread_name("crawl")
        .max_per_key(4)
        .min_interval_per_key(Duration::from_millis(10))
        .task_timeout(Duration::from_secs(1))
        .build(move |url: String| fetch(&agent, &url))?;

    let (mailbox, results) = unbounded::<(TaskId, Result<Result<Fetched, String>, TaskError>)>();
    let mut seen: HashSet<String> = HashSet::new();
    let mut url_of = std::collections::HashMap::new();
    let start = format!("http://{}/page/0", hosts[0]);
    seen.insert(start.clone());
    url_of.insert(
        pool.add_task_keyed_to(host_of(&start).to_string(), start.clone(), &mailbox)?,
        start,
    );

    let mut done = 0;
    let began = Instant::now();
    let mut summary: BTreeMap<String, HostSummary> = BTreeMap::new();
    while !url_of.is_empty() {
        let (id, result) = results.recv()?;
        let url = url_of.remove(&id).expect("a page we asked for");
        let host = summary.entry(host_of(&url).to_string()).or_default();
        match result {
            Ok(Ok(fetched)) => {
                host.ok += 1;
                host.total += fetched.took;
                debug_assert_eq!(fetched.host, host_of(&url));
                for link in fetched.links {
                    if seen.insert(link.clone()) {
                        let key = host_of(&link).to_string();
                        url_of.insert(pool.add_task_keyed_to(key, link.clone(), &mailbox)?, link);
                    }
                }
            }
            Ok(Err(_)) => host.failed += 1,
            Err(TaskError::TimedOut) => host.timed_out += 1,
            Err(_) => host.failed += 1,
        }
        done += 1;
        let stats = pool.stats();
        eprint!(
            "\r{done}/{} pages, {} running, {} waiting on their host   ",
            seen.len(),
            stats.busy,
            stats.waiting_on_key
        );
    }
    eprintln!();
    let elapsed = began.elapsed();

    println!(
        "{:<18} {:>6} {:>9} {:>7} {:>12}",
        "host", "pages", "timed out", "failed", "mean fetch"
    );
    for (host, s) in &summary {
        let mean = s.total.as_millis() as f64 / s.ok.max(1) as f64;
        println!(
            "{host:<18} {:>6} {:>9} {:>7} {:>9.1} ms",
            s.ok, s.timed_out, s.failed, mean
        );
    }
    let stats = pool.stats();
    println!(
        "{} pages in {:.2} s with {} workers; {} timed out, {} of their threads still blocked",
        seen.len(),
        elapsed.as_secs_f64(),
        stats.workers,
        stats.timed_out,
        stats.abandoned
    );
    // Dropping the pool joins its workers; the abandoned threads are not waited for.
    Ok(())
}
