//! The connector conformance suite (feature `testkit`), and [`memory`]: an in-memory store with
//! fault injection for testing what is built on connectors (the engine's tests use it); the
//! key-store suite is [`keystore`].
//!
//! Every connector — keylink's own and third parties' — runs these checks from its tests against
//! a real store (a temporary directory, an S3/GCS/Azure emulator, a test bucket). They check the
//! contract of [`Source`] and [`Sink`] that the engine relies on:
//!
//! | check | what it checks |
//! | --- | --- |
//! | [`list_by_prefix_and_glob`] | listing is recursive, sorted, by plain string prefix (`raw/` vs `rawdata`); [`select_objects`] with `*.csv`, `**/*.csv`, `a?.csv` and no glob; sizes |
//! | [`list_many`] | a listing of many objects ([`DEFAULT_LIST_COUNT`]) is complete and sorted (pagination) |
//! | [`streaming_read`] | a multi-MiB object comes back in more than one chunk, every byte right; empty objects; end of stream |
//! | [`write_commit_visible`] | nothing is visible before commit (not after `finish` either), everything after; an overwrite replaces at commit only; a same-size rewrite changes the listed version (watch mode) |
//! | [`abort_leaves_nothing`] | abort (after `finish` or not) and dropping a writer leave nothing; an aborted overwrite keeps the old object |
//! | [`large_object`] | a large object ([`DEFAULT_LARGE_OBJECT_SIZE`]) streams in and out with bounded chunks, every byte right |
//! | [`unicode_names`] | names with non-ASCII letters, emoji, spaces, `+`, `%`, `#`, `=`, `&`, … round-trip |
//! | [`delete_is_idempotent`] | delete removes exactly one object; deleting a missing object succeeds |
//! | [`missing_object_is_not_found`] | opening a missing object fails with [`ErrorKind::NotFound`], naming it |
//! | [`invalid_paths_are_rejected`] | `..`, `.`, empty segments, a leading `/`, NUL are refused with [`ErrorKind::Config`] |
//!
//! Each check works in its own folder under [`Harness::prefix`] (so checks may run concurrently
//! against one store), deletes what it created — also when it fails — and returns
//! `Err(message)` naming the check's step and the object, rather than panicking.
//!
//! # Running the suite from a connector crate
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [dev-dependencies]
//! keylink-core = { version = "…", features = ["testkit"] }
//! ```
//!
//! `tests/conformance.rs` — one `#[test]` per check, each on a fresh harness:
//!
//! ```no_run
//! use std::sync::Arc;
//! use keylink_core::connector::{Sink, Source};
//! use keylink_core::testkit::{unique_prefix, Harness};
//! # fn my_source() -> Arc<dyn Source> { unimplemented!() }
//! # fn my_sink() -> Arc<dyn Sink> { unimplemented!() }
//!
//! async fn harness() -> Harness {
//!     // A source and a sink on the same store, and a fresh prefix for this run.
//!     Harness::new(my_source(), my_sink(), unique_prefix("ci"))
//!         // optional: a smaller listing for a slow emulator
//!         .with_list_count(1_200)
//! }
//!
//! keylink_core::conformance_tests!(harness);
//! # fn main() {}
//! ```
//!
//! The generated tests build their own multi-threaded tokio runtime (see [`block_on`]): the crate
//! running them needs no tokio dev-dependency. To run the suite only on demand (for example when
//! an emulator is up), pass attributes for every test: `conformance_tests!(harness, #[ignore =
//! "needs MinIO"])`. Checks can also be called one by one, or all at once with [`run_all`].

pub mod format;
pub mod keystore;
pub mod memory;
pub mod stream;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinSet;

use crate::connector::{
    ObjectMeta, Sink, Source, join_path, normalize_prefix, read_all, select_objects,
};
use crate::error::{Error, ErrorKind};

/// How many objects [`list_many`] writes and lists by default: more than the 1,000 a cloud
/// store returns per page.
pub const DEFAULT_LIST_COUNT: usize = 1_200;

/// The size of [`large_object`]'s object by default: 64 MiB.
pub const DEFAULT_LARGE_OBJECT_SIZE: u64 = 64 << 20;

/// The names of all checks, in the order [`run_all`] runs them.
pub const CHECKS: [&str; 10] = [
    "list_by_prefix_and_glob",
    "list_many",
    "streaming_read",
    "write_commit_visible",
    "abort_leaves_nothing",
    "large_object",
    "unicode_names",
    "delete_is_idempotent",
    "missing_object_is_not_found",
    "invalid_paths_are_rejected",
];

const MIB: usize = 1 << 20;

/// How many writes or deletes a check runs at once.
const CONCURRENCY: usize = 16;

/// What the suite needs: a source and a sink on the **same** store, and a fresh prefix (unique per
/// run, e.g. from [`unique_prefix`]) under which the suite may create and delete objects.
///
/// Build it with [`Harness::new`]; tune it with the `with_*` methods.
#[non_exhaustive]
pub struct Harness {
    /// Reads the store.
    pub source: Arc<dyn Source>,
    /// Writes the same store.
    pub sink: Arc<dyn Sink>,
    /// Where the suite works: `""` (the whole store, if it is fresh) or a path ending in `/`.
    pub prefix: String,
    /// How many objects [`list_many`] writes when run by [`run_all`] or the macro.
    pub list_count: usize,
    /// The size of [`large_object`]'s object when run by [`run_all`] or the macro.
    pub large_object_size: u64,
    guard: Option<Box<dyn Any + Send + Sync>>,
}

impl Harness {
    /// A harness on `source` and `sink` under `prefix` (normalized: no leading `/`, a trailing
    /// `/` unless empty), with the default sizes.
    pub fn new(source: Arc<dyn Source>, sink: Arc<dyn Sink>, prefix: impl AsRef<str>) -> Self {
        Harness {
            source,
            sink,
            prefix: normalize_prefix(prefix.as_ref()),
            list_count: DEFAULT_LIST_COUNT,
            large_object_size: DEFAULT_LARGE_OBJECT_SIZE,
            guard: None,
        }
    }

