//! Client errors → keylink's error kinds, in one place.

use std::error::Error as StdError;

use gcloud_storage::client::google_cloud_auth::error::Error as AuthError;
use gcloud_storage::http::Error as GcsError;
use keylink_core::{Error, ErrorKind};

/// What the client told us about a failure, whatever its type: enough to pick a kind and to
/// write a message. Built from a client error by [`Failure::of`].
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// GCS's reason (`notFound`, `rateLimitExceeded`, …), when the response had one.
    pub reason: Option<String>,
    /// The transport failed (connection refused or reset, I/O error) or timed out.
    pub transport: bool,
    /// The request never left: connecting failed. Safe to send again whatever it was.
    pub unsent: bool,
    /// Getting a token failed, and how.
    pub credentials: Option<ErrorKind>,
    /// A one-line description: GCS's message and status, or the transport's error chain.
    pub detail: String,
}

impl Failure {
    /// The one mapping of client errors (with [`Failure::kind`], its table of kinds). The
    /// message never holds data, secrets or URLs (an upload session's URL is a capability).
    pub(crate) fn of(err: &GcsError) -> Failure {
        match err {
            GcsError::Response(r) => {
                let reason = r
                    .errors
                    .first()
                    .map(|e| e.reason.clone())
                    .filter(|r| !r.is_empty());
                let message = if r.message.is_empty() {
                    "the store answered an error without a message".to_string()
                } else {
                    r.message.clone()
                };
                Failure {
                    status: Some(r.code),
                    detail: match &reason {
                        Some(reason) if *reason != message => {
                            format!("{message} (HTTP {}, {reason})", r.code)
                        }
                        _ => format!("{message} (HTTP {})", r.code),
                    },
                    reason,
                    ..Failure::none()
                }
            }
            GcsError::HttpClient(e) | GcsError::RawResponse(e, _) => Failure::of_reqwest(e),
            GcsError::TokenSource(e) => Failure::of_token_error(&**e),
            GcsError::HttpMiddleware(e) => Failure {
                detail: chain(e.as_ref()),
                ..Failure::none()
            },
            GcsError::InvalidRangeHeader(_) => Failure {
                detail: "the store answered an upload with an invalid Range header".into(),
                ..Failure::none()
            },
        }
    }

    fn none() -> Failure {
        Failure {
            status: None,
            reason: None,
            transport: false,
            unsent: false,
            credentials: None,
            detail: String::new(),
        }
    }

    /// A request that did not finish within its time limit.
    pub(crate) fn timed_out(limit: std::time::Duration) -> Failure {
        Failure {
            transport: true,
            detail: format!("no answer within {} s", limit.as_secs()),
            ..Failure::none()
        }
    }

    /// An answer that makes no sense for the request (a bug here or in the store).
    pub(crate) fn protocol(detail: impl Into<String>) -> Failure {
        Failure {
            detail: detail.into(),
            ..Failure::none()
        }
    }

    fn of_reqwest(e: &reqwest::Error) -> Failure {
        let status = e.status().map(|s| s.as_u16());
        let mut detail = chain(e);
        // reqwest names the URL; the message names the object itself, and an upload session's
        // URL must not be printed.
        if let Some(url) = e.url() {
            detail = detail.replace(&format!(" for url ({})", url.as_str()), "");
            detail = detail.replace(url.as_str(), "<url>");
        }
        Failure {
            status,
            transport: status.is_none()
                && (e.is_connect()
                    || e.is_timeout()
                    || e.is_request()
                    || e.is_body()
                    || e.is_decode()),
            unsent: e.is_connect(),
            detail,
            ..Failure::none()
        }
    }

