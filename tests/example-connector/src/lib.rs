//! `shelf`: a third-party connector, written against `keylink-core` alone, the way someone
//! outside this repository would (it lives in `tests/` on purpose, outside `connectors/`). It
//! stores objects as files under a directory, `{ "type": "shelf", "dir": "…" }`, serves
//! `shelf://DIR/path` locations, and describes itself in keylink's component registry — so
//! `keylink list`, `--version` and `scheme://` locations know it without any change to keylink.
//!
//! Deliberately simple: blocking file I/O inside async functions (fine for tests, not for
//! production), a temporary file renamed into place on commit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keylink_core::connector::{
    BuildContext, ConnectorConfig, ObjectLocation, ObjectMeta, ObjectReader, ObjectWriter, Sink,
    Source,
};
use keylink_core::{Bytes, Error, ErrorKind, Result, async_trait, typetag};

/// `{ "type": "shelf", "dir": "shelves/a" }` (relative to the config file's folder).
#[derive(Debug, serde::Serialize, serde::Deserialize, keylink_core::schemars::JsonSchema)]
#[schemars(crate = "keylink_core::schemars")]
#[serde(deny_unknown_fields)]
pub struct ShelfConfig {
    /// The directory holding the objects.
    pub dir: PathBuf,
}

keylink_core::register!(keylink_core::registry::Component {
    kind: keylink_core::registry::Kind::Connector,
    name: "shelf",
    description: "objects as files on a shelf directory (a third-party example)",
    example: r#"{ "type": "shelf", "dir": "shelves/a" }"#,
    schemes: &["shelf"],
    from_url: Some(|dir, _| Ok(keylink_core::serde_json::json!({ "type": "shelf", "dir": dir }))),
    schema: keylink_core::schema::of::<ShelfConfig>,
});

#[async_trait]
#[typetag::serde(name = "shelf")]
impl ConnectorConfig for ShelfConfig {
    fn validate(&self) -> Result<()> {
        if self.dir.as_os_str().is_empty() {
            return Err(Error::config("shelf connector: 'dir' must not be empty"));
        }
        Ok(())
    }

    async fn build_source(&self, ctx: &BuildContext) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(Shelf::new(ctx, &self.dir)))
    }

    async fn build_sink(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>> {
        let shelf = Shelf::new(ctx, &self.dir);
        std::fs::create_dir_all(&shelf.dir).map_err(|e| io(&shelf.dir, e))?;
        Ok(Arc::new(shelf))
    }

    fn location(&self, ctx: &BuildContext, path: &str) -> Result<ObjectLocation> {
        let dir = ctx.base_dir.join(&self.dir);
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        Ok(ObjectLocation::new("shelf", dir.to_string_lossy(), path))
    }
}

#[derive(Debug)]
struct Shelf {
    dir: PathBuf,
}

impl Shelf {
    fn new(ctx: &BuildContext, dir: &Path) -> Self {
        Shelf {
            dir: ctx.base_dir.join(dir),
        }
    }

    fn file(&self, path: &str) -> Result<PathBuf> {
        if path.is_empty()
            || path
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(Error::config(format!(
                "shelf: {path:?} is not an object path"
            )));
        }
        Ok(self.dir.join(path))
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    let kind = if e.kind() == std::io::ErrorKind::NotFound {
        ErrorKind::NotFound
    } else {
        ErrorKind::Io
    };
    Error::new(kind, format!("shelf: {}: {e}", path.display()))
}

#[async_trait]
impl Source for Shelf {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                let path = entry.path();
                let meta = entry.metadata()?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".shelf-tmp-") {
                    continue;
                }
                if meta.is_dir() {
                    walk(root, &path, out)?;
                } else {
                    let rel = path.strip_prefix(root).expect("under the root");
                    let modified = meta
                        .modified()
                        .ok()
                        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_nanos());
                    out.push(ObjectMeta {
                        path: rel.to_string_lossy().replace('\\', "/"),
                        size: Some(meta.len()),
                        version: modified.map(|m| format!("{m}-{}", meta.len())),
                    });
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        match walk(&self.dir, &self.dir, &mut out) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&self.dir, e)),
        }
        out.retain(|o| o.path.starts_with(prefix));
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn open(&self, path: &str) -> Result<Box<dyn ObjectReader>> {
        let file = self.file(path)?;
        let bytes = std::fs::read(&file).map_err(|e| io(&file, e))?;
        Ok(Box::new(WholeReader(Some(Bytes::from(bytes)))))
    }

    fn describe(&self, path: &str) -> String {
        format!("shelf:{}/{path}", self.dir.display())
    }
}

struct WholeReader(Option<Bytes>);

#[async_trait]
impl ObjectReader for WholeReader {
    async fn read_chunk(&mut self) -> Result<Option<Bytes>> {
        Ok(self.0.take().filter(|b| !b.is_empty()))
    }
}

#[async_trait]
impl Sink for Shelf {
    async fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        let target = self.file(path)?;
        let parent = target
            .parent()
            .expect("a file under the shelf")
            .to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| io(&parent, e))?;
        let mut id = [0u8; 8];
        keylink_core::crypto::fill_random(&mut id)?;
        let temp = parent.join(format!(".shelf-tmp-{}", u64::from_le_bytes(id)));
        Ok(Box::new(ShelfWriter {
            target,
            temp,
            data: Vec::new(),
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let file = self.file(path)?;
        match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&file, e)),
        }
    }

    fn describe(&self, path: &str) -> String {
        format!("shelf:{}/{path}", self.dir.display())
    }
}

struct ShelfWriter {
    target: PathBuf,
    temp: PathBuf,
    data: Vec<u8>,
}

#[async_trait]
impl ObjectWriter for ShelfWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.data.extend_from_slice(&chunk);
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        std::fs::write(&self.temp, &self.data).map_err(|e| io(&self.temp, e))
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        std::fs::rename(&self.temp, &self.target).map_err(|e| io(&self.target, e))
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let _ = std::fs::remove_file(&self.temp);
        Ok(())
    }
}
