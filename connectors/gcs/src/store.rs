//! The running connector: a bucket as a [`Source`] and a [`Sink`].

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{Stream, StreamExt};
use gcloud_storage::client::google_cloud_auth::credentials::CredentialsFile;
use gcloud_storage::client::google_cloud_auth::project::Config as AuthConfig;
use gcloud_storage::client::google_cloud_auth::token::DefaultTokenSourceProvider;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::Error as GcsError;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};
use gcloud_storage::http::resumable_upload_client::{
    ChunkSize, ResumableUploadClient, UploadStatus,
};
use gcloud_storage::http::storage_client::SCOPES;
use keylink_core::connector::{
    BuildContext, ObjectMeta, ObjectReader, ObjectWriter, Sink, Source, validate_object_path,
};
use keylink_core::{Bytes, Error, ErrorKind, Result, async_trait};
use token_source::{TokenSource, TokenSourceProvider};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use crate::config::{GcsConfig, GcsCredentials, check_credentials_json};
use crate::error::Failure;

/// Resumable uploads send chunks whose sizes are multiples of this (256 KiB), except the last.
pub const CHUNK_ALIGN: usize = 256 << 10;

/// The size of the chunks an upload sends by default: 16 MiB (a multiple of [`CHUNK_ALIGN`]).
pub const DEFAULT_CHUNK_SIZE: usize = 16 << 20;

/// Every request is tried at most this often (the first try included), and only on transient
/// failures (429, 5xx, timeouts, broken connections), with exponential backoff and jitter.
pub const MAX_ATTEMPTS: u32 = 4;

/// Time limits: connecting, the next bytes of a download's body, one attempt of a request (an
/// upload's chunk included: 16 MiB in 120 s needs 1.1 Mbit/s), and an operation with its
/// retries.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// See [`CONNECT_TIMEOUT`]. A download whose body makes no progress for this long fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// See [`CONNECT_TIMEOUT`].
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
/// See [`CONNECT_TIMEOUT`].
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(300);

/// Objects listed per page.
const PAGE_SIZE: i32 = 1000;

/// A bucket as a [`Source`] and a [`Sink`]. Cheap to clone (one client, shared).
#[derive(Clone)]
pub struct GcsStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    bucket: String,
    chunk_size: usize,
}

impl fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the client: it holds the token source.
        f.debug_struct("GcsStore")
            .field("bucket", &self.inner.bucket)
            .field("chunk_size", &self.inner.chunk_size)
            .finish_non_exhaustive()
    }
}

