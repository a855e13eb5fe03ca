//! Connectors: where bytes come from and go to.
//!
//! Two layers, as in Vector and OpenDAL:
//!
//! - [`ConnectorConfig`] is pure data (serde, registered with `typetag` under its `type` tag:
//!   `{ "type": "local", "root": "./data" }`). `validate()` checks it without I/O; the `build_*`
//!   methods create the clients.
//! - [`Source`] and [`Sink`] are the running connectors: object-safe, async, bytes only. A
//!   connector never sees CSV or JSON; a format never does I/O.
//!
//! Objects written through a [`Sink`] stay invisible until the engine commits them, after the whole
//! job succeeded ([`ObjectWriter::finish`] then [`ObjectWriter::commit`]); [`ObjectWriter::abort`]
//! leaves nothing behind.
//!
//! A third-party connector depends on `keylink-core` alone:
//!
//! ```
//! use std::sync::Arc;
//! use keylink_core::connector::{BuildContext, ConnectorConfig, ObjectLocation, Sink, Source};
//! use keylink_core::{async_trait, typetag, Error, Result};
//!
//! /// Reads nothing, writes nowhere: `{ "type": "void" }`.
//! #[derive(Debug, serde::Serialize, serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct VoidConfig {}
//!
//! #[async_trait]
//! #[typetag::serde(name = "void")]
//! impl ConnectorConfig for VoidConfig {
//!     fn validate(&self) -> Result<()> { Ok(()) }
//!     async fn build_source(&self, _: &BuildContext) -> Result<Arc<dyn Source>> {
//!         Err(Error::not_supported("the void connector cannot be read"))
//!     }
//!     async fn build_sink(&self, _: &BuildContext) -> Result<Arc<dyn Sink>> {
//!         Err(Error::not_supported("the void connector cannot be written"))
//!     }
//!     fn location(&self, _: &BuildContext, path: &str) -> Result<ObjectLocation> {
//!         Ok(ObjectLocation::new("void", "", path))
//!     }
//! }
//!
//! let cfg: Box<dyn ConnectorConfig> = serde_json::from_str(r#"{"type":"void"}"#).unwrap();
//! assert!(cfg.validate().is_ok());
//! ```

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};

/// What a connector's `build_*` may need from the environment.
#[derive(Debug, Clone, Default)]
pub struct BuildContext {
    /// The folder relative paths are resolved against (the config file's folder).
    pub base_dir: PathBuf,
}

impl BuildContext {
    /// Resolves a configured path against [`BuildContext::base_dir`] (absolute paths stay as they
    /// are; `./` components are dropped so messages show `demo/keys.db`).
    pub fn resolve_path(&self, path: &std::path::Path) -> PathBuf {
        crate::job::resolve_path(&self.base_dir, path)
    }
}

/// A connector's configuration, selected by its `type` tag.
#[async_trait]
#[typetag::serde(tag = "type")]
pub trait ConnectorConfig: fmt::Debug + Send + Sync {
    /// Checks the settings without I/O. Messages name the bad setting.
    fn validate(&self) -> Result<()>;

    /// Creates the connector for reading.
    async fn build_source(&self, ctx: &BuildContext) -> Result<Arc<dyn Source>>;

