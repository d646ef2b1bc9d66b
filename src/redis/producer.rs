//! `Producer`: adds payloads to a stream, optionally refusing past a capacity.

use std::fmt;
use std::time::{Duration, Instant};

use super::{scripts, StreamError, PAYLOAD};

/// Adds payloads to a stream.
///
/// ```no_run
/// use slowpool::redis::Producer;
///
/// let mut producer = Producer::connect("redis://127.0.0.1/", "urls")?;
/// let first = producer.push(b"http://127.0.0.1:8080/page/0")?; // an id such as "1732800000000-0"
/// let more = producer.push_batch((1..100).map(|n| format!("http://127.0.0.1:8080/page/{n}")))?;
/// assert_eq!(more.len(), 99);
/// assert!(!more.contains(&first)); // every entry has its own id
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Producer {
    con: redis::Connection,
    stream: String,
    capacity: Option<u64>,
}

impl Producer {
    /// Connects to `url` (`redis://host:port/`) to add to `stream`.
    ///
    /// # Errors
    ///
    /// The connection failed.
    pub fn connect(url: &str, stream: impl Into<String>) -> Result<Producer, StreamError> {
        let con = redis::Client::open(url)?.get_connection()?;
        Ok(Producer {
            con,
            stream: stream.into(),
            capacity: None,
        })
    }

    /// Refuses adds that would make the stream longer than `n` entries
    /// ([`StreamError::Full`]); [`push_wait`](Producer::push_wait) waits for room instead.
    /// Backpressure across machines: with workers deleting acknowledged entries (their
    /// default), the stream's length is the work not yet done. The check and the add are one
    /// atomic script.
    ///
    /// ```no_run
    /// use slowpool::redis::Producer;
    ///
    /// let mut producer = Producer::connect("redis://127.0.0.1/", "urls")?.capacity(100_000);
    /// match producer.push(b"https://example.com/") {
    ///     Err(e) if e.is_full() => println!("the workers are behind: try later"),
    ///     other => { other?; }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn capacity(mut self, n: u64) -> Producer {
        self.capacity = Some(n);
        self
    }

    /// Adds one payload (`XADD stream * payload <bytes>`); returns the entry id.
    ///
    /// # Errors
    ///
    /// Redis refused the command or the connection failed, or the stream is at its
    /// [`capacity`](Producer::capacity) ([`StreamError::Full`]).
    pub fn push(&mut self, payload: &[u8]) -> Result<String, StreamError> {
        Ok(self.push_batch([payload])?.remove(0))
    }

    /// Adds many payloads in one round trip; returns their ids in order. With a capacity,
    /// the whole batch is added or (when it would not fit) none of it.
    ///
    /// # Errors
    ///
    /// As for [`push`](Producer::push).
    pub fn push_batch<P: AsRef<[u8]>>(
        &mut self,
        payloads: impl IntoIterator<Item = P>,
    ) -> Result<Vec<String>, StreamError> {
        let payloads: Vec<P> = payloads.into_iter().collect();
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(capacity) = self.capacity {
            return match scripts::bounded_add(&mut self.con, &self.stream, capacity, &payloads)? {
                Ok(ids) => Ok(ids),
                Err(len) => Err(StreamError::Full { len, capacity }),
            };
        }
        let mut pipe = redis::pipe();
        for payload in &payloads {
            pipe.cmd("XADD")
                .arg(&self.stream)
                .arg("*")
                .arg(PAYLOAD)
                .arg(payload.as_ref());
        }
        Ok(pipe.query(&mut self.con)?)
    }

    /// Adds one payload, waiting up to `timeout` for room below the capacity (polling every
    /// 50 ms).
    ///
    /// # Errors
    ///
    /// As for [`push`](Producer::push); [`StreamError::Full`] once `timeout` has passed.
    pub fn push_wait(&mut self, payload: &[u8], timeout: Duration) -> Result<String, StreamError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.push(payload) {
                Err(e) if e.is_full() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
                }
                other => return other,
            }
        }
    }
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("stream", &self.stream)
            .field("capacity", &self.capacity)
            .finish()
    }
}
