//! What the pool's callback receives, and how it says an entry failed.

use std::fmt;

/// One stream entry, as the pool's callback receives it.
///
/// The worker builds it from the entry's id, its `payload` field and the delivery count Redis
/// keeps; an entry without a `payload` field never reaches the callback (it is dead-lettered
/// as malformed). The callback owns it: take the payload by value, or borrow it as text with
/// [`payload_str`](Entry::payload_str).
///
/// ```
/// use slowpool::redis::{Entry, Failure};
///
/// fn process(entry: Entry) -> Result<Vec<u8>, Failure> {
///     if entry.deliveries > 1 {
///         // an earlier delivery failed, or its worker died: redo the work from scratch
///     }
///     Ok(entry.payload_str()?.to_uppercase().into_bytes())
/// }
/// let entry = Entry { id: "1-0".into(), payload: b"page".to_vec(), deliveries: 1 };
/// assert_eq!(process(entry.clone()), Ok(b"PAGE".to_vec()));
/// assert_eq!(entry.payload_str(), Ok("page"));
/// ```
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
/// ```
/// use slowpool::redis::EntryError;
/// use std::fmt;
///
/// enum FetchError {
///     Timeout,
///     NotFound,
/// }
///
/// impl fmt::Display for FetchError {
///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
///         f.write_str(match self {
///             FetchError::Timeout => "timed out",
///             FetchError::NotFound => "404",
///         })
///     }
/// }
///
/// impl EntryError for FetchError {
///     fn is_permanent(&self) -> bool {
///         matches!(self, FetchError::NotFound) // a missing page stays missing
///     }
/// }
///
/// assert!(!FetchError::Timeout.is_permanent()); // retried after the backoff
/// assert!(FetchError::NotFound.is_permanent()); // dead-lettered, with "404" as the reason
/// assert_eq!(FetchError::NotFound.to_string(), "404");
/// ```
///
/// [`is_permanent`]: EntryError::is_permanent
pub trait EntryError: fmt::Display {
    /// Returns `true` if retrying cannot help: the entry goes to the dead-letter stream on
    /// this delivery. Default: `false`, so an error type that does not override it is always
    /// retried (up to `max_deliveries`, after which it is dead-lettered anyway).
    ///
    /// ```
    /// use slowpool::redis::{EntryError, Failure};
    ///
    /// let text: &'static str = "connection reset";
    /// assert!(!text.is_permanent()); // the implementations for errors and text: transient
    /// assert!(!std::io::Error::other("reset").is_permanent());
    /// assert!(EntryError::is_permanent(&Failure::permanent("not a URL")));
    /// ```
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
    /// Returns a failure worth retrying (after the worker's backoff, up to `max_deliveries`),
    /// with `message` as its text: recorded in Redis while the entry waits, and the reason in
    /// the dead-letter stream if the last delivery fails too. Converting any
    /// `std::error::Error` with `?` or `into()` gives the same.
    ///
    /// ```
    /// use slowpool::redis::Failure;
    ///
    /// let failure = Failure::retry("HTTP 503");
    /// assert!(!failure.is_permanent());
    /// assert_eq!(failure.to_string(), "HTTP 503");
    /// assert_eq!(format!("{failure:?}"), r#"Retry("HTTP 503")"#);
    ///
    /// let parsed: Failure = "x".parse::<u32>().unwrap_err().into();
    /// assert_eq!(parsed, Failure::retry("invalid digit found in string"));
    /// ```
    pub fn retry(message: impl fmt::Display) -> Failure {
        Failure {
            message: message.to_string(),
            permanent: false,
        }
    }

    /// Returns a failure no retry can fix: the entry goes to the dead-letter stream on this
    /// delivery, whatever `max_deliveries` allows, with `message` as the reason.
    ///
    /// ```
    /// use slowpool::redis::Failure;
    ///
    /// let failure = Failure::permanent(format!("not a URL: {}", "ftp://x"));
    /// assert!(failure.is_permanent());
    /// assert_eq!(failure.to_string(), "not a URL: ftp://x");
    /// assert_ne!(failure, Failure::retry("not a URL: ftp://x")); // same text, other verdict
    /// ```
    pub fn permanent(message: impl fmt::Display) -> Failure {
        Failure {
            message: message.to_string(),
            permanent: true,
        }
    }

    /// Returns `true` for a [permanent](Failure::permanent) failure, `false` for one made by
    /// [`retry`](Failure::retry) or converted from an error.
    ///
    /// ```
    /// use slowpool::redis::{Entry, Failure};
    ///
    /// assert!(Failure::permanent("bad input").is_permanent());
    /// assert!(!Failure::retry("timed out").is_permanent());
    /// assert!(!Failure::from(std::io::Error::other("reset")).is_permanent());
    ///
    /// let entry = Entry { id: "1-0".into(), payload: vec![0xc3], deliveries: 1 };
    /// assert!(entry.payload_str().unwrap_err().is_permanent()); // not UTF-8
    /// ```
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
