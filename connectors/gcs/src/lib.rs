//! The GCS connector of keylink: Google Cloud Storage buckets (and emulators of its JSON API,
//! such as fake-gcs-server).
//!
//! ```yaml
//! connectors:
//!   lake: { type: gcs, bucket: my-lake }        # Application Default Credentials
//!   partner:
//!     type: gcs
//!     bucket: partner-drop
//!     credentials: { file: ./partner-sa.json }  # a service-account key file
//!   emulator:
//!     type: gcs
//!     bucket: raw
//!     endpoint: http://127.0.0.1:4443           # or STORAGE_EMULATOR_HOST; no credentials then
//! ```
//!
//! Object paths are object names in the bucket (`raw/2024/01/a.csv`); [`Source::describe`] names
//! them `gs://bucket/name`. The endpoint and the credentials come from the environment unless the
//! config gives them (see [`GcsConfig`]).
//!
//! - **Reading** ([`Source`]): [`Source::list`] pages through `objects.list` (1,000 names a page)
//!   and returns every object under the prefix, sorted; folder placeholders (`raw/`) and names
//!   that are not valid object paths are skipped. [`Source::open`] streams the object's body
//!   chunk by chunk as it arrives: an object is never held whole.
//! - **Writing** ([`Sink`]): an object is written through a *resumable upload session that is
//!   finalised only at commit*. A writer fills a chunk buffer ([`DEFAULT_CHUNK_SIZE`], 16 MiB, or
//!   the config's `upload_chunk_mib`; a multiple of the 256 KiB GCS requires); each full chunk is
//!   sent to the session in the background while the next one fills (a writer holds at most two
//!   chunks, 32 MiB by default).
//!   [`ObjectWriter::finish`] sends everything but the last partial 256 KiB;
//!   [`ObjectWriter::commit`] sends that tail together with the object's size, which finalises
//!   it — only then does the object exist, and an object already at that name is replaced at
//!   that moment. An object smaller than one chunk is sent with a single request at commit.
//!   [`ObjectWriter::abort`] cancels the session (its bytes are discarded and it can never be
//!   finalised); a writer dropped without commit or abort does the same in the background, and
//!   a failed commit too. *Why a session and not a temporary object composed into place:* a
//!   temporary object would be visible (and billed, and listed by a job reading the bucket)
//!   until deleted, a killed process would leave it behind, and the copy at commit would cost
//!   time proportional to the object; an unfinalised session is never visible and expires on
//!   its own.
//! - **Failures**: requests are retried only on transient failures (429, 5xx, timeouts, broken
//!   connections), at most [`MAX_ATTEMPTS`] tries with exponential backoff and jitter, bounded
//!   in time ([`CONNECT_TIMEOUT`], [`READ_TIMEOUT`], [`ATTEMPT_TIMEOUT`],
//!   [`OPERATION_TIMEOUT`]). A chunk whose upload failed midway goes on from the offset the
//!   store reports. Every client error is mapped to a [`keylink_core::ErrorKind`] in one
//!   function, with a message naming the operation and `gs://bucket/name` — never data, never
//!   credentials, never an upload session's URL.
//!
//! # Example
//!
//! ```
//! use keylink_core::connector::ConnectorConfig;
//! // Using the crate links its `"type": "gcs"` registration into the program.
//! use keylink_connector_gcs::{GcsConfig, GcsCredentials};
//!
//! let config: Box<dyn ConnectorConfig> = serde_json::from_str(
//!     r#"{ "type": "gcs", "bucket": "my-lake",
//!          "credentials": { "type": "service_account", "client_email": "etl@p.iam.gserviceaccount.com",
//!                           "private_key": "-----BEGIN PRIVATE KEY-----\n…" } }"#,
//! )
//! .unwrap();
//! config.validate().unwrap();
//! // Secrets never print.
//! assert!(!format!("{config:?}").contains("PRIVATE KEY"));
//!
//! let mut emulator = GcsConfig::new("test-bucket");
//! emulator.endpoint = Some("http://127.0.0.1:4443".into());
//! emulator.credentials = Some(GcsCredentials::Anonymous);
//! assert!(emulator.validate().is_ok());
//! ```
//!
//! Building a source or sink (`config.build_source(&ctx).await`) resolves the endpoint and reads a
//! key file without sending a request; the first listing or read fetches a token.
#![deny(missing_docs)]

mod config;
mod error;
mod store;

pub use config::{EMULATOR_HOST_VAR, GOOGLE_ENDPOINT, GcsConfig, GcsCredentials};
pub use store::{
    ATTEMPT_TIMEOUT, CHUNK_ALIGN, CONNECT_TIMEOUT, DEFAULT_CHUNK_SIZE, GcsStore, MAX_ATTEMPTS,
    OPERATION_TIMEOUT, READ_TIMEOUT,
};

#[cfg(doc)]
use keylink_core::connector::{ObjectWriter, Sink, Source};
