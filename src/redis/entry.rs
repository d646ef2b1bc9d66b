//! What the pool's callback receives, and how it says an entry failed.

use std::fmt;

/// One stream entry, as the pool's callback receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's id in the stream.
    pub id: String,
    /// The entry's `payload` field.
    pub payload: Vec<u8>,
    /// How many times Redis has delivered this entry, this delivery included (1 the first
    /// time). Exact: claims and retries read and set the count Redis keeps.
    pub deliveries: u64,
}

impl Entry {
    /// Returns the payload as text, or a [permanent](Failure::permanent) failure when it is
    /// not UTF-8 — so `entry.payload_str()?` in a callback returning `Result<_, Failure>`
    /// dead-letters a malformed entry at once instead of retrying it.
    ///
    /// ```
    /// use slowpool::redis::Entry;
    ///
    /// let entry = Entry { id: "1-0".into(), payload: vec![0xff], deliveries: 1 };
    /// let failure = entry.payload_str().unwrap_err();
    /// assert!(failure.is_permanent());
    /// ```
    pub fn payload_str(&self) -> Result<&str, Failure> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| Failure::permanent(format!("payload is not UTF-8: {e}")))
    }
}

/// An error a stream callback returns: its text is recorded, and [`is_permanent`] decides
/// between a retry after a backoff and the dead-letter stream at once.
///
/// Implemented for `String`, `&'static str`, `std::io::Error`, boxed errors (all transient)
/// and [`Failure`] (either). For your own error type, `impl EntryError for MyError {}` makes it
/// transient; override `is_permanent` to reject some inputs for good.
///
/// [`is_permanent`]: EntryError::is_permanent
pub trait EntryError: fmt::Display {
    /// Returns `true` if retrying cannot help: the entry goes to the dead-letter stream on
    /// this delivery. Default: `false`.
    fn is_permanent(&self) -> bool {
        false
    }
}

impl EntryError for String {}
impl EntryError for &'static str {}
impl EntryError for std::io::Error {}
impl EntryError for Box<dyn std::error::Error + Send + Sync> {}

/// A callback's verdict on an entry it could not process: retry it later, or never.
///
/// Any `std::error::Error` converts into a transient `Failure`, so `?` works in a callback
/// returning `Result<_, Failure>`; say [`Failure::permanent`] for input that will never work.
///
/// ```
/// use slowpool::redis::{Entry, Failure};
///
/// fn process(entry: Entry) -> Result<Vec<u8>, Failure> {
///     let url = entry.payload_str()?; // not UTF-8: dead-lettered at once
///     if !url.starts_with("https://") {
///         return Err(Failure::permanent(format!("not a URL: {url}")));
///     }
///     let n: u32 = "12".parse()?; // a transient failure if it did not parse
///     Ok(n.to_string().into_bytes())
/// }
/// let entry = Entry { id: "1-0".into(), payload: b"ftp://x".to_vec(), deliveries: 1 };
/// let failure = process(entry).unwrap_err();
/// assert!(failure.is_permanent());
/// assert_eq!(failure.to_string(), "not a URL: ftp://x");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Failure {
    message: String,
    permanent: bool,
}

impl Failure {
    /// A failure worth retrying (after the worker's backoff, up to `max_deliveries`).
    pub fn retry(message: impl fmt::Display) -> Failure {
        Failure {
            message: message.to_string(),
            permanent: false,
        }
    }

    /// A failure no retry can fix: the entry goes to the dead-letter stream now.
    pub fn permanent(message: impl fmt::Display) -> Failure {
        Failure {
            message: message.to_string(),
            permanent: true,
        }
    }

    /// Returns `true` for a [permanent](Failure::permanent) failure.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl EntryError for Failure {
    fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.permanent { "Permanent" } else { "Retry" };
        write!(f, "{kind}({:?})", self.message)
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure::retry(error)
    }
}