    /// Creates the connector for writing.
    async fn build_sink(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>>;

    /// Where the object at `path` really is: the same object named through two differently
    /// configured connectors (two local roots, one a symlink to the other; two S3 connectors on
    /// one bucket) must give equal locations, because the engine refuses a job whose outputs
    /// collide with each other, with an input or with the keys export by comparing them
    /// (SPEC §8). May do I/O that writes nothing (a local connector resolves symbolic links);
    /// must not need credentials.
    fn location(&self, ctx: &BuildContext, path: &str) -> Result<ObjectLocation>;

    /// Creates a consumer of messages for `keylink stream` (SPEC §11). Object stores do not
    /// speak messages: the default refuses with [`ErrorKind::NotSupported`](crate::ErrorKind).
    async fn build_message_source(
        &self,
        _ctx: &BuildContext,
        _subscription: &crate::stream::Subscription,
    ) -> Result<Box<dyn crate::stream::MessageSource>> {
        Err(Error::not_supported(
            "this connector has no message topics; streams read from a kafka connector",
        ))
    }

    /// Creates a producer of messages for `keylink stream` (SPEC §11). Object stores do not
    /// speak messages: the default refuses with [`ErrorKind::NotSupported`](crate::ErrorKind).
    async fn build_message_sink(
        &self,
        _ctx: &BuildContext,
    ) -> Result<Arc<dyn crate::stream::MessageSink>> {
        Err(Error::not_supported(
            "this connector has no message topics; streams write to a kafka connector",
        ))
    }

    /// Creates a transactional producer of messages: what a batch job's `topic` targets write
    /// through (SPEC §11). Must not do I/O (`keylink validate` calls it to check that the
    /// connector takes topics). Object stores do not speak messages: the default refuses with
    /// [`ErrorKind::NotSupported`](crate::ErrorKind).
    fn build_transactional_sink(
        &self,
        _ctx: &BuildContext,
    ) -> Result<Arc<dyn crate::stream::TransactionalSink>> {
        Err(Error::not_supported(
            "this connector has no message topics; a target's `topic` needs a kafka connector",
        ))
    }
}

/// The resolved, comparable identity of an object (see [`ConnectorConfig::location`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectLocation {
    /// The kind of store: `file`, `s3`, `gs`, `az`, …
    pub store: String,
    /// The namespace within that kind of store: the bucket or container, qualified by a custom
    /// endpoint or the account where one applies (`http://127.0.0.1:9000/raw`); empty for local
    /// files.
    pub namespace: String,
    /// The object within the namespace: its key, or the canonical absolute path of a local file.
    pub key: String,
}

impl ObjectLocation {
    /// A location from its parts.
    pub fn new(
        store: impl Into<String>,
        namespace: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        ObjectLocation {
            store: store.into(),
            namespace: namespace.into(),
            key: key.into(),
        }
    }

    /// The location of `rel` (a `/`-separated relative path) under this one.
    pub fn child(&self, rel: &str) -> ObjectLocation {
        let base = self.key.trim_end_matches('/');
        let rel = rel.trim_start_matches('/');
        ObjectLocation {
            store: self.store.clone(),
            namespace: self.namespace.clone(),
            key: if base.is_empty() {
                rel.to_string()
            } else if rel.is_empty() {
                base.to_string()
            } else {
                format!("{base}/{rel}")
            },
        }
    }

    /// Whether this location is `prefix` itself or lies under it (`a/b` is under `a`, `ab` is
    /// not; every key of a namespace is under the empty prefix).
    pub fn is_under(&self, prefix: &ObjectLocation) -> bool {
        if self.store != prefix.store || self.namespace != prefix.namespace {
            return false;
        }
        let p = prefix.key.trim_end_matches('/');
        p.is_empty()
            || self.key == p
            || (self.key.starts_with(p) && self.key.as_bytes().get(p.len()) == Some(&b'/'))
    }
}

impl fmt::Display for ObjectLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}://{}", self.store, self.key)
        } else {
            write!(f, "{}://{}/{}", self.store, self.namespace, self.key)
        }
    }
}

/// An object found by [`Source::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's full path in the store (`raw/2024/01/a.csv`), `/`-separated, no leading `/`.
    pub path: String,
    /// Size in bytes, when the store says.
    pub size: Option<u64>,
    /// What changes when the object is rewritten in place, when the store says: an ETag, a
    /// generation, a modification time (watch mode processes a changed object again).
    pub version: Option<String>,
}

