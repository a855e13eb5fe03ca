//! SDK errors → keylink's error kinds, in one place.

use std::error::Error as StdError;

use azure_core::error::ErrorKind as AzKind;
use keylink_core::{Error, ErrorKind};

/// What a failure comes to, whatever its origin: enough to pick a kind and to write a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// The service's error code (`BlobNotFound`, `ServerBusy`, …), when it sent one.
    pub code: Option<String>,
    /// What kind of failure the SDK saw when there was no response.
    pub sdk: SdkKind,
    /// A one-line description (without secrets).
    pub detail: String,
}

/// The SDK's classification of a failure without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SdkKind {
    /// A response with an unexpected status.
    Response,
    /// No connection, an I/O error, a broken body: the network.
    Transport,
    /// Getting a token failed.
    Credential,
    /// A response that did not parse.
    DataConversion,
    /// Anything else.
    Other,
}

/// Maps a failed SDK call to keylink's error: `op` is what we tried ("read", "stage block 3
/// of"), `target` the object (`az://account/container/name`). The message never holds data or
/// secrets: the service's error code and the HTTP status, or the transport's error chain with
/// any SAS signature blanked out.
pub(crate) fn map_error(op: &str, target: &str, err: &azure_core::Error) -> Error {
    let failure = match err.kind() {
        AzKind::HttpResponse {
            status, error_code, ..
        } => {
            let status = u16::from(*status);
            let detail = match error_code {
                Some(c) => format!("{c} (HTTP {status})"),
                None => format!("HTTP {status}"),
            };
            Failure {
                status: Some(status),
                code: error_code.clone(),
                sdk: SdkKind::Response,
                detail,
            }
        }
        kind => Failure {
            status: None,
            code: None,
            sdk: match kind {
                AzKind::Connection | AzKind::Io => SdkKind::Transport,
                AzKind::Credential => SdkKind::Credential,
                AzKind::DataConversion => SdkKind::DataConversion,
                _ if is_transport(err) => SdkKind::Transport,
                _ => SdkKind::Other,
            },
            detail: redact(&chain(err)),
        },
    };
    failure.into_error(op, target)
}

/// Whether an I/O error or a reqwest-level failure is somewhere in the chain.
fn is_transport(err: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<std::io::Error>() {
            return true;
        }
        cur = e.source();
    }
    false
}

impl Failure {
    /// The one table of kinds.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self.code.as_deref() {
            Some("BlobNotFound" | "ContainerNotFound" | "ResourceNotFound") => {
                return ErrorKind::NotFound;
            }
            Some(
                "AuthenticationFailed"
                | "AuthorizationFailure"
                | "AuthorizationPermissionMismatch"
                | "AuthorizationResourceTypeMismatch"
                | "AuthorizationServiceMismatch"
                | "AuthorizationSourceIPMismatch"
                | "AuthorizationProtocolMismatch"
                | "InsufficientAccountPermissions"
                | "AccountIsDisabled"
                | "ContainerDisabled"
                | "KeyVaultEncryptionKeyNotFound",
            ) => return ErrorKind::PermissionDenied,
            Some(
                "ServerBusy" | "OperationTimedOut" | "InternalError" | "ContainerBeingDeleted",
            ) => {
                return ErrorKind::Transient;
            }
            Some(
                "InvalidResourceName"
                | "InvalidUri"
                | "InvalidQueryParameterValue"
                | "UnsupportedHttpVerb"
                | "OutOfRangeInput"
                | "AccountNotFound"
                | "InvalidHeaderValue",
            ) => return ErrorKind::Config,
            _ => {}
        }
        match (self.status, self.sdk) {
            (Some(404), _) => ErrorKind::NotFound,
            (Some(401 | 403), _) => ErrorKind::PermissionDenied,
            (Some(408 | 429 | 500..=599), _) => ErrorKind::Transient,
            (Some(_), _) => ErrorKind::Other,
            (None, SdkKind::Transport) => ErrorKind::Transient,
            (None, SdkKind::Credential) => ErrorKind::PermissionDenied,
            (None, _) => ErrorKind::Other,
        }
    }

    pub(crate) fn into_error(self, op: &str, target: &str) -> Error {
        let kind = self.kind();
        let hint = match kind {
            ErrorKind::Transient => " (gave up after retrying)",
            ErrorKind::PermissionDenied if self.code.as_deref() == Some("AuthenticationFailed") => {
                " (check the credentials: key, SAS or token)"
            }
            _ => "",
        };
        Error::new(
            kind,
            format!(
                "azure connector: cannot {op} {target}: {}{hint}",
                self.detail
            ),
        )
    }
}

