//! The local-filesystem connector of keylink: `{ "type": "local", "root": "./data" }`.
//!
//! Objects are the regular files under a root directory; an object's path is the file's path
//! relative to the root, `/`-separated (`raw/2024/01/a.csv`). A relative `root` is resolved
//! against [`BuildContext::base_dir`] (the config file's folder).
//!
//! - **Reading** ([`Source`]): [`Source::list`] walks the root recursively and returns the regular
//!   files whose path starts with the prefix, sorted. It skips the connector's own temporary files,
//!   anything that is not a regular file, names that are not UTF-8 (with a warning naming the
//!   directory), and symbolic links that resolve outside the root or loop. [`Source::open`] streams
//!   a file in chunks of [`READ_CHUNK_SIZE`].
//! - **Writing** ([`Sink`]): [`Sink::create`] writes to a hidden temporary file next to the target
//!   (`.<name>.keylink-tmp-<random hex>`); [`ObjectWriter::finish`] flushes and `fsync`s it,
//!   [`ObjectWriter::commit`] renames it over the target (an atomic replace) and `fsync`s the
//!   directory, [`ObjectWriter::abort`] removes it and the directories `create` made. A writer
//!   dropped without `commit` or `abort` removes its temporary file too. [`Sink::delete`] removes
//!   a file and the directories the removal leaves empty (directories are not objects).
//! - Nothing outside the root is touched: paths are checked with [`validate_object_path`], and a
//!   path that resolves outside the root through a symbolic link is refused.
//!
//! Errors name the file and never contain file contents.
//!
//! # Example
//!
//! ```
//! use keylink_core::connector::{BuildContext, ConnectorConfig, read_all, select_objects, write_all};
//! use keylink_core::Bytes;
//! // Using the crate links its `"type": "local"` registration into the program: a binary must
//! // name every connector crate it wants (typetag registers at link time).
//! use keylink_connector_local::LocalConfig;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> keylink_core::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let base_dir = dir.path().to_path_buf();
//! // The config as it appears in a job file; `root` is relative to the config file's folder.
//! let config: Box<dyn ConnectorConfig> =
//!     serde_json::from_str(r#"{ "type": "local", "root": "./data" }"#).unwrap();
//! config.validate()?;
//! assert_eq!(format!("{config:?}"), format!("{:?}", LocalConfig::new("./data")));
//! let ctx = BuildContext { base_dir };
//!
//! let sink = config.build_sink(&ctx).await?; // creates ./data if needed
//! write_all(&*sink, "raw/2024/a.csv", Bytes::from_static(b"id,email\n")).await?;
//!
//! let source = config.build_source(&ctx).await?;
//! let objects = select_objects(&*source, "raw", Some("**/*.csv")).await?;
//! assert_eq!(objects[0].path, "raw/2024/a.csv");
//! assert_eq!(read_all(&*source, "raw/2024/a.csv").await?, b"id,email\n");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use keylink_core::connector::{
    BuildContext, ConnectorConfig, ObjectLocation, ObjectMeta, ObjectReader, ObjectWriter, Sink,
    Source, validate_object_path,
};
use keylink_core::{Bytes, Error, ErrorKind, Result, async_trait, typetag};
use serde::{Deserialize, Serialize};

/// The size of the chunks [`Source::open`]'s reader returns (the last one may be shorter).
pub const READ_CHUNK_SIZE: usize = 1 << 20;

/// How many bytes a writer buffers before it writes them to its temporary file.
pub const WRITE_BUFFER_SIZE: usize = 1 << 20;

/// Chunks this large go to the file as they are, not through the buffer. The engine writes each
/// output's share of a batch as one chunk (hundreds of KiB); copying those into the buffer was
/// ~2% of the CPU of a job with 3 derived outputs, and a write of that size costs no more than
/// the copy.
const DIRECT_WRITE: usize = 64 << 10;

/// Bytes written after which a writer asks the kernel to start writing them to disk, without
/// waiting (Linux `sync_file_range`), so the fsync before the commit finds little left to do
/// while the job's CPU work runs meanwhile. Measured at 1M rows: the encrypted output's final
/// fsync took ~120 ms, at the end of the job with nothing else to overlap it, and 16 ms with this.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// What marks the connector's temporary files: `.<name>.keylink-tmp-<16 hex digits>`.
pub const TEMP_MARKER: &str = ".keylink-tmp-";

/// What marks a temporary file in its first moment, before its writer holds the lock on it:
/// `.<name>.keylink-new-<16 hex digits>` (it is renamed to its [`TEMP_MARKER`] name once
/// locked).
pub const NEW_MARKER: &str = ".keylink-new-";

/// How many bytes of the target's name a temporary file's name keeps (file names are limited to
/// 255 bytes on most file systems).
const TEMP_NAME_KEEP: usize = 100;

/// Configuration of the local-filesystem connector: `{ "type": "local", "root": "./data" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The directory holding the objects. A relative path is resolved against the folder of the
    /// config file ([`BuildContext::base_dir`]). Reading requires it to exist; writing creates it.
    pub root: PathBuf,
}

impl LocalConfig {
    /// A config for the directory `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalConfig { root: root.into() }
    }

    /// The root directory with a relative `root` resolved against `ctx.base_dir` (no I/O).
    pub fn resolve_root(&self, ctx: &BuildContext) -> PathBuf {
        if self.root.is_absolute() {
            self.root.clone()
        } else {
            keylink_core::job::resolve_path(&ctx.base_dir, &self.root)
        }
    }
}

keylink_core::register!(keylink_core::registry::Component {
    kind: keylink_core::registry::Kind::Connector,
    name: "local",
    description: "files under a local directory",
    example: r#"{ "type": "local", "root": "." }"#,
    schemes: &["file"],
    // file:///a/b: no host, the path from the root
    from_url: Some(|host, _| {
        if !host.is_empty() && host != "localhost" {
            return Err(keylink_core::Error::config(format!(
                "file://{host}/…: only local files (file:///path or file://localhost/path)"
            )));
        }
        Ok(keylink_core::serde_json::json!({ "type": "local", "root": "/" }))
    }),
    schema: keylink_core::schema::of::<LocalConfig>,
});