    fn of_token_error(e: &(dyn StdError + Send + Sync + 'static)) -> Failure {
        let (kind, detail) = match e.downcast_ref::<AuthError>() {
            Some(AuthError::HttpError(h)) if h.is_connect() || h.is_timeout() => (
                ErrorKind::Transient,
                format!(
                    "cannot reach the token endpoint: {}",
                    Failure::of_reqwest(h).detail
                ),
            ),
            Some(
                AuthError::CredentialsIOError(_)
                | AuthError::NoCredentialsFileFound
                | AuthError::VarError(_)
                | AuthError::NoHomeDirectoryFound,
            ) => (
                ErrorKind::PermissionDenied,
                "no Application Default Credentials found (set GOOGLE_APPLICATION_CREDENTIALS to \
                 a key file, run `gcloud auth application-default login`, run on Google Cloud, \
                 or give the connector 'credentials')"
                    .to_string(),
            ),
            Some(AuthError::JsonError(j)) => (
                ErrorKind::Config,
                format!(
                    "the credentials are not valid JSON (line {}, column {})",
                    j.line(),
                    j.column()
                ),
            ),
            Some(AuthError::JwtError(_) | AuthError::NoPrivateKeyFound) => (
                ErrorKind::Config,
                "the service-account key's private_key is not a usable PEM private key".into(),
            ),
            Some(AuthError::UnsupportedAccountType(_)) => (
                ErrorKind::Config,
                "the credentials' type is not supported (use a service-account key)".into(),
            ),
            Some(AuthError::TokenErrorResponse {
                status,
                error,
                error_description,
            }) => (
                if *status >= 500 {
                    ErrorKind::Transient
                } else {
                    ErrorKind::PermissionDenied
                },
                format!(
                    "the token endpoint refused the credentials: {error}: {error_description} \
                     (HTTP {status})"
                ),
            ),
            Some(other) => (ErrorKind::PermissionDenied, other.to_string()),
            // our own lazy token source's errors arrive already worded
            None => (ErrorKind::PermissionDenied, chain(e)),
        };
        Failure {
            transport: kind == ErrorKind::Transient,
            credentials: Some(kind),
            detail: format!("credentials: {detail}"),
            ..Failure::none()
        }
    }

    /// The one table of kinds.
    pub(crate) fn kind(&self) -> ErrorKind {
        if let Some(kind) = self.credentials {
            return kind;
        }
        match self.reason.as_deref() {
            Some("rateLimitExceeded" | "userRateLimitExceeded" | "backendError") => {
                return ErrorKind::Transient;
            }
            Some("invalid" | "invalidParameter" | "required") if self.status == Some(400) => {
                return ErrorKind::Config;
            }
            _ => {}
        }
        match self.status {
            Some(404 | 410) => ErrorKind::NotFound,
            Some(401 | 403) => ErrorKind::PermissionDenied,
            Some(408 | 429 | 500..=599) => ErrorKind::Transient,
            Some(_) => ErrorKind::Other,
            None if self.transport => ErrorKind::Transient,
            None => ErrorKind::Other,
        }
    }

    /// Whether sending the request again may help.
    pub(crate) fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// The error: `op` is what we tried ("read", "upload bytes 0-8388607 of"), `target` the
    /// object or bucket (`gs://bucket/name`); `tries` how often the request was sent.
    pub(crate) fn into_error(self, op: &str, target: &str, tries: u32) -> Error {
        let kind = self.kind();
        let hint = match kind {
            ErrorKind::Transient if tries > 1 => format!(" (gave up after {tries} tries)"),
            _ => String::new(),
        };
        Error::new(
            kind,
            format!("gcs connector: cannot {op} {target}: {}{hint}", self.detail),
        )
    }
}

/// The `Display` of an error and its sources, joined by `: `.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcloud_storage::http::error::{ErrorResponse, ErrorResponseItem};

    fn map_error(op: &str, target: &str, err: &GcsError, tries: u32) -> Error {
        Failure::of(err).into_error(op, target, tries)
    }

    fn response(code: u16, reason: &str, message: &str) -> GcsError {
        GcsError::Response(ErrorResponse {
            code,
            errors: vec![ErrorResponseItem {
                domain: "global".into(),
                location: None,
                location_type: None,
                message: message.into(),
                reason: reason.into(),
            }],
            message: message.into(),
        })
    }

    #[test]
    fn kinds_by_status_and_reason() {
        let cases = [
            (404, "notFound", ErrorKind::NotFound),
            (404, "Not Found", ErrorKind::NotFound),
            (410, "", ErrorKind::NotFound),
            (401, "required", ErrorKind::PermissionDenied),
            (403, "forbidden", ErrorKind::PermissionDenied),
            (429, "rateLimitExceeded", ErrorKind::Transient),
            (403, "rateLimitExceeded", ErrorKind::Transient),
            (503, "backendError", ErrorKind::Transient),
            (500, "", ErrorKind::Transient),
            (408, "", ErrorKind::Transient),
            (400, "invalid", ErrorKind::Config),
            (400, "badRequest", ErrorKind::Other),
            (409, "conflict", ErrorKind::Other),
            (412, "conditionNotMet", ErrorKind::Other),
            (499, "", ErrorKind::Other),
        ];
        for (code, reason, kind) in cases {
            let f = Failure::of(&response(code, reason, "m"));
            assert_eq!(f.kind(), kind, "{code} {reason}");
        }
        assert!(Failure::timed_out(std::time::Duration::from_secs(5)).is_transient());
        assert_eq!(Failure::protocol("x").kind(), ErrorKind::Other);
    }

    #[test]
    fn messages_name_the_operation_and_object() {
        let e = map_error(
            "read",
            "gs://lake/raw/a.csv",
            &response(404, "notFound", "No such object: lake/raw/a.csv"),
            1,
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "gcs connector: cannot read gs://lake/raw/a.csv: No such object: lake/raw/a.csv \
             (HTTP 404, notFound)"
        );
        let e = map_error("list", "gs://lake/", &response(503, "", "busy"), 4);
        assert!(e.is_retryable());
        assert!(
            e.to_string()
                .ends_with("busy (HTTP 503) (gave up after 4 tries)"),
            "{e}"
        );
    }

    #[test]
    fn credential_failures_are_classified_without_quoting_keys() {
        let io = AuthError::CredentialsIOError(std::io::Error::from(std::io::ErrorKind::NotFound));
        let e = map_error(
            "list",
            "gs://lake/",
            &GcsError::TokenSource(Box::new(io)),
            1,
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(
            e.to_string().contains("GOOGLE_APPLICATION_CREDENTIALS"),
            "{e}"
        );

        let json =
            serde_json::from_str::<serde_json::Value>("{\"private_key\": SECRET}").unwrap_err();
        let e = map_error(
            "list",
            "gs://lake/",
            &GcsError::TokenSource(Box::new(AuthError::JsonError(json))),
            1,
        );
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(!e.to_string().contains("SECRET"), "{e}");

        let refused = AuthError::TokenErrorResponse {
            status: 400,
            error: "invalid_grant".into(),
            error_description: "Invalid JWT Signature.".into(),
        };
        let e = map_error(
            "read",
            "gs://l/k",
            &GcsError::TokenSource(Box::new(refused)),
            1,
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("invalid_grant"), "{e}");
    }
}
