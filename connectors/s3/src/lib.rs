//! The S3 connector of keylink: AWS S3 and S3-compatible stores (MinIO, Ceph, moto, …).
//!
//! ```yaml
//! connectors:
//!   lake: { type: s3, bucket: my-lake, region: eu-west-1 }
//!   minio:
//!     type: s3
//!     bucket: raw
//!     region: us-east-1
//!     endpoint: http://127.0.0.1:9000          # path-style addressing follows
//!     credentials: { access_key_id: minio, secret_access_key: minio-secret }
//! ```
//!
//! Object paths are keys in the bucket (`raw/2024/01/a.csv`); [`Source::describe`] names them
//! `s3://bucket/key`. Region, endpoint and credentials come from the standard AWS chain unless
//! the config gives them (see [`S3Config`]).
//!
//! - **Reading** ([`Source`]): [`Source::list`] pages through ListObjectsV2 (1,000 keys a page)
//!   and returns every key under the prefix, sorted; folder markers (`raw/`) and keys that are not
//!   valid object paths are skipped. [`Source::open`] streams the GetObject body chunk by chunk as
//!   it arrives: an object is never held whole.
//! - **Writing** ([`Sink`]): a writer fills a part buffer ([`DEFAULT_PART_SIZE`], 8 MiB); each
//!   full part is uploaded in the background to a multipart upload started with the first part,
//!   at most [`DEFAULT_CONCURRENT_PARTS`] at once (a writer holds at most 40 MiB).
//!   [`ObjectWriter::finish`] uploads the last part and waits for all of them;
//!   [`ObjectWriter::commit`] sends CompleteMultipartUpload — only then does the object exist.
//!   An object smaller than one part is sent with a single PutObject at commit.
//!   [`ObjectWriter::abort`] cancels the parts in flight and aborts the upload; a writer dropped
//!   without commit or abort does the same in the background. A failed commit aborts too.
//! - **Failures**: requests are retried only on transient failures (throttling, 5xx, timeouts,
//!   broken connections), at most [`MAX_ATTEMPTS`] tries with exponential backoff and jitter, and
//!   bounded in time ([`CONNECT_TIMEOUT`], [`ATTEMPT_TIMEOUT`], [`OPERATION_TIMEOUT`]). Every SDK
//!   error is mapped to a [`keylink_core::ErrorKind`] in one function, with a message naming the
//!   operation and `s3://bucket/key` — never data, never credentials.
//!
//! # Example
//!
//! ```
//! use keylink_core::connector::ConnectorConfig;
//! // Using the crate links its `"type": "s3"` registration into the program.
//! use keylink_connector_s3::S3Config;
//!
//! let config: Box<dyn ConnectorConfig> = serde_json::from_str(
//!     r#"{ "type": "s3", "bucket": "my-lake", "region": "eu-west-1",
//!          "credentials": { "access_key_id": "AKIA…", "secret_access_key": "…" } }"#,
//! )
//! .unwrap();
//! config.validate().unwrap();
//! // Secrets never print.
//! assert!(!format!("{config:?}").contains("AKIA"));
//!
//! let mut emulator = S3Config::new("test-bucket");
//! emulator.endpoint = Some("http://127.0.0.1:9000".into());
//! emulator.region = Some("us-east-1".into());
//! assert!(emulator.validate().is_ok());
//! ```
//!
//! Building a source or sink (`config.build_source(&ctx).await`) resolves the region and
//! credentials without sending a request; the first listing or read is the first request.
#![deny(missing_docs)]

mod config;
mod error;
mod store;

pub use config::{S3Config, S3Credentials};
pub use store::{
    ATTEMPT_TIMEOUT, CONNECT_TIMEOUT, DEFAULT_CONCURRENT_PARTS, DEFAULT_PART_SIZE, MAX_ATTEMPTS,
    MIN_PART_SIZE, OPERATION_TIMEOUT, S3Store,
};

#[cfg(doc)]
use keylink_core::connector::{ObjectWriter, Sink, Source};