impl GcsStore {
    /// Resolves the endpoint and the credentials of `config`; reads a credentials file (no
    /// request is sent: a token is fetched on the first request).
    pub(crate) async fn connect(config: &GcsConfig, ctx: &BuildContext) -> Result<Self> {
        let (endpoint, google) = config.resolve_endpoint()?;
        let credentials = match &config.credentials {
            Some(c) => c.clone(),
            // A token is sent only where it belongs: to Google, or where the config says so.
            None if google => GcsCredentials::Default,
            None => GcsCredentials::Anonymous,
        };
        let provider: Option<Box<dyn TokenSourceProvider>> = match credentials {
            GcsCredentials::Anonymous => None,
            GcsCredentials::Default => Some(Box::new(LazyTokens::new(None))),
            GcsCredentials::Json(json) => {
                let file = parse_credentials_file(json.expose(), "'credentials'")?;
                Some(Box::new(LazyTokens::new(Some(file))))
            }
            GcsCredentials::File(path) => {
                let path = if path.is_relative() {
                    ctx.base_dir.join(path)
                } else {
                    path
                };
                let file = read_credentials_file(&path).await?;
                Some(Box::new(LazyTokens::new(Some(file))))
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // not reqwest's read_timeout: it runs from the start of a request, so it would bound
            // a chunk upload by the time a download may stall; downloads are bounded in the
            // reader, every request by ATTEMPT_TIMEOUT
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    format!("gcs connector: cannot create the HTTP client: {e}"),
                )
            })?;
        let client_config = ClientConfig {
            http: Some(reqwest_middleware::ClientBuilder::new(http).build()),
            storage_endpoint: endpoint,
            token_source_provider: provider,
            ..ClientConfig::default()
        };
        let store = Self::from_client(Client::new(client_config), config.bucket.clone());
        Ok(match config.upload_chunk_mib {
            Some(mib) => store.with_chunk_size((mib as usize) << 20),
            None => store,
        })
    }

    /// A store on `bucket` through a client configured elsewhere (tests, custom clients).
    pub fn from_client(client: Client, bucket: impl Into<String>) -> Self {
        GcsStore {
            inner: Arc::new(Inner {
                client,
                bucket: bucket.into(),
                chunk_size: DEFAULT_CHUNK_SIZE,
            }),
        }
    }

    /// Sets the size of an upload's chunks (rounded up to a multiple of [`CHUNK_ALIGN`]; objects
    /// smaller than one chunk are uploaded with a single request at commit). A writer holds at
    /// most two chunks: the one being sent and the one being filled.
    pub fn with_chunk_size(self, bytes: usize) -> Self {
        let chunk_size = bytes.max(1).div_ceil(CHUNK_ALIGN) * CHUNK_ALIGN;
        GcsStore {
            inner: Arc::new(Inner {
                client: self.inner.client.clone(),
                bucket: self.inner.bucket.clone(),
                chunk_size,
            }),
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The client (for what the connector does not do: creating buckets in tests).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

fn parse_credentials_file(json: &str, what: &str) -> Result<CredentialsFile> {
    check_credentials_json(json)
        .map_err(|why| Error::config(format!("gcs connector: {what}: {why}")))?;
    serde_json::from_str(json).map_err(|e| {
        Error::config(format!(
            "gcs connector: {what}: the credentials JSON does not have the shape of a key file \
             (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

async fn read_credentials_file(path: &PathBuf) -> Result<CredentialsFile> {
    let json = tokio::fs::read_to_string(path).await.map_err(|e| {
        Error::config(format!(
            "gcs connector: cannot read the credentials file {}: {e}",
            path.display()
        ))
    })?;
    let json = keylink_core::Sensitive::new(json);
    parse_credentials_file(
        json.expose(),
        &format!("credentials file {}", path.display()),
    )
}

// ---------------------------------------------------------------------------------- tokens

/// Credentials resolved on the first request, not when the connector is built (building sends
/// nothing, as `keylink validate` expects): Application Default Credentials (`None`) or a key.
/// A failed resolution is not cached, so a retried request tries again.
struct LazyTokens {
    file: Option<CredentialsFile>,
    source: Arc<OnceCell<Arc<dyn TokenSource>>>,
}

impl LazyTokens {
    fn new(file: Option<CredentialsFile>) -> Self {
        LazyTokens {
            file,
            source: Arc::new(OnceCell::new()),
        }
    }
}

impl fmt::Debug for LazyTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LazyTokens(**REDACTED**)")
    }
}

impl TokenSourceProvider for LazyTokens {
    fn token_source(&self) -> Arc<dyn TokenSource> {
        Arc::new(LazySource {
            file: self.file.clone(),
            source: Arc::clone(&self.source),
        })
    }
}

struct LazySource {
    file: Option<CredentialsFile>,
    source: Arc<OnceCell<Arc<dyn TokenSource>>>,
}

impl fmt::Debug for LazySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LazySource(**REDACTED**)")
    }
}

#[async_trait]
impl TokenSource for LazySource {
    async fn token(&self) -> std::result::Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let source = self
            .source
            .get_or_try_init(|| async {
                let config = AuthConfig::default().with_scopes(&SCOPES);
                let provider = match &self.file {
                    Some(file) => {
                        DefaultTokenSourceProvider::new_with_credentials(
                            config,
                            Box::new(file.clone()),
                        )
                        .await?
                    }
                    None => DefaultTokenSourceProvider::new(config).await?,
                };
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(provider.token_source())
            })
            .await?;
        source.token().await
    }
}

// ---------------------------------------------------------------------------------- retries

impl Inner {
    fn describe(&self, name: &str) -> String {
        format!("gs://{}/{name}", self.bucket)
    }

    /// Runs a request until it succeeds, fails for good, or has been tried [`MAX_ATTEMPTS`]
    /// times or for [`OPERATION_TIMEOUT`]; each try is bounded by [`ATTEMPT_TIMEOUT`].
    async fn retry<T, F, Fut>(&self, op: &str, target: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, GcsError>>,
    {
        let started = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let failure = match tokio::time::timeout(ATTEMPT_TIMEOUT, f()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => Failure::of(&e),
                Err(_) => Failure::timed_out(ATTEMPT_TIMEOUT),
            };
            let pause = backoff(tries);
            if !failure.is_transient()
                || tries >= MAX_ATTEMPTS
                || started.elapsed() + pause > OPERATION_TIMEOUT
            {
                return Err(failure.into_error(op, target, tries));
            }
            tracing::debug!(
                object = %target,
                tries,
                "gcs connector: retrying after a transient failure"
            );
            tokio::time::sleep(pause).await;
        }
    }
}

/// The pause before try `tries + 1`: 200 ms doubling up to 5 s, with full jitter.
fn backoff(tries: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let cap = Duration::from_millis(200)
        .saturating_mul(1 << tries.saturating_sub(1).min(10))
        .min(Duration::from_secs(5));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(tries);
    let fraction = (h.finish() % 1000) as u32;
    cap / 2 + cap / 2 * fraction / 1000
}

// ---------------------------------------------------------------------------------- reading

#[async_trait]
impl Source for GcsStore {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let inner = &self.inner;
        let target = inner.describe(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let request = ListObjectsRequest {
                bucket: inner.bucket.clone(),
                prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
                page_token: token.take(),
                max_results: Some(PAGE_SIZE),
                ..Default::default()
            };
            let page = inner
                .retry("list", &target, || inner.client.list_objects(&request))
                .await?;
            for o in page.items.unwrap_or_default() {
                // Folder placeholders (`raw/`) and names no object path can name are skipped.
                if validate_object_path(&o.name).is_err() {
                    tracing::debug!(
                        bucket = %inner.bucket,
                        "gcs connector: skipping a name that is not a valid object path"
                    );
                    continue;
                }
                out.push(ObjectMeta {
                    size: u64::try_from(o.size).ok(),
                    // a new generation with every write: what a watcher compares
                    version: Some(o.generation.to_string()),
                    path: o.name,
                });
            }
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn open(&self, path: &str) -> Result<Box<dyn ObjectReader>> {
        validate_object_path(path)?;
        let inner = &self.inner;
        let request = GetObjectRequest {
            bucket: inner.bucket.clone(),
            object: path.to_string(),
            ..Default::default()
        };
        let range = Range::default();
        let body = inner
            .retry("read", &inner.describe(path), || async {
                inner
                    .client
                    .download_streamed_object(&request, &range)
                    .await
                    .map(|s| Box::pin(s) as BodyStream)
            })
            .await?;
        Ok(Box::new(GcsReader {
            body,
            inner: Arc::clone(inner),
            name: path.to_string(),
            offset: 0,
        }))
    }

    fn describe(&self, path: &str) -> String {
        self.inner.describe(path)
    }
}

type BodyStream = Pin<Box<dyn Stream<Item = std::result::Result<Bytes, GcsError>> + Send>>;

/// A streaming read: the response body, chunk by chunk as the network delivers it.
struct GcsReader {
    body: BodyStream,
    inner: Arc<Inner>,
    name: String,
    offset: u64,
}

#[async_trait]
impl ObjectReader for GcsReader {
    async fn read_chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            let next = match tokio::time::timeout(READ_TIMEOUT, self.body.next()).await {
                Ok(next) => next,
                Err(_) => {
                    return Err(Failure::timed_out(READ_TIMEOUT).into_error(
                        &format!("read (at byte {})", self.offset),
                        &self.inner.describe(&self.name),
                        1,
                    ));
                }
            };
            match next {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => {
                    self.offset += chunk.len() as u64;
                    return Ok(Some(chunk));
                }
                None => return Ok(None),
                Some(Err(e)) => {
                    let mut failure = Failure::of(&e);
                    // a body that broke off mid-object: the transport failed
                    failure.transport = failure.status.is_none();
                    return Err(failure.into_error(
                        &format!("read (at byte {})", self.offset),
                        &self.inner.describe(&self.name),
                        1,
                    ));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------- writing

#[async_trait]
impl Sink for GcsStore {
    async fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        validate_object_path(path)?;
        Ok(Box::new(GcsWriter {
            inner: Arc::clone(&self.inner),
            name: path.to_string(),
            buf: BytesMut::new(),
            session: None,
            sent: 0,
            in_flight: None,
            finished: false,
            closed: false,
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        validate_object_path(path)?;
        let inner = &self.inner;
        let request = DeleteObjectRequest {
            bucket: inner.bucket.clone(),
            object: path.to_string(),
            ..Default::default()
        };
        match inner
            .retry("delete", &inner.describe(path), || {
                inner.client.delete_object(&request)
            })
            .await
        {
            Ok(()) => Ok(()),
            // Already gone (also on a retry after a delete whose answer was lost).
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn describe(&self, path: &str) -> String {
        self.inner.describe(path)
    }
}

/// A streaming write through a resumable upload session that is finalised only at commit.
///
/// Bytes collect in a chunk buffer; a full chunk is sent to the session (started with the first
/// full chunk) in the background while the next one fills, so a writer holds at most two
/// chunks. `finish` sends everything but the last partial 256 KiB; `commit` sends that tail with
/// the object's total size, which finalises the object — only then does it exist. An object
/// smaller than one chunk is sent with a single request at commit. `abort` (or dropping the
/// writer) cancels the session: nothing was ever visible.
struct GcsWriter {
    inner: Arc<Inner>,
    name: String,
    /// The bytes not yet handed to the session.
    buf: BytesMut,
    /// The upload session, once the first chunk is full. Its URL is a capability: never printed.
    session: Option<ResumableUploadClient>,
    /// Bytes handed to the session so far (sent or in flight).
    sent: u64,
    /// The chunk being sent; yields the number of bytes the session then holds.
    in_flight: Option<JoinHandle<Result<u64>>>,
    finished: bool,
    /// Committed or aborted: nothing for `Drop` to clean up.
    closed: bool,
}

impl GcsWriter {
    fn target(&self) -> String {
        self.inner.describe(&self.name)
    }

    /// Starts the upload session (with the first full chunk).
    async fn session(&mut self) -> Result<ResumableUploadClient> {
        if let Some(s) = &self.session {
            return Ok(s.clone());
        }
        let inner = &self.inner;
        let request = UploadObjectRequest {
            bucket: inner.bucket.clone(),
            ..Default::default()
        };
        let kind = UploadType::Simple(Media::new(self.name.clone()));
        let session = inner
            .retry("start the upload of", &self.target(), || {
                inner.client.prepare_resumable_upload(&request, &kind)
            })
            .await?;
        self.session = Some(session.clone());
        Ok(session)
    }

    /// Waits for the chunk in flight, if any.
    async fn settle(&mut self) -> Result<()> {
        if let Some(task) = self.in_flight.take() {
            let held = match task.await {
                Ok(r) => r?,
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Other,
                        format!(
                            "gcs connector: a chunk upload of {} panicked or was cancelled: {e}",
                            self.target()
                        ),
                    ));
                }
            };
            debug_assert_eq!(held, self.sent);
        }
        Ok(())
    }

    /// Hands `data` (a multiple of [`CHUNK_ALIGN`] bytes) to the session in the background,
    /// after the chunk before it has arrived.
    async fn send(&mut self, data: Bytes) -> Result<()> {
        let session = self.session().await?;
        self.settle().await?;
        let start = self.sent;
        self.sent += data.len() as u64;
        let target = self.target();
        self.in_flight = Some(tokio::spawn(async move {
            upload_chunk(&session, data, start, None, &target).await
        }));
        Ok(())
    }

    /// Cancels the chunk in flight and the session, if any.
    async fn cancel(&mut self) -> Result<()> {
        self.closed = true;
        if let Some(task) = self.in_flight.take() {
            task.abort();
            let _ = task.await;
        }
        match self.session.take() {
            Some(session) => cancel_session(&self.inner, session, &self.target()).await,
            None => Ok(()),
        }
    }
}

/// Sends `data` as bytes `start..` of the session's object (`total`: the object's size, for the
/// chunk that finalises it) and returns how many bytes the session then holds. A transient
/// failure is retried from where the store says it stopped.
async fn upload_chunk(
    session: &ResumableUploadClient,
    data: Bytes,
    start: u64,
    total: Option<u64>,
    target: &str,
) -> Result<u64> {
    let end = start + data.len() as u64;
    let op = |pos: u64| {
        if total.is_some() {
            "finish the upload of".to_string()
        } else {
            format!("upload bytes {pos}-{} of", end.max(1) - 1)
        }
    };
    let started = Instant::now();
    let mut pos = start;
    let mut tries = 0;
    loop {
        tries += 1;
        let rest = data.slice((pos - start) as usize..);
        let size = match total {
            // nothing left to send: only the size, which finalises the object
            Some(total) if rest.is_empty() => ChunkSize::new(total, total, Some(total)),
            _ => ChunkSize::new(pos, end - 1, total),
        };
        let failure = match tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            session.upload_multiple_chunk(rest, &size),
        )
        .await
        {
            Ok(Ok(status)) => match landed(status, end, total) {
                Ok(Landed::Done) => return Ok(end),
                // The store kept only part of it: send the rest (a real GCS behaviour).
                Ok(Landed::At(held)) if held > pos => {
                    pos = held;
                    tries = 0;
                    continue;
                }
                Ok(Landed::At(_)) => Failure::protocol(
                    "the store acknowledged fewer bytes than were sent, twice at the same offset",
                ),
                Err(f) => return Err(f.into_error(&op(start), target, tries)),
            },
            Ok(Err(e)) => Failure::of(&e),
            Err(_) => Failure::timed_out(ATTEMPT_TIMEOUT),
        };
        let pause = backoff(tries);
        if !failure.is_transient()
            || tries >= MAX_ATTEMPTS
            || started.elapsed() + pause > OPERATION_TIMEOUT
        {
            return Err(failure.into_error(&op(pos), target, tries));
        }
        tokio::time::sleep(pause).await;
        if !failure.unsent {
            // Part of the chunk may have arrived: ask the store where to go on from. (Only
            // after a failure: fake-gcs-server finalises an object on such a query.)
            // (if the query fails too, the next try fails the same way and is counted then)
            if let Ok(Ok(status)) =
                tokio::time::timeout(ATTEMPT_TIMEOUT, session.status(None)).await
            {
                match landed(status, end, total) {
                    Ok(Landed::Done) => return Ok(end),
                    Ok(Landed::At(held)) => pos = held.clamp(start, end),
                    Err(f) => return Err(f.into_error(&op(pos), target, tries)),
                }
            }
        }
    }
}

/// Where an upload stands after a chunk was sent.
enum Landed {
    /// The chunk arrived (and, for the last one, the object exists).
    Done,
    /// The session holds this many bytes.
    At(u64),
}

fn landed(
    status: UploadStatus,
    end: u64,
    total: Option<u64>,
) -> std::result::Result<Landed, Failure> {
    match (status, total) {
        (UploadStatus::Ok(_), Some(_)) => Ok(Landed::Done),
        (UploadStatus::Ok(_), None) => Err(Failure::protocol(
            "the store finalised the object before the upload was complete",
        )),
        (UploadStatus::ResumeIncomplete(range), _) => {
            let held = range.last_byte + 1;
            if total.is_none() && held >= end {
                Ok(Landed::Done)
            } else {
                Ok(Landed::At(held))
            }
        }
        (UploadStatus::NotStarted, _) => Ok(Landed::At(0)),
    }
}

/// Cancels an upload session: its bytes are discarded and it can no longer be finalised.
async fn cancel_session(inner: &Inner, session: ResumableUploadClient, target: &str) -> Result<()> {
    match inner
        .retry("cancel the upload of", target, || session.clone().cancel())
        .await
    {
        Ok(()) => Ok(()),
        // already gone: nothing remains, which is what cancelling is for
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl ObjectWriter for GcsWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.finished {
            return Err(Error::new(
                ErrorKind::Other,
                format!("gcs connector: write to {} after finish", self.target()),
            ));
        }
        let size = self.inner.chunk_size;
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf.reserve(size);
            }
            let take = (size - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == size {
                let full = std::mem::replace(&mut self.buf, BytesMut::with_capacity(size));
                self.send(full.freeze()).await?;
            }
        }
        // Surface a failed chunk early rather than at finish.
        if self.in_flight.as_ref().is_some_and(JoinHandle::is_finished) {
            self.settle().await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        if self.session.is_some() {
            // everything but the last partial 256 KiB, which goes with the size at commit
            let aligned = self.buf.len() / CHUNK_ALIGN * CHUNK_ALIGN;
            if aligned > 0 {
                let head = self.buf.split_to(aligned).freeze();
                self.send(head).await?;
            }
            self.settle().await?;
        }
        self.finished = true;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if let Err(e) = self.finish().await {
            let _ = self.cancel().await;
            return Err(e);
        }
        let inner = Arc::clone(&self.inner);
        let target = self.target();
        let tail = std::mem::take(&mut self.buf).freeze();
        let result = match self.session.clone() {
            None => {
                let request = UploadObjectRequest {
                    bucket: inner.bucket.clone(),
                    ..Default::default()
                };
                let mut media = Media::new(self.name.clone());
                media.content_length = Some(tail.len() as u64);
                let kind = UploadType::Simple(media);
                inner
                    .retry("write", &target, || {
                        inner.client.upload_object(&request, tail.clone(), &kind)
                    })
                    .await
                    .map(drop)
            }
            Some(session) => {
                let total = self.sent + tail.len() as u64;
                upload_chunk(&session, tail, self.sent, Some(total), &target)
                    .await
                    .map(drop)
            }
        };
        match result {
            Ok(()) => {
                self.closed = true;
                Ok(())
            }
            Err(e) => {
                if let Err(cancel) = self.cancel().await {
                    tracing::warn!(error = %cancel, "gcs connector: cancelling after a failed commit failed");
                }
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.cancel().await
    }
}

impl Drop for GcsWriter {
    /// A writer dropped without commit or abort: its chunk in flight is stopped and the session
    /// cancelled in the background, best effort (an unfinalised session is never an object, and
    /// GCS forgets it after a week).
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if let Some(task) = self.in_flight.take() {
            task.abort();
        }
        let Some(session) = self.session.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let target = self.target();
        runtime.spawn(async move {
            if let Err(e) = cancel_session(&inner, session, &target).await {
                tracing::warn!(error = %e, "gcs connector: cancelling a dropped writer's upload failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcloud_storage::http::resumable_upload_client::UploadedRange;

    #[test]
    fn chunk_sizes_are_aligned() {
        let store = GcsStore::from_client(Client::new(ClientConfig::default().anonymous()), "b-1");
        assert_eq!(store.inner.chunk_size, DEFAULT_CHUNK_SIZE);
        assert_eq!(DEFAULT_CHUNK_SIZE % CHUNK_ALIGN, 0);
        assert_eq!(
            store.clone().with_chunk_size(1).inner.chunk_size,
            CHUNK_ALIGN
        );
        assert_eq!(
            store.with_chunk_size(CHUNK_ALIGN + 1).inner.chunk_size,
            2 * CHUNK_ALIGN
        );
    }

    #[tokio::test]
    async fn the_configured_chunk_size_reaches_the_store() {
        let mut c = crate::GcsConfig::new("b-1");
        c.endpoint = Some("http://127.0.0.1:9".into());
        c.credentials = Some(crate::GcsCredentials::Anonymous);
        let ctx = BuildContext::default();
        assert_eq!(
            c.build_store(&ctx).await.unwrap().inner.chunk_size,
            DEFAULT_CHUNK_SIZE
        );
        c.upload_chunk_mib = Some(40);
        assert_eq!(
            c.build_store(&ctx).await.unwrap().inner.chunk_size,
            40 << 20
        );
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        for tries in 1..20 {
            let b = backoff(tries);
            assert!(b <= Duration::from_secs(5), "{tries}: {b:?}");
            assert!(b >= Duration::from_millis(100), "{tries}: {b:?}");
        }
        assert!(backoff(4) > backoff(1));
    }

    #[test]
    fn upload_answers_are_read_right() {
        let at = |last| {
            UploadStatus::ResumeIncomplete(UploadedRange {
                first_byte: 0,
                last_byte: last,
            })
        };
        assert!(matches!(landed(at(99), 100, None), Ok(Landed::Done)));
        assert!(matches!(landed(at(49), 100, None), Ok(Landed::At(50))));
        assert!(matches!(
            landed(at(99), 100, Some(100)),
            Ok(Landed::At(100))
        ));
        assert!(matches!(
            landed(UploadStatus::NotStarted, 100, None),
            Ok(Landed::At(0))
        ));
        let early = landed(UploadStatus::Ok(Default::default()), 100, None);
        assert!(early.is_err());
        assert!(matches!(
            landed(UploadStatus::Ok(Default::default()), 100, Some(100)),
            Ok(Landed::Done)
        ));
    }

    #[tokio::test]
    async fn building_sends_nothing_and_needs_no_credentials() {
        // Google's endpoint with Application Default Credentials: resolved lazily, so building
        // works anywhere (no metadata server, no key file) and sends no request.
        let mut c = GcsConfig::new("my-lake");
        c.endpoint = Some(crate::config::GOOGLE_ENDPOINT.into());
        c.credentials = Some(GcsCredentials::Default);
        let store = c.build_store(&BuildContext::default()).await.unwrap();
        assert_eq!(store.bucket(), "my-lake");
        assert_eq!(Source::describe(&store, "a/b.csv"), "gs://my-lake/a/b.csv");
        // a key file that is not there is a config error naming it
        c.credentials = Some(GcsCredentials::File("no/such/key.json".into()));
        let e = c.build_store(&BuildContext::default()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("no/such/key.json"), "{e}");
    }
}