/// A readable store.
#[async_trait]
pub trait Source: Send + Sync + fmt::Debug {
    /// Every object whose path starts with `prefix` (recursively; `""` lists everything), sorted by
    /// path.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Opens an object for streaming reads.
    async fn open(&self, path: &str) -> Result<Box<dyn ObjectReader>>;

    /// A human name for an object, for messages (`s3://bucket/key`, `/data/x.csv`).
    fn describe(&self, path: &str) -> String;
}

/// A streaming read of one object.
#[async_trait]
pub trait ObjectReader: Send {
    /// The next chunk of bytes, or `None` at the end. Chunks may have any size.
    async fn read_chunk(&mut self) -> Result<Option<Bytes>>;
}

/// A writable store.
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug {
    /// Starts writing the object at `path`. Nothing is visible at `path` until
    /// [`ObjectWriter::commit`]; an existing object there is replaced at commit.
    async fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>>;

    /// Like [`Sink::create`], for an object that holds plaintext personal data or keys (the keys
    /// export, derived data, rejected records): a store with file permissions restricts it, and
    /// its temporary file, to the owner (mode 0600 on local disk; SPEC §8). Stores without
    /// per-object permissions keep the default, which calls `create`.
    async fn create_private(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        self.create(path).await
    }

    /// Deletes a committed object (used to roll back when a later commit of the same job fails).
    /// Deleting an object that does not exist is not an error.
    async fn delete(&self, path: &str) -> Result<()>;

    /// A human name for an object, for messages.
    fn describe(&self, path: &str) -> String;
}

/// A streaming write of one object, invisible until committed.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Appends bytes. May upload in the background; memory use must stay bounded.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;

    /// Writes out everything buffered. After `finish` the object is complete but still invisible;
    /// `commit` should then be quick and unlikely to fail.
    async fn finish(&mut self) -> Result<()>;

    /// Makes the object visible at its path. Call after [`ObjectWriter::finish`].
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Discards everything written; nothing remains at the path or in temporary storage.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// Joins a prefix and a name into an object path: `join_path("raw/", "a.csv") == "raw/a.csv"`,
/// `join_path("raw", "a.csv") == "raw/a.csv"`, `join_path("", "a.csv") == "a.csv"`.
pub fn join_path(prefix: &str, name: &str) -> String {
    let prefix = prefix.trim_start_matches('/');
    let name = name.trim_start_matches('/');
    if prefix.is_empty() {
        name.to_string()
    } else if prefix.ends_with('/') {
        format!("{prefix}{name}")
    } else {
        format!("{prefix}/{name}")
    }
}

