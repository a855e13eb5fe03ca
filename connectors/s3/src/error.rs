//! SDK errors → keylink's error kinds, in one place.

use std::error::Error as StdError;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use keylink_core::{Error, ErrorKind};

/// What the SDK told us about a failure, whatever its type: enough to pick a kind and to write
/// a message. Built from an [`SdkError`] by [`map_sdk_error`] or from a body-stream error.
pub(crate) struct Failure {
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// S3's error code (`NoSuchKey`, `SlowDown`, …), when the response had one.
    pub code: Option<String>,
    /// The transport failed (connection refused or reset, I/O error) or timed out.
    pub transport: bool,
    /// A credentials provider failed, and how.
    pub credentials: Option<ErrorKind>,
    /// The request could not even be built (a bug or a bad setting).
    pub construction: bool,
    /// The SDK retried the request (transient failures of whole requests; not a broken body).
    pub retried: bool,
    /// A one-line description: S3's code and message, or the transport's error chain.
    pub detail: String,
}

/// Maps a failed SDK call to keylink's error: `op` is what we tried ("read", "upload part 3
/// of"), `target` the object or bucket (`s3://bucket/key`). The message never holds data or
/// secrets: S3's error code and message, the HTTP status, or the transport's error chain.
pub(crate) fn map_sdk_error<E, R>(op: &str, target: &str, err: &SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus + Send + Sync + 'static,
{
    let credentials = credentials_kind(err);
    let failure = match err {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let status = err.raw_response().map(HasStatus::status);
            let code = err.code().map(str::to_string);
            let detail = match (&code, err.message(), status) {
                (Some(c), Some(m), Some(s)) => format!("{c}: {m} (HTTP {s})"),
                (Some(c), None, Some(s)) => format!("{c} (HTTP {s})"),
                (None, _, Some(s)) => format!("the store answered HTTP {s} without an S3 error"),
                _ => chain(err),
            };
            Failure {
                status,
                code,
                transport: matches!(err, SdkError::ResponseError(_)),
                credentials,
                construction: false,
                retried: true,
                detail,
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Failure {
            status: None,
            code: None,
            transport: credentials.is_none(),
            credentials,
            construction: false,
            retried: true,
            detail: chain(err),
        },
        _ => Failure {
            status: None,
            code: None,
            transport: false,
            credentials,
            construction: true,
            retried: false,
            detail: chain(err),
        },
    };
    failure.into_error(op, target)
}

impl Failure {
    /// The one table of kinds.
    pub(crate) fn kind(&self) -> ErrorKind {
        if let Some(kind) = self.credentials {
            return kind;
        }
        match self.code.as_deref() {
            Some("NoSuchKey" | "NoSuchBucket" | "NoSuchUpload" | "NotFound") => {
                return ErrorKind::NotFound;
            }
            Some(
                "AccessDenied"
                | "AllAccessDisabled"
                | "InvalidAccessKeyId"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired"
                | "SignatureDoesNotMatch"
                | "AccountProblem"
                | "InvalidObjectState",
            ) => return ErrorKind::PermissionDenied,
            Some(
                "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestTimeout"
                | "RequestTimeTooSkewed"
                | "InternalError"
                | "ServiceUnavailable"
                | "OperationAborted",
            ) => return ErrorKind::Transient,
            Some(
                "InvalidBucketName"
                | "PermanentRedirect"
                | "AuthorizationHeaderMalformed"
                | "IllegalLocationConstraintException"
                | "InvalidRegion",
            ) => return ErrorKind::Config,
            _ => {}
        }
        match self.status {
            Some(404) => ErrorKind::NotFound,
            Some(401 | 403) => ErrorKind::PermissionDenied,
            Some(301 | 307 | 400) if self.code.is_none() => ErrorKind::Config,
            Some(408 | 429 | 500..=599) => ErrorKind::Transient,
            Some(_) => ErrorKind::Other,
            None if self.construction => ErrorKind::Config,
            None if self.transport => ErrorKind::Transient,
            None => ErrorKind::Other,
        }
    }

    pub(crate) fn into_error(self, op: &str, target: &str) -> Error {
        let kind = self.kind();
        let hint = match kind {
            ErrorKind::Transient if self.retried => " (gave up after retrying)",
            ErrorKind::Config if self.code.as_deref() == Some("PermanentRedirect") => {
                " (the bucket is in another region: set 'region')"
            }
            _ => "",
        };
        Error::new(
            kind,
            format!("s3 connector: cannot {op} {target}: {}{hint}", self.detail),
        )
    }
}

/// The `Display` of an error and its sources, joined by `: ` (the SDK's own
/// `DisplayErrorContext` appends the `Debug` form, which holds raw responses).
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

/// The kind of a credentials failure anywhere in the error's chain.
fn credentials_kind(err: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(match c {
                CredentialsError::ProviderTimedOut(_) => ErrorKind::Transient,
                CredentialsError::InvalidConfiguration(_) => ErrorKind::Config,
                CredentialsError::CredentialsNotLoaded(_) | CredentialsError::ProviderError(_) => {
                    ErrorKind::PermissionDenied
                }
                _ => ErrorKind::Other,
            });
        }
        cur = e.source();
    }
    None
}

