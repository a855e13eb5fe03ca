//! The running connector: a bucket as a [`Source`] and a [`Sink`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::{ByteStream, ByteStreamError};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::BytesMut;
use keylink_core::connector::{
    ObjectMeta, ObjectReader, ObjectWriter, Sink, Source, validate_object_path,
};
use keylink_core::{Bytes, Error, ErrorKind, Result, async_trait};
use tokio::task::JoinSet;

use crate::config::S3Config;
use crate::error::{Failure, chain, map_sdk_error};

/// The smallest part S3 accepts (except for the last part of an upload): 5 MiB.
pub const MIN_PART_SIZE: usize = 5 << 20;

/// The size of the first 1,000 parts of an upload by default: 8 MiB. Parts 1,001–2,000 are twice
/// that, 2,001–3,000 three times, and so on, so the 10,000 parts S3 allows hold 430 GiB while
/// memory stays small for the objects of everyday jobs.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;

/// How many parts of one object upload at once by default. A writer holds at most this many
/// parts in flight plus the one it is filling: 40 MiB with the default part size.
pub const DEFAULT_CONCURRENT_PARTS: usize = 4;

/// The most parts S3 allows in one upload.
const MAX_PARTS: i32 = 10_000;

/// Every request is tried at most this often (the first try included), and only on transient
/// failures (throttling, 5xx, timeouts, broken connections), with exponential backoff and jitter.
pub const MAX_ATTEMPTS: u32 = 4;

/// Time limits of every request: connecting, one attempt, and the whole operation with its
/// retries. Downloads are bounded after the response headers by the SDK's stalled-stream
/// protection (a body that makes no progress for 5 s fails).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// See [`CONNECT_TIMEOUT`].
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
/// See [`CONNECT_TIMEOUT`].
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(300);

