//! The one error type of keylink's libraries.
//!
//! An [`Error`] has a [`ErrorKind`] (what went wrong, for the CLI's exit code and for retry
//! decisions), a message that names *where* (a file, an object, a config path) and never *what*
//! (no record values, no secrets), and an optional source.
//!
//! Bad records are not errors: they are counted rejects (see [`crate::summary`]).

use std::fmt;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration file, job, contract or option is wrong. Reported before any data is read.
    Config,
    /// An object, bucket, contract or key does not exist.
    NotFound,
    /// The store refused our credentials or permissions.
    PermissionDenied,
    /// A temporary failure (timeout, throttling, connection reset); the operation may be retried.
    Transient,
    /// Input data cannot be processed as a whole (for example a CSV file without a header).
    Data,
    /// Encryption, decryption or key handling failed.
    Crypto,
    /// The key store failed.
    KeyStore,
    /// Local I/O failed.
    Io,
    /// The feature is not implemented (yet).
    NotSupported,
    /// Anything else; a bug if it ever shows.
    Other,
}

impl ErrorKind {
    /// A short, stable, lowercase name for logs and JSON summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Transient => "transient",
            ErrorKind::Data => "data",
            ErrorKind::Crypto => "crypto",
            ErrorKind::KeyStore => "key_store",
            ErrorKind::Io => "io",
            ErrorKind::NotSupported => "not_supported",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// keylink's library error.
///
/// The message must never contain record values or secrets: it names files, objects, lines and
/// config paths only.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// `Result` with keylink's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message (which must not contain personal data or secrets).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// A "not supported" error for a feature keylink does not implement (yet).
    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotSupported, message)
    }

    /// An error about input data as a whole.
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Data, message)
    }

    /// A crypto error.
    pub fn crypto(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Crypto, message)
    }

    /// A key store error.
    pub fn key_store(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::KeyStore, message)
    }

    /// Attaches the underlying cause. Only attach errors whose `Display` cannot contain record
    /// values (I/O, HTTP and SDK errors are fine; a parser error quoting its input is not).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Prefixes the message with context, such as the object or file being processed.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the operation may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// The message without the source chain.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted => ErrorKind::Transient,
            _ => ErrorKind::Io,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<keylink_timestamp::Error> for Error {
    /// A timestamp format or zone that cannot be used is a configuration error.
    fn from(e: keylink_timestamp::Error) -> Self {
        Error::config(e.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_prefixes_and_kind_survives() {
        let e = Error::config("expected a string").context("job.json: encryption.timestamp_config");
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(
            e.to_string(),
            "job.json: encryption.timestamp_config: expected a string"
        );
        assert!(!e.is_retryable());
        assert!(Error::new(ErrorKind::Transient, "x").is_retryable());
    }

    #[test]
    fn io_not_found_maps_to_not_found() {
        let e: Error = std::io::Error::from(std::io::ErrorKind::NotFound).into();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}