#[async_trait]
#[typetag::serde(name = "local")]
impl ConnectorConfig for LocalConfig {
    fn validate(&self) -> Result<()> {
        if self.root.as_os_str().is_empty() {
            return Err(Error::config("local connector: 'root' must not be empty"));
        }
        if self.root.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(Error::config(
                "local connector: 'root' must not contain a NUL byte",
            ));
        }
        Ok(())
    }

    async fn build_source(&self, ctx: &BuildContext) -> Result<Arc<dyn Source>> {
        self.validate()?;
        Ok(Arc::new(
            LocalStore::open_dir(self.resolve_root(ctx)).await?,
        ))
    }

    async fn build_sink(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>> {
        self.validate()?;
        Ok(Arc::new(
            LocalStore::create_dir(self.resolve_root(ctx)).await?,
        ))
    }

    fn location(&self, ctx: &BuildContext, path: &str) -> Result<ObjectLocation> {
        self.validate()?;
        let full = if path.is_empty() {
            self.resolve_root(ctx)
        } else {
            validate_object_path(path)?;
            self.resolve_root(ctx).join(path)
        };
        let canonical = canonical_path(&full)?;
        Ok(ObjectLocation::new(
            "file",
            "",
            canonical.to_string_lossy().into_owned(),
        ))
    }
}

/// The absolute path `path` names with every symbolic link of its existing part resolved
/// (in core, so that other components — a key store's files — compare equal to ours).
pub use keylink_core::connector::canonical_path;

/// A directory of the local file system as a [`Source`] and a [`Sink`].
#[derive(Debug, Clone)]
pub struct LocalStore {
    /// The canonical (absolute, symlink-free) root.
    root: Arc<PathBuf>,
}

impl LocalStore {
    /// Opens an existing directory. Fails with [`ErrorKind::NotFound`] if `root` does not exist or
    /// is not a directory.
    pub async fn open_dir(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        blocking(move || {
            let meta = fs::metadata(&root).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "local connector: the root directory {} does not exist",
                        root.display()
                    ),
                ),
                _ => io_error("open the root directory", &root, e),
            })?;
            if !meta.is_dir() {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "local connector: the root {} is not a directory",
                        root.display()
                    ),
                ));
            }
            Self::canonical(&root)
        })
        .await
    }

    /// Opens a directory, creating it (and its parents) if it does not exist.
    pub async fn create_dir(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        blocking(move || {
            fs::create_dir_all(&root)
                .map_err(|e| io_error("create the root directory", &root, e))?;
            Self::canonical(&root)
        })
        .await
    }

    fn canonical(root: &Path) -> Result<Self> {
        let root =
            fs::canonicalize(root).map_err(|e| io_error("resolve the root directory", root, e))?;
        Ok(LocalStore {
            root: Arc::new(root),
        })
    }

    /// The root directory (absolute, with symbolic links resolved).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of object `path` (not checked; see [`LocalStore::checked_path`]).
    fn file_path(&self, path: &str) -> PathBuf {
        let mut p = PathBuf::from(&**self.root);
        p.extend(path.split('/'));
        p
    }

    /// Validates an object path and returns its file and its last segment.
    fn checked_path<'p>(&self, path: &'p str) -> Result<(PathBuf, &'p str)> {
        validate_object_path(path)?;
        // Each segment must be one plain file name on this system (on Windows, `\` and `C:`
        // would otherwise be taken as separators or drive prefixes).
        for seg in path.split('/') {
            let mut comps = Path::new(seg).components();
            let plain = matches!(comps.next(), Some(Component::Normal(n)) if n == OsStr::new(seg))
                && comps.next().is_none();
            if !plain {
                return Err(Error::config(format!(
                    "invalid object path {path:?}: segment {seg:?} is not a plain file name on \
                     this system"
                )));
            }
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        Ok((self.file_path(path), name))
    }
}

/// Whether a file name is one of our temporary files.
fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && (name.contains(TEMP_MARKER) || name.contains(NEW_MARKER))
}

/// `.<name>.keylink-tmp-<16 hex>`, with `name` cut to a length every file system accepts.
fn temp_name(name: &str) -> Result<String> {
    let mut end = name.len().min(TEMP_NAME_KEEP);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut random = [0u8; 8];
    keylink_core::crypto::fill_random(&mut random)?;
    Ok(format!(
        ".{}{TEMP_MARKER}{:016x}",
        &name[..end],
        u64::from_le_bytes(random)
    ))
}

/// How old a not-yet-locked temporary file ([`NEW_MARKER`]) must be before another run takes it
/// for abandoned: its writer renames it within moments, unless it was killed in between.
const STALE_NEW_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the temporary files in `dir` that no live writer holds: those of runs that were killed
/// (kill -9, power loss). A writer creates its file under a [`NEW_MARKER`] name, locks it, and
/// only then renames it to its [`TEMP_MARKER`] name; it holds the lock until it commits or
/// aborts, and the lock dies with its process. So a `keylink-tmp` file we can lock is abandoned
/// (and a `keylink-new` file older than [`STALE_NEW_AGE`]). Best effort: what cannot be removed
/// stays, with a warning naming the file.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_temp_name(name) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if !name.contains(TEMP_MARKER) {
            let young = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < STALE_NEW_AGE);
            if young {
                continue;
            }
        }
        let path = entry.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if file.try_lock().is_ok() {
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(),
                    "local connector: removed the temporary file of an interrupted run"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "local connector: cannot remove the temporary file of an interrupted run"),
            }
        }
    }
}

/// Maps an I/O error on `path` to keylink's error, naming the path and the operation.
fn io_error(op: &str, path: &Path, e: io::Error) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            ErrorKind::PermissionDenied
        }
        io::ErrorKind::TimedOut
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock
        | io::ErrorKind::ResourceBusy => ErrorKind::Transient,
        io::ErrorKind::InvalidFilename => ErrorKind::Config,
        _ => ErrorKind::Io,
    };
    Error::new(
        kind,
        format!("local connector: cannot {op} {}: {e}", path.display()),
    )
}

/// Fails unless `path` (which must exist) resolves to a place inside `root`.
fn ensure_inside(root: &Path, path: &Path) -> Result<()> {
    let real = fs::canonicalize(path).map_err(|e| io_error("resolve", path, e))?;
    if real.starts_with(root) {
        Ok(())
    } else {
        Err(outside_root(root, path))
    }
}

fn outside_root(root: &Path, path: &Path) -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "local connector: {} resolves outside the root {} through a symbolic link; refusing \
             to use it",
            path.display(),
            root.display()
        ),
    )
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::new(
            ErrorKind::Other,
            "local connector: a file-system task was cancelled",
        )),
    }
}