/// A bucket as a [`Source`] and a [`Sink`]. Cheap to clone (one client, shared).
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    bucket: String,
    part_size: usize,
    concurrent_parts: usize,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the client: its config holds the credentials provider.
        f.debug_struct("S3Store")
            .field("bucket", &self.inner.bucket)
            .field("part_size", &self.inner.part_size)
            .field("concurrent_parts", &self.inner.concurrent_parts)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Resolves the region, endpoint and credentials of `config` (no request is sent).
    pub(crate) async fn connect(config: &S3Config) -> Result<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            );
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(c) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id.expose(),
                c.secret_access_key.expose(),
                c.session_token.as_ref().map(|t| t.expose().clone()),
                None,
                "keylink-config",
            ));
        }
        let mut sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(Error::config(format!(
                "s3 connector: no region for bucket {:?}: set 'region' in the connector or \
                 AWS_REGION",
                config.bucket
            )));
        }
        if let Some(arn) = &config.assume_role_arn {
            let provider = aws_config::sts::AssumeRoleProvider::builder(arn)
                .session_name(
                    config
                        .assume_role_session_name
                        .as_deref()
                        .unwrap_or("keylink"),
                )
                .configure(&sdk)
                .build()
                .await;
            sdk = sdk
                .into_builder()
                .credentials_provider(SharedCredentialsProvider::new(provider))
                .build();
        }
        let custom_endpoint = config.endpoint.is_some()
            || sdk.endpoint_url().is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(config.force_path_style.unwrap_or(custom_endpoint))
            .build();
        Ok(Self::from_client(
            Client::from_conf(s3),
            config.bucket.clone(),
        ))
    }

    /// A store on `bucket` through a client configured elsewhere (tests, custom clients).
    pub fn from_client(client: Client, bucket: impl Into<String>) -> Self {
        S3Store {
            inner: Arc::new(Inner {
                client,
                bucket: bucket.into(),
                part_size: DEFAULT_PART_SIZE,
                concurrent_parts: DEFAULT_CONCURRENT_PARTS,
            }),
        }
    }

    /// Sets the size of the first 1,000 parts of an upload (at least [`MIN_PART_SIZE`]; objects
    /// smaller than one part are uploaded with a single PUT at commit).
    pub fn with_part_size(self, bytes: usize) -> Self {
        self.tuned(|i| i.part_size = bytes.max(MIN_PART_SIZE))
    }

    /// Sets how many parts of one object upload at once (at least 1).
    pub fn with_concurrent_parts(self, parts: usize) -> Self {
        self.tuned(|i| i.concurrent_parts = parts.max(1))
    }

    fn tuned(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Inner {
            client: self.inner.client.clone(),
            bucket: self.inner.bucket.clone(),
            part_size: self.inner.part_size,
            concurrent_parts: self.inner.concurrent_parts,
        };
        f(&mut inner);
        S3Store {
            inner: Arc::new(inner),
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The SDK client (for what the connector does not do: creating buckets in tests, listing
    /// multipart uploads).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

impl Inner {
    fn describe(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// The size of part `n` (1-based): the base size for parts 1–1,000, twice it for
    /// 1,001–2,000, …
    fn part_size(&self, n: i32) -> usize {
        self.part_size * (1 + (n.max(1) as usize - 1) / 1000)
    }
}

#[async_trait]
impl Source for S3Store {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let inner = &self.inner;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = inner
                .client
                .list_objects_v2()
                .bucket(&inner.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| map_sdk_error("list", &inner.describe(prefix), &e))?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                // Folder markers (`raw/`) and keys no object path can name are not objects.
                if validate_object_path(key).is_err() {
                    tracing::debug!(
                        bucket = %inner.bucket,
                        "s3 connector: skipping a key that is not a valid object path"
                    );
                    continue;
                }
                out.push(ObjectMeta {
                    path: key.to_string(),
                    size: o.size().and_then(|s| u64::try_from(s).ok()),
                    version: o.e_tag().map(str::to_string),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn open(&self, path: &str) -> Result<Box<dyn ObjectReader>> {
        validate_object_path(path)?;
        let inner = &self.inner;
        let object = inner
            .client
            .get_object()
            .bucket(&inner.bucket)
            .key(path)
            .send()
            .await
            .map_err(|e| map_sdk_error("read", &inner.describe(path), &e))?;
        Ok(Box::new(S3Reader {
            body: object.body,
            inner: Arc::clone(inner),
            key: path.to_string(),
            offset: 0,
        }))
    }

    fn describe(&self, path: &str) -> String {
        self.inner.describe(path)
    }
}

/// A streaming read: the response body, chunk by chunk as the network delivers it.
struct S3Reader {
    body: ByteStream,
    inner: Arc<Inner>,
    key: String,
    offset: u64,
}

#[async_trait]
impl ObjectReader for S3Reader {
    async fn read_chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.body.try_next().await {
                Ok(Some(chunk)) if chunk.is_empty() => continue,
                Ok(Some(chunk)) => {
                    self.offset += chunk.len() as u64;
                    return Ok(Some(chunk));
                }
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(stream_error(
                        &format!("read (at byte {})", self.offset),
                        &self.inner.describe(&self.key),
                        &e,
                    ));
                }
            }
        }
    }
}

/// A failed download body: the transport broke (or stalled) mid-object.
fn stream_error(op: &str, target: &str, e: &ByteStreamError) -> Error {
    Failure {
        status: None,
        code: None,
        transport: true,
        credentials: None,
        construction: false,
        retried: false,
        detail: chain(e),
    }
    .into_error(op, target)
}

#[async_trait]
impl Sink for S3Store {
    async fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        validate_object_path(path)?;
        Ok(Box::new(S3Writer {
            inner: Arc::clone(&self.inner),
            key: path.to_string(),
            buf: BytesMut::new(),
            upload: None,
            finished: false,
            closed: false,
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        validate_object_path(path)?;
        let inner = &self.inner;
        match inner
            .client
            .delete_object()
            .bucket(&inner.bucket)
            .key(path)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // S3 answers 204 for a missing key; some compatible stores say NoSuchKey.
            Err(e) if e.code() == Some("NoSuchKey") => Ok(()),
            Err(e) => Err(map_sdk_error("delete", &inner.describe(path), &e)),
        }
    }

    fn describe(&self, path: &str) -> String {
        self.inner.describe(path)
    }
}

/// A streaming write. Bytes collect in a part buffer; a full part goes to a multipart upload
/// (started with the first full part) as a background task, at most `concurrent_parts` at once.
/// An object smaller than one part is sent with a single PUT at commit. Nothing is visible
/// before commit: an unfinished multipart upload is not an object.
struct S3Writer {
    inner: Arc<Inner>,
    key: String,
    /// The part being filled.
    buf: BytesMut,
    upload: Option<Upload>,
    finished: bool,
    /// Committed or aborted: nothing for `Drop` to clean up.
    closed: bool,
}

/// A multipart upload in progress.
struct Upload {
    id: String,
    /// The number the next part gets (1-based).
    next_part: i32,
    in_flight: JoinSet<Result<CompletedPart>>,
    done: Vec<CompletedPart>,
}

impl S3Writer {
    fn target(&self) -> String {
        self.inner.describe(&self.key)
    }

    /// The size the part being filled will have.
    fn current_part_size(&self) -> usize {
        self.inner
            .part_size(self.upload.as_ref().map_or(1, |u| u.next_part))
    }

    /// Starts the multipart upload (on the first full part).
    async fn start_upload(&mut self) -> Result<&mut Upload> {
        if self.upload.is_none() {
            let out = self
                .inner
                .client
                .create_multipart_upload()
                .bucket(&self.inner.bucket)
                .key(&self.key)
                .send()
                .await
                .map_err(|e| map_sdk_error("start the upload of", &self.target(), &e))?;
            let id = out.upload_id().ok_or_else(|| {
                Error::new(
                    ErrorKind::Other,
                    format!(
                        "s3 connector: the store started an upload of {} without an upload id",
                        self.target()
                    ),
                )
            })?;
            self.upload = Some(Upload {
                id: id.to_string(),
                next_part: 1,
                in_flight: JoinSet::new(),
                done: Vec::new(),
            });
        }
        Ok(self.upload.as_mut().expect("the upload was just started"))
    }

    /// Uploads the filled buffer as the next part, in the background; waits while too many
    /// parts are in flight.
    async fn send_part(&mut self) -> Result<()> {
        let next_size = self
            .inner
            .part_size(self.upload.as_ref().map_or(1, |u| u.next_part) + 1);
        let body = std::mem::replace(&mut self.buf, BytesMut::with_capacity(next_size)).freeze();
        let inner = Arc::clone(&self.inner);
        let key = self.key.clone();
        let target = self.target();
        let limit = inner.concurrent_parts;
        let upload = self.start_upload().await?;
        while upload.in_flight.len() >= limit {
            let joined = upload.in_flight.join_next().await;
            collect(upload, joined, &target)?;
        }
        let n = upload.next_part;
        if n > MAX_PARTS {
            return Err(Error::new(
                ErrorKind::Other,
                format!("s3 connector: {target} needs more than {MAX_PARTS} parts"),
            ));
        }
        upload.next_part += 1;
        let id = upload.id.clone();
        upload.in_flight.spawn(async move {
            let out = inner
                .client
                .upload_part()
                .bucket(&inner.bucket)
                .key(&key)
                .upload_id(id)
                .part_number(n)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| map_sdk_error(&format!("upload part {n} of"), &target, &e))?;
            Ok(CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build())
        });
        Ok(())
    }

    /// Aborts the multipart upload, if any: cancels the parts in flight first.
    async fn abort_upload(&mut self) -> Result<()> {
        self.closed = true;
        let Some(mut upload) = self.upload.take() else {
            return Ok(());
        };
        upload.in_flight.shutdown().await;
        abort_multipart(&self.inner, &self.key, &upload.id).await
    }
}

/// Takes the result of a finished part task.
fn collect(
    upload: &mut Upload,
    joined: Option<std::result::Result<Result<CompletedPart>, tokio::task::JoinError>>,
    target: &str,
) -> Result<()> {
    match joined {
        None => Ok(()),
        Some(Ok(Ok(part))) => {
            upload.done.push(part);
            Ok(())
        }
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(Error::new(
            ErrorKind::Other,
            format!("s3 connector: a part upload of {target} panicked or was cancelled: {e}"),
        )),
    }
}

async fn abort_multipart(inner: &Inner, key: &str, upload_id: &str) -> Result<()> {
    match inner
        .client
        .abort_multipart_upload()
        .bucket(&inner.bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: nothing remains, which is what abort is for.
        Err(e) if e.code() == Some("NoSuchUpload") => Ok(()),
        Err(e) => Err(map_sdk_error(
            "abort the upload of",
            &inner.describe(key),
            &e,
        )),
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.finished {
            return Err(Error::new(
                ErrorKind::Other,
                format!("s3 connector: write to {} after finish", self.target()),
            ));
        }
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let room = self.current_part_size() - self.buf.len();
            let take = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == self.current_part_size() {
                self.send_part().await?;
            }
        }
        // Surface a failed part early rather than at finish.
        if let Some(upload) = &mut self.upload {
            let target = self.inner.describe(&self.key);
            while let Some(joined) = upload.in_flight.try_join_next() {
                collect(upload, Some(joined), &target)?;
            }
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        if self.upload.is_some() {
            if !self.buf.is_empty() {
                self.send_part().await?;
            }
            let target = self.target();
            let upload = self.upload.as_mut().expect("checked above");
            while !upload.in_flight.is_empty() {
                let joined = upload.in_flight.join_next().await;
                collect(upload, joined, &target)?;
            }
            upload.done.sort_by_key(|p| p.part_number());
        }
        self.finished = true;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if let Err(e) = self.finish().await {
            let _ = self.abort_upload().await;
            return Err(e);
        }
        let inner = Arc::clone(&self.inner);
        let target = self.target();
        let result = match &mut self.upload {
            None => {
                let body = std::mem::take(&mut self.buf).freeze();
                inner
                    .client
                    .put_object()
                    .bucket(&inner.bucket)
                    .key(&self.key)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| map_sdk_error("write", &target, &e))
            }
            Some(upload) => inner
                .client
                .complete_multipart_upload()
                .bucket(&inner.bucket)
                .key(&self.key)
                .upload_id(&upload.id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(std::mem::take(&mut upload.done)))
                        .build(),
                )
                .send()
                .await
                .map(drop)
                .map_err(|e| map_sdk_error("complete the upload of", &target, &e)),
        };
        match result {
            Ok(()) => {
                self.closed = true;
                Ok(())
            }
            Err(e) => {
                if let Err(abort) = self.abort_upload().await {
                    tracing::warn!(error = %abort, "s3 connector: abort after a failed commit failed");
                }
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.abort_upload().await
    }
}

impl Drop for S3Writer {
    /// A writer dropped without commit or abort: its parts in flight are cancelled (dropping the
    /// task set aborts them) and the multipart upload is aborted in the background, best effort.
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let Some(upload) = self.upload.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                object = %self.target(),
                "s3 connector: a writer was dropped outside a runtime; its multipart upload \
                 stays until the bucket's lifecycle rule removes it"
            );
            return;
        };
        let inner = Arc::clone(&self.inner);
        let key = self.key.clone();
        runtime.spawn(async move {
            let mut upload = upload;
            upload.in_flight.shutdown().await;
            if let Err(e) = abort_multipart(&inner, &key, &upload.id).await {
                tracing::warn!(error = %e, "s3 connector: aborting a dropped writer's upload failed");
            }
        });
    }
}