/// The `Display` of an error and its sources, joined by `: `.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.ends_with(&s) && !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Blanks out the value of every `sig=` (a SAS signature) in a message: transport errors quote
/// the request URL, and the SAS is in its query.
pub(crate) fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("sig=") {
        let (head, tail) = rest.split_at(i + 4);
        out.push_str(head);
        out.push_str("REDACTED");
        let end = tail
            .find(|c: char| c == '&' || c == ')' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(status: Option<u16>, code: Option<&str>, sdk: SdkKind) -> Failure {
        Failure {
            status,
            code: code.map(str::to_string),
            sdk,
            detail: "detail".into(),
        }
    }

    #[test]
    fn kinds_by_code_and_status() {
        use SdkKind::*;
        let cases = [
            (
                Some(404),
                Some("BlobNotFound"),
                Response,
                ErrorKind::NotFound,
            ),
            (
                Some(404),
                Some("ContainerNotFound"),
                Response,
                ErrorKind::NotFound,
            ),
            (Some(404), None, Response, ErrorKind::NotFound),
            (
                Some(403),
                Some("AuthenticationFailed"),
                Response,
                ErrorKind::PermissionDenied,
            ),
            (
                Some(403),
                Some("AuthorizationPermissionMismatch"),
                Response,
                ErrorKind::PermissionDenied,
            ),
            (Some(401), None, Response, ErrorKind::PermissionDenied),
            (
                Some(503),
                Some("ServerBusy"),
                Response,
                ErrorKind::Transient,
            ),
            (
                Some(500),
                Some("OperationTimedOut"),
                Response,
                ErrorKind::Transient,
            ),
            (Some(502), None, Response, ErrorKind::Transient),
            (Some(429), None, Response, ErrorKind::Transient),
            (
                Some(400),
                Some("InvalidResourceName"),
                Response,
                ErrorKind::Config,
            ),
            (
                Some(400),
                Some("InvalidBlockList"),
                Response,
                ErrorKind::Other,
            ),
            (
                Some(409),
                Some("BlobAlreadyExists"),
                Response,
                ErrorKind::Other,
            ),
            (None, None, Transport, ErrorKind::Transient),
            (None, None, Credential, ErrorKind::PermissionDenied),
            (None, None, DataConversion, ErrorKind::Other),
            (None, None, Other, ErrorKind::Other),
        ];
        for (status, code, sdk, kind) in cases {
            assert_eq!(
                failure(status, code, sdk).kind(),
                kind,
                "{status:?} {code:?} {sdk:?}"
            );
        }
    }

    #[test]
    fn messages_name_the_operation_and_object() {
        let e = failure(Some(404), Some("BlobNotFound"), SdkKind::Response)
            .into_error("read", "az://acct/lake/raw/a.csv");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "azure connector: cannot read az://acct/lake/raw/a.csv: detail"
        );
        let e =
            failure(None, None, SdkKind::Transport).into_error("stage block 3 of", "az://a/l/k");
        assert!(e.is_retryable(), "{e}");
        assert!(e.to_string().contains("after retrying"), "{e}");
    }

    #[test]
    fn sdk_errors_map_through_the_one_function() {
        use azure_core::http::StatusCode;
        let err = azure_core::Error::new(
            AzKind::HttpResponse {
                status: StatusCode::NotFound,
                error_code: Some("BlobNotFound".into()),
                raw_response: None,
            },
            "The specified blob does not exist.",
        );
        let e = map_error("read", "az://acct/lake/a.csv", &err);
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(
            e.to_string(),
            "azure connector: cannot read az://acct/lake/a.csv: BlobNotFound (HTTP 404)"
        );

        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let err = azure_core::Error::new(AzKind::Io, refused);
        let e = map_error("list", "az://acct/lake/", &err);
        assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
        assert!(e.to_string().contains("refused"), "{e}");

        let err = azure_core::Error::with_message(AzKind::Credential, "no token");
        assert_eq!(
            map_error("list", "az://a/b/", &err).kind(),
            ErrorKind::PermissionDenied
        );
    }

    #[test]
    fn signatures_never_show_in_messages() {
        let secret = "s3cr3tSIGNATURE%2Bvalue%3D";
        let msg = format!(
            "error sending request for url (http://127.0.0.1:10000/devstoreaccount1/c/b?comp=block&sv=2022-11-02&sig={secret}&se=x): connection refused"
        );
        let clean = redact(&msg);
        assert!(!clean.contains(secret), "{clean}");
        assert!(
            clean.contains("sig=REDACTED&se=x): connection refused"),
            "{clean}"
        );
        assert_eq!(redact("sig=abc"), "sig=REDACTED");
        assert_eq!(redact("nothing here"), "nothing here");

        let err = azure_core::Error::new(AzKind::Io, std::io::Error::other(msg));
        let e = map_error("read", "az://a/b/c", &err);
        assert!(!e.to_string().contains(secret), "{e}");
    }
}