#[async_trait]
impl Source for LocalStore {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let root = Arc::clone(&self.root);
        let prefix = prefix.to_string();
        blocking(move || list_blocking(&root, &prefix)).await
    }

    async fn open(&self, path: &str) -> Result<Box<dyn ObjectReader>> {
        let (file_path, name) = self.checked_path(path)?;
        let not_an_object = |p: &Path| {
            Error::new(
                ErrorKind::NotFound,
                format!("local connector: {} is not a file", p.display()),
            )
        };
        if is_temp_name(name) {
            return Err(not_an_object(&file_path));
        }
        let root = Arc::clone(&self.root);
        let (file, file_path) = blocking(move || {
            let file = File::open(&file_path).map_err(|e| io_error("open", &file_path, e))?;
            let meta = file
                .metadata()
                .map_err(|e| io_error("open", &file_path, e))?;
            if !meta.is_file() {
                return Err(not_an_object(&file_path));
            }
            ensure_inside(&root, &file_path)?;
            Ok((file, file_path))
        })
        .await?;
        Ok(Box::new(LocalReader {
            file: Some(file),
            path: Arc::new(file_path),
            at_end: false,
        }))
    }

    fn describe(&self, path: &str) -> String {
        self.file_path(path).display().to_string()
    }
}

impl LocalStore {
    /// Creates a writer; `mode` (Unix permission bits) restricts the temporary file and so the
    /// committed file. Stale temporary files of killed runs in the target's directory are removed
    /// first.
    async fn create_with_mode(
        &self,
        path: &str,
        mode: Option<u32>,
    ) -> Result<Box<dyn ObjectWriter>> {
        let (target, name) = self.checked_path(path)?;

        if is_temp_name(name) {
            return Err(Error::config(format!(
                "invalid object path {path:?}: names starting with '.' and containing \
                 {TEMP_MARKER:?} are reserved for the local connector's temporary files"
            )));
        }
        let name_owned = name.to_string();
        let dirs: Vec<String> = path.split('/').map(str::to_string).collect();
        let root = Arc::clone(&self.root);
        let (file, tmp, created_dirs) = blocking(move || {
            let name = name_owned;
            let dirs = &dirs[..dirs.len() - 1];
            let mut attempt = 0;
            loop {
                attempt += 1;
                let created = make_dirs(&root, dirs)?;
                if attempt == 1
                    && let Some(dir) = target.parent()
                {
                    remove_stale_temps(dir);
                }
                let tmp = target.with_file_name(temp_name(&name)?);
                let fresh = tmp.with_file_name(
                    tmp.file_name()
                        .and_then(OsStr::to_str)
                        .unwrap_or_default()
                        .replacen(TEMP_MARKER, NEW_MARKER, 1),
                );
                let mut options = OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                if let Some(mode) = mode {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(mode);
                }
                #[cfg(not(unix))]
                let _ = mode;
                match options.open(&fresh) {
                    Ok(file) => {
                        // held until commit or abort: tells `remove_stale_temps` of other runs
                        // that this file is alive (the lock dies with the process); the file
                        // gets its temporary name only once locked
                        let locked = file
                            .try_lock()
                            .map_err(|e| io::Error::other(e.to_string()))
                            .and_then(|()| fs::rename(&fresh, &tmp));
                        if let Err(e) = locked {
                            let _ = fs::remove_file(&fresh);
                            remove_empty_dirs(&created);
                            return Err(io_error("lock the temporary file", &tmp, e));
                        }
                        return Ok((file, tmp, created));
                    }
                    // A concurrent abort or delete may have removed a directory we found
                    // existing; or (very unlikely) the random name is taken. Try again.
                    Err(e)
                        if attempt < 5
                            && matches!(
                                e.kind(),
                                io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists
                            ) =>
                    {
                        remove_empty_dirs(&created);
                    }
                    Err(e) => {
                        remove_empty_dirs(&created);
                        return Err(io_error("create a temporary file", &tmp, e));
                    }
                }
            }
        })
        .await?;
        let target = self.file_path(path);
        Ok(Box::new(LocalWriter {
            target,
            tmp,
            file: Some(file),
            buf: Vec::new(),
            unsynced: 0,
            created_dirs,
            state: WriterState::Writing,
        }))
    }
}

#[async_trait]
impl Sink for LocalStore {
    async fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        self.create_with_mode(path, None).await
    }

    async fn create_private(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        self.create_with_mode(path, Some(0o600)).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let (file_path, name) = self.checked_path(path)?;
        if is_temp_name(name) {
            // Never an object; nothing to delete.
            return Ok(());
        }
        let root = Arc::clone(&self.root);
        blocking(move || {
            let parent = file_path.parent().unwrap_or(&root);
            match fs::canonicalize(parent) {
                Ok(real) if real.starts_with(&*root) => {}
                Ok(_) => return Err(outside_root(&root, parent)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(io_error("resolve", parent, e)),
            }
            match fs::symlink_metadata(&file_path) {
                // A directory is not an object: there is no object at this path.
                Ok(meta) if meta.is_dir() => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_error("delete", &file_path, e)),
            }
            match fs::remove_file(&file_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_error("delete", &file_path, e)),
            }
            // Directories are not objects: remove the ones this deletion left empty.
            let mut dir = file_path.parent();
            while let Some(d) = dir {
                if d == root.as_path() || !d.starts_with(&*root) || fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
    }

    fn describe(&self, path: &str) -> String {
        self.file_path(path).display().to_string()
    }
}

/// Creates the directories `dirs` (relative, one segment each) under `root`, one level at a
/// time, and returns those this call created, outermost first. Refuses to go through a symbolic
/// link that leads outside the root.
fn make_dirs(root: &Path, dirs: &[String]) -> Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    let mut dir = root.to_path_buf();
    for seg in dirs {
        dir.push(seg);
        let result = match fs::create_dir(&dir) {
            Ok(()) => {
                created.push(dir.clone());
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ensure_inside(root, &dir),
            Err(e) => Err(io_error("create the directory", &dir, e)),
        };
        if let Err(e) = result {
            remove_empty_dirs(&created);
            return Err(e);
        }
    }
    Ok(created)
}

/// Removes the directories of `dirs` (outermost first) that are empty, innermost first.
fn remove_empty_dirs(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        if fs::remove_dir(d).is_err() {
            break;
        }
    }
}

