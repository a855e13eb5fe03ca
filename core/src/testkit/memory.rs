//! An in-memory store with fault injection, for testing the engine (and anything else built on
//! [`Source`] and [`Sink`]) without a file system or an emulator: fail the N-th write, a commit,
//! an abort, a read; watch which objects are visible and which writers are still open.
//!
//! It is registered as the connector `{ "type": "memory", "store": "NAME" }`, where `NAME` is a
//! store made with [`MemoryStore::register`]; it passes the connector conformance suite like any
//! other store (see the tests below).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::connector::{
    BuildContext, ConnectorConfig, ObjectLocation, ObjectMeta, ObjectReader, ObjectWriter, Sink,
    Source, validate_object_path,
};
use crate::error::{Error, ErrorKind, Result};

/// An in-memory store of objects with injectable faults. Cheap to clone (shared state).
#[derive(Debug, Default)]
pub struct MemoryStore {
    name: String,
    objects: Mutex<BTreeMap<String, Bytes>>,
    open_writers: AtomicUsize,
    writes: AtomicUsize,
    fail_write: AtomicUsize,
    fail_commit: Mutex<Option<String>>,
    fail_abort: AtomicBool,
    fail_read: Mutex<Option<String>>,
    commits: Mutex<Vec<String>>,
    /// A generation per object, new with every write (the listed version).
    generations: Mutex<HashMap<String, usize>>,
    next_generation: AtomicUsize,
}

fn registry() -> &'static Mutex<HashMap<String, Arc<MemoryStore>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<MemoryStore>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl MemoryStore {
    /// A new, empty store reachable as `{ "type": "memory", "store": name }` (replacing any
    /// store registered under that name).
    pub fn register(name: &str) -> Arc<MemoryStore> {
        let store = Arc::new(MemoryStore {
            name: name.to_string(),
            ..Default::default()
        });
        registry()
            .lock()
            .expect("registry")
            .insert(name.to_string(), store.clone());
        store
    }

    /// The name it is registered under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store registered as `name`.
    pub fn get(name: &str) -> Option<Arc<MemoryStore>> {
        registry().lock().expect("registry").get(name).cloned()
    }

    /// Puts a committed object (test input).
    pub fn put(&self, path: &str, data: impl Into<Bytes>) {
        self.objects
            .lock()
            .expect("objects")
            .insert(path.to_string(), data.into());
        self.new_generation(path);
    }

    fn new_generation(&self, path: &str) {
        let g = self.next_generation.fetch_add(1, Ordering::SeqCst);
        self.generations
            .lock()
            .expect("generations")
            .insert(path.to_string(), g);
    }

    /// Every visible object.
    pub fn objects(&self) -> BTreeMap<String, Bytes> {
        self.objects.lock().expect("objects").clone()
    }

    /// The visible objects whose path starts with `prefix`.
    pub fn paths(&self, prefix: &str) -> Vec<String> {
        self.objects
            .lock()
            .expect("objects")
            .keys()
            .filter(|p| p.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Writers created and neither committed, aborted nor dropped.
    pub fn open_writers(&self) -> usize {
        self.open_writers.load(Ordering::SeqCst)
    }

    /// The paths committed so far, in order.
    pub fn commits(&self) -> Vec<String> {
        self.commits.lock().expect("commits").clone()
    }

    /// Makes the `n`-th [`ObjectWriter::write`] call on this store (1-based, over all writers,
    /// counted from now) fail with a transient error.
    pub fn fail_nth_write(&self, n: usize) {
        self.writes.store(0, Ordering::SeqCst);
        self.fail_write.store(n, Ordering::SeqCst);
    }

    /// Makes the commit of every object whose path contains `part` fail.
    pub fn fail_commit(&self, part: &str) {
        *self.fail_commit.lock().expect("faults") = Some(part.to_string());
    }

    /// Makes every abort fail (after discarding the object, as a store that errs late would).
    pub fn fail_abort(&self) {
        self.fail_abort.store(true, Ordering::SeqCst);
    }

    /// Makes reading any object whose path contains `part` fail after its first chunk.
    pub fn fail_read(&self, part: &str) {
        *self.fail_read.lock().expect("faults") = Some(part.to_string());
    }

    fn describe_path(&self, path: &str) -> String {
        format!("memory://{}/{path}", self.name)
    }
}

/// `{ "type": "memory", "store": "NAME" }`: the [`MemoryStore`] registered as `NAME`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// The name the store was registered under.
    pub store: String,
}

impl MemoryConfig {
    fn store(&self) -> Result<Arc<MemoryStore>> {
        MemoryStore::get(&self.store).ok_or_else(|| {
            Error::config(format!(
                "memory connector: no store registered as {:?}",
                self.store
            ))
        })
    }
}

crate::register!(crate::registry::Component {
    kind: crate::registry::Kind::Connector,
    name: "memory",
    description: "in-memory stores with fault injection, for tests (feature testkit)",
    example: r#"{ "type": "memory", "store": "example" }"#,
    schemes: &[],
    from_url: None,
    schema: crate::schema::of::<MemoryConfig>,
});

#[async_trait]
#[typetag::serde(name = "memory")]
impl ConnectorConfig for MemoryConfig {
    fn validate(&self) -> Result<()> {
        self.store().map(|_| ())
    }

