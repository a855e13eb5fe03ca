//! # keylink-core
//!
//! The engine of keylink, a privacy-by-design data pipeline: it reads records (CSV, JSON Lines)
//! from a store, applies a *data contract*, and writes
//!
//! 1. an **encrypted** dataset: every PII field encrypted (Tink-compatible AES-SIV) with a key that
//!    belongs to one keyField value (a session) in one time window;
//! 2. the **keys** export, so decryption can happen later — or never (delete a key and the data it
//!    protected is gone: crypto-shredding);
//! 3. **derived** datasets, one per purpose (consenting rows only, selected fields decrypted or
//!    masked).
//!
//! This crate holds what every part shares:
//!
//! | module | what |
//! |---|---|
//! | [`connector`] | config trait [`ConnectorConfig`] and runtime traits [`Source`] / [`Sink`] |
//! | [`format`](mod@format) | config trait [`FormatConfig`] and runtime traits [`Format`] / [`Decoder`] / [`Encoder`] |
//! | [`record`] | the batch record model ([`RecordBatch`], no allocation per row) |
//! | [`contract`] | data contracts |
//! | [`job`] | the batch-job file and keylink's own config file |
//! | [`timestamp`] | Java `DateTimeFormatter` patterns |
//! | [`crypto`] | keys, the Tink AES-SIV wire format, masking |
//! | [`keystore`] | the [`KeyStore`] traits; stores are plug-in crates (`keylink-keystore-embedded`, …) |
//! | [`consent`] | consent levels of a record |
//! | [`privacy`] | the per-batch privacy transform |
//! | [`decrypt`] | `keylink decrypt`: derive later from an encrypted dataset and a keys export |
//! | [`derive`](mod@derive) | purpose-bound derived datasets: consent, decryption, masking |
//! | [`engine`] | the streaming, parallel, all-or-nothing job runner |
//! | [`stream`] | message sources and sinks of `keylink stream` ([`stream::MessageSource`], [`stream::MessageSink`]) |
//! | [`stream_job`] | the stream-job file and the per-event privacy transform shared with batch jobs |
//! | [`watch`] | `keylink run --watch`: objects processed as they land, with a durable record |
//! | [`safety`] | fail-closed checks: colliding locations, fields missing from the input |
//! | [`schema`] | JSON Schemas of the job, config and contract files, for editors |
//!
//! Third-party connectors and formats depend on this crate alone: it re-exports
//! [`typetag`] and [`async_trait`](macro@async_trait) for their registrations.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod buffer_pool;
pub mod connector;
pub mod consent;
pub mod contract;
pub mod crypto;
pub mod decrypt;
pub mod derive;
mod encoder_pool;
pub mod engine;
pub mod error;
pub mod event_meta;
pub mod export;
pub mod format;
pub mod job;
pub mod keys_export;
pub mod keystore;
mod link_index;
pub mod privacy;
pub mod record;
pub mod registry;
pub mod reject;
pub mod safety;
pub mod schema;
pub mod sensitive;
pub mod shard;
pub mod stream;
pub mod stream_job;
pub mod summary;
mod topic_output;
pub mod timestamp {
    //! Java `DateTimeFormatter` patterns: the [`keylink_timestamp`] crate.
    pub use keylink_timestamp::*;
}
pub mod watch;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use async_trait::async_trait;
pub use bytes::Bytes;
/// For component configs' schemas: `#[derive(keylink_core::schemars::JsonSchema)]` (see
/// [`registry`]).
pub use schemars;
/// For [`registry::FromUrl`]: a component turns a URL into its config as JSON.
pub use serde_json;
pub use typetag;

/// What [`register!`] expands to needs; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
}

pub use connector::{ConnectorConfig, ObjectReader, ObjectWriter, Sink, Source};
pub use error::{Error, ErrorKind, Result};
pub use format::{Decoder, Encoder, Format, FormatConfig};
pub use keystore::{KeyStore, KeyStoreConfig};
pub use record::{FieldPlan, RecordBatch};
pub use sensitive::Sensitive;