/// Lists the regular files under `root` whose object path starts with `prefix`.
fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>> {
    let meta = fs::metadata(root).map_err(|e| io_error("list the root directory", root, e))?;
    if !meta.is_dir() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "local connector: the root {} is not a directory",
                root.display()
            ),
        ));
    }
    // Start the walk at the deepest directory the prefix names (`raw/2024/0` → `raw/2024`).
    let mut start = root.to_path_buf();
    let mut rel = String::new();
    if let Some(i) = prefix.rfind('/') {
        let dir_part = &prefix[..i];
        for seg in dir_part.split('/') {
            if matches!(seg, "" | "." | "..") || seg.contains('\0') {
                // No object path has such a segment: nothing can match.
                return Ok(Vec::new());
            }
            start.push(seg);
        }
        rel = format!("{dir_part}/");
    }
    let start = if start == root {
        start
    } else {
        match fs::canonicalize(&start) {
            Ok(real) if real.starts_with(root) && real.is_dir() => real,
            Ok(real) if !real.starts_with(root) => {
                tracing::warn!(
                    path = %start.display(),
                    "local connector: not listing a directory that resolves outside the root"
                );
                return Ok(Vec::new());
            }
            Ok(_) => return Ok(Vec::new()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(io_error("list", &start, e)),
        }
    };
    let mut walker = Walker {
        root,
        prefix,
        chain: vec![start.clone()],
        out: Vec::new(),
    };
    walker.walk(&start, &rel)?;
    let mut out = walker.out;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

struct Walker<'a> {
    root: &'a Path,
    prefix: &'a str,
    /// Canonical paths of the directories being walked, outermost first (to detect loops).
    chain: Vec<PathBuf>,
    out: Vec<ObjectMeta>,
}

impl Walker<'_> {
    /// Walks the directory `dir` (canonical), whose object path prefix is `rel` (`""` or ending
    /// in `/`).
    fn walk(&mut self, dir: &Path, rel: &str) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            // Removed while we walk: it has no objects any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("list the directory", dir, e)),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("list the directory", dir, e)),
            };
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                tracing::warn!(
                    directory = %dir.display(),
                    "local connector: skipping an entry whose name is not valid UTF-8"
                );
                continue;
            };
            let path = format!("{rel}{name}");
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("list", &entry.path(), e)),
            };
            if file_type.is_file() {
                if !is_temp_name(name) && path.starts_with(self.prefix) {
                    match entry.metadata() {
                        Ok(meta) => self.push(path, &meta),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_error("list", &entry.path(), e)),
                    }
                }
            } else if file_type.is_dir() {
                self.descend(dir.join(name), path)?;
            } else if file_type.is_symlink() {
                let link = entry.path();
                let real = match fs::canonicalize(&link) {
                    Ok(real) => real,
                    Err(_) => {
                        tracing::debug!(
                            path = %link.display(),
                            "local connector: skipping a dangling symbolic link"
                        );
                        continue;
                    }
                };
                if !real.starts_with(self.root) {
                    tracing::warn!(
                        path = %link.display(),
                        "local connector: skipping a symbolic link that points outside the root"
                    );
                    continue;
                }
                let meta = match fs::metadata(&real) {
                    Ok(meta) => meta,
                    Err(_) => continue,
                };
                if meta.is_file() {
                    if !is_temp_name(name) && path.starts_with(self.prefix) {
                        self.push(path, &meta);
                    }
                } else if meta.is_dir() {
                    if self.chain.contains(&real) {
                        tracing::warn!(
                            path = %link.display(),
                            "local connector: skipping a symbolic link that loops"
                        );
                        continue;
                    }
                    self.descend(real, path)?;
                }
            }
            // Sockets, FIFOs, devices: not objects.
        }
        Ok(())
    }

    fn descend(&mut self, real: PathBuf, path: String) -> Result<()> {
        let rel = path + "/";
        if !(rel.starts_with(self.prefix) || self.prefix.starts_with(&rel)) {
            return Ok(());
        }
        self.chain.push(real.clone());
        let r = self.walk(&real, &rel);
        self.chain.pop();
        r
    }

    fn push(&mut self, path: String, meta: &fs::Metadata) {
        // the version: the modification time (ns), and on Unix the inode — a commit replaces the
        // file by a rename, so even a rewrite within one tick of a coarse clock gets a new one
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        #[cfg(unix)]
        let version = {
            use std::os::unix::fs::MetadataExt;
            Some(format!("{mtime}-{}", meta.ino()))
        };
        #[cfg(not(unix))]
        let version = Some(mtime.to_string());
        self.out.push(ObjectMeta {
            path,
            size: Some(meta.len()),
            version,
        });
    }
}

/// A streaming read of one file.
struct LocalReader {
    file: Option<File>,
    path: Arc<PathBuf>,
    at_end: bool,
}

