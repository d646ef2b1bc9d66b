//! A tiny HTTP/1.1 server for the examples: 127.0.0.1, an ephemeral port, one thread per
//! connection, one request per connection. Each request may sleep before it answers, like a
//! slow remote site. No internet needed.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// What the server answers to one request.
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// How long to wait before answering.
    pub delay: Duration,
    /// A `Retry-After` header, in seconds (with a 503: "come back later").
    pub retry_after: Option<u32>,
}

/// A running server; it stops when the process exits.
pub struct Server {
    pub addr: SocketAddr,
}

impl Server {
    /// Starts a server on `127.0.0.1:0` that answers every request with `handler(path)`.
    pub fn start(handler: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Server {
        Server::start_on("127.0.0.1:0", handler)
    }

    /// Starts a server on `addr` (e.g. `127.0.0.2:0`).
    pub fn start_on(addr: &str, handler: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind(addr).expect("bind a local port");
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(handler);
        thread::Builder::new()
            .name("example-server".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let handler = handler.clone();
                    thread::spawn(move || {
                        let _ = answer(stream, &*handler);
                    });
                }
            })
            .unwrap();
        Server { addr }
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

fn answer(stream: TcpStream, handler: &dyn Fn(&str) -> Reply) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let reply = handler(path);
    thread::sleep(reply.delay);
    let mut stream = stream;
    let retry_after = reply
        .retry_after
        .map(|seconds| format!("Retry-After: {seconds}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "HTTP/1.1 {} OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n{retry_after}Connection: close\r\n\r\n{}",
        reply.status,
        reply.body.len(),
        reply.body
    )?;
    stream.flush()
}

/// The value of `name` in a query string (`/page?delay=5` → `delay` → `5`).
pub fn query<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let query = path.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

/// A small deterministic random generator (so a run can be repeated).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A number in `range`.
    pub fn range(&mut self, range: std::ops::Range<u64>) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        range.start + (self.0 >> 33) % (range.end - range.start)
    }
}