/// Checks that `path` is a plain relative object path: not empty, no leading `/`, no `.` or `..`
/// segments, no empty segments, no NUL. Connectors call this before touching a path.
pub fn validate_object_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::config(format!(
            "invalid object path {path:?}: {why}"
        )))
    };
    if path.is_empty() {
        return bad("it is empty");
    }
    if path.starts_with('/') {
        return bad("it starts with '/'");
    }
    if path.contains('\0') {
        return bad("it contains a NUL byte");
    }
    for seg in path.split('/') {
        match seg {
            "" => return bad("it has an empty segment"),
            "." | ".." => return bad("it has a '.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Selects the objects of a source: those under `prefix` whose path *relative to the prefix*
/// matches the `file_name` glob (`*` and `?` do not cross `/`; `**` does). No glob selects every
/// object under the prefix. The result is sorted by path.
pub async fn select_objects(
    source: &dyn Source,
    prefix: &str,
    file_name: Option<&str>,
) -> Result<Vec<ObjectMeta>> {
    let prefix = normalize_prefix(prefix);
    let matcher = match file_name {
        Some(glob) => Some(compile_glob(glob)?),
        None => None,
    };
    let mut objects = source.list(&prefix).await?;
    objects.retain(|o| {
        let Some(rel) = o.path.strip_prefix(prefix.as_str()) else {
            return false;
        };
        match &matcher {
            Some(m) => m.is_match(rel),
            None => true,
        }
    });
    objects.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(objects)
}

/// A prefix as a listing prefix: no leading `/`, and a trailing `/` unless empty, so that
/// `raw` selects `raw/a.csv` but not `rawdata.csv`.
pub fn normalize_prefix(prefix: &str) -> String {
    let p = prefix.trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
    }
}

/// Compiles a `file_name` glob.
pub fn compile_glob(glob: &str) -> Result<globset::GlobMatcher> {
    globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| Error::config(format!("invalid file_name glob {glob:?}: {}", e.kind())))
}

/// The absolute path `path` names with every symbolic link of its existing part resolved: the
/// longest existing ancestor is canonicalized and the rest appended, so a file that does not
/// exist yet (an output) compares equal to the same file reached through a symlinked root. Local
/// files' [`ObjectLocation`]s are `file://` + this.
pub fn canonical_path(path: &std::path::Path) -> Result<std::path::PathBuf> {
    let io = |what: &str, p: &std::path::Path, e: std::io::Error| {
        Error::new(
            crate::error::ErrorKind::Io,
            format!("cannot {what} {}: {e}", p.display()),
        )
    };
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| io("read the current directory", std::path::Path::new("."), e))?
            .join(path)
    };
    let mut existing = absolute.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(mut found) => {
                for part in rest.iter().rev() {
                    found.push(part);
                }
                return Ok(found);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match (existing.parent(), existing.file_name()) {
                    (Some(parent), Some(name)) => {
                        rest.push(name);
                        existing = parent;
                    }
                    _ => return Ok(absolute),
                }
            }
            Err(e) => return Err(io("resolve", existing, e)),
        }
    }
}

/// The location of a local file: `file://` + its [`canonical_path`].
pub fn local_file_location(path: &std::path::Path) -> Result<ObjectLocation> {
    Ok(ObjectLocation::new(
        "file",
        "",
        canonical_path(path)?.to_string_lossy().into_owned(),
    ))
}

/// Reads a whole object into memory. For small objects only (contracts, key exports in tests).
pub async fn read_all(source: &dyn Source, path: &str) -> Result<Vec<u8>> {
    let mut r = source.open(path).await?;
    let mut out = Vec::new();
    while let Some(chunk) = r.read_chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Writes `data` to `path` and commits it. For small objects and tests.
pub async fn write_all(sink: &dyn Sink, path: &str, data: Bytes) -> Result<()> {
    let mut w = sink.create(path).await?;
    if let Err(e) = w.write(data).await {
        let _ = w.abort().await;
        return Err(e);
    }
    if let Err(e) = w.finish().await {
        let _ = w.abort().await;
        return Err(e);
    }
    w.commit().await
}

/// Shared handle types.
pub type SourceRef = Arc<dyn Source>;
/// Shared handle types.
pub type SinkRef = Arc<dyn Sink>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_normalize() {
        assert_eq!(join_path("raw/", "a.csv"), "raw/a.csv");
        assert_eq!(join_path("raw", "a.csv"), "raw/a.csv");
        assert_eq!(join_path("", "a.csv"), "a.csv");
        assert_eq!(join_path("/raw", "/a.csv"), "raw/a.csv");
        assert_eq!(normalize_prefix("raw"), "raw/");
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/a/b/"), "a/b/");
    }

    #[test]
    fn object_paths_are_checked() {
        assert!(validate_object_path("a/b.csv").is_ok());
        assert!(validate_object_path("ünï/cödé 😀.csv").is_ok());
        for bad in ["", "/a", "a//b", "a/../b", "./a", "a\0b"] {
            assert!(validate_object_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn globs_do_not_cross_slashes() {
        let g = compile_glob("*.csv").unwrap();
        assert!(g.is_match("a.csv"));
        assert!(!g.is_match("sub/a.csv"));
        let g = compile_glob("**/*.csv").unwrap();
        assert!(g.is_match("sub/a.csv"));
        assert!(compile_glob("[").is_err());
    }
}