#[async_trait]
impl ObjectReader for LocalReader {
    async fn read_chunk(&mut self) -> Result<Option<Bytes>> {
        let Some(mut file) = self.file.take() else {
            return if self.at_end {
                Ok(None)
            } else {
                Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "local connector: cannot read {} after an earlier read failed",
                        self.path.display()
                    ),
                ))
            };
        };
        let path = Arc::clone(&self.path);
        let (file, buf) = blocking(move || {
            let mut buf = Vec::with_capacity(READ_CHUNK_SIZE);
            (&mut file)
                .take(READ_CHUNK_SIZE as u64)
                .read_to_end(&mut buf)
                .map_err(|e| io_error("read", &path, e))?;
            Ok((file, buf))
        })
        .await?;
        if buf.is_empty() {
            self.at_end = true;
            return Ok(None);
        }
        self.file = Some(file);
        Ok(Some(Bytes::from(buf)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterState {
    /// Accepting writes.
    Writing,
    /// Flushed and synced; waiting for commit or abort.
    Finished,
    /// A write or flush failed; only abort (or drop) is left.
    Failed,
    /// Committed or aborted: nothing left to clean up.
    Done,
}

/// A streaming write of one file, through a temporary file next to it.
struct LocalWriter {
    target: PathBuf,
    tmp: PathBuf,
    /// `None` while a blocking task holds it, and after finish.
    file: Option<File>,
    buf: Vec<u8>,
    /// Bytes written since writeback was last started ([`WRITEBACK_EVERY`]).
    unsynced: u64,
    /// Directories `create` made, outermost first.
    created_dirs: Vec<PathBuf>,
    state: WriterState,
}

/// Starts writing `file`'s dirty pages to disk and returns at once ([`WRITEBACK_EVERY`]).
/// Durability still comes from the fsync before the commit; this only moves the work earlier.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: `file` is an open descriptor for the whole call, and SYNC_FILE_RANGE_WRITE only
    // starts writeback of its pages; a failure is harmless (the fsync later reports I/O errors).
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File) {}

impl LocalWriter {
    fn check_writable(&self, op: &str) -> Result<()> {
        match self.state {
            WriterState::Writing => Ok(()),
            WriterState::Finished => Err(Error::new(
                ErrorKind::Other,
                format!(
                    "local connector: cannot {op} {}: the writer is already finished",
                    self.target.display()
                ),
            )),
            WriterState::Failed | WriterState::Done => Err(Error::new(
                ErrorKind::Io,
                format!(
                    "local connector: cannot {op} {}: an earlier write failed",
                    self.target.display()
                ),
            )),
        }
    }

    /// Writes `buf` and then `extra` to the file, off the async threads. Returns the emptied
    /// buffer for reuse.
    async fn write_out(&mut self, buf: Vec<u8>, extra: Option<Bytes>, sync: bool) -> Result<()> {
        let Some(mut file) = self.file.take() else {
            self.state = WriterState::Failed;
            return self.check_writable("write");
        };
        let tmp = self.tmp.clone();
        let mut unsynced =
            self.unsynced + buf.len() as u64 + extra.as_ref().map_or(0, |e| e.len() as u64);
        let result = blocking(move || {
            let mut buf = buf;
            file.write_all(&buf)
                .and_then(|()| match &extra {
                    Some(extra) => file.write_all(extra),
                    None => Ok(()),
                })
                .and_then(|()| if sync { file.sync_all() } else { Ok(()) })
                .map_err(|e| io_error("write the temporary file", &tmp, e))?;
            if sync {
                unsynced = 0;
            } else if unsynced >= WRITEBACK_EVERY {
                start_writeback(&file);
                unsynced = 0;
            }
            buf.clear();
            Ok((file, buf, unsynced))
        })
        .await;
        match result {
            Ok((file, buf, unsynced)) => {
                self.file = Some(file);
                self.buf = buf;
                self.unsynced = unsynced;
                Ok(())
            }
            Err(e) => {
                self.state = WriterState::Failed;
                Err(e)
            }
        }
    }

    /// Removes the temporary file and the directories `create` made that are now empty.
    fn cleanup_sync(tmp: &Path, created_dirs: &[PathBuf]) -> io::Result<()> {
        let r = match fs::remove_file(tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        remove_empty_dirs(created_dirs);
        r
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.check_writable("write")?;
        if chunk.len() >= DIRECT_WRITE {
            // big chunks go straight to the file, after what is buffered
            let buf = std::mem::take(&mut self.buf);
            return self.write_out(buf, Some(chunk), false).await;
        }
        if self.buf.len() + chunk.len() > WRITE_BUFFER_SIZE {
            let buf = std::mem::take(&mut self.buf);
            self.write_out(buf, None, false).await?;
        }
        self.buf.extend_from_slice(&chunk);
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        if self.state == WriterState::Finished {
            return Ok(());
        }
        self.check_writable("finish")?;
        let buf = std::mem::take(&mut self.buf);
        self.write_out(buf, None, true).await?;
        self.buf = Vec::new();
        self.state = WriterState::Finished;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if self.state == WriterState::Writing {
            self.finish().await?;
        }
        if self.state != WriterState::Finished {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "local connector: cannot commit {}: an earlier write failed",
                    self.target.display()
                ),
            ));
        }
        // On Unix the file stays open (and locked) until the temporary name is gone, so no other
        // run takes it for abandoned; Windows needs it closed before the rename.
        let file = self.file.take();
        #[cfg(not(unix))]
        drop(file);
        let (tmp, target) = (self.tmp.clone(), self.target.clone());
        let created_dirs = self.created_dirs.clone();
        blocking(move || {
            fs::rename(&tmp, &target).map_err(|e| io_error("commit", &target, e))?;
            #[cfg(unix)]
            drop(file);
            // Make the rename (and any new directories) durable.
            if let Some(dir) = target.parent() {
                sync_dir(dir);
            }
            for dir in &created_dirs {
                if let Some(parent) = dir.parent() {
                    sync_dir(parent);
                }
            }
            Ok(())
        })
        .await?;
        self.state = WriterState::Done;
        Ok(())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        drop(self.file.take());
        let (tmp, created_dirs) = (self.tmp.clone(), self.created_dirs.clone());
        blocking(move || {
            Self::cleanup_sync(&tmp, &created_dirs)
                .map_err(|e| io_error("remove the temporary file", &tmp, e))
        })
        .await?;
        self.state = WriterState::Done;
        Ok(())
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.state != WriterState::Done {
            drop(self.file.take());
            if let Err(e) = Self::cleanup_sync(&self.tmp, &self.created_dirs) {
                tracing::warn!(
                    path = %self.tmp.display(),
                    error = %e,
                    "local connector: cannot remove the temporary file of an abandoned write"
                );
            }
        }
    }
}

