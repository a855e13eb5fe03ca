//! The Azure Blob Storage connector of keylink, on Microsoft's official `azure_storage_blob` SDK.
//!
//! ```yaml
//! connectors:
//!   blob: { type: azure, account: myacct, container: lake }      # Azure CLI login or env
//!   azurite:
//!     type: azure
//!     container: raw
//!     endpoint: http://127.0.0.1:10000/devstoreaccount1
//!     credentials: { account_key: "Eby8vdM0…" }
//! ```
//!
//! Object paths are blob names in the container (`raw/2024/01/a.csv`); [`Source::describe`]
//! names them `az://account/container/name`. Authentication (see [`AzureCredentials`]): Entra ID
//! (client secret, managed identity, Azure CLI), a SAS token, or an account key / connection
//! string (`AZURE_STORAGE_CONNECTION_STRING`, whose `BlobEndpoint` is honoured) from which the
//! connector mints short-lived account SAS tokens ([`AccountSas`]; the SDK has no shared-key
//! signing).
//!
//! - **Reading** ([`Source`]): [`Source::list`] pages through List Blobs (5,000 names a page)
//!   and returns every blob under the prefix, sorted; names that are not valid object paths are
//!   skipped. [`Source::open`] streams the blob with a few range requests in flight (at most
//!   16 MiB held): a blob is never held whole.
//! - **Writing** ([`Sink`]): a writer fills a block buffer ([`DEFAULT_BLOCK_SIZE`], 8 MiB); each
//!   full block is staged (Put Block) in the background, at most [`DEFAULT_CONCURRENT_BLOCKS`]
//!   at once (a writer holds at most 40 MiB). [`ObjectWriter::commit`] sends Put Block List —
//!   only then does the blob exist. A blob smaller than one block is sent with a single Put Blob
//!   at commit. [`ObjectWriter::abort`] (or dropping the writer) cancels the blocks in flight;
//!   staged blocks are never visible and Azure discards them.
//! - **Failures**: requests are retried only on transient failures (408, 429, 5xx, broken
//!   connections, tries without a response within [`ATTEMPT_TIMEOUT`]), at most [`MAX_RETRIES`]
//!   times with exponential backoff, within [`RETRY_DEADLINE`]. Every SDK error is mapped to a [`keylink_core::ErrorKind`] in one
//!   function, with a message naming the operation and `az://account/container/name` — never
//!   data, never credentials (a SAS signature in a transport error is blanked out).
//!
//! # Example
//!
//! ```
//! use keylink_core::connector::ConnectorConfig;
//! // Using the crate links its `"type": "azure"` registration into the program.
//! use keylink_connector_azure::AzureConfig;
//!
//! let config: Box<dyn ConnectorConfig> = serde_json::from_str(
//!     r#"{ "type": "azure", "account": "myacct", "container": "lake",
//!          "credentials": { "tenant_id": "t", "client_id": "c", "client_secret": "s3cr3t" } }"#,
//! )
//! .unwrap();
//! config.validate().unwrap();
//! // Secrets never print.
//! assert!(!format!("{config:?}").contains("s3cr3t"));
//! ```
#![deny(missing_docs)]

mod config;
mod error;
mod sas;
mod store;

pub use config::{AzureConfig, AzureCredentials, CONNECTION_STRING_ENV};
pub use sas::{AccountSas, SAS_LIFETIME, SAS_RENEW_BEFORE, SAS_VERSION};
pub use store::{
    ATTEMPT_TIMEOUT, AzureStore, DEFAULT_BLOCK_SIZE, DEFAULT_CONCURRENT_BLOCKS, MAX_BLOCKS,
    MAX_RETRIES, RETRY_DEADLINE,
};

#[cfg(doc)]
use keylink_core::connector::{ObjectWriter, Sink, Source};