    /// Sets how many objects [`list_many`] writes.
    pub fn with_list_count(mut self, count: usize) -> Self {
        self.list_count = count;
        self
    }

    /// Sets the size of [`large_object`]'s object.
    pub fn with_large_object_size(mut self, size: u64) -> Self {
        self.large_object_size = size;
        self
    }

    /// Keeps `guard` alive as long as the harness, and drops it with the harness: a
    /// `tempfile::TempDir`, an emulator handle, a bucket to remove.
    pub fn with_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// The folder a check works in.
    fn area(&self, check: &str) -> String {
        normalize_prefix(&join_path(&self.prefix, check))
    }
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("source", &self.source)
            .field("sink", &self.sink)
            .field("prefix", &self.prefix)
            .field("list_count", &self.list_count)
            .field("large_object_size", &self.large_object_size)
            .finish_non_exhaustive()
    }
}

/// A fresh prefix under `parent`: `<parent>/keylink-conformance-<16 random hex digits>/`.
pub fn unique_prefix(parent: &str) -> String {
    let mut random = [0u8; 8];
    // The OS random generator does not fail in practice; fall back to the clock if it does.
    let id = match crate::crypto::fill_random(&mut random) {
        Ok(()) => u64::from_le_bytes(random),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    normalize_prefix(&join_path(
        parent,
        &format!("keylink-conformance-{id:016x}/"),
    ))
}

/// Runs `future` to completion on a new multi-threaded tokio runtime (all drivers enabled). The
/// tests [`conformance_tests!`](crate::conformance_tests) generates use it.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start a tokio runtime for the conformance test")
        .block_on(future)
}

/// Panics with the check's failure message, for use in a `#[test]`.
#[track_caller]
pub fn assert_passed(check: &str, result: Result<(), String>) {
    if let Err(message) = result {
        panic!("connector conformance check {check} failed: {message}");
    }
}

/// Panics with a key-store check's failure message, for use in a `#[test]`.
#[track_caller]
pub fn assert_keystore_passed(check: &str, result: Result<(), String>) {
    if let Err(message) = result {
        panic!("key-store conformance check {check} failed: {message}");
    }
}

