//! The running connector: a container as a [`Source`] and a [`Sink`].

use std::fmt;
use std::num::NonZero;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    Body, ClientOptions, Context, ExponentialRetryOptions, NoFormat, Request, RequestContent,
    RetryOptions, Url,
};
use azure_identity::{
    AzureCliCredential, ClientSecretCredential, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
};
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobContainerClientListBlobsOptions, BlockLookupList,
};
use azure_storage_blob::{BlobContainerClient, BlobServiceClient, BlobServiceClientOptions};
use bytes::BytesMut;
use futures_util::StreamExt;
use keylink_core::connector::{
    ObjectMeta, ObjectReader, ObjectWriter, Sink, Source, validate_object_path,
};
use keylink_core::{Bytes, Error, ErrorKind, Result, async_trait};
use tokio::task::JoinSet;

use crate::config::{Auth, AzureCredentials, Resolved};
use crate::error::{Failure, SdkKind, chain, map_error, redact};
use crate::sas::SasPolicy;

/// The size of a staged block by default: 8 MiB.
pub const DEFAULT_BLOCK_SIZE: usize = 8 << 20;

/// How many blocks of one blob upload at once by default. A writer holds at most this many
/// blocks in flight plus the one it is filling: 40 MiB with the default block size.
pub const DEFAULT_CONCURRENT_BLOCKS: usize = 4;

/// The most blocks a block blob may have.
pub const MAX_BLOCKS: u32 = 50_000;

/// Every request is retried at most this often after the first try, and only on transient
/// failures (408, 429, 5xx, broken connections), with exponential backoff.
pub const MAX_RETRIES: u32 = 3;

/// The longest a request may keep retrying.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(60);

/// The longest one try of a request may wait for the response's headers; a try that takes
/// longer fails as a transient I/O error (and is retried like a broken connection).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Downloads: this many range requests at once, of this size (a reader holds at most their
/// product: 16 MiB).
const DOWNLOAD_PARALLEL: usize = 4;
const DOWNLOAD_PARTITION: usize = 4 << 20;

/// A container as a [`Source`] and a [`Sink`]. Cheap to clone (one client, shared).
#[derive(Clone)]
pub struct AzureStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Arc<BlobContainerClient>,
    account: String,
    container: String,
    block_size: usize,
    concurrent_blocks: usize,
    /// Names per List Blobs page; `None`: the service's default (5,000).
    list_page_size: Option<i32>,
}

impl fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the client: its pipeline holds the credentials.
        f.debug_struct("AzureStore")
            .field("account", &self.inner.account)
            .field("container", &self.inner.container)
            .field("block_size", &self.inner.block_size)
            .field("concurrent_blocks", &self.inner.concurrent_blocks)
            .finish_non_exhaustive()
    }
}

fn sdk_setup_error(what: &str, e: &azure_core::Error) -> Error {
    Error::config(format!(
        "azure connector: cannot set up {what}: {}",
        redact(&chain(e))
    ))
}

