//! Scrape 200 pages from a slow local site with 32 workers, printing each result as it arrives.
//!
//! The example starts its own HTTP server on 127.0.0.1: every page answers after a random
//! delay of 10–500 ms, and one page in fifty fails. Results come back in the order the pages
//! finish, so one slow page never holds back the others.
//!
//! `cargo run --release --example scrape`

#[path = "support/server.rs"]
mod server;

use std::io::Read;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, unbounded};
use server::{query, Reply, Rng, Server};
use slowpool::{AsyncPool, Mailbox};

const PAGES: u64 = 200;
const WORKERS: usize = 32;

/// What the callback returns for one page.
#[derive(Debug)]
struct Page {
    url: String,
    bytes: usize,
    took: Duration,
}

fn fetch(agent: &ureq::Agent, url: String) -> Result<Page, String> {
    let started = Instant::now();
    let mut response = agent.get(&url).call().map_err(|e| format!("{url}: {e}"))?;
    let mut body = String::new();
    response
        .body_mut()
        .as_reader()
        .read_to_string(&mut body)
        .map_err(|e| format!("{url}: {e}"))?;
    Ok(Page {
        url,
        bytes: body.len(),
        took: started.elapsed(),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let site = Server::start(|path| {
        let delay = query(path, "delay")
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        let status = if path.contains("broken") { 500 } else { 200 };
        Reply {
            status,
            body: format!(
                "<html><body>{}</body></html>",
                "x".repeat(1_000 + delay as usize)
            ),
            delay: Duration::from_millis(delay),
            retry_after: None,
        }
    });

    let agent: ureq::Agent = ureq::Agent::config_builder()
        // Per-phase timeouts: a global one would make ureq resolve every address on a
        // thread of its own.
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_recv_body(Some(Duration::from_secs(10)))
        .build()
        .into();
    let pool = AsyncPool::builder()
        .max_workers(WORKERS)
        .thread_name("scrape")
        .build(move |url: String| fetch(&agent, url))?;

    let mut rng = Rng::new(2024);
    let mut total_delay = Duration::ZERO;
    let (mailbox, results): (Mailbox<Result<Page, String>>, _) = unbounded();
    let started = Instant::now();
    for n in 0..PAGES {
        let delay = rng.range(10..500);
        total_delay += Duration::from_millis(delay);
        let name = if n % 50 == 49 { "broken" } else { "page" };
        pool.add_task_to(site.url(&format!("/{name}/{n}?delay={delay}")), &mailbox)?;
    }

    let ticker = tick(Duration::from_millis(250));
    let (mut ok, mut failed, mut bytes, mut received) = (0, 0, 0, 0);
    while received < PAGES {
        select! {
            recv(results) -> done => {
                let done = done?;
                let id = done.id;
                received += 1;
                match done.result {
                    Ok(Ok(page)) => {
                        ok += 1;
                        bytes += page.bytes;
                        println!("{id:>10}  {:>6} B in {:>4} ms  {}", page.bytes, page.took.as_millis(), page.url);
                    }
                    Ok(Err(error)) => {
                        failed += 1;
                        println!("{id:>10}  failed: {error}");
                    }
                    Err(error) => {
                        failed += 1;
                        println!("{id:>10}  {error}");
                    }
                }
            }
            recv(ticker) -> _ => {
                eprintln!("-- {received}/{PAGES} done: {}", pool.stats());
            }
        }
    }
    let elapsed = started.elapsed();
    pool.shutdown();
    println!();
    println!("{ok} pages fetched ({bytes} bytes), {failed} failed, with {WORKERS} workers");
    println!(
        "took {:.2} s; one at a time would take {:.1} s ({:.0}x faster)",
        elapsed.as_secs_f64(),
        total_delay.as_secs_f64(),
        total_delay.as_secs_f64() / elapsed.as_secs_f64()
    );
    Ok(())
}