    async fn build_source(&self, _: &BuildContext) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(Handle(self.store()?)))
    }

    async fn build_sink(&self, _: &BuildContext) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(Handle(self.store()?)))
    }

    fn location(&self, _: &BuildContext, path: &str) -> Result<ObjectLocation> {
        Ok(ObjectLocation::new("memory", self.store.clone(), path))
    }
}

/// A [`MemoryStore`] as a [`Source`] and [`Sink`].
#[derive(Debug, Clone)]
pub struct Handle(pub Arc<MemoryStore>);

#[async_trait]
impl Source for Handle {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let generations = self.0.generations.lock().expect("generations").clone();
        Ok(self
            .0
            .objects
            .lock()
            .expect("objects")
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(p, b)| ObjectMeta {
                path: p.clone(),
                size: Some(b.len() as u64),
                version: generations.get(p).map(|g| g.to_string()),
            })
            .collect())
    }

    async fn open(&self, path: &str) -> Result<Box<dyn ObjectReader>> {
        validate_object_path(path)?;
        let data = self
            .0
            .objects
            .lock()
            .expect("objects")
            .get(path)
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("{} does not exist", self.0.describe_path(path)),
                )
            })?;
        let fail = self
            .0
            .fail_read
            .lock()
            .expect("faults")
            .as_ref()
            .is_some_and(|p| path.contains(p.as_str()));
        Ok(Box::new(Reader {
            data,
            pos: 0,
            fail,
            name: self.0.describe_path(path),
        }))
    }

    fn describe(&self, path: &str) -> String {
        self.0.describe_path(path)
    }
}

struct Reader {
    data: Bytes,
    pos: usize,
    fail: bool,
    name: String,
}

#[async_trait]
impl ObjectReader for Reader {
    async fn read_chunk(&mut self) -> Result<Option<Bytes>> {
        if self.fail && self.pos > 0 {
            return Err(Error::new(
                ErrorKind::Transient,
                format!("{}: injected read failure", self.name),
            ));
        }
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        let end = (self.pos + (64 << 10)).min(self.data.len());
        let chunk = self.data.slice(self.pos..end);
        self.pos = end;
        Ok(Some(chunk))
    }
}

#[async_trait]
impl Sink for Handle {
    async fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        validate_object_path(path)?;
        self.0.open_writers.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Writer {
            store: self.0.clone(),
            path: path.to_string(),
            buf: Vec::new(),
            done: false,
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        validate_object_path(path)?;
        self.0.objects.lock().expect("objects").remove(path);
        Ok(())
    }

    fn describe(&self, path: &str) -> String {
        self.0.describe_path(path)
    }
}

struct Writer {
    store: Arc<MemoryStore>,
    path: String,
    buf: Vec<u8>,
    done: bool,
}

impl Writer {
    fn close(&mut self) {
        if !self.done {
            self.done = true;
            self.store.open_writers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait]
impl ObjectWriter for Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let n = self.store.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.store.fail_write.load(Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Transient,
                format!(
                    "{}: injected failure of write {n}",
                    self.store.describe_path(&self.path)
                ),
            ));
        }
        self.buf.extend_from_slice(&chunk);
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let fail = self
            .store
            .fail_commit
            .lock()
            .expect("faults")
            .as_ref()
            .is_some_and(|p| self.path.contains(p.as_str()));
        self.close();
        if fail {
            return Err(Error::new(
                ErrorKind::Transient,
                format!(
                    "{}: injected commit failure",
                    self.store.describe_path(&self.path)
                ),
            ));
        }
        let data = Bytes::from(std::mem::take(&mut self.buf));
        self.store
            .objects
            .lock()
            .expect("objects")
            .insert(self.path.clone(), data);
        self.store.new_generation(&self.path);
        self.store
            .commits
            .lock()
            .expect("commits")
            .push(self.path.clone());
        Ok(())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.close();
        if self.store.fail_abort.load(Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Transient,
                format!(
                    "{}: injected abort failure",
                    self.store.describe_path(&self.path)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Harness, run_all, unique_prefix};

    /// The mock is held to the same contract as real stores.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_memory_store_passes_the_conformance_suite() {
        let store = MemoryStore::register("conformance");
        let h = Harness::new(
            Arc::new(Handle(store.clone())),
            Arc::new(Handle(store.clone())),
            unique_prefix("mem"),
        )
        .with_list_count(50)
        .with_large_object_size(4 << 20);
        run_all(&h).await.unwrap();
        assert_eq!(store.open_writers(), 0);
    }

    #[tokio::test]
    async fn faults_fire_where_asked() {
        let store = MemoryStore::register("faults");
        let h = Handle(store.clone());
        store.fail_nth_write(2);
        let mut w = h.create("a").await.unwrap();
        w.write(Bytes::from_static(b"1")).await.unwrap();
        assert!(w.write(Bytes::from_static(b"2")).await.is_err());
        drop(w);
        assert_eq!(store.open_writers(), 0);
        store.fail_commit("b");
        let w = h.create("b").await.unwrap();
        assert!(w.commit().await.is_err());
        assert!(store.paths("").is_empty());
    }
}