impl AzureStore {
    /// Builds the client for a resolved config (no request is sent).
    pub(crate) fn connect(resolved: Resolved, container: String) -> Result<Self> {
        let url = Url::parse(resolved.endpoint.trim_end_matches('/'))
            .map_err(|_| Error::config("azure connector: 'endpoint' is not a valid URL"))?;
        let mut client_options = ClientOptions {
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(200),
                max_retries: MAX_RETRIES,
                max_total_elapsed: azure_core::time::Duration::seconds(
                    RETRY_DEADLINE.as_secs() as i64
                ),
                max_delay: azure_core::time::Duration::seconds(5),
            }),
            ..ClientOptions::default()
        };
        client_options
            .per_try_policies
            .push(Arc::new(TimeoutPolicy(ATTEMPT_TIMEOUT)));
        let mut credential: Option<Arc<dyn TokenCredential>> = None;
        match resolved.auth {
            Auth::Sas(token) => client_options
                .per_try_policies
                .push(Arc::new(SasPolicy::fixed(token))),
            Auth::AccountKey(key) => client_options
                .per_try_policies
                .push(Arc::new(SasPolicy::minted(resolved.account.clone(), key))),
            Auth::Token(c) => {
                credential = Some(match c {
                    AzureCredentials::ClientSecret {
                        tenant_id,
                        client_id,
                        client_secret,
                    } => ClientSecretCredential::new(
                        &tenant_id,
                        client_id,
                        Secret::new(client_secret.into_inner()),
                        None,
                    )
                    .map_err(|e| sdk_setup_error("the client secret credential", &e))?,
                    AzureCredentials::ManagedIdentity { client_id } => {
                        ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                            user_assigned_id: client_id.map(UserAssignedId::ClientId),
                            ..Default::default()
                        }))
                        .map_err(|e| sdk_setup_error("the managed identity credential", &e))?
                    }
                    _ => AzureCliCredential::new(None)
                        .map_err(|e| sdk_setup_error("the Azure CLI credential", &e))?,
                });
                if url.scheme() != "https" {
                    return Err(Error::config(
                        "azure connector: Entra ID tokens need an https:// endpoint; for an \
                         emulator on http:// use an account key, a connection string or a SAS",
                    ));
                }
            }
        }
        let service = BlobServiceClient::new(
            url,
            credential,
            Some(BlobServiceClientOptions {
                client_options,
                ..Default::default()
            }),
        )
        .map_err(|e| sdk_setup_error("the blob client", &e))?;
        Ok(AzureStore {
            inner: Arc::new(Inner {
                client: Arc::new(service.blob_container_client(&container)),
                account: resolved.account,
                container,
                block_size: DEFAULT_BLOCK_SIZE,
                concurrent_blocks: DEFAULT_CONCURRENT_BLOCKS,
                list_page_size: None,
            }),
        })
    }

    /// Sets the size of the staged blocks (at least 1 MiB; blobs smaller than one block are
    /// uploaded with a single PUT at commit).
    pub fn with_block_size(self, bytes: usize) -> Self {
        self.tuned(|i| i.block_size = bytes.max(1 << 20))
    }

    /// Sets how many blocks of one blob upload at once (at least 1).
    pub fn with_concurrent_blocks(self, blocks: usize) -> Self {
        self.tuned(|i| i.concurrent_blocks = blocks.max(1))
    }

    /// Sets how many names a List Blobs page holds (1–5,000; the service's default is 5,000).
    pub fn with_list_page_size(self, names: u16) -> Self {
        self.tuned(|i| i.list_page_size = Some(i32::from(names.clamp(1, 5000))))
    }

    fn tuned(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Inner {
            client: Arc::clone(&self.inner.client),
            account: self.inner.account.clone(),
            container: self.inner.container.clone(),
            block_size: self.inner.block_size,
            concurrent_blocks: self.inner.concurrent_blocks,
            list_page_size: self.inner.list_page_size,
        };
        f(&mut inner);
        AzureStore {
            inner: Arc::new(inner),
        }
    }

    /// The storage account.
    pub fn account(&self) -> &str {
        &self.inner.account
    }

    /// The container.
    pub fn container(&self) -> &str {
        &self.inner.container
    }

    /// The SDK's container client (for what the connector does not do: creating containers in
    /// tests, listing uncommitted blocks).
    pub fn client(&self) -> &BlobContainerClient {
        &self.inner.client
    }

    /// Creates the container (tests and tools; a job never creates containers). An existing
    /// container is fine.
    pub async fn create_container(&self) -> Result<()> {
        match self.inner.client.create(None).await {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e) == Some("ContainerAlreadyExists") => Ok(()),
            Err(e) => Err(map_error(
                "create the container",
                &self.inner.describe(""),
                &e,
            )),
        }
    }
}

/// Bounds one try of a request (up to the response's headers) in time.
#[derive(Debug)]
struct TimeoutPolicy(Duration);

#[async_trait]
impl Policy for TimeoutPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        match tokio::time::timeout(self.0, next[0].send(ctx, request, &next[1..])).await {
            Ok(result) => result,
            Err(_) => Err(azure_core::Error::new(
                azure_core::error::ErrorKind::Io,
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no response within {} s", self.0.as_secs()),
                ),
            )),
        }
    }
}

