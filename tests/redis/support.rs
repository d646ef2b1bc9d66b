//! Helpers for the `redis` feature's tests: a `redis-server` the test owns (restartable, with
//! AOF), a loopback proxy that can freeze, and stream readers; the integration tests' shared
//! helpers (watchdogs, `PATIENCE`) come from `tests/it/support.rs`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[path = "../it/support.rs"]
mod shared;

pub use shared::{gate, watchdog, watchdog_within, PATIENCE};

/// Polls `condition` every 10 ms until it holds; fails after `patience`. (The shared
/// `eventually` polls faster with a fixed patience; Redis round trips want neither.)
pub fn eventually_within(what: &str, patience: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "never happened within {patience:?}: {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` this test started, on a loopback port, with its own data directory;
/// killed and removed on drop.
pub struct Server {
    pub port: u16,
    dir: PathBuf,
    aof: bool,
    child: Option<Child>,
}

static SERVERS: AtomicU64 = AtomicU64::new(0);

impl Server {
    /// Starts a server; with `aof`, every write is appended and fsynced (`appendfsync
    /// always`) so a SIGKILL loses nothing Redis acknowledged.
    pub fn start(aof: bool) -> Server {
        let n = SERVERS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("slowpool-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Server {
            port: free_port(),
            dir,
            aof,
            child: None,
        };
        server.launch();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", ""];
        if self.aof {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            args.extend(["--appendonly", "no"]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("these tests need redis-server on the PATH ({e})"));
        self.child = Some(child);
        let url = self.url();
        eventually_within("redis-server answers PING", Duration::from_secs(20), || {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    /// `SHUTDOWN` (a clean stop: the AOF is flushed), then starts again on the same port with
    /// the same data.
    pub fn restart_clean(&mut self) {
        let mut c = con(&self.url());
        let _ = redis::cmd("SHUTDOWN").query::<()>(&mut c);
        let mut child = self.child.take().unwrap();
        child.wait().unwrap();
        self.launch();
    }

    /// SIGKILL, then starts again on the same port with the same data.
    pub fn restart_killed(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        self.launch();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis to test against: `ASYNC_POOL_REDIS_URL` (as CI sets it), else a server of the
/// test's own.
pub struct Redis {
    pub url: String,
    _server: Option<Server>,
}

pub fn redis() -> Redis {
    if let Ok(url) = std::env::var("ASYNC_POOL_REDIS_URL") {
        return Redis { url, _server: None };
    }
    let server = Server::start(false);
    Redis {
        url: server.url(),
        _server: Some(server),
    }
}

/// A stream name unique to one test run, so tests can share a server.
pub fn stream_name(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{test}:{}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn con(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

pub fn xlen(con: &mut redis::Connection, stream: &str) -> usize {
    redis::cmd("XLEN").arg(stream).query(con).unwrap()
}

/// How many entries the group has pending.
pub fn pending(con: &mut redis::Connection, stream: &str, group: &str) -> usize {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query(con)
        .unwrap();
    match summary {
        redis::Value::Array(parts) => redis::from_redis_value_ref(&parts[0]).unwrap(),
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

/// Ids pending with one consumer.
pub fn pending_of(
    con: &mut redis::Connection,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Vec<String> {
    let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(100_000)
        .arg(consumer)
        .query(con)
        .unwrap();
    reply.ids.into_iter().map(|p| p.id).collect()
}

/// An entry's fields, in order.
pub type Fields = Vec<(String, Vec<u8>)>;

/// Every entry of a stream: its id and fields.
pub fn entries(con: &mut redis::Connection, stream: &str) -> Vec<(String, Fields)> {
    let reply: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap();
    reply
        .into_iter()
        .map(|(id, flat)| {
            let fields = flat
                .chunks(2)
                .map(|kv| (String::from_utf8_lossy(&kv[0]).into_owned(), kv[1].clone()))
                .collect();
            (id, fields)
        })
        .collect()
}

pub fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// Entry ids recorded in a result stream, one per result.
pub fn result_entries(con: &mut redis::Connection, results: &str) -> Vec<String> {
    entries(con, results)
        .into_iter()
        .map(|(_, f)| String::from_utf8(field(&f, "entry").unwrap().to_vec()).unwrap())
        .collect()
}

/// How many results each entry has, and how many entries have more than one.
pub fn duplicates(all: &[String]) -> (HashMap<&String, usize>, usize) {
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for id in all {
        *counts.entry(id).or_default() += 1;
    }
    let dups = counts.values().filter(|n| **n > 1).count();
    (counts, dups)
}

/// A loopback TCP proxy to a port that can freeze: while frozen, it accepts connections and
/// reads what comes in but forwards nothing either way — a link that went silent. What it
/// read meanwhile is delivered when it thaws (late commands, as on a real network).
pub struct Proxy {
    pub port: u16,
    frozen: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let f = f.clone();
                    thread::spawn(move || pump(from, to, &f));
                }
            }
        });
        Proxy { port, frozen }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    while frozen.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(5));
    }
    let _ = to.shutdown(Shutdown::Write);
}
