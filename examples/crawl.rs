//! A small polite crawler: a generated site of 500 pages across 5 local "hosts" (127.0.0.1 to
//! 127.0.0.5), crawled by following links from the first page, as one keyed stream.
//!
//! - One HTTP agent shared by every worker: one connection pool for the crawl (an agent per
//!   worker would keep one per thread).
//! - `pool.stream(urls).key(host).retry(policy).keep_input()`: the URLs stream through the pool
//!   keyed by host. The stream's input is the crawl frontier, which the loop below fills with
//!   the links each page yields.
//! - `max_per_key(4)`, `min_interval_per_key(10 ms)`: at most 4 requests to one host at once,
//!   starting at least 10 ms apart. Pages of a busy host wait on their host, not on a worker.
//! - `task_timeout(1 s)`: a few pages never answer in time; their attempts end `TimedOut` and a
//!   fresh worker takes the stuck one's place.
//! - Retries: some pages answer `503` with `Retry-After: 1` the first time; the policy waits
//!   exactly that long (holding no worker) and asks again. Missing pages (`404`) are not
//!   retried; a page that times out gets one more try.
//! - Every ending comes back with its URL (`keep_input`): no map of URLs by task id.
//!
//! `cargo run --release --example crawl`

#[path = "support/server.rs"]
mod server;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::io::Read;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use server::{Reply, Rng, Server};
use slowpool::{AsyncPool, Failed, Flat, Retry, TaskError};

const HOSTS: usize = 5;
const PAGES_PER_HOST: u64 = 100;

/// What fetching one page gives.
struct Fetched {
    url: String,
    links: Vec<String>,
    took: Duration,
}

/// Why a fetch gave no page.
#[derive(Debug)]
enum FetchError {
    /// `503` with `Retry-After`: come back after this long.
    Busy(Duration),
    /// Any other status that is not `200`.
    Status(u16),
    /// The connection or the body failed.
    Io(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Busy(wait) => write!(f, "busy, retry after {wait:?}"),
            FetchError::Status(status) => write!(f, "HTTP {status}"),
            FetchError::Io(error) => f.write_str(error),
        }
    }
}

/// The generated site: page `n` of host `h` links to five pages across the hosts (one link in
/// fifty to a page that does not exist).
fn page(host: usize, n: u64, hosts: &[String], asked: &Mutex<HashSet<(usize, u64)>>) -> Reply {
    if n >= PAGES_PER_HOST {
        return reply(404, String::new(), 5, None);
    }
    let mut rng = Rng::new(host as u64 * 1_000 + n);
    let links: String = (0..5)
        .map(|_| {
            let to_host = rng.range(0..HOSTS as u64) as usize;
            let to_page = match rng.range(0..50) {
                0 => PAGES_PER_HOST + rng.range(0..10), // a broken link
                _ => rng.range(0..PAGES_PER_HOST),
            };
            format!(
                "<a href=\"http://{}/page/{to_page}\">p</a>\n",
                hosts[to_host]
            )
        })
        .collect();
    let roll = rng.range(0..100);
    // One page in a hundred hangs for far longer than the crawler waits.
    if roll == 0 {
        return reply(200, links, 3_000, None);
    }
    // One in twenty is busy the first time it is asked.
    let first_time = asked.lock().unwrap().insert((host, n));
    if roll < 6 && first_time {
        return reply(503, String::new(), 5, Some(1));
    }
    reply(200, links, rng.range(5..40), None)
}

fn reply(status: u16, links: String, delay_ms: u64, retry_after: Option<u32>) -> Reply {
    Reply {
        status,
        body: format!("<html><body>{links}</body></html>"),
        delay: Duration::from_millis(delay_ms),
        retry_after,
    }
}

/// The crawler's HTTP agent, shared by every worker.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        // Per-phase timeouts: a global one would make ureq resolve every address on a thread
        // of its own.
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_recv_body(Some(Duration::from_secs(5)))
        // Statuses are the crawler's business (503 + Retry-After), not errors of the agent.
        .http_status_as_error(false)
        .build()
        .into()
}