/// The service's error code of a failed call.
fn error_code(e: &azure_core::Error) -> Option<&str> {
    match e.kind() {
        azure_core::error::ErrorKind::HttpResponse { error_code, .. } => error_code.as_deref(),
        _ => None,
    }
}

impl Inner {
    fn describe(&self, name: &str) -> String {
        format!("az://{}/{}/{name}", self.account, self.container)
    }
}

#[async_trait]
impl Source for AzureStore {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let inner = &self.inner;
        let target = inner.describe(prefix);
        let mut items = inner
            .client
            .list_blobs(Some(BlobContainerClientListBlobsOptions {
                prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
                maxresults: inner.list_page_size,
                ..Default::default()
            }))
            .map_err(|e| map_error("list", &target, &e))?;
        let mut out = Vec::new();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| map_error("list", &target, &e))?;
            let Some(name) = item.name else { continue };
            // Folder markers and names no object path can name are not objects.
            if validate_object_path(&name).is_err() {
                tracing::debug!(
                    container = %inner.container,
                    "azure connector: skipping a blob name that is not a valid object path"
                );
                continue;
            }
            let (size, version) = item.properties.map_or((None, None), |p| {
                (p.content_length, p.etag.map(|e| e.to_string()))
            });
            out.push(ObjectMeta {
                path: name,
                size,
                version,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn open(&self, path: &str) -> Result<Box<dyn ObjectReader>> {
        validate_object_path(path)?;
        let inner = &self.inner;
        let blob = inner.client.blob_client(path);
        let download = blob
            .download(Some(BlobClientDownloadOptions {
                parallel: NonZero::new(DOWNLOAD_PARALLEL),
                partition_size: NonZero::new(DOWNLOAD_PARTITION),
                ..Default::default()
            }))
            .await
            .map_err(|e| map_error("read", &inner.describe(path), &e))?;
        Ok(Box::new(AzureReader {
            body: download.body,
            inner: Arc::clone(inner),
            name: path.to_string(),
            offset: 0,
        }))
    }

    fn describe(&self, path: &str) -> String {
        self.inner.describe(path)
    }
}

/// A streaming read: the response body, chunk by chunk as it arrives.
struct AzureReader {
    body: azure_core::http::AsyncResponseBody,
    inner: Arc<Inner>,
    name: String,
    offset: u64,
}

#[async_trait]
impl ObjectReader for AzureReader {
    async fn read_chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.body.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => {
                    self.offset += chunk.len() as u64;
                    return Ok(Some(chunk));
                }
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(map_error(
                        &format!("read (at byte {})", self.offset),
                        &self.inner.describe(&self.name),
                        &e,
                    ));
                }
            }
        }
    }
}

#[async_trait]
impl Sink for AzureStore {
    async fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        validate_object_path(path)?;
        Ok(Box::new(AzureWriter {
            inner: Arc::clone(&self.inner),
            name: path.to_string(),
            buf: BytesMut::new(),
            next_block: 0,
            in_flight: JoinSet::new(),
            finished: false,
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        validate_object_path(path)?;
        let inner = &self.inner;
        match inner.client.blob_client(path).delete(None).await {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e) == Some("BlobNotFound") => Ok(()),
            Err(e) => Err(map_error("delete", &inner.describe(path), &e)),
        }
    }

    fn describe(&self, path: &str) -> String {
        self.inner.describe(path)
    }
}

/// A streaming write to a block blob. Bytes collect in a block buffer; each full block is
/// staged (Put Block) in the background, at most `concurrent_blocks` at once. Staged blocks are
/// not part of any blob: only `commit` (Put Block List) makes the blob — all of it — visible.
/// A blob smaller than one block is sent with a single Put Blob at commit.
struct AzureWriter {
    inner: Arc<Inner>,
    name: String,
    /// The block being filled.
    buf: BytesMut,
    /// How many blocks were handed to `in_flight` (their ids are 0..next_block).
    next_block: u32,
    in_flight: JoinSet<Result<()>>,
    finished: bool,
}

/// A request body of raw bytes.
fn content(body: Bytes) -> RequestContent<Bytes, NoFormat> {
    Body::Bytes(body).into()
}

/// The id of block `n`: fixed length, as Azure requires within one blob (base64-encoded by the
/// SDK).
fn block_id(n: u32) -> Vec<u8> {
    format!("keylink-{n:08}").into_bytes()
}

impl AzureWriter {
    fn target(&self) -> String {
        self.inner.describe(&self.name)
    }