/// The HTTP status of a raw response (implemented for the SDK's response type; a trait so the
/// mapping can be tested with plain numbers).
pub(crate) trait HasStatus {
    /// The status code.
    fn status(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(status: Option<u16>, code: Option<&str>) -> Failure {
        Failure {
            status,
            code: code.map(str::to_string),
            transport: false,
            credentials: None,
            construction: false,
            retried: true,
            detail: "detail".into(),
        }
    }

    #[test]
    fn kinds_by_code_and_status() {
        let cases = [
            (Some(404), Some("NoSuchKey"), ErrorKind::NotFound),
            (Some(404), Some("NoSuchBucket"), ErrorKind::NotFound),
            (Some(404), None, ErrorKind::NotFound),
            (Some(403), Some("AccessDenied"), ErrorKind::PermissionDenied),
            (
                Some(403),
                Some("SignatureDoesNotMatch"),
                ErrorKind::PermissionDenied,
            ),
            (Some(403), None, ErrorKind::PermissionDenied),
            (Some(503), Some("SlowDown"), ErrorKind::Transient),
            (Some(500), Some("InternalError"), ErrorKind::Transient),
            (Some(502), None, ErrorKind::Transient),
            (Some(429), None, ErrorKind::Transient),
            (Some(400), Some("RequestTimeout"), ErrorKind::Transient),
            (Some(301), Some("PermanentRedirect"), ErrorKind::Config),
            (Some(400), Some("InvalidBucketName"), ErrorKind::Config),
            (Some(400), Some("EntityTooSmall"), ErrorKind::Other),
            (Some(409), Some("BucketNotEmpty"), ErrorKind::Other),
        ];
        for (status, code, kind) in cases {
            assert_eq!(failure(status, code).kind(), kind, "{status:?} {code:?}");
        }
        let transport = Failure {
            transport: true,
            ..failure(None, None)
        };
        assert_eq!(transport.kind(), ErrorKind::Transient);
        assert!(transport.into_error("read", "s3://b/k").is_retryable());
        let creds = Failure {
            credentials: Some(ErrorKind::PermissionDenied),
            ..failure(None, None)
        };
        assert_eq!(creds.kind(), ErrorKind::PermissionDenied);
        let built = Failure {
            construction: true,
            ..failure(None, None)
        };
        assert_eq!(built.kind(), ErrorKind::Config);
    }

    #[test]
    fn messages_name_the_operation_and_object() {
        let e = failure(Some(404), Some("NoSuchKey")).into_error("read", "s3://lake/raw/a.csv");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "s3 connector: cannot read s3://lake/raw/a.csv: detail"
        );
        let e = failure(Some(301), Some("PermanentRedirect")).into_error("list", "s3://lake/");
        assert!(e.to_string().contains("set 'region'"), "{e}");
        let e = failure(Some(503), Some("SlowDown")).into_error("upload part 3 of", "s3://l/k");
        assert!(e.to_string().contains("after retrying"), "{e}");
    }

    #[test]
    fn sdk_errors_map_through_the_one_function() {
        use aws_sdk_s3::config::http::HttpResponse;
        use aws_sdk_s3::error::ConnectorError;
        use aws_sdk_s3::operation::get_object::GetObjectError;
        use aws_sdk_s3::primitives::SdkBody;

        // a refused connection: transient, with the transport's reason
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let err: SdkError<GetObjectError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(refused)));
        let e = map_sdk_error("read", "s3://lake/a.csv", &err);
        assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
        assert!(e.to_string().contains("s3://lake/a.csv"), "{e}");
        assert!(e.to_string().contains("refused"), "{e}");

        // a missing key: not found
        let response = HttpResponse::new(404u16.try_into().unwrap(), SdkBody::empty());
        let service = GetObjectError::NoSuchKey(
            aws_sdk_s3::types::error::NoSuchKey::builder()
                .message("The specified key does not exist.")
                .meta(
                    aws_sdk_s3::error::ErrorMetadata::builder()
                        .code("NoSuchKey")
                        .message("The specified key does not exist.")
                        .build(),
                )
                .build(),
        );
        let err = SdkError::service_error(service, response);
        let e = map_sdk_error("read", "s3://lake/a.csv", &err);
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(
            e.to_string(),
            "s3 connector: cannot read s3://lake/a.csv: NoSuchKey: The specified key does not \
             exist. (HTTP 404)"
        );

        // no credentials anywhere in the chain: permission denied
        let err: SdkError<GetObjectError, HttpResponse> = SdkError::dispatch_failure(
            ConnectorError::other(Box::new(CredentialsError::not_loaded("no provider")), None),
        );
        let e = map_sdk_error("read", "s3://lake/a.csv", &err);
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    }
}
