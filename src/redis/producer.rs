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
    /// Connects to `url` (`redis://host:port/`, `redis://:password@host:port/db`) to add to
    /// `stream`, with no capacity. Creates nothing: Redis creates the stream with the first
    /// add.
    ///
    /// # Errors
    ///
    /// `url` is not a Redis URL, or the connection failed ([`StreamError::Redis`]). The
    /// connection is not retried, here or later: a failed call leaves reconnecting to the
    /// caller (connect a new `Producer`).
    ///
    /// ```
    /// use slowpool::redis::Producer;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-connect-{}", std::process::id());
    /// let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// let mut producer = Producer::connect(&url, stream)?;
    /// let exists: bool = redis::cmd("EXISTS").arg(stream).query(&mut redis)?;
    /// assert!(!exists); // not yet
    /// producer.push(b"https://example.com/")?;
    /// assert_eq!(redis::cmd("XLEN").arg(stream).query::<u64>(&mut redis)?, 1);
    ///
    /// assert!(Producer::connect("127.0.0.1:6379", stream).is_err()); // no `redis://`
    /// # redis::cmd("DEL").arg(stream).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    /// atomic script, so producers on many machines cannot overshoot it together. A capacity
    /// of 0 refuses every add.
    ///
    /// ```
    /// use slowpool::redis::{Producer, StreamError};
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-capacity-{}", std::process::id());
    /// let mut producer = Producer::connect(&url, stream)?.capacity(2);
    /// producer.push_batch(["https://example.com/a", "https://example.com/b"])?;
    /// match producer.push(b"https://example.com/c") {
    ///     Err(StreamError::Full { len, capacity }) => assert_eq!((len, capacity), (2, 2)),
    ///     other => panic!("the workers are behind: expected Full, got {other:?}"),
    /// }
    /// # redis::cmd("DEL").arg(stream)
    /// #     .exec(&mut redis::Client::open(url.as_str())?.get_connection()?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn capacity(mut self, n: u64) -> Producer {
        self.capacity = Some(n);
        self
    }

    /// Adds one payload (`XADD stream * payload <bytes>`); returns the entry id. Any bytes
    /// are accepted, an empty payload too; ids increase with each add.
    ///
    /// # Errors
    ///
    /// Redis refused the command or the connection failed, or the stream is at its
    /// [`capacity`](Producer::capacity) ([`StreamError::Full`]). After a connection error the
    /// payload may or may not have been added.
    ///
    /// ```
    /// use redis::streams::StreamRangeReply;
    /// use slowpool::redis::Producer;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-push-{}", std::process::id());
    /// let mut producer = Producer::connect(&url, stream)?;
    /// let first = producer.push(b"https://example.com/")?;
    /// let second = producer.push(&[0xff, 0x00])?; // bytes, not only text
    /// assert_ne!(first, second);
    ///
    /// let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// let added: StreamRangeReply =
    ///     redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query(&mut redis)?;
    /// assert_eq!(added.ids[0].id, first);
    /// assert_eq!(added.ids[0].get::<Vec<u8>>("payload"), Some(b"https://example.com/".to_vec()));
    /// assert_eq!(added.ids[1].get::<Vec<u8>>("payload"), Some(vec![0xff, 0x00]));
    /// # redis::cmd("DEL").arg(stream).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push(&mut self, payload: &[u8]) -> Result<String, StreamError> {
        Ok(self.push_batch([payload])?.remove(0))
    }

    /// Adds many payloads in one round trip; returns their ids in order. An empty batch
    /// returns no ids without asking Redis. With a capacity, the whole batch is added or
    /// (when it would not fit) none of it: a batch larger than the capacity is always refused.
    ///
    /// # Errors
    ///
    /// As for [`push`](Producer::push).
    ///
    /// ```
    /// use slowpool::redis::Producer;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-batch-{}", std::process::id());
    /// let mut producer = Producer::connect(&url, stream)?;
    /// let ids = producer.push_batch((0..3).map(|n| format!("https://example.com/{n}")))?;
    /// assert_eq!(ids.len(), 3);
    /// assert!(ids.windows(2).all(|w| w[0] != w[1])); // one id each, in the order given
    /// assert!(producer.push_batch(Vec::<Vec<u8>>::new())?.is_empty());
    ///
    /// let mut bounded = Producer::connect(&url, stream)?.capacity(4);
    /// let refused = bounded.push_batch(["a", "b"]).unwrap_err(); // 3 + 2 > 4
    /// assert!(refused.is_full());
    /// let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// assert_eq!(redis::cmd("XLEN").arg(stream).query::<u64>(&mut redis)?, 3); // none added
    /// # redis::cmd("DEL").arg(stream).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    /// 50 ms). Without a capacity, or with room, it is [`push`](Producer::push); a
    /// `timeout` of zero tries once.
    ///
    /// # Errors
    ///
    /// As for [`push`](Producer::push); [`StreamError::Full`] once `timeout` has passed.
    /// Other errors return at once, without waiting.
    ///
    /// ```
    /// use slowpool::redis::Producer;
    /// use std::time::Duration;
    ///
    /// # let url = std::env::var("ASYNC_POOL_REDIS_URL");
    /// # let url = url.unwrap_or_else(|_| "redis://127.0.0.1/".into());
    /// # let stream = &format!("doc-wait-{}", std::process::id());
    /// let mut producer = Producer::connect(&url, stream)?.capacity(1);
    /// producer.push(b"first")?;
    /// let waited = producer.push_wait(b"second", Duration::from_millis(10));
    /// assert!(waited.unwrap_err().is_full()); // no room came in 10 ms
    ///
    /// let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    /// let added = std::thread::scope(|s| {
    ///     // A worker finishes the first entry meanwhile: its deletion makes room.
    ///     s.spawn(|| redis::cmd("XTRIM").arg(stream).arg("MAXLEN").arg(0).exec(&mut redis));
    ///     producer.push_wait(b"second", Duration::from_secs(10))
    /// });
    /// assert!(added.is_ok());
    /// # redis::cmd("DEL").arg(stream).exec(&mut redis)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