fn fetch(agent: &ureq::Agent, url: String) -> Result<Fetched, FetchError> {
    let started = Instant::now();
    let io = |e: ureq::Error| FetchError::Io(e.to_string());
    let mut response = agent.get(&url).call().map_err(io)?;
    match response.status().as_u16() {
        200 => {}
        503 => {
            let seconds = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1);
            return Err(FetchError::Busy(Duration::from_secs(seconds)));
        }
        status => return Err(FetchError::Status(status)),
    }
    let mut body = String::new();
    response
        .body_mut()
        .as_reader()
        .read_to_string(&mut body)
        .map_err(|e| FetchError::Io(e.to_string()))?;
    let links = body
        .split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    Ok(Fetched {
        url,
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
    retried: usize,
    failed: usize,
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
    let asked: &'static Mutex<HashSet<(usize, u64)>> = Box::leak(Box::default());
    for (h, addr) in hosts.iter().enumerate() {
        let names = hosts.clone();
        Server::start_on(addr, move |path| {
            let n = path
                .rsplit('/')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            page(h, n, &names, asked)
        });
    }

    let pool = AsyncPool::builder()
        .max_workers(32)
        .thread_name("crawl")
        .max_per_key(4)
        .min_interval_per_key(Duration::from_millis(10))
        .task_timeout(Duration::from_secs(1))
        .build({
            let agent = agent();
            move |url: String| fetch(&agent, url)
        })?;
    let policy = Retry::<FetchError>::attempts(3)
        .backoff(Duration::from_millis(50), Duration::from_secs(2))
        .when(|attempt| match attempt.error() {
            Failed::Callback(FetchError::Busy(wait)) => Some(*wait),
            Failed::Callback(FetchError::Status(404)) => None,
            Failed::Task(TaskError::TimedOut) if attempt.number() >= 2 => None,
            _ => Some(attempt.backoff()),
        });

    // The frontier: URLs found but not yet handed to the pool. The stream pulls from it as
    // the pool has room; the loop below pushes the links of every page.
    let start = format!("http://{}/page/0", hosts[0]);
    let frontier = Rc::new(RefCell::new(VecDeque::from([start.clone()])));
    let mut seen: HashSet<String> = HashSet::from([start]);
    let feed = frontier.clone();
    let urls = std::iter::from_fn(move || feed.borrow_mut().pop_front());

    let began = Instant::now();
    let mut summary: BTreeMap<String, HostSummary> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut done = 0;
    let crawl = pool
        .stream(urls)
        .key(|url: &String| host_of(url).to_string())
        .retry(policy)
        .keep_input();
    for ending in crawl {
        done += 1;
        match ending.result.flat() {
            Ok(page) => {
                let host = summary.entry(host_of(&page.url).to_string()).or_default();
                host.ok += 1;
                host.retried += usize::from(ending.attempts > 1);
                host.total += page.took;
                for link in page.links {
                    if seen.insert(link.clone()) {
                        frontier.borrow_mut().push_back(link);
                    }
                }
            }
            Err(error) => {
                // The URL comes back from the pool with its ending.
                let url = ending.tag;
                summary.entry(host_of(&url).to_string()).or_default().failed += 1;
                failures.push(format!(
                    "{url}: {error} (after {} attempt{})",
                    ending.attempts,
                    if ending.attempts == 1 { "" } else { "s" }
                ));
            }
        }
        let stats = pool.stats();
        eprint!(
            "\r{done}/{} pages, {} running, {} waiting on their host, {} waiting to retry   ",
            seen.len(),
            stats.busy,
            stats.waiting_on_key,
            stats.waiting_retry
        );
    }
    eprintln!();
    let elapsed = began.elapsed();

    println!(
        "{:<18} {:>6} {:>8} {:>7} {:>12}",
        "host", "pages", "retried", "failed", "mean fetch"
    );
    for (host, s) in &summary {
        let mean = s.total.as_millis() as f64 / s.ok.max(1) as f64;
        println!(
            "{host:<18} {:>6} {:>8} {:>7} {:>9.1} ms",
            s.ok, s.retried, s.failed, mean
        );
    }
    failures.sort();
    let (missing, others): (Vec<_>, Vec<_>) = failures.iter().partition(|f| f.contains("404"));
    println!("failed: {} broken links (404), and:", missing.len());
    for failure in others {
        println!("  {failure}");
    }
    let stats = pool.stats();
    println!(
        "{} pages in {:.2} s with {} workers: {} retries, {} pages timed out for good, {} threads still blocked",
        done,
        elapsed.as_secs_f64(),
        stats.workers,
        stats.retried,
        stats.timed_out,
        stats.abandoned
    );
    // Dropping the pool joins its workers; the abandoned threads are not waited for.
    Ok(())
}