/// `fsync`s a directory so that renames and new entries in it survive a crash. Best effort: the
/// object is already visible, and some file systems cannot sync directories.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(
                directory = %dir.display(),
                error = %e,
                "local connector: cannot sync the directory"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;
    use keylink_core::connector::{read_all, write_all};

    /// Every file and directory under `dir`, relative, sorted (directories end in `/`).
    fn tree(dir: &Path) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    out.push(format!("{rel}/"));
                    walk(base, &p, out);
                } else {
                    out.push(rel);
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    async fn store(dir: &Path) -> LocalStore {
        LocalStore::create_dir(dir).await.unwrap()
    }

    fn paths(listed: &[ObjectMeta]) -> Vec<&str> {
        listed.iter().map(|o| o.path.as_str()).collect()
    }

    #[test]
    fn config_is_strict_and_debuggable() {
        let cfg: Box<dyn ConnectorConfig> =
            serde_json::from_str(r#"{ "type": "local", "root": "./data" }"#).unwrap();
        assert!(cfg.validate().is_ok());
        assert_eq!(format!("{cfg:?}"), r#"LocalConfig { root: "./data" }"#);
        assert_eq!(
            serde_json::to_string(&cfg).unwrap(),
            r#"{"type":"local","root":"./data"}"#
        );

        let err = serde_json::from_str::<Box<dyn ConnectorConfig>>(
            r#"{ "type": "local", "root": "./data", "rooot": "x" }"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("rooot"), "{err}");
        let err = serde_json::from_str::<Box<dyn ConnectorConfig>>(r#"{ "type": "local" }"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("root"), "{err}");

        let e = LocalConfig::new("").validate().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(e.to_string(), "local connector: 'root' must not be empty");
        let e = LocalConfig::new("a\0b").validate().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
    }

    #[tokio::test]
    async fn relative_root_is_resolved_against_base_dir() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = BuildContext {
            base_dir: dir.path().to_path_buf(),
        };
        let cfg = LocalConfig::new("out/data");
        assert_eq!(cfg.resolve_root(&ctx), dir.path().join("out/data"));
        let sink = cfg.build_sink(&ctx).await.unwrap();
        write_all(&*sink, "a/b.csv", Bytes::from_static(b"x\n"))
            .await
            .unwrap();
        assert_eq!(
            fs::read(dir.path().join("out/data/a/b.csv")).unwrap(),
            b"x\n"
        );
        let source = cfg.build_source(&ctx).await.unwrap();
        assert_eq!(read_all(&*source, "a/b.csv").await.unwrap(), b"x\n");

        // describe: the absolute file path
        let real = fs::canonicalize(dir.path()).unwrap();
        let described = source.describe("a/b.csv");
        assert_eq!(
            PathBuf::from(&described),
            real.join("out").join("data").join("a").join("b.csv")
        );
        assert!(Path::new(&described).is_absolute());

        // an absolute root ignores base_dir
        let abs = LocalConfig::new(dir.path().join("out"));
        let other = BuildContext {
            base_dir: PathBuf::from("/nonexistent"),
        };
        assert_eq!(abs.resolve_root(&other), dir.path().join("out"));
        let source = abs.build_source(&other).await.unwrap();
        assert_eq!(read_all(&*source, "data/a/b.csv").await.unwrap(), b"x\n");
    }

    #[tokio::test]
    async fn missing_root_is_not_found_for_sources_and_created_for_sinks() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = BuildContext {
            base_dir: dir.path().to_path_buf(),
        };
        let e = LocalConfig::new("missing/root")
            .build_source(&ctx)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let shown = dir.path().join("missing/root").display().to_string();
        assert!(e.to_string().contains(&shown), "{e}");
        assert!(!dir.path().join("missing").exists());

        fs::write(dir.path().join("file"), b"").unwrap();
        let e = LocalConfig::new("file")
            .build_source(&ctx)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("not a directory"), "{e}");

        LocalConfig::new("missing/root")
            .build_sink(&ctx)
            .await
            .unwrap();
        assert!(dir.path().join("missing/root").is_dir());
        LocalConfig::new("missing/root")
            .build_source(&ctx)
            .await
            .unwrap();
        // an invalid config fails before any I/O
        let e = LocalConfig::new("").build_sink(&ctx).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
    }

    #[tokio::test]
    async fn path_traversal_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let s = store(&root).await;
        fs::write(dir.path().join("secret.txt"), b"outside").unwrap();
        for bad in [
            "../secret.txt",
            "a/../../secret.txt",
            "/etc/passwd",
            "",
            "a//b",
            "./a",
            "a/",
        ] {
            let e = s.open(bad).await.err().expect(bad);
            assert_eq!(e.kind(), ErrorKind::Config, "open {bad:?}: {e}");
            let e = s.create(bad).await.err().expect(bad);
            assert_eq!(e.kind(), ErrorKind::Config, "create {bad:?}: {e}");
            let e = s.delete(bad).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "delete {bad:?}: {e}");
        }
        assert_eq!(fs::read(dir.path().join("secret.txt")).unwrap(), b"outside");
        assert_eq!(tree(dir.path()), ["root/", "secret.txt"]);
        // listing with such a prefix finds nothing (and reads nothing outside)
        assert!(s.list("../").await.unwrap().is_empty());
        assert!(s.list("a/../").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn temp_files_are_invisible_and_reserved() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let mut w = s.create("out/a.csv").await.unwrap();
        w.write(Bytes::from_static(b"data")).await.unwrap();
        w.finish().await.unwrap();
        // the temporary file exists, next to the target, hidden
        let on_disk = tree(dir.path());
        assert_eq!(on_disk.len(), 2, "{on_disk:?}");
        assert!(
            on_disk[1].starts_with("out/.a.csv.keylink-tmp-") && on_disk[1].len() == 39,
            "{on_disk:?}"
        );
        assert!(s.list("").await.unwrap().is_empty());
        let tmp_object = on_disk[1].clone();
        let e = s.open(&tmp_object).await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = s.create(&tmp_object).await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Config);
        // deleting a temp name is a no-op, not a way to break a running write
        s.delete(&tmp_object).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(paths(&s.list("").await.unwrap()), ["out/a.csv"]);
        assert_eq!(tree(dir.path()), ["out/", "out/a.csv"]);

        // a stray temp file (a crashed run) is never listed
        fs::write(
            dir.path().join("out/.b.csv.keylink-tmp-0123456789abcdef"),
            b"x",
        )
        .unwrap();
        assert_eq!(paths(&s.list("out/").await.unwrap()), ["out/a.csv"]);
        // other dotfiles are ordinary objects
        fs::write(dir.path().join("out/.hidden"), b"x").unwrap();
        assert_eq!(
            paths(&s.list("out/").await.unwrap()),
            ["out/.hidden", "out/a.csv"]
        );
    }

    #[tokio::test]
    async fn commit_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let v1 = vec![b'1'; 3 * READ_CHUNK_SIZE];
        write_all(&s, "x.bin", Bytes::from(v1.clone()))
            .await
            .unwrap();

        let mut w = s.create("x.bin").await.unwrap();
        w.write(Bytes::from_static(b"version 2")).await.unwrap();
        w.finish().await.unwrap();
        // a reader opened before the commit...
        let mut r = s.open("x.bin").await.unwrap();
        let first = r.read_chunk().await.unwrap().unwrap();
        assert_eq!(read_all(&s, "x.bin").await.unwrap(), v1);
        w.commit().await.unwrap();
        // ...keeps reading the old file whole; new readers see the new one
        let mut old = first.to_vec();
        while let Some(c) = r.read_chunk().await.unwrap() {
            old.extend_from_slice(&c);
        }
        assert_eq!(old, v1);
        assert_eq!(read_all(&s, "x.bin").await.unwrap(), b"version 2");
        assert_eq!(tree(dir.path()), ["x.bin"]);
        let listed = s.list("").await.unwrap();
        assert_eq!(
            listed,
            [ObjectMeta {
                path: "x.bin".into(),
                size: Some(9),
                version: listed[0].version.clone(),
            }]
        );
    }

    #[tokio::test]
    async fn dropped_or_aborted_writers_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        fs::create_dir(dir.path().join("existing")).unwrap();

        let mut w = s.create("new/nested/x.csv").await.unwrap();
        w.write(Bytes::from(vec![0u8; 3 * WRITE_BUFFER_SIZE]))
            .await
            .unwrap();
        assert_eq!(tree(dir.path()).len(), 4, "{:?}", tree(dir.path()));
        drop(w);
        assert_eq!(tree(dir.path()), ["existing/"]);

        let mut w = s.create("existing/new/y.csv").await.unwrap();
        w.write(Bytes::from_static(b"y")).await.unwrap();
        w.finish().await.unwrap();
        w.abort().await.unwrap();
        // directories create made are gone; the one that was there stays
        assert_eq!(tree(dir.path()), ["existing/"]);

        // a failed commit (the target is a directory) cleans up too
        fs::create_dir(dir.path().join("existing/taken")).unwrap();
        let mut w = s.create("existing/taken").await.unwrap();
        w.write(Bytes::from_static(b"z")).await.unwrap();
        let e = w.commit().await.unwrap_err();
        assert!(e.to_string().contains("taken"), "{e}");
        assert_eq!(tree(dir.path()), ["existing/", "existing/taken/"]);
    }

    /// Issue #7 item 6: a killed run's temporary files are removed by the next write to the same
    /// directory; a live writer's are not (it holds a lock on its file).
    #[tokio::test]
    async fn stale_temporary_files_go_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        fs::create_dir(dir.path().join("out")).unwrap();
        let stale = dir.path().join("out/.k.csv.keylink-tmp-00000000deadbeef");
        fs::write(&stale, b"keys of a killed run").unwrap();
        // killed between creating and locking: removed once old, kept while it may be in use
        let new_old = dir.path().join("out/.k.csv.keylink-new-00000000000000aa");
        let new_young = dir.path().join("out/.k.csv.keylink-new-00000000000000bb");
        fs::write(&new_old, b"x").unwrap();
        fs::write(&new_young, b"y").unwrap();
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&new_old)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        let mut live = s.create("out/a.csv").await.unwrap();
        live.write(Bytes::from_static(b"live")).await.unwrap();
        assert!(!stale.exists(), "a stale temporary file survived");
        assert!(!new_old.exists() && new_young.exists());
        fs::remove_file(&new_young).unwrap();
        // the live writer's file, aged: only its lock protects it now
        for e in fs::read_dir(dir.path().join("out")).unwrap().flatten() {
            File::options()
                .write(true)
                .open(e.path())
                .unwrap()
                .set_modified(an_hour_ago)
                .unwrap();
        }
        // a second store (another run) writing there leaves the live writer's file alone
        let other = store(dir.path()).await;
        let mut w = other.create("out/b.csv").await.unwrap();
        w.write(Bytes::from_static(b"b")).await.unwrap();
        w.commit().await.unwrap();
        live.commit().await.unwrap();
        assert_eq!(read_all(&s, "out/a.csv").await.unwrap(), b"live");
        assert_eq!(tree(dir.path()), ["out/", "out/a.csv", "out/b.csv"]);
    }

    /// Issue #7 item 7: private objects are 0600 from the first byte (the temporary file too).
    #[cfg(unix)]
    #[tokio::test]
    async fn private_objects_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let mut w = s.create_private("keys.csv").await.unwrap();
        w.write(Bytes::from(vec![b'k'; 2 * WRITE_BUFFER_SIZE]))
            .await
            .unwrap();
        let tmp = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path();
        assert_eq!(mode(&tmp), 0o600, "{}", tmp.display());
        w.commit().await.unwrap();
        assert_eq!(mode(&dir.path().join("keys.csv")), 0o600);
        // replacing a public file with a private object makes it private
        fs::write(dir.path().join("d.csv"), b"old").unwrap();
        fs::set_permissions(dir.path().join("d.csv"), fs::Permissions::from_mode(0o644)).unwrap();
        let w = s.create_private("d.csv").await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(mode(&dir.path().join("d.csv")), 0o600);
    }

    /// Issue #7 item 5: locations compare where files really are.
    #[tokio::test]
    async fn locations_resolve_symlinks_and_missing_parts() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("real")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let ctx = BuildContext {
            base_dir: dir.path().to_path_buf(),
        };
        let a = LocalConfig::new("real")
            .location(&ctx, "out/x.csv")
            .unwrap();
        let b = LocalConfig::new("./real/")
            .location(&ctx, "out/x.csv")
            .unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        assert_eq!(
            a,
            LocalConfig::new("link")
                .location(&ctx, "out/x.csv")
                .unwrap()
        );
        assert_ne!(
            a,
            LocalConfig::new("real")
                .location(&ctx, "out/y.csv")
                .unwrap()
        );
        assert_eq!(a.store, "file");
        assert!(a.key.ends_with("/real/out/x.csv"), "{a}");
        assert!(LocalConfig::new("real").location(&ctx, "../x").is_err());
    }

    #[tokio::test]
    async fn writer_states() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let mut w = s.create("a.csv").await.unwrap();
        w.write(Bytes::from_static(b"a")).await.unwrap();
        w.finish().await.unwrap();
        w.finish().await.unwrap(); // idempotent
        assert!(w.write(Bytes::from_static(b"b")).await.is_err());
        w.commit().await.unwrap();
        assert_eq!(read_all(&s, "a.csv").await.unwrap(), b"a");

        // commit without finish flushes and syncs first
        let mut w = s.create("b.csv").await.unwrap();
        for _ in 0..5 {
            w.write(Bytes::from(vec![b'b'; 700_000])).await.unwrap();
            w.write(Bytes::from_static(b"\n")).await.unwrap();
        }
        w.commit().await.unwrap();
        assert_eq!(read_all(&s, "b.csv").await.unwrap().len(), 5 * 700_001);
    }

    #[tokio::test]
    async fn reads_in_one_mib_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let data: Vec<u8> = (0..5 * READ_CHUNK_SIZE / 2).map(|i| i as u8).collect();
        fs::write(dir.path().join("big.bin"), &data).unwrap();
        let mut r = s.open("big.bin").await.unwrap();
        let mut sizes = Vec::new();
        let mut back = Vec::new();
        while let Some(c) = r.read_chunk().await.unwrap() {
            sizes.push(c.len());
            back.extend_from_slice(&c);
        }
        assert_eq!(
            sizes,
            [READ_CHUNK_SIZE, READ_CHUNK_SIZE, READ_CHUNK_SIZE / 2]
        );
        assert_eq!(back, data);
        assert!(r.read_chunk().await.unwrap().is_none());

        let e = s.open("nope/missing.csv").await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("missing.csv"), "{e}");
        // a directory is not an object
        fs::create_dir(dir.path().join("dir")).unwrap();
        let e = s.open("dir").await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        // a file used as a directory
        let e = s.open("big.bin/x").await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn list_filters_by_string_prefix_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        for p in [
            "raw/b.csv",
            "raw/a.csv",
            "raw/sub/c.csv",
            "rawdata.csv",
            "z.csv",
        ] {
            write_all(&s, p, Bytes::from_static(b"12345"))
                .await
                .unwrap();
        }
        fs::create_dir_all(dir.path().join("raw/empty/dir")).unwrap();
        assert_eq!(
            paths(&s.list("").await.unwrap()),
            [
                "raw/a.csv",
                "raw/b.csv",
                "raw/sub/c.csv",
                "rawdata.csv",
                "z.csv"
            ]
        );
        assert_eq!(
            paths(&s.list("raw").await.unwrap()),
            ["raw/a.csv", "raw/b.csv", "raw/sub/c.csv", "rawdata.csv"]
        );
        assert_eq!(
            paths(&s.list("raw/").await.unwrap()),
            ["raw/a.csv", "raw/b.csv", "raw/sub/c.csv"]
        );
        assert_eq!(paths(&s.list("raw/s").await.unwrap()), ["raw/sub/c.csv"]);
        assert!(s.list("raw/sub/c.csv/").await.unwrap().is_empty());
        assert!(s.list("nothing/").await.unwrap().is_empty());
        assert!(s.list("/raw").await.unwrap().is_empty());
        assert_eq!(s.list("z").await.unwrap()[0].size, Some(5));
    }

    #[tokio::test]
    async fn delete_removes_emptied_directories_but_not_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        write_all(&s, "a/b/c.csv", Bytes::from_static(b"c"))
            .await
            .unwrap();
        write_all(&s, "a/d.csv", Bytes::from_static(b"d"))
            .await
            .unwrap();
        s.delete("a/b/c.csv").await.unwrap();
        assert_eq!(tree(dir.path()), ["a/", "a/d.csv"]);
        s.delete("a/d.csv").await.unwrap();
        assert!(tree(dir.path()).is_empty());
        assert!(dir.path().is_dir());
        s.delete("a/d.csv").await.unwrap();
        s.delete("never/was.csv").await.unwrap();
        // a directory is not an object: deleting "its" path does nothing
        fs::create_dir_all(dir.path().join("keep/me")).unwrap();
        s.delete("keep/me").await.unwrap();
        assert_eq!(tree(dir.path()), ["keep/", "keep/me/"]);
    }

    #[tokio::test]
    async fn long_names_get_short_temp_names() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let name = format!("{}.csv", "é".repeat(125)); // 254 bytes
        write_all(&s, &name, Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(paths(&s.list("").await.unwrap()), [name.as_str()]);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlinks_never_lead_outside_the_root() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret.csv"), b"outside").unwrap();
        let s = store(&root).await;
        write_all(&s, "in/a.csv", Bytes::from_static(b"a"))
            .await
            .unwrap();

        symlink(&outside, root.join("out-dir")).unwrap();
        symlink(outside.join("secret.csv"), root.join("out-file.csv")).unwrap();
        symlink(root.join("in"), root.join("in-dir")).unwrap(); // inside: followed
        symlink(root.join("in/a.csv"), root.join("in-file.csv")).unwrap();
        symlink(&root, root.join("in/loop")).unwrap(); // a loop back to an ancestor: skipped
        symlink(root.join("nowhere"), root.join("dangling")).unwrap();

        assert_eq!(
            paths(&s.list("").await.unwrap()),
            ["in-dir/a.csv", "in-file.csv", "in/a.csv"]
        );
        assert!(s.list("out-dir/").await.unwrap().is_empty());
        assert_eq!(read_all(&s, "in-dir/a.csv").await.unwrap(), b"a");
        for p in ["out-dir/secret.csv", "out-file.csv"] {
            let e = s.open(p).await.err().expect(p);
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{p}: {e}");
        }
        let e = s.create("out-dir/new/x.csv").await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        let e = s.delete("out-dir/secret.csv").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        assert_eq!(tree(&outside), ["secret.csv"]);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn odd_entries_are_skipped() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        write_all(&s, "ok.csv", Bytes::from_static(b"a"))
            .await
            .unwrap();
        // a name that is not UTF-8 (skipped with a warning), a socket (not a regular file)
        let bad = dir.path().join(OsStr::from_bytes(b"bad\xff.csv"));
        fs::write(&bad, b"x").unwrap();
        fs::create_dir(dir.path().join(OsStr::from_bytes(b"bad\xfedir"))).unwrap();
        fs::write(
            dir.path()
                .join(OsStr::from_bytes(b"bad\xfedir"))
                .join("inner.csv"),
            b"x",
        )
        .unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        assert_eq!(paths(&s.list("").await.unwrap()), ["ok.csv"]);
    }

    #[tokio::test]
    async fn io_errors_name_the_path_and_map_kinds() {
        let p = Path::new("/data/x.csv");
        let e = io_error("open", p, io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(
            e.to_string()
                .starts_with("local connector: cannot open /data/x.csv: ")
        );
        let cases = [
            (io::ErrorKind::PermissionDenied, ErrorKind::PermissionDenied),
            (io::ErrorKind::NotADirectory, ErrorKind::NotFound),
            (io::ErrorKind::TimedOut, ErrorKind::Transient),
            (io::ErrorKind::StorageFull, ErrorKind::Io),
            (io::ErrorKind::InvalidFilename, ErrorKind::Config),
        ];
        for (io_kind, kind) in cases {
            assert_eq!(io_error("x", p, io_kind.into()).kind(), kind, "{io_kind:?}");
        }
    }
}