/// Runs every check on `h` (sizes from [`Harness::list_count`] and
/// [`Harness::large_object_size`]) and returns every failure, each prefixed with its check's
/// name.
pub async fn run_all(h: &Harness) -> Result<(), Vec<String>> {
    let mut failures = Vec::new();
    let mut record = |name: &str, r: Result<(), String>| {
        if let Err(e) = r {
            failures.push(format!("{name}: {e}"));
        }
    };
    record(CHECKS[0], list_by_prefix_and_glob(h).await);
    record(CHECKS[1], list_many(h, h.list_count).await);
    record(CHECKS[2], streaming_read(h).await);
    record(CHECKS[3], write_commit_visible(h).await);
    record(CHECKS[4], abort_leaves_nothing(h).await);
    record(CHECKS[5], large_object(h, h.large_object_size).await);
    record(CHECKS[6], unicode_names(h).await);
    record(CHECKS[7], delete_is_idempotent(h).await);
    record(CHECKS[8], missing_object_is_not_found(h).await);
    record(CHECKS[9], invalid_paths_are_rejected(h).await);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// Expands to one `#[test]` per conformance check, each on a fresh harness from `$make`: a
/// function or closure taking nothing and returning a future of a [`Harness`] (an `async fn`).
///
/// Each test runs on its own multi-threaded tokio runtime ([`block_on`]), so the calling crate
/// needs `keylink-core` with the `testkit` feature in its dev-dependencies and nothing else.
/// Optional attributes after the harness apply to every test:
///
/// ```ignore
/// keylink_core::conformance_tests!(make_harness);
/// keylink_core::conformance_tests!(make_harness, #[ignore = "needs the S3 emulator"]);
/// ```
///
/// The tests are named after the checks (`list_many`, `streaming_read`, …); to run the suite
/// twice in one file, invoke the macro in two modules (`mod s3 { use super::*; … }`).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr $(, #[$attr:meta])* $(,)?) => {
        $crate::__conformance_test!($make, [$(#[$attr])*], list_by_prefix_and_glob, |h| {
            $crate::testkit::list_by_prefix_and_glob(h)
        });
        $crate::__conformance_test!($make, [$(#[$attr])*], list_many, |h| {
            $crate::testkit::list_many(h, h.list_count)
        });
        $crate::__conformance_test!($make, [$(#[$attr])*], streaming_read, |h| {
            $crate::testkit::streaming_read(h)
        });
        $crate::__conformance_test!($make, [$(#[$attr])*], write_commit_visible, |h| {
            $crate::testkit::write_commit_visible(h)
        });
        $crate::__conformance_test!($make, [$(#[$attr])*], abort_leaves_nothing, |h| {
            $crate::testkit::abort_leaves_nothing(h)
        });
        $crate::__conformance_test!($make, [$(#[$attr])*], large_object, |h| {
            $crate::testkit::large_object(h, h.large_object_size)
        });
        $crate::__conformance_test!($make, [$(#[$attr])*], unicode_names, |h| {
            $crate::testkit::unicode_names(h)
        });
        $crate::__conformance_test!($make, [$(#[$attr])*], delete_is_idempotent, |h| {
            $crate::testkit::delete_is_idempotent(h)
        });
        $crate::__conformance_test!($make, [$(#[$attr])*], missing_object_is_not_found, |h| {
            $crate::testkit::missing_object_is_not_found(h)
        });
        $crate::__conformance_test!($make, [$(#[$attr])*], invalid_paths_are_rejected, |h| {
            $crate::testkit::invalid_paths_are_rejected(h)
        });
    };
}

/// One test of [`conformance_tests!`](crate::conformance_tests). Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    ($make:expr, [$(#[$attr:meta])*], $name:ident, |$h:ident| $call:expr) => {
        #[test]
        $(#[$attr])*
        fn $name() {
            $crate::testkit::block_on(async {
                let harness: $crate::testkit::Harness = ($make)().await;
                let $h = &harness;
                let result: ::std::result::Result<(), ::std::string::String> = $call.await;
                $crate::testkit::assert_passed(::std::stringify!($name), result);
            });
        }
    };
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

/// Listing and selection: objects in nested folders, siblings sharing a prefix (`raw/` vs
/// `rawdata`), [`Source::list`] by plain string prefix, [`select_objects`] with `*.csv`,
/// `**/*.csv`, `a?.csv` and without a glob; results sorted, sizes right when given.
pub async fn list_by_prefix_and_glob(h: &Harness) -> Result<(), String> {
    let area = h.area("list_by_prefix_and_glob");
    let rel = [
        "raw/a1.csv",
        "raw/a2.csv",
        "raw/ab.csv",
        "raw/abc.csv",
        "raw/b.json",
        "raw/sub/c.csv",
        "raw/sub/deeper/d.csv",
        "raw/sub/e.txt",
        "raw.csv",
        "rawdata.csv",
        "rawdata/x.csv",
        "other/y.csv",
    ];
    let paths: Vec<String> = rel.iter().map(|r| format!("{area}{r}")).collect();
    with_cleanup(h, &area, &paths, async {
        write_objects(h, paths.iter().map(|p| (p.clone(), Bytes::from(p.clone())))).await?;
        let under = |names: &[&str]| -> Vec<String> {
            names.iter().map(|n| format!("{area}{n}")).collect()
        };

        // list: plain string prefix, recursive, sorted, sizes
        let all = list_checked(h, &area).await?;
        expect_paths("list of the check's folder", &area, &all, &paths)?;
        for o in &all {
            if let Some(size) = o.size
                && size != o.path.len() as u64
            {
                return Err(format!(
                    "list reports size {size} for {:?}, which has {} bytes",
                    o.path,
                    o.path.len()
                ));
            }
        }
        let raw_string = format!("{area}raw");
        let listed = list_checked(h, &raw_string).await?;
        expect_paths(
            "list by the string prefix",
            &raw_string,
            &listed,
            &paths
                .iter()
                .filter(|p| p.starts_with(&raw_string))
                .cloned()
                .collect::<Vec<_>>(),
        )?;
        let raw_dir = format!("{area}raw/");
        let listed = list_checked(h, &raw_dir).await?;
        let raw_all = under(&[
            "raw/a1.csv",
            "raw/a2.csv",
            "raw/ab.csv",
            "raw/abc.csv",
            "raw/b.json",
            "raw/sub/c.csv",
            "raw/sub/deeper/d.csv",
            "raw/sub/e.txt",
        ]);
        expect_paths("list of a folder", &raw_dir, &listed, &raw_all)?;
        let sub = format!("{area}raw/sub/d");
        let listed = list_checked(h, &sub).await?;
        expect_paths(
            "list by a prefix ending inside a folder name",
            &sub,
            &listed,
            &under(&["raw/sub/deeper/d.csv"]),
        )?;
        let nothing = format!("{area}nothing-here/");
        let listed = list_checked(h, &nothing).await?;
        expect_paths("list of a folder with no objects", &nothing, &listed, &[])?;

        // select_objects: prefix without a trailing '/' is a folder; globs relative to it
        let raw_folder = format!("{area}raw");
        let cases: [(Option<&str>, &[&str]); 5] = [
            (
                None,
                &[
                    "raw/a1.csv",
                    "raw/a2.csv",
                    "raw/ab.csv",
                    "raw/abc.csv",
                    "raw/b.json",
                    "raw/sub/c.csv",
                    "raw/sub/deeper/d.csv",
                    "raw/sub/e.txt",
                ],
            ),
            (
                Some("*.csv"),
                &["raw/a1.csv", "raw/a2.csv", "raw/ab.csv", "raw/abc.csv"],
            ),
            (
                Some("**/*.csv"),
                &[
                    "raw/a1.csv",
                    "raw/a2.csv",
                    "raw/ab.csv",
                    "raw/abc.csv",
                    "raw/sub/c.csv",
                    "raw/sub/deeper/d.csv",
                ],
            ),
            (Some("a?.csv"), &["raw/a1.csv", "raw/a2.csv", "raw/ab.csv"]),
            (Some("sub/*"), &["raw/sub/c.csv", "raw/sub/e.txt"]),
        ];
        for (glob, expected) in cases {
            let selected = select_objects(&*h.source, &raw_folder, glob)
                .await
                .map_err(|e| failed(&format!("select_objects({raw_folder:?}, {glob:?})"), &e))?;
            expect_paths(
                &format!("select_objects with glob {glob:?}"),
                &raw_folder,
                &selected,
                &under(expected),
            )?;
        }
        Ok(())
    })
    .await
}

/// A listing of `count` objects (use at least [`DEFAULT_LIST_COUNT`] for cloud stores, whose
/// listings come in pages of 1,000) is complete, without duplicates, and sorted.
pub async fn list_many(h: &Harness, count: usize) -> Result<(), String> {
    let area = h.area("list_many");
    let paths: Vec<String> = (0..count)
        .map(|i| format!("{area}obj-{i:06}.txt"))
        .collect();
    with_cleanup(h, &area, &paths, async {
        write_objects(
            h,
            paths.iter().map(|p| (p.clone(), Bytes::from_static(b"x"))),
        )
        .await?;
        let listed = list_checked(h, &area).await?;
        expect_paths("list of many objects", &area, &listed, &paths)?;
        let selected = select_objects(&*h.source, &area, Some("obj-*.txt"))
            .await
            .map_err(|e| failed(&format!("select_objects({area:?}, \"obj-*.txt\")"), &e))?;
        if selected.len() != count {
            return Err(format!(
                "select_objects({area:?}, \"obj-*.txt\") found {} of the {count} objects",
                selected.len()
            ));
        }
        Ok(())
    })
    .await
}

/// A multi-MiB object, written in odd-sized chunks, is read back in more than one chunk with every
/// byte right; an empty object reads as no bytes; after the end, the reader keeps saying so.
pub async fn streaming_read(h: &Harness) -> Result<(), String> {
    let area = h.area("streaming_read");
    let path = format!("{area}stream.bin");
    let empty = format!("{area}empty.csv");
    let size = 5 * MIB as u64 + 4_321;
    with_cleanup(h, &area, &[path.clone(), empty.clone()], async {
        write_pattern(h, &path, 11, size, &[300_000, 77, 1 << 20, 65_536 + 1]).await?;
        let stats = verify_pattern(h, &path, 11, size).await?;
        if stats.chunks < 2 {
            return Err(format!(
                "object {path:?} of {size} bytes was read in {} chunk(s); a reader must stream",
                stats.chunks
            ));
        }

        let mut w = h
            .sink
            .create(&empty)
            .await
            .map_err(|e| failed(&format!("create {empty:?}"), &e))?;
        w.finish()
            .await
            .map_err(|e| failed(&format!("finish {empty:?}"), &e))?;
        w.commit()
            .await
            .map_err(|e| failed(&format!("commit {empty:?}"), &e))?;
        let data = read_all(&*h.source, &empty)
            .await
            .map_err(|e| failed(&format!("read empty object {empty:?}"), &e))?;
        if !data.is_empty() {
            return Err(format!(
                "empty object {empty:?} reads as {} bytes",
                data.len()
            ));
        }
        let listed = list_checked(h, &area).await?;
        let meta = listed.iter().find(|o| o.path == empty);
        match meta {
            None => return Err(format!("empty object {empty:?} is not listed")),
            Some(ObjectMeta {
                size: Some(s @ 1..),
                ..
            }) => return Err(format!("empty object {empty:?} is listed with size {s}")),
            Some(_) => {}
        }
        Ok(())
    })
    .await
}

/// Nothing is visible at a path (neither listed nor openable) while it is written and after
/// [`ObjectWriter::finish`](crate::connector::ObjectWriter::finish); everything is after
/// `commit`. An overwrite leaves the old object in place until its commit, then replaces it.
pub async fn write_commit_visible(h: &Harness) -> Result<(), String> {
    let area = h.area("write_commit_visible");
    let path = format!("{area}visible/obj.csv");
    with_cleanup(h, &area, std::slice::from_ref(&path), async {
        let mut w = h
            .sink
            .create(&path)
            .await
            .map_err(|e| failed(&format!("create {path:?}"), &e))?;
        for part in ["id,name\n", "1,Alice\n"] {
            w.write(Bytes::from_static(part.as_bytes()))
                .await
                .map_err(|e| failed(&format!("write {path:?}"), &e))?;
        }
        expect_absent(h, &area, &path, "while it is written").await?;
        w.finish()
            .await
            .map_err(|e| failed(&format!("finish {path:?}"), &e))?;
        expect_absent(h, &area, &path, "after finish (before commit)").await?;
        w.commit()
            .await
            .map_err(|e| failed(&format!("commit {path:?}"), &e))?;
        expect_only(h, &area, &path, b"id,name\n1,Alice\n", "after commit").await?;

        // Overwrite: old content until commit, new content after.
        let mut w = h
            .sink
            .create(&path)
            .await
            .map_err(|e| failed(&format!("create {path:?} again"), &e))?;
        w.write(Bytes::from_static(b"v2\n"))
            .await
            .map_err(|e| failed(&format!("write {path:?}"), &e))?;
        w.finish()
            .await
            .map_err(|e| failed(&format!("finish {path:?}"), &e))?;
        expect_only(
            h,
            &area,
            &path,
            b"id,name\n1,Alice\n",
            "while an overwrite is finished but not committed",
        )
        .await?;
        w.commit()
            .await
            .map_err(|e| failed(&format!("commit the overwrite of {path:?}"), &e))?;
        expect_only(h, &area, &path, b"v2\n", "after the overwrite's commit").await?;

        // A rewrite of the same size must change the listed version: `keylink run --watch`
        // processes an object again when its size or version changed.
        let listed_version = || async {
            let listed = list_checked(h, &area).await?;
            let meta = listed.iter().find(|o| o.path == path).cloned();
            match meta {
                Some(ObjectMeta {
                    version: Some(v), ..
                }) => Ok(v),
                Some(_) => Err(format!(
                    "{path:?} is listed without a version (an ETag, generation or modification \
                     time: watch mode needs one)"
                )),
                None => Err(format!("{path:?} is not listed")),
            }
        };
        let before = listed_version().await?;
        let mut w = h
            .sink
            .create(&path)
            .await
            .map_err(|e| failed(&format!("create {path:?} a third time"), &e))?;
        w.write(Bytes::from_static(b"v3\n"))
            .await
            .map_err(|e| failed(&format!("write {path:?}"), &e))?;
        w.commit()
            .await
            .map_err(|e| failed(&format!("commit the rewrite of {path:?}"), &e))?;
        expect_only(h, &area, &path, b"v3\n", "after a same-size rewrite").await?;
        if listed_version().await? == before {
            return Err(format!(
                "{path:?}: a rewrite with other bytes of the same size kept the listed version"
            ));
        }
        Ok(())
    })
    .await
}

/// [`ObjectWriter::abort`](crate::connector::ObjectWriter::abort) — after `finish`, before it,
/// without any write — and dropping a writer without commit or abort leave nothing: the path is
/// not openable and the listing shows nothing new. An aborted or dropped overwrite leaves the old
/// object unchanged.
pub async fn abort_leaves_nothing(h: &Harness) -> Result<(), String> {
    let area = h.area("abort_leaves_nothing");
    let path = format!("{area}new/deep/aborted.csv");
    let kept = format!("{area}kept.csv");
    with_cleanup(h, &area, &[path.clone(), kept.clone()], async {
        let chunk = Bytes::from(vec![b'x'; 256 * 1024]);
        for (how, writes, finish, drop_it) in [
            ("abort after finish", 3, true, false),
            ("abort without finish", 3, false, false),
            ("abort without writes", 0, false, false),
            ("drop without commit or abort", 3, true, true),
            ("drop without finish", 3, false, true),
        ] {
            let mut w = h
                .sink
                .create(&path)
                .await
                .map_err(|e| failed(&format!("create {path:?}"), &e))?;
            for _ in 0..writes {
                w.write(chunk.clone())
                    .await
                    .map_err(|e| failed(&format!("write {path:?}"), &e))?;
            }
            if finish {
                w.finish()
                    .await
                    .map_err(|e| failed(&format!("finish {path:?}"), &e))?;
            }
            if drop_it {
                drop(w);
            } else {
                w.abort()
                    .await
                    .map_err(|e| failed(&format!("{how} of {path:?}"), &e))?;
            }
            expect_absent(h, &area, &path, &format!("after {how}")).await?;
            let listed = list_checked(h, &area).await?;
            expect_paths(&format!("list after {how}"), &area, &listed, &[])?;
        }

        // An aborted or dropped overwrite keeps the committed object.
        write_objects(h, [(kept.clone(), Bytes::from_static(b"original\n"))]).await?;
        for drop_it in [false, true] {
            let how = if drop_it { "dropped" } else { "aborted" };
            let mut w = h
                .sink
                .create(&kept)
                .await
                .map_err(|e| failed(&format!("create {kept:?} again"), &e))?;
            w.write(Bytes::from_static(b"replacement\n"))
                .await
                .map_err(|e| failed(&format!("write {kept:?}"), &e))?;
            w.finish()
                .await
                .map_err(|e| failed(&format!("finish {kept:?}"), &e))?;
            if drop_it {
                drop(w);
            } else {
                w.abort()
                    .await
                    .map_err(|e| failed(&format!("abort the overwrite of {kept:?}"), &e))?;
            }
            expect_only(
                h,
                &area,
                &kept,
                b"original\n",
                &format!("after an {how} overwrite"),
            )
            .await?;
        }
        Ok(())
    })
    .await
}

/// An object of `size` bytes ([`DEFAULT_LARGE_OBJECT_SIZE`] by default), written in chunks of
/// about 1 MiB of deterministic pseudo-random bytes, committed, and streamed back: every byte is
/// compared with the regenerated stream (neither side holds the whole object), the listed size
/// must match, and no chunk read may be the whole object.
pub async fn large_object(h: &Harness, size: u64) -> Result<(), String> {
    let area = h.area("large_object");
    let path = format!("{area}large.bin");
    with_cleanup(h, &area, std::slice::from_ref(&path), async {
        write_pattern(h, &path, 42, size, &[MIB, MIB - 1, MIB + 7, 256 * 1024 + 3]).await?;
        let listed = list_checked(h, &area).await?;
        match listed.as_slice() {
            [o] if o.path == path && o.size.is_none_or(|s| s == size) => {}
            _ => {
                return Err(format!(
                    "after committing {size} bytes to {path:?}, list shows {}",
                    show(&listed)
                ));
            }
        }
        let stats = verify_pattern(h, &path, 42, size).await?;
        if size >= 2 * MIB as u64 && stats.largest_chunk as u64 >= size {
            return Err(format!(
                "object {path:?} of {size} bytes was read as a single chunk; readers must stream \
                 in bounded chunks"
            ));
        }
        Ok(())
    })
    .await
}

/// Names with non-ASCII letters, emoji, spaces, `+`, `%`, `#`, `=`, `&` and more are written,
/// listed and read back unchanged (no URL-decoding, no normalization), and globs select them.
pub async fn unicode_names(h: &Harness) -> Result<(), String> {
    let area = h.area("unicode_names");
    let rel = [
        "ünï cödé/日本語 😀.csv",
        "spaces in name.csv",
        "plus+sign.csv",
        "percent%20encoded%2Fslash.csv",
        "hash#fragment.csv",
        "equals=sign&amp;.csv",
        "mixed dir+1/ä+b%c#d=e f.csv",
        "quote's (paren) [bracket] {brace} ~tilde,comma;semi@at$dollar!.csv",
        "Ελληνικά/Кириллица/עברית العربية.csv",
    ];
    let paths: Vec<String> = rel.iter().map(|r| format!("{area}{r}")).collect();
    with_cleanup(h, &area, &paths, async {
        write_objects(h, paths.iter().map(|p| (p.clone(), Bytes::from(p.clone())))).await?;
        let listed = list_checked(h, &area).await?;
        expect_paths("list of objects with unusual names", &area, &listed, &paths)?;
        for p in &paths {
            let data = read_all(&*h.source, p)
                .await
                .map_err(|e| failed(&format!("read {p:?}"), &e))?;
            if data != p.as_bytes() {
                return Err(format!(
                    "object {p:?} reads back as different bytes ({} instead of {})",
                    data.len(),
                    p.len()
                ));
            }
        }
        let folder = format!("{area}ünï cödé");
        let selected = select_objects(&*h.source, &folder, Some("*.csv"))
            .await
            .map_err(|e| failed(&format!("select_objects({folder:?}, \"*.csv\")"), &e))?;
        expect_paths(
            "select_objects in a folder with a non-ASCII name",
            &folder,
            &selected,
            &[format!("{area}ünï cödé/日本語 😀.csv")],
        )
    })
    .await
}

/// [`Sink::delete`] removes exactly the object named (not its siblings, not objects sharing its
/// name as a prefix); deleting it again, or deleting a path that never existed, succeeds.
pub async fn delete_is_idempotent(h: &Harness) -> Result<(), String> {
    let area = h.area("delete_is_idempotent");
    let doomed = format!("{area}dir/doomed.csv");
    let sibling = format!("{area}dir/sibling.csv");
    let longer = format!("{area}dir/doomed.csv.bak");
    with_cleanup(
        h,
        &area,
        &[doomed.clone(), sibling.clone(), longer.clone()],
        async {
            write_objects(
                h,
                [&doomed, &sibling, &longer]
                    .into_iter()
                    .map(|p| (p.clone(), Bytes::from(p.clone()))),
            )
            .await?;
            for attempt in ["first", "second"] {
                h.sink
                    .delete(&doomed)
                    .await
                    .map_err(|e| failed(&format!("{attempt} delete of {doomed:?}"), &e))?;
                expect_absent(h, &area, &doomed, &format!("after the {attempt} delete")).await?;
            }
            let never = format!("{area}never/existed.csv");
            h.sink
                .delete(&never)
                .await
                .map_err(|e| failed(&format!("delete of the never-written {never:?}"), &e))?;
            let listed = list_checked(h, &area).await?;
            expect_paths(
                "list after deleting one object",
                &area,
                &listed,
                &[sibling.clone(), longer.clone()],
            )?;
            for p in [&sibling, &longer] {
                let data = read_all(&*h.source, p)
                    .await
                    .map_err(|e| failed(&format!("read {p:?} after deleting {doomed:?}"), &e))?;
                if data != p.as_bytes() {
                    return Err(format!("object {p:?} changed when {doomed:?} was deleted"));
                }
            }
            Ok(())
        },
    )
    .await
}

/// Opening a missing object — in an existing folder, in a missing one, or a path that is only a
/// folder — fails with [`ErrorKind::NotFound`] and a message naming the object; listing a
/// missing folder is an empty list, not an error.
pub async fn missing_object_is_not_found(h: &Harness) -> Result<(), String> {
    let area = h.area("missing_object_is_not_found");
    let existing = format!("{area}folder/present.csv");
    with_cleanup(h, &area, std::slice::from_ref(&existing), async {
        write_objects(h, [(existing.clone(), Bytes::from_static(b"x\n"))]).await?;
        for (missing, name) in [
            (format!("{area}folder/absent.csv"), "absent.csv"),
            (
                format!("{area}no-such-folder/absent-too.csv"),
                "absent-too.csv",
            ),
            (format!("{area}folder"), "folder"),
        ] {
            match h.source.open(&missing).await {
                Ok(_) => return Err(format!("open of the missing object {missing:?} succeeded")),
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(format!(
                        "open of the missing object {missing:?} failed with kind {} instead of \
                         not_found: {e}",
                        e.kind()
                    ));
                }
                Err(e) if !e.to_string().contains(name) => {
                    return Err(format!(
                        "the error for the missing object {missing:?} does not name it: {e}"
                    ));
                }
                Err(_) => {}
            }
        }
        let described = h.source.describe(&existing);
        if !described.contains("present.csv") {
            return Err(format!(
                "Source::describe({existing:?}) = {described:?} does not name the object"
            ));
        }
        let missing_folder = format!("{area}no-such-folder/");
        let listed = list_checked(h, &missing_folder).await?;
        expect_paths("list of a missing folder", &missing_folder, &listed, &[])
    })
    .await
}

/// Invalid object paths (`..` or `.` segments, empty segments, a leading `/`, NUL, empty) are
/// refused by [`Source::open`], [`Sink::create`] and [`Sink::delete`] with [`ErrorKind::Config`]
/// (see [`validate_object_path`](crate::connector::validate_object_path)).
pub async fn invalid_paths_are_rejected(h: &Harness) -> Result<(), String> {
    let area = h.area("invalid_paths_are_rejected");
    let inside = format!("{area}inside/file.csv");
    with_cleanup(h, &area, std::slice::from_ref(&inside), async {
        write_objects(h, [(inside.clone(), Bytes::from_static(b"x\n"))]).await?;
        // Relative invalid paths: even a connector that fails to reject them stays in the store.
        let relative = [
            format!("{area}inside/../inside/file.csv"),
            format!("{area}../escape.csv"),
            format!("{area}./dot.csv"),
            format!("{area}inside//file.csv"),
            format!("{area}nul\0.csv"),
            format!("{area}trailing/"),
        ];
        // A leading '/' or an empty path: only read and delete (harmless if not rejected).
        let absolute = [format!("/{area}abs.csv"), String::new()];
        let expect_config = |op: &str, p: &str, r: Result<(), Error>| match r {
            Ok(()) => Err(format!("{op} of the invalid path {p:?} succeeded")),
            Err(e) if e.kind() != ErrorKind::Config => Err(format!(
                "{op} of the invalid path {p:?} failed with kind {} instead of config: {e}",
                e.kind()
            )),
            Err(_) => Ok(()),
        };
        for p in relative.iter().chain(&absolute) {
            expect_config("open", p, h.source.open(p).await.map(drop))?;
            expect_config("delete", p, h.sink.delete(p).await)?;
        }
        for p in &relative {
            match h.sink.create(p).await {
                Ok(w) => {
                    let _ = w.abort().await;
                    return Err(format!("create of the invalid path {p:?} succeeded"));
                }
                Err(e) => expect_config("create", p, Err(e))?,
            }
        }
        expect_only(h, &area, &inside, b"x\n", "after the invalid paths").await
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Formats a failed step.
fn failed(step: &str, e: &Error) -> String {
    format!("{step} failed ({}): {e}", e.kind())
}

/// Runs `body`, then deletes `known` and everything listed under `area`, and checks that the
/// area is empty. The body's failure wins; a cleanup failure is reported too.
async fn with_cleanup(
    h: &Harness,
    area: &str,
    known: &[String],
    body: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    let result = body.await;
    let cleanup = cleanup(h, area, known).await;
    match (result, cleanup) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(c)) => Err(format!("cleanup: {c}")),
        (Err(e), Err(c)) => Err(format!("{e} (and the cleanup failed too: {c})")),
    }
}

async fn cleanup(h: &Harness, area: &str, known: &[String]) -> Result<(), String> {
    let listed = h.source.list(area).await;
    let mut doomed: Vec<String> = known.to_vec();
    if let Ok(listed) = &listed {
        doomed.extend(listed.iter().map(|o| o.path.clone()));
    }
    doomed.sort();
    doomed.dedup();
    let sink = &h.sink;
    concurrently(doomed, |p| {
        let sink = Arc::clone(sink);
        async move {
            sink.delete(&p)
                .await
                .map_err(|e| failed(&format!("delete {p:?}"), &e))
        }
    })
    .await?;
    listed.map_err(|e| failed(&format!("list {area:?}"), &e))?;
    let left = h
        .source
        .list(area)
        .await
        .map_err(|e| failed(&format!("list {area:?} after deleting"), &e))?;
    if !left.is_empty() {
        return Err(format!(
            "{} object(s) remain under {area:?} after deleting: {}",
            left.len(),
            show(&left)
        ));
    }
    Ok(())
}

/// Runs `f` on every item, [`CONCURRENCY`] at a time; returns the first failure (and how many
/// failed).
async fn concurrently<T, F, Fut>(items: impl IntoIterator<Item = T>, f: F) -> Result<(), String>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut set = JoinSet::new();
    let mut first: Option<String> = None;
    let mut failures = 0usize;
    let mut note = |r: Result<Result<(), String>, tokio::task::JoinError>| {
        let e = match r {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(e) => format!("a task panicked or was cancelled: {e}"),
        };
        failures += 1;
        first.get_or_insert(e);
    };
    for item in items {
        while set.len() >= CONCURRENCY {
            if let Some(r) = set.join_next().await {
                note(r);
            }
        }
        set.spawn(f(item));
    }
    while let Some(r) = set.join_next().await {
        note(r);
    }
    match first {
        None => Ok(()),
        Some(e) if failures == 1 => Err(e),
        Some(e) => Err(format!("{e} (and {} more failures)", failures - 1)),
    }
}

/// Writes and commits every `(path, data)`, concurrently.
async fn write_objects(
    h: &Harness,
    objects: impl IntoIterator<Item = (String, Bytes)>,
) -> Result<(), String> {
    let sink = &h.sink;
    concurrently(objects, |(path, data)| {
        let sink = Arc::clone(sink);
        async move {
            let mut w = sink
                .create(&path)
                .await
                .map_err(|e| failed(&format!("create {path:?}"), &e))?;
            let r = async {
                w.write(data)
                    .await
                    .map_err(|e| failed(&format!("write {path:?}"), &e))?;
                w.finish()
                    .await
                    .map_err(|e| failed(&format!("finish {path:?}"), &e))
            }
            .await;
            match r {
                Ok(()) => w
                    .commit()
                    .await
                    .map_err(|e| failed(&format!("commit {path:?}"), &e)),
                Err(e) => {
                    let _ = w.abort().await;
                    Err(e)
                }
            }
        }
    })
    .await
}

/// Lists `prefix` and checks the result is sorted, without duplicates, and all under `prefix`.
async fn list_checked(h: &Harness, prefix: &str) -> Result<Vec<ObjectMeta>, String> {
    let listed = h
        .source
        .list(prefix)
        .await
        .map_err(|e| failed(&format!("list {prefix:?}"), &e))?;
    for o in &listed {
        if !o.path.starts_with(prefix) {
            return Err(format!(
                "list {prefix:?} returned {:?}, which is not under the prefix",
                o.path
            ));
        }
    }
    for pair in listed.windows(2) {
        if pair[0].path >= pair[1].path {
            return Err(format!(
                "list {prefix:?} is not sorted or has duplicates: {:?} comes before {:?}",
                pair[0].path, pair[1].path
            ));
        }
    }
    Ok(listed)
}

/// Compares listed paths with the expected ones (any order; the listing must be sorted),
/// describing the difference.
fn expect_paths(
    what: &str,
    prefix: &str,
    got: &[ObjectMeta],
    expected: &[String],
) -> Result<(), String> {
    let got_paths: Vec<&str> = got.iter().map(|o| o.path.as_str()).collect();
    let mut expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    expected.sort_unstable();
    if got_paths == expected {
        return Ok(());
    }
    let missing: Vec<&&str> = expected.iter().filter(|p| !got_paths.contains(p)).collect();
    let extra: Vec<&&str> = got_paths.iter().filter(|p| !expected.contains(p)).collect();
    let cap = |v: &[&&str]| -> String {
        let mut s = format!("{:?}", &v[..v.len().min(5)]);
        if v.len() > 5 {
            s.push_str(&format!(" and {} more", v.len() - 5));
        }
        s
    };
    if missing.is_empty() && extra.is_empty() {
        return Err(format!(
            "{what} ({prefix:?}): the right objects, but not sorted by path: {got_paths:?}"
        ));
    }
    Err(format!(
        "{what} ({prefix:?}): {} object(s) instead of {}; missing {}; unexpected {}",
        got_paths.len(),
        expected.len(),
        cap(&missing),
        cap(&extra)
    ))
}

/// A short rendering of a listing for messages.
fn show(listed: &[ObjectMeta]) -> String {
    let mut s: Vec<String> = listed
        .iter()
        .take(5)
        .map(|o| format!("{:?} ({:?} bytes)", o.path, o.size))
        .collect();
    if listed.len() > 5 {
        s.push(format!("and {} more", listed.len() - 5));
    }
    if s.is_empty() {
        "nothing".to_string()
    } else {
        s.join(", ")
    }
}

/// Checks that nothing is at `path`: open fails with NotFound and `list(area)` does not show it.
async fn expect_absent(h: &Harness, area: &str, path: &str, when: &str) -> Result<(), String> {
    match h.source.open(path).await {
        Ok(_) => return Err(format!("object {path:?} can be opened {when}")),
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(format!(
                "open of {path:?} {when} failed with kind {} instead of not_found: {e}",
                e.kind()
            ));
        }
        Err(_) => {}
    }
    let listed = list_checked(h, area).await?;
    if listed.iter().any(|o| o.path == path) {
        return Err(format!("object {path:?} is listed {when}"));
    }
    Ok(())
}

/// Checks that `path` is the only object under `area` and holds `data`.
async fn expect_only(
    h: &Harness,
    area: &str,
    path: &str,
    data: &[u8],
    when: &str,
) -> Result<(), String> {
    let listed = list_checked(h, area).await?;
    match listed.as_slice() {
        [o] if o.path == path && o.size.is_none_or(|s| s == data.len() as u64) => {}
        _ => {
            return Err(format!(
                "{when}, list {area:?} shows {} instead of just {path:?} ({} bytes)",
                show(&listed),
                data.len()
            ));
        }
    }
    let got = read_all(&*h.source, path)
        .await
        .map_err(|e| failed(&format!("read {path:?} {when}"), &e))?;
    if got != data {
        return Err(format!(
            "{when}, {path:?} holds different bytes ({} bytes; expected {})",
            got.len(),
            data.len()
        ));
    }
    Ok(())
}

/// Writes `size` bytes of pattern `seed` to `path` in chunks cycling through `chunk_sizes`, and
/// commits.
async fn write_pattern(
    h: &Harness,
    path: &str,
    seed: u64,
    size: u64,
    chunk_sizes: &[usize],
) -> Result<(), String> {
    let mut w = h
        .sink
        .create(path)
        .await
        .map_err(|e| failed(&format!("create {path:?}"), &e))?;
    let mut offset = 0u64;
    let mut sizes = chunk_sizes.iter().cycle();
    let r = async {
        while offset < size {
            let n = (*sizes.next().unwrap_or(&MIB) as u64).min(size - offset) as usize;
            let mut chunk = vec![0u8; n];
            fill_pattern(seed, offset, &mut chunk);
            w.write(Bytes::from(chunk))
                .await
                .map_err(|e| failed(&format!("write {path:?} at offset {offset}"), &e))?;
            offset += n as u64;
        }
        w.finish()
            .await
            .map_err(|e| failed(&format!("finish {path:?}"), &e))
    }
    .await;
    match r {
        Ok(()) => w
            .commit()
            .await
            .map_err(|e| failed(&format!("commit {path:?}"), &e)),
        Err(e) => {
            let _ = w.abort().await;
            Err(e)
        }
    }
}

/// What [`verify_pattern`] saw.
struct ReadStats {
    chunks: usize,
    largest_chunk: usize,
}

/// Streams `path` back and compares every byte with pattern `seed`, without holding the object.
async fn verify_pattern(
    h: &Harness,
    path: &str,
    seed: u64,
    size: u64,
) -> Result<ReadStats, String> {
    let mut r = h
        .source
        .open(path)
        .await
        .map_err(|e| failed(&format!("open {path:?}"), &e))?;
    let mut offset = 0u64;
    let mut stats = ReadStats {
        chunks: 0,
        largest_chunk: 0,
    };
    let mut expected = Vec::new();
    let mut empty_in_a_row = 0;
    loop {
        let chunk = r
            .read_chunk()
            .await
            .map_err(|e| failed(&format!("read {path:?} at offset {offset}"), &e))?;
        let Some(chunk) = chunk else { break };
        if chunk.is_empty() {
            empty_in_a_row += 1;
            if empty_in_a_row > 1_000 {
                return Err(format!(
                    "reading {path:?}: more than 1,000 empty chunks in a row at offset {offset}"
                ));
            }
            continue;
        }
        empty_in_a_row = 0;
        stats.chunks += 1;
        stats.largest_chunk = stats.largest_chunk.max(chunk.len());
        if offset + chunk.len() as u64 > size {
            return Err(format!(
                "object {path:?} reads back longer than the {size} bytes written"
            ));
        }
        expected.resize(chunk.len(), 0);
        fill_pattern(seed, offset, &mut expected);
        if chunk[..] != expected[..] {
            let at = chunk
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "object {path:?}: the byte at offset {} differs from what was written",
                offset + at as u64
            ));
        }
        offset += chunk.len() as u64;
    }
    if offset != size {
        return Err(format!(
            "object {path:?} reads back {offset} bytes; {size} were written"
        ));
    }
    match r.read_chunk().await {
        Ok(None) => {}
        Ok(Some(c)) if c.is_empty() => {}
        Ok(Some(c)) => {
            return Err(format!(
                "reading {path:?} after its end returned {} more bytes",
                c.len()
            ));
        }
        Err(e) => return Err(failed(&format!("read {path:?} after its end"), &e)),
    }
    Ok(stats)
}

/// The SplitMix64 mixer: a good 64-bit hash of a counter.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with bytes `offset..offset + buf.len()` of the pseudo-random stream `seed`: word
/// `k` (bytes `8k..8k + 8`) is `splitmix64(seed * 2^32 + k)`, little-endian. Any range can be
/// generated on its own, so writer and reader need not agree on chunk boundaries.
fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let word = |k: u64| splitmix64((seed << 32).wrapping_add(k)).to_le_bytes();
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() && !pos.is_multiple_of(8) {
        buf[i] = word(pos / 8)[(pos % 8) as usize];
        i += 1;
        pos += 1;
    }
    let mut words = buf[i..].chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&word(pos / 8));
        pos += 8;
    }
    for b in words.into_remainder() {
        *b = word(pos / 8)[(pos % 8) as usize];
        pos += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_ranges_agree() {
        let mut whole = vec![0u8; 1000];
        fill_pattern(7, 0, &mut whole);
        for (start, len) in [(0, 1), (3, 17), (8, 8), (13, 500), (999, 1)] {
            let mut part = vec![0u8; len];
            fill_pattern(7, start as u64, &mut part);
            assert_eq!(part, whole[start..start + len]);
        }
        let mut other = vec![0u8; 1000];
        fill_pattern(8, 0, &mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn prefixes() {
        let p = unique_prefix("ci");
        assert!(
            p.starts_with("ci/keylink-conformance-") && p.ends_with('/'),
            "{p}"
        );
        assert_ne!(p, unique_prefix("ci"));
        assert!(unique_prefix("").starts_with("keylink-conformance-"));
    }
}
