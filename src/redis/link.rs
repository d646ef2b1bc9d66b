//! The worker's one connection: timeouts on every call, and reconnecting with a capped
//! exponential backoff when a call fails for connection reasons.
//!
//! A call that fails for a connection reason (reset, end of file, a response slower than the
//! read timeout, a server loading its data after a restart) drops the connection: after a
//! timeout its reply may still arrive, so the socket can never be trusted again. Commands
//! whose fate is unknown are safe to send again because every settling command is fenced
//! (see `scripts.rs`).

use crate::backoff::Backoff;
use std::time::{Duration, Instant};

use redis::{Client, Connection, RedisError};

use super::StreamError;

/// A failed call: the link went down (retry after reconnecting), or Redis refused it.
pub(crate) enum Fault {
    Down(RedisError),
    Refused(RedisError),
}

impl From<Fault> for StreamError {
    fn from(fault: Fault) -> StreamError {
        match fault {
            Fault::Down(e) | Fault::Refused(e) => StreamError::Redis(e),
        }
    }
}

/// Whether a failed call should be retried on a new connection.
pub(crate) fn is_transient(error: &RedisError) -> bool {
    if error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
    {
        return true;
    }
    // A server starting up (LOADING), busy with a script, paused in a failover, or whose
    // group vanished with a restart that kept no data (NOGROUP: reconnecting recreates it).
    let text = error.to_string();
    [
        "LOADING",
        "BUSY",
        "TRYAGAIN",
        "MASTERDOWN",
        "READONLY",
        "NOGROUP",
    ]
    .iter()
    .any(|code| error.code() == Some(code) || text.contains(code))
}

/// Timeouts and reconnect policy of a [`Link`].
#[derive(Debug, Clone)]
pub(crate) struct LinkSettings {
    pub(crate) connect_timeout: Duration,
    /// How long any reply may take beyond the command's own blocking time.
    pub(crate) response_timeout: Duration,
    pub(crate) reconnect: Backoff,
    pub(crate) reconnect_limit: Option<Duration>,
}

pub(crate) struct Link {
    client: Client,
    con: Option<Connection>,
    settings: LinkSettings,
    /// Since when the link has been down, the failed attempts since, and the last error.
    down: Option<(Instant, u64, RedisError)>,
    next_attempt: Instant,
    /// The read timeout set on the current connection.
    read_timeout: Duration,
}

impl Link {
    /// Connects once; failing here is an error for the caller (nothing retries a first
    /// connection: a wrong address should fail fast).
    pub(crate) fn connect(url: &str, settings: LinkSettings) -> Result<Link, StreamError> {
        let client = Client::open(url)?;
        let mut link = Link {
            client,
            con: None,
            read_timeout: settings.response_timeout,
            settings,
            down: None,
            next_attempt: Instant::now(),
        };
        link.con = Some(link.open().map_err(StreamError::Redis)?);
        Ok(link)
    }

    fn open(&mut self) -> Result<Connection, RedisError> {
        let con = self
            .client
            .get_connection_with_timeout(self.settings.connect_timeout)?;
        con.set_read_timeout(Some(self.settings.response_timeout))?;
        con.set_write_timeout(Some(self.settings.response_timeout))?;
        self.read_timeout = self.settings.response_timeout;
        Ok(con)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.con.is_some()
    }

    /// Runs `f` on the connection, with replies allowed `extra` beyond the response timeout
    /// (a blocking read's `BLOCK`). A connection fault drops the connection.
    pub(crate) fn call<T>(
        &mut self,
        extra: Duration,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Fault> {
        let Some(con) = self.con.as_mut() else {
            let error = match &self.down {
                Some((_, _, e)) => e.to_string(),
                None => "not connected".to_string(),
            };
            return Err(Fault::Down(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                error,
            ))));
        };
        let wanted = self.settings.response_timeout + extra;
        if wanted != self.read_timeout {
            if let Err(e) = con.set_read_timeout(Some(wanted)) {
                self.went_down(e);
                return Err(Fault::Down(self.last_error()));
            }
            self.read_timeout = wanted;
        }
        match f(con) {
            Ok(value) => Ok(value),
            Err(e) if is_transient(&e) => {
                self.went_down(e);
                Err(Fault::Down(self.last_error()))
            }
            Err(e) => Err(Fault::Refused(e)),
        }
    }

    fn last_error(&self) -> RedisError {
        match &self.down {
            Some((_, _, e)) => RedisError::from(std::io::Error::other(e.to_string())),
            None => RedisError::from(std::io::Error::other("connection lost")),
        }
    }

    fn went_down(&mut self, error: RedisError) {
        self.con = None;
        let now = Instant::now();
        match &mut self.down {
            Some((_, _, last)) => *last = error,
            None => {
                self.down = Some((now, 0, error));
                self.next_attempt = now;
            }
        }
    }

    /// When the next reconnect attempt is due (now if the link is up).
    pub(crate) fn next_attempt(&self) -> Instant {
        self.next_attempt
    }

    /// Tries to reconnect if an attempt is due; runs `setup` on a new connection. Returns
    /// `Ok(true)` when the link is up again, `Ok(false)` when still down, and
    /// `Err(Disconnected)` past the reconnect limit.
    pub(crate) fn reconnect(
        &mut self,
        setup: impl FnOnce(&mut Connection) -> redis::RedisResult<()>,
    ) -> Result<bool, StreamError> {
        if self.con.is_some() {
            return Ok(true);
        }
        let now = Instant::now();
        if now < self.next_attempt {
            return Ok(false);
        }
        let attempt = self
            .open()
            .and_then(|mut con| setup(&mut con).map(|()| con));
        match attempt {
            Ok(con) => {
                self.con = Some(con);
                self.down = None;
                Ok(true)
            }
            Err(e) => {
                let (since, attempts) = match &self.down {
                    Some((since, n, _)) => (*since, n + 1),
                    None => (now, 1),
                };
                if !is_transient(&e) {
                    return Err(StreamError::Redis(e));
                }
                if let Some(limit) = self.settings.reconnect_limit {
                    if since.elapsed() >= limit {
                        return Err(StreamError::Disconnected {
                            down_for: since.elapsed(),
                            last: e,
                        });
                    }
                }
                self.next_attempt = Instant::now() + self.settings.reconnect.after(attempts);
                self.down = Some((since, attempts, e));
                Ok(false)
            }
        }
    }
}