    /// Stages the filled buffer as the next block, in the background; waits while too many
    /// blocks are in flight.
    async fn send_block(&mut self) -> Result<()> {
        while self.in_flight.len() >= self.inner.concurrent_blocks {
            let joined = self.in_flight.join_next().await;
            collect(joined, &self.target())?;
        }
        let n = self.next_block;
        if n >= MAX_BLOCKS {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "azure connector: {} needs more than {MAX_BLOCKS} blocks",
                    self.target()
                ),
            ));
        }
        self.next_block += 1;
        let body = std::mem::replace(
            &mut self.buf,
            BytesMut::with_capacity(self.inner.block_size),
        )
        .freeze();
        let blob = self
            .inner
            .client
            .blob_client(&self.name)
            .block_blob_client();
        let target = self.target();
        self.in_flight.spawn(async move {
            let len = body.len() as u64;
            blob.stage_block(&block_id(n), len, content(body), None)
                .await
                .map(drop)
                .map_err(|e| map_error(&format!("stage block {n} of"), &target, &e))
        });
        Ok(())
    }

    /// Cancels the blocks in flight. Staged blocks that were never committed are not a blob;
    /// Azure discards them (after a week at most, or at the next commit of this name).
    async fn cancel(&mut self) {
        self.in_flight.shutdown().await;
        self.buf = BytesMut::new();
    }
}

/// Takes the result of a finished block task.
fn collect(
    joined: Option<std::result::Result<Result<()>, tokio::task::JoinError>>,
    target: &str,
) -> Result<()> {
    match joined {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(Error::new(
            ErrorKind::Other,
            format!("azure connector: a block upload of {target} panicked or was cancelled: {e}"),
        )),
    }
}

#[async_trait]
impl ObjectWriter for AzureWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.finished {
            return Err(Error::new(
                ErrorKind::Other,
                format!("azure connector: write to {} after finish", self.target()),
            ));
        }
        let size = self.inner.block_size;
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let take = (size - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == size {
                self.send_block().await?;
            }
        }
        // Surface a failed block early rather than at finish.
        let target = self.target();
        while let Some(joined) = self.in_flight.try_join_next() {
            collect(Some(joined), &target)?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        if self.next_block > 0 {
            if !self.buf.is_empty() {
                self.send_block().await?;
            }
            let target = self.target();
            while !self.in_flight.is_empty() {
                let joined = self.in_flight.join_next().await;
                collect(joined, &target)?;
            }
        }
        self.finished = true;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if let Err(e) = self.finish().await {
            self.cancel().await;
            return Err(e);
        }
        let target = self.target();
        let blob = self.inner.client.blob_client(&self.name);
        if self.next_block == 0 {
            let body = std::mem::take(&mut self.buf).freeze();
            return blob
                .upload(content(body), None)
                .await
                .map(drop)
                .map_err(|e| map_error("write", &target, &e));
        }
        let list = BlockLookupList {
            committed: None,
            latest: Some((0..self.next_block).map(block_id).collect()),
            uncommitted: None,
        };
        let content = RequestContent::try_from(list).map_err(|e| {
            Failure {
                status: None,
                code: None,
                sdk: SdkKind::Other,
                detail: redact(&chain(&e)),
            }
            .into_error("encode the block list of", &target)
        })?;
        blob.block_blob_client()
            .commit_block_list(content, None)
            .await
            .map(drop)
            .map_err(|e| map_error("commit the block list of", &target, &e))
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.cancel().await;
        Ok(())
    }
}

impl Drop for AzureWriter {
    /// A writer dropped without commit: dropping the task set aborts the blocks in flight;
    /// nothing was committed, so nothing is visible.
    fn drop(&mut self) {
        self.in_flight.abort_all();
    }
}
