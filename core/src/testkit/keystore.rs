//! The key-store conformance suite (feature `testkit`).
//!
//! Every key store — keylink's own and third parties' — runs these checks from its tests against
//! the real thing (a temporary SQLite file, a PostgreSQL server). They check the contract of
//! [`KeyStore`] the engine relies on:
//!
//! | check | what it checks |
//! | --- | --- |
//! | [`get_or_create_basics`] | distinct scopes get distinct keys, a repeated scope its key; only the first request of a duplicate reports `created`; request order; key ids in `[1, 2^31-1]`; windows and expiries recorded |
//! | [`concurrent_tasks_agree`] | many tasks on two handles asking for overlapping scopes in different orders get one key per scope |
//! | [`concurrent_processes_agree`] | several processes (this test binary re-run as children) at once get one key per scope |
//! | [`durable_before_return`] | a child killed with SIGKILL right after `get_or_create` returned: its keys are there |
//! | [`key_links_unique_and_found`] | thousands of keys have distinct links; lookups by link give the same material; unknown links give `None` |
//! | [`subjects_linked_listed_forgotten`] | subject links are recorded, listed, extended; forgetting shreds the subject's keys (shared ones too) and only those |
//! | [`purge_deletes_expired`] | purging deletes keys expiring before the instant, and their subject links |
//! | [`no_plaintext_in_store_bytes`] | no keyField value, subject id, group or key material appears in the store's bytes, before and after every lifecycle operation |
//! | [`lifecycle_listings`] | a subject's keys with window, group and policy; subjects with counts; stats per group, window and policy; exports by group and creation time; counting expired keys |
//! | [`forget_receipt_and_tombstones`] | `forget` names the destroyed keys, tombstones their scopes (a later request gets a new key flagged `after_forget`), leaves other keys alone, and is audited |
//! | [`audit_log_kept`] | appended entries come back in order with their counts, subject hashes and groups; purging and forgetting append their own |
//! | [`rotation_rewraps_every_key`] | after `rotate_master` every key reads the same under the new master key, the old one opens nothing, a handle still on the old key cannot add keys, and a second call has nothing to do |
//!
//! Each check needs a **fresh, empty** store (the counts it asserts are exact): the harness
//! factory makes one per check. Checks return `Err(message)` rather than panicking.
//!
//! # Running the suite from a key-store crate
//!
//! ```no_run
//! use std::sync::Arc;
//! use keylink_core::keystore::KeyStore;
//! use keylink_core::testkit::keystore::KeyStoreHarness;
//! # async fn open_fresh_store() -> (Arc<dyn KeyStore>, Vec<(String, String)>) { unimplemented!() }
//! # async fn open_store_from_env() -> Arc<dyn KeyStore> { unimplemented!() }
//! # fn dump_bytes() -> Vec<u8> { unimplemented!() }
//!
//! // A fresh store, and the environment a child process needs to open the same store.
//! async fn harness() -> KeyStoreHarness {
//!     let (store, env) = open_fresh_store().await;
//!     KeyStoreHarness::new(
//!         store,
//!         // another handle on the same store (new connections)
//!         Arc::new(|| Box::pin(async { Ok(open_store_from_env().await) })),
//!         // every byte the store keeps (files, a database dump)
//!         Arc::new(|| Box::pin(async { Ok(dump_bytes()) })),
//!         env,
//!     )
//! }
//!
//! // In a child process: open the store the parent's harness named in the environment.
//! async fn open_child() -> Arc<dyn KeyStore> {
//!     open_store_from_env().await
//! }
//!
//! keylink_core::keystore_conformance_tests!(harness, open_child);
//! # fn main() {}
//! ```
//!
//! The macro also generates an ignored test, `keystore_conformance_child`, which the
//! multi-process checks run as their children (`<this test binary> keystore_conformance_child
//! --exact --ignored`); run by hand it does nothing.

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;

use uuid::Uuid;

use crate::error::Result;
use crate::keystore::envelope::MasterKey;
use crate::keystore::{AuditEntry, AuditOperation, KeyLabels, KeyStore, ResolvedKey, ScopeRequest};

/// A boxed future, as the harness's hooks return them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Opens another handle on the harness's store (its own connections).
pub type OpenFn = Arc<dyn Fn() -> BoxFuture<Result<Arc<dyn KeyStore>>> + Send + Sync>;

/// Returns every byte the store keeps: its files, or a dump of its tables.
pub type DumpFn = Arc<dyn Fn() -> BoxFuture<Result<Vec<u8>>> + Send + Sync>;

/// Opens another handle on the harness's store with the given master key (for the rotation
/// check); an error when the key does not open the store.
pub type OpenWithMasterFn =
    Arc<dyn Fn(MasterKey) -> BoxFuture<Result<Arc<dyn KeyStore>>> + Send + Sync>;

/// The names of all checks, in the order [`run_all`] runs them.
pub const CHECKS: [&str; 12] = [
    "get_or_create_basics",
    "concurrent_tasks_agree",
    "concurrent_processes_agree",
    "durable_before_return",
    "key_links_unique_and_found",
    "subjects_linked_listed_forgotten",
    "purge_deletes_expired",
    "no_plaintext_in_store_bytes",
    "lifecycle_listings",
    "forget_receipt_and_tombstones",
    "audit_log_kept",
    "rotation_rewraps_every_key",
];

/// Environment of a child process: the scopes to resolve (`group`, count, window).
const CHILD_GROUP: &str = "KEYLINK_KS_CHILD_GROUP";
const CHILD_COUNT: &str = "KEYLINK_KS_CHILD_COUNT";
/// `1`: after printing the links, wait to be killed instead of exiting.
const CHILD_HANG: &str = "KEYLINK_KS_CHILD_HANG";
/// `1`: ask for the scopes in reverse order.
const CHILD_REVERSE: &str = "KEYLINK_KS_CHILD_REVERSE";
/// Epoch milliseconds: open the store, then wait until this instant, so that children started
/// one after the other hit the store at once.
const CHILD_START_AT: &str = "KEYLINK_KS_CHILD_START_AT";

/// What the suite needs: a fresh store, a way to open it again, its bytes, and how a child
/// process finds it.
#[non_exhaustive]
pub struct KeyStoreHarness {
    /// The store under test; empty.
    pub store: Arc<dyn KeyStore>,
    /// Opens another handle on the same store.
    pub open: OpenFn,
    /// Every byte the store keeps.
    pub dump: DumpFn,
    /// Environment variables a child process (the test binary re-run) needs to open the same
    /// store through the macro's `open_child` function.
    pub child_env: Vec<(String, String)>,
    /// The libtest name of the child test (set by the macro).
    pub child_test: Option<String>,
    /// Opens the store with a given master key (needed by the rotation check).
    pub open_with_master: Option<OpenWithMasterFn>,
    /// The master key the store was opened with (needed by the rotation check).
    pub master: Option<MasterKey>,
    guard: Option<Box<dyn Any + Send + Sync>>,
}

impl KeyStoreHarness {
    /// A harness on a fresh `store`.
    pub fn new(
        store: Arc<dyn KeyStore>,
        open: OpenFn,
        dump: DumpFn,
        child_env: Vec<(String, String)>,
    ) -> Self {
        KeyStoreHarness {
            store,
            open,
            dump,
            child_env,
            child_test: None,
            open_with_master: None,
            master: None,
            guard: None,
        }
    }

    /// Lets the rotation check open the store with another master key; `master` is the key the
    /// store was opened with.
    pub fn with_master(mut self, master: MasterKey, open: OpenWithMasterFn) -> Self {
        self.master = Some(master);
        self.open_with_master = Some(open);
        self
    }

    /// Keeps `guard` (a temporary directory, a database to drop) alive as long as the harness.
    pub fn with_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// Names the test the multi-process checks run as their child (the macro sets it).
    pub fn with_child_test(mut self, name: impl Into<String>) -> Self {
        self.child_test = Some(name.into());
        self
    }
}

impl fmt::Debug for KeyStoreHarness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStoreHarness")
            .field("store", &self.store)
            .field("child_test", &self.child_test)
            .finish_non_exhaustive()
    }
}

/// Runs every check, each on a fresh harness from `make`, and returns every failure.
pub async fn run_all<F, Fut>(make: F) -> std::result::Result<(), Vec<String>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = KeyStoreHarness>,
{
    let mut failures = Vec::new();
    for name in CHECKS {
        let h = make().await;
        if let Err(e) = run_check(name, &h).await {
            failures.push(format!("{name}: {e}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// Runs the check called `name` (one of [`CHECKS`]).
pub async fn run_check(name: &str, h: &KeyStoreHarness) -> std::result::Result<(), String> {
    match name {
        "get_or_create_basics" => get_or_create_basics(h).await,
        "concurrent_tasks_agree" => concurrent_tasks_agree(h).await,
        "concurrent_processes_agree" => concurrent_processes_agree(h).await,
        "durable_before_return" => durable_before_return(h).await,
        "key_links_unique_and_found" => key_links_unique_and_found(h).await,
        "subjects_linked_listed_forgotten" => subjects_linked_listed_forgotten(h).await,
        "purge_deletes_expired" => purge_deletes_expired(h).await,
        "no_plaintext_in_store_bytes" => no_plaintext_in_store_bytes(h).await,
        "lifecycle_listings" => lifecycle_listings(h).await,
        "forget_receipt_and_tombstones" => forget_receipt_and_tombstones(h).await,
        "audit_log_kept" => audit_log_kept(h).await,
        "rotation_rewraps_every_key" => rotation_rewraps_every_key(h).await,
        other => Err(format!("no key-store check is called {other}")),
    }
}

/// Expands to one `#[test]` per key-store check, each on a fresh harness from `$make` (an `async
/// fn() -> KeyStoreHarness`), plus the ignored child test the multi-process checks run;
/// `$open_child` (an `async fn() -> Arc<dyn KeyStore>`) opens the store a parent named in the
/// environment ([`KeyStoreHarness::child_env`]). Optional attributes apply to every test.
#[macro_export]
macro_rules! keystore_conformance_tests {
    ($make:expr, $open_child:expr $(, #[$attr:meta])* $(,)?) => {
        $crate::__keystore_conformance_test!($make, [$(#[$attr])*], get_or_create_basics);
        $crate::__keystore_conformance_test!($make, [$(#[$attr])*], concurrent_tasks_agree);
        $crate::__keystore_conformance_test!($make, [$(#[$attr])*], concurrent_processes_agree);
        $crate::__keystore_conformance_test!($make, [$(#[$attr])*], durable_before_return);
        $crate::__keystore_conformance_test!($make, [$(#[$attr])*], key_links_unique_and_found);
        $crate::__keystore_conformance_test!(
            $make,
            [$(#[$attr])*],
            subjects_linked_listed_forgotten
        );
        $crate::__keystore_conformance_test!($make, [$(#[$attr])*], purge_deletes_expired);
        $crate::__keystore_conformance_test!($make, [$(#[$attr])*], no_plaintext_in_store_bytes);
        $crate::__keystore_conformance_test!($make, [$(#[$attr])*], lifecycle_listings);
        $crate::__keystore_conformance_test!(
            $make,
            [$(#[$attr])*],
            forget_receipt_and_tombstones
        );
        $crate::__keystore_conformance_test!($make, [$(#[$attr])*], audit_log_kept);
        $crate::__keystore_conformance_test!($make, [$(#[$attr])*], rotation_rewraps_every_key);

        /// The child process of the multi-process key-store checks; does nothing when run by
        /// hand.
        #[test]
        #[ignore = "child process of the key-store conformance checks"]
        fn keystore_conformance_child() {
            $crate::testkit::block_on(async {
                $crate::testkit::keystore::child_main(|| ($open_child)()).await;
            });
        }
    };
}

/// One test of [`keystore_conformance_tests!`](crate::keystore_conformance_tests). Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __keystore_conformance_test {
    ($make:expr, [$(#[$attr:meta])*], $name:ident) => {
        #[test]
        $(#[$attr])*
        fn $name() {
            $crate::testkit::block_on(async {
                let harness: $crate::testkit::keystore::KeyStoreHarness = ($make)().await;
                let harness = harness.with_child_test($crate::testkit::keystore::child_test_name(
                    ::std::module_path!(),
                ));
                let result = $crate::testkit::keystore::run_check(
                    ::std::stringify!($name),
                    &harness,
                )
                .await;
                $crate::testkit::assert_keystore_passed(::std::stringify!($name), result);
            });
        }
    };
}

/// The libtest name of the child test generated in module `module_path` (the crate name, then
/// the modules: libtest names tests without the crate).
pub fn child_test_name(module_path: &str) -> String {
    match module_path.split_once("::") {
        Some((_, rest)) => format!("{rest}::keystore_conformance_child"),
        None => "keystore_conformance_child".to_string(),
    }
}

/// The body of the child test: when the parent's variables are set, opens the store, resolves
/// the scopes, prints `LINK <i> <uuid>` lines and `DONE`, then exits — or, for
/// [`durable_before_return`], waits to be killed.
pub async fn child_main<F, Fut>(open: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Arc<dyn KeyStore>>,
{
    let (Ok(group), Ok(count)) = (std::env::var(CHILD_GROUP), std::env::var(CHILD_COUNT)) else {
        return;
    };
    let count: usize = count.parse().expect("a count");
    let store = open().await;
    if let Some(at) = std::env::var(CHILD_START_AT)
        .ok()
        .and_then(|v| v.parse::<u128>().ok())
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if at > now {
            tokio::time::sleep(std::time::Duration::from_millis((at - now) as u64)).await;
        }
    }
    let values = values(count);
    let mut order: Vec<usize> = (0..count).collect();
    if std::env::var(CHILD_REVERSE).is_ok_and(|v| v == "1") {
        order.reverse();
    }
    let requests: Vec<ScopeRequest> = order
        .iter()
        .map(|&i| scope(store.as_ref(), &group, &values[i], 0))
        .collect();
    let keys = store
        .get_or_create(&requests)
        .await
        .expect("get_or_create in the child");
    // what the engine does before it writes anything encrypted with the keys
    store.sync().await.expect("sync in the child");
    // A leading newline: libtest has printed "test … " without one.
    let mut out = String::from("\n");
    for (&i, k) in order.iter().zip(&keys) {
        out.push_str(&format!("LINK {i} {}\n", k.key.key_link));
    }
    out.push_str("DONE\n");
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes()).expect("stdout");
    stdout.flush().expect("stdout");
    drop(stdout);
    if std::env::var(CHILD_HANG).is_ok_and(|v| v == "1") {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
    // Exit without closing the store: only what was committed survives.
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `n` keyField values.
fn values(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("value-{i}").into_bytes()).collect()
}

/// A request for (group, value) in `window`, hashed with the store's lookup key as the engine
/// does; expires one day after the window starts.
fn scope(store: &dyn KeyStore, group: &str, value: &[u8], window: i64) -> ScopeRequest {
    ScopeRequest {
        scope: store.lookup_key().scope_hash(group, value),
        window_start_ms: window,
        expires_at_ms: window + 86_400_000,
        subject: None,
        labels: Arc::new(KeyLabels {
            group: group.to_owned(),
            policy_id: "p".to_owned(),
        }),
    }
}

fn with_subject(store: &dyn KeyStore, mut s: ScopeRequest, subject: &[u8]) -> ScopeRequest {
    s.subject = Some(store.lookup_key().subject_hash(subject));
    s
}

fn links(keys: &[ResolvedKey]) -> Vec<Uuid> {
    keys.iter().map(|k| k.key.key_link).collect()
}

fn sorted(mut v: Vec<Uuid>) -> Vec<Uuid> {
    v.sort();
    v
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// `Err(message)` unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

async fn get_or_create(
    store: &dyn KeyStore,
    scopes: &[ScopeRequest],
    step: &str,
) -> std::result::Result<Vec<ResolvedKey>, String> {
    let keys = store
        .get_or_create(scopes)
        .await
        .map_err(|e| format!("{step}: get_or_create failed: {e}"))?;
    ensure!(
        keys.len() == scopes.len(),
        "{step}: {} keys for {} scopes",
        keys.len(),
        scopes.len()
    );
    Ok(keys)
}

/// Starts `n` children resolving `count` scopes of `group`.
fn spawn_children(
    h: &KeyStoreHarness,
    group: &str,
    count: usize,
    n: usize,
    hang: bool,
) -> std::result::Result<Vec<std::process::Child>, String> {
    let test = h
        .child_test
        .as_deref()
        .ok_or("the harness names no child test (use keystore_conformance_tests!)")?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    // All children start their work 3 s from now, when every one of them has opened the store.
    let start_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        + 3_000;
    (0..n)
        .map(|i| {
            let mut cmd = Command::new(&exe);
            cmd.args([
                test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .envs(h.child_env.iter().map(|(k, v)| (k, v)))
            .env(CHILD_GROUP, group)
            .env(CHILD_COUNT, count.to_string())
            .env(CHILD_REVERSE, if i % 2 == 1 { "1" } else { "0" })
            .env(CHILD_HANG, if hang { "1" } else { "0" })
            .env(CHILD_START_AT, start_at.to_string())
            .stdout(Stdio::piped());
            cmd.spawn()
                .map_err(|e| format!("cannot start a child process: {e}"))
        })
        .collect()
}

/// Reads `LINK` lines up to `DONE`; `None` if the child's output ended first.
fn read_links(reader: impl BufRead, count: usize) -> Option<Vec<Uuid>> {
    let mut result = vec![Uuid::nil(); count];
    for line in reader.lines() {
        let line = line.ok()?;
        if line == "DONE" {
            return (!result.contains(&Uuid::nil())).then_some(result);
        }
        if let Some(rest) = line.strip_prefix("LINK ") {
            let (i, link) = rest.split_once(' ')?;
            *result.get_mut(i.parse::<usize>().ok()?)? = link.parse().ok()?;
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

/// Distinct scopes get distinct keys; a repeated scope gets its key back (also in one call, where
/// only its first request reports `created`); answers come in request order; key ids are in
/// `[1, 2^31 - 1]`, links are UUIDv4; windows and expiries are recorded.
pub async fn get_or_create_basics(h: &KeyStoreHarness) -> std::result::Result<(), String> {
    let s = h.store.as_ref();
    let requests = [
        scope(s, "g", b"alice", 0),
        scope(s, "g", b"alice", 3_600_000),
        scope(s, "h", b"alice", 0),
        scope(s, "g", b"bob", 0),
        scope(s, "g", b"alice", 0),
        scope(s, "", b"", -86_400_000),
    ];
    let keys = get_or_create(s, &requests, "first call").await?;
    let created: Vec<bool> = keys.iter().map(|k| k.created).collect();
    ensure!(
        created == [true, true, true, true, false, true],
        "first call: created flags {created:?}, expected the duplicate (index 4) only to be false"
    );
    let l = links(&keys);
    ensure!(l[0] == l[4], "a scope repeated in one call got two keys");
    let distinct: HashSet<Uuid> = l.iter().copied().collect();
    ensure!(
        distinct.len() == 5,
        "5 distinct scopes got {} keys",
        distinct.len()
    );
    let materials: HashSet<_> = keys.iter().map(|k| *k.key.material.expose()).collect();
    ensure!(materials.len() == 5, "distinct keys share key material");
    for (k, r) in keys.iter().zip(&requests) {
        ensure!(
            (1..=i32::MAX as u32).contains(&k.key.key_id),
            "key id {} is out of [1, 2^31-1]",
            k.key.key_id
        );
        ensure!(
            k.key.key_link.get_version_num() == 4,
            "key link {} is not a UUIDv4",
            k.key.key_link
        );
        ensure!(
            k.key.window_start_ms == r.window_start_ms && k.key.expires_at_ms == r.expires_at_ms,
            "key {} has window {} / expiry {}, asked {} / {}",
            k.key.key_link,
            k.key.window_start_ms,
            k.key.expires_at_ms,
            r.window_start_ms,
            r.expires_at_ms
        );
    }
    // Again, reversed: nothing created, the same keys in the new order.
    let mut reversed = requests;
    reversed.reverse();
    let again = get_or_create(s, &reversed, "second call").await?;
    ensure!(
        again.iter().all(|k| !k.created),
        "second call: an existing key was reported as created"
    );
    let mut back = links(&again);
    back.reverse();
    ensure!(
        back == l,
        "second call: different keys, or not in request order"
    );
    for (a, b) in again.iter().rev().zip(&keys) {
        ensure!(
            a.key.material.expose() == b.key.material.expose() && a.key.key_id == b.key.key_id,
            "second call: key {} came back with other material or id",
            a.key.key_link
        );
    }
    let none = get_or_create(s, &[], "empty call").await?;
    ensure!(none.is_empty(), "an empty call returned keys");
    Ok(())
}

/// Sixteen tasks on two handles ask for 200 overlapping scopes in batches, in different orders:
/// every task sees the same key for each scope, and the store holds 200 keys.
pub async fn concurrent_tasks_agree(h: &KeyStoreHarness) -> std::result::Result<(), String> {
    const N: usize = 200;
    let second = (h.open)()
        .await
        .map_err(|e| format!("cannot open a second handle: {e}"))?;
    let handles = [Arc::clone(&h.store), second];
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16usize {
        let store = Arc::clone(&handles[t % 2]);
        tasks.spawn(async move {
            let values = values(N);
            let mut order: Vec<usize> = (0..N).collect();
            order.rotate_left(t * 37 % N);
            if t % 3 == 0 {
                order.reverse();
            }
            let mut result = vec![Uuid::nil(); N];
            for chunk in order.chunks(50) {
                let requests: Vec<_> = chunk
                    .iter()
                    .map(|&i| scope(store.as_ref(), "g", &values[i], 0))
                    .collect();
                let keys = get_or_create(store.as_ref(), &requests, "a task").await?;
                for (&i, k) in chunk.iter().zip(&keys) {
                    result[i] = k.key.key_link;
                }
            }
            Ok::<_, String>(result)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.map_err(|e| format!("a task panicked: {e}"))??);
    }
    ensure!(
        results.iter().all(|r| r == &results[0]),
        "concurrent tasks got different keys for one scope"
    );
    let distinct: HashSet<&Uuid> = results[0].iter().collect();
    ensure!(
        distinct.len() == N,
        "{N} scopes got {} keys",
        distinct.len()
    );
    let found = h
        .store
        .get_by_key_links(&results[0])
        .await
        .map_err(|e| format!("get_by_key_links: {e}"))?;
    ensure!(
        found.iter().all(Option::is_some),
        "a returned key is not in the store"
    );
    Ok(())
}

/// Three processes (the test binary re-run as children, two asking in reverse order) resolve the
/// same 300 scopes at once: all get the same keys, and the parent finds them existing.
pub async fn concurrent_processes_agree(h: &KeyStoreHarness) -> std::result::Result<(), String> {
    const N: usize = 300;
    let children = spawn_children(h, "g", N, 3, false)?;
    // Wait for every child before judging.
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output())
        .collect::<std::io::Result<_>>()
        .map_err(|e| format!("waiting for a child: {e}"))?;
    let mut results = Vec::new();
    for out in outputs {
        ensure!(out.status.success(), "a child failed: {}", out.status);
        results.push(
            read_links(out.stdout.as_slice(), N).ok_or("a child printed no complete answer")?,
        );
    }
    ensure!(
        results.iter().all(|r| r == &results[0]),
        "processes got different keys for one scope"
    );
    let s = h.store.as_ref();
    let values = values(N);
    let requests: Vec<_> = values.iter().map(|v| scope(s, "g", v, 0)).collect();
    let keys = get_or_create(s, &requests, "the parent").await?;
    ensure!(
        keys.iter().all(|k| !k.created),
        "the parent created a key the children had made"
    );
    ensure!(
        links(&keys) == results[0],
        "the parent sees other keys than the children"
    );
    Ok(())
}

/// A child resolves 100 new scopes, syncs the store ([`KeyStore::sync`], as the engine does before
/// writing), prints their links, and is killed with SIGKILL as soon as the parent has read them:
/// every key is in the store, through a new handle. (A kill loses no committed key even before
/// the sync; the loss of the machine is what the sync is for, and no test here can cause it.)
pub async fn durable_before_return(h: &KeyStoreHarness) -> std::result::Result<(), String> {
    const N: usize = 100;
    let mut child = spawn_children(h, "durable", N, 1, true)?
        .pop()
        .expect("one child");
    let stdout = child.stdout.take().expect("piped");
    let read = tokio::task::spawn_blocking(move || read_links(BufReader::new(stdout), N));
    let result = tokio::time::timeout(std::time::Duration::from_secs(120), read).await;
    // SIGKILL on Unix: no destructor, no flush, no close.
    let _ = child.kill();
    let _ = child.wait();
    let child_links = result
        .map_err(|_| "the child did not answer within 120 s".to_string())?
        .map_err(|e| format!("reading the child: {e}"))?
        .ok_or("the child printed no complete answer")?;
    let fresh = (h.open)()
        .await
        .map_err(|e| format!("cannot reopen the store: {e}"))?;
    let found = fresh
        .get_by_key_links(&child_links)
        .await
        .map_err(|e| format!("get_by_key_links: {e}"))?;
    let missing = found.iter().filter(|k| k.is_none()).count();
    ensure!(
        missing == 0,
        "{missing} of {N} keys returned to the killed child are not in the store"
    );
    let values = values(N);
    let requests: Vec<_> = values
        .iter()
        .map(|v| scope(fresh.as_ref(), "durable", v, 0))
        .collect();
    let keys = get_or_create(fresh.as_ref(), &requests, "after the kill").await?;
    ensure!(
        keys.iter().all(|k| !k.created) && links(&keys) == child_links,
        "after the kill, the scopes resolve to new keys"
    );
    Ok(())
}

/// 3,000 keys (in batches of 1,000) have distinct links; looking them up by link (with a repeated
/// and an unknown link) gives the same material, id, window and expiry; unknown links give `None`.
pub async fn key_links_unique_and_found(h: &KeyStoreHarness) -> std::result::Result<(), String> {
    const N: usize = 3_000;
    let s = h.store.as_ref();
    let values = values(N);
    let mut keys = Vec::with_capacity(N);
    for (b, chunk) in values.chunks(1_000).enumerate() {
        let requests: Vec<_> = chunk
            .iter()
            .map(|v| scope(s, "u", v, b as i64 * 1_000))
            .collect();
        keys.extend(get_or_create(s, &requests, "creating").await?);
    }
    let l = links(&keys);
    let distinct: HashSet<&Uuid> = l.iter().collect();
    ensure!(
        distinct.len() == N,
        "{N} keys have {} distinct links",
        distinct.len()
    );
    let unknown = Uuid::new_v4();
    let mut ask = vec![unknown, l[7], l[7]];
    ask.extend(&l);
    let found = s
        .get_by_key_links(&ask)
        .await
        .map_err(|e| format!("get_by_key_links: {e}"))?;
    ensure!(
        found.len() == ask.len(),
        "{} answers for {} links",
        found.len(),
        ask.len()
    );
    ensure!(found[0].is_none(), "an unknown link was found");
    for (link, got) in ask[1..].iter().zip(&found[1..]) {
        let want = &keys[l.iter().position(|x| x == link).expect("asked")].key;
        let got = got
            .as_ref()
            .ok_or_else(|| format!("key {link} is not found by its link"))?;
        ensure!(
            got.key_link == *link
                && got.material.expose() == want.material.expose()
                && got.key_id == want.key_id
                && got.window_start_ms == want.window_start_ms
                && got.expires_at_ms == want.expires_at_ms,
            "key {link} comes back different by link"
        );
    }
    let empty = s
        .get_by_key_links(&[])
        .await
        .map_err(|e| format!("get_by_key_links: {e}"))?;
    ensure!(empty.is_empty(), "an empty lookup returned keys");
    Ok(())
}

/// Subject links: recorded with new keys and with existing ones, listed per subject; forgetting
/// a subject deletes its keys (a key shared with another subject too, and that subject's link to
/// it) and nothing else; a forgotten scope gets a new key.
pub async fn subjects_linked_listed_forgotten(
    h: &KeyStoreHarness,
) -> std::result::Result<(), String> {
    let s = h.store.as_ref();
    let with = |value: &[u8], window, subject: &[u8]| {
        with_subject(s, scope(s, "g", value, window), subject)
    };
    let keys = get_or_create(
        s,
        &[
            with(b"alice-1", 0, b"alice"),
            with(b"alice-1", 1, b"alice"),
            with(b"shared", 0, b"alice"),
            with(b"shared", 0, b"bob"),
            with(b"bob-1", 0, b"bob"),
            scope(s, "g", b"nobody", 0),
        ],
        "creating",
    )
    .await?;
    let l = links(&keys);
    ensure!(l[2] == l[3], "one scope with two subjects got two keys");
    let again = get_or_create(
        s,
        &[with(b"alice-1", 0, b"alice"), with(b"nobody", 0, b"carol")],
        "linking",
    )
    .await?;
    ensure!(again.iter().all(|k| !k.created), "linking created a key");
    ensure!(again[1].key.key_link == l[5], "linking changed a key");
    let list = |subject: &'static [u8]| async move {
        s.subject_key_links(&s.lookup_key().subject_hash(subject))
            .await
            .map(sorted)
            .map_err(|e| format!("subject_key_links: {e}"))
    };
    ensure!(
        list(b"alice").await? == sorted(vec![l[0], l[1], l[2]]),
        "alice's links are wrong"
    );
    ensure!(
        list(b"bob").await? == sorted(vec![l[2], l[4]]),
        "bob's links are wrong"
    );
    ensure!(
        list(b"carol").await? == [l[5]],
        "a link added to an existing key is missing"
    );
    ensure!(
        list(b"dave").await?.is_empty(),
        "an unknown subject has links"
    );

    let forget = |subject: &'static [u8]| async move {
        s.forget_subject(&s.lookup_key().subject_hash(subject))
            .await
            .map_err(|e| format!("forget_subject: {e}"))
    };
    ensure!(
        forget(b"alice").await? == 3,
        "forgetting alice did not delete exactly her 3 keys"
    );
    ensure!(
        list(b"alice").await?.is_empty(),
        "a forgotten subject still has links"
    );
    ensure!(
        list(b"bob").await? == [l[4]],
        "bob keeps a link to a shredded key, or lost his own"
    );
    let found = s
        .get_by_key_links(&l)
        .await
        .map_err(|e| format!("get_by_key_links: {e}"))?;
    let present: Vec<bool> = found.iter().map(Option::is_some).collect();
    ensure!(
        present == [false, false, false, false, true, true],
        "after forgetting alice, keys present: {present:?}"
    );
    ensure!(
        forget(b"alice").await? == 0,
        "forgetting twice deleted keys"
    );
    let fresh = get_or_create(s, &[scope(s, "g", b"alice-1", 0)], "after forgetting").await?;
    ensure!(
        fresh[0].created && fresh[0].key.key_link != l[0],
        "a forgotten scope did not get a new key"
    );
    Ok(())
}

/// Purging deletes exactly the keys expiring before the instant (not at it), and their subject
/// links.
pub async fn purge_deletes_expired(h: &KeyStoreHarness) -> std::result::Result<(), String> {
    let s = h.store.as_ref();
    let mk = |value: &[u8], expires, subject: Option<&[u8]>| {
        let mut r = scope(s, "g", value, 0);
        r.expires_at_ms = expires;
        r.subject = subject.map(|x| s.lookup_key().subject_hash(x));
        r
    };
    let keys = get_or_create(
        s,
        &[
            mk(b"old", 100, Some(b"s")),
            mk(b"edge", 200, None),
            mk(b"new", 300, Some(b"s")),
        ],
        "creating",
    )
    .await?;
    let l = links(&keys);
    let purge = |at| async move {
        s.purge_expired(at)
            .await
            .map_err(|e| format!("purge_expired: {e}"))
    };
    ensure!(
        purge(200).await? == 1,
        "purge(200) did not delete exactly the key expiring at 100"
    );
    let found = s
        .get_by_key_links(&l)
        .await
        .map_err(|e| format!("get_by_key_links: {e}"))?;
    let present: Vec<bool> = found.iter().map(Option::is_some).collect();
    ensure!(
        present == [false, true, true],
        "after purge(200), keys present: {present:?}"
    );
    let links_of_s = s
        .subject_key_links(&s.lookup_key().subject_hash(b"s"))
        .await
        .map_err(|e| format!("subject_key_links: {e}"))?;
    ensure!(links_of_s == [l[2]], "a purged key's subject link survived");
    ensure!(purge(200).await? == 0, "purging twice deleted keys");
    ensure!(
        purge(i64::MAX).await? == 2,
        "purge(MAX) did not delete the other 2 keys"
    );
    Ok(())
}

/// 50 scopes with marked keyField values, subject ids and group: the store's bytes contain none
/// of the markers and no key material, but do contain the key links (the dump is not empty).
pub async fn no_plaintext_in_store_bytes(h: &KeyStoreHarness) -> std::result::Result<(), String> {
    let s = h.store.as_ref();
    let values: Vec<String> = (0..50).map(|i| format!("ZZ-keyvalue-{i:03}-QQ")).collect();
    let subjects: Vec<String> = (0..50).map(|i| format!("ZZ-subject-{i:03}-QQ")).collect();
    let requests: Vec<_> = values
        .iter()
        .zip(&subjects)
        .map(|(v, sub)| with_subject(s, scope(s, "ZZ-group-QQ", v.as_bytes(), 0), sub.as_bytes()))
        .collect();
    let keys = get_or_create(s, &requests, "creating").await?;
    check_dump(h, &keys, "after creating").await?;
    // every lifecycle operation that writes: audit, forget (tombstones), purge
    let audit = AuditEntry {
        at_ms: 1,
        operation: AuditOperation::Exported,
        keys: 50,
        subject: None,
        group: Some("ZZ-group-QQ".into()),
        detail: "to a test".into(),
    };
    s.append_audit(&audit)
        .await
        .map_err(|e| format!("append_audit: {e}"))?;
    s.forget(&s.lookup_key().subject_hash(subjects[0].as_bytes()))
        .await
        .map_err(|e| format!("forget: {e}"))?;
    check_dump(h, &keys[1..], "after forgetting").await?;
    let again = get_or_create(s, &requests[..2], "after forgetting").await?;
    s.purge_expired(0)
        .await
        .map_err(|e| format!("purge_expired: {e}"))?;
    check_dump(h, &again, "after re-creating and purging").await?;
    Ok(())
}

/// The dump holds a key link of `keys` (so it is the store's bytes) and none of the `ZZ-`
/// markers nor their key material.
async fn check_dump(
    h: &KeyStoreHarness,
    keys: &[ResolvedKey],
    stage: &str,
) -> std::result::Result<(), String> {
    let bytes = (h.dump)()
        .await
        .map_err(|e| format!("cannot dump the store: {e}"))?;
    let link = keys[0].key.key_link;
    ensure!(
        contains(&bytes, link.as_bytes())
            || contains(&bytes, link.to_string().as_bytes())
            || contains(&bytes, link.simple().to_string().as_bytes()),
        "{stage}: the dump does not hold a key link: it cannot be the store's bytes"
    );
    // the markers' prefixes, 11 bytes or more: a stored value (or the start of one) is found,
    // and random bytes (ciphertext, hashes) match by chance with odds of 2^-88 per position (a
    // 3-byte "ZZ-" matched one CI run's dump by chance)
    for marker in [&b"ZZ-keyvalue-"[..], b"ZZ-subject-", b"ZZ-group-QQ"] {
        ensure!(
            !contains(&bytes, marker),
            "{stage}: a plaintext keyField value, subject or group is in the store"
        );
    }
    for k in keys {
        let m = k.key.material.expose();
        let hex: String = m[..16].iter().map(|b| format!("{b:02x}")).collect();
        ensure!(
            !contains(&bytes, &m[..16])
                && !contains(&bytes, &m[48..])
                && !contains(&bytes, hex.as_bytes()),
            "{stage}: key material of {} is in the store unencrypted",
            k.key.key_link
        );
    }
    Ok(())
}

/// Listings: a subject's keys with window, group and policy; subjects with key counts; stats per
/// group, window and policy; exports of a group (all, and created since an instant); counting
/// expired keys without deleting them.
pub async fn lifecycle_listings(h: &KeyStoreHarness) -> std::result::Result<(), String> {
    let s = h.store.as_ref();
    let l = s.lookup_key();
    let mut reqs = vec![
        with_subject(s, scope(s, "g1", b"a", 0), b"alice"),
        with_subject(s, scope(s, "g1", b"a", 86_400_000), b"alice"),
        with_subject(s, scope(s, "g2", b"a", 0), b"alice"),
        with_subject(s, scope(s, "g1", b"b", 0), b"bob"),
        scope(s, "g1", b"c", 0),
    ];
    reqs[2].labels = Arc::new(KeyLabels {
        group: "g2".into(),
        policy_id: "q".into(),
    });
    let before = crate::keystore::now_ms();
    let keys = get_or_create(s, &reqs, "creating").await?;
    let k = links(&keys);
    let mut alice = s
        .subject_keys(&l.subject_hash(b"alice"))
        .await
        .map_err(|e| format!("subject_keys: {e}"))?;
    alice.sort_by_key(|i| (i.group.clone(), i.window_start_ms));
    ensure!(alice.len() == 3, "alice has {} keys, not 3", alice.len());
    let got: Vec<_> = alice
        .iter()
        .map(|i| {
            (
                i.key_link,
                i.window_start_ms,
                i.group.as_deref(),
                i.policy_id.as_deref(),
            )
        })
        .collect();
    ensure!(
        got == [
            (k[0], 0, Some("g1"), Some("p")),
            (k[1], 86_400_000, Some("g1"), Some("p")),
            (k[2], 0, Some("g2"), Some("q")),
        ],
        "alice's keys: {got:?}"
    );
    ensure!(
        alice
            .iter()
            .all(|i| i.created_at_ms >= before - 60_000 && i.expires_at_ms > i.window_start_ms),
        "creation times or expiries are wrong"
    );
    let mut subjects = s
        .list_subjects()
        .await
        .map_err(|e| format!("list_subjects: {e}"))?;
    subjects.sort_by_key(|x| std::cmp::Reverse(x.keys));
    ensure!(
        subjects.len() == 2
            && subjects[0].subject == l.subject_hash(b"alice")
            && subjects[0].keys == 3
            && subjects[1].subject == l.subject_hash(b"bob")
            && subjects[1].keys == 1,
        "list_subjects: {} subjects, counts {:?}",
        subjects.len(),
        subjects.iter().map(|x| x.keys).collect::<Vec<_>>()
    );
    let mut stats = s.key_stats().await.map_err(|e| format!("key_stats: {e}"))?;
    stats.sort();
    let got: Vec<_> = stats
        .iter()
        .map(|x| {
            (
                x.group.as_deref(),
                x.window_start_ms,
                x.policy_id.as_deref(),
                x.keys,
            )
        })
        .collect();
    ensure!(
        got == [
            (Some("g1"), 0, Some("p"), 3),
            (Some("g1"), 86_400_000, Some("p"), 1),
            (Some("g2"), 0, Some("q"), 1),
        ],
        "key_stats: {got:?}"
    );
    let export = |group: &'static str, since: Option<i64>| async move {
        s.export_keys(&s.lookup_key().group_hash(group), since)
            .await
            .map_err(|e| format!("export_keys: {e}"))
    };
    let g1 = export("g1", None).await?;
    let mut got: Vec<Uuid> = g1.iter().map(|e| e.key.key_link).collect();
    got.sort();
    ensure!(
        got == sorted(vec![k[0], k[1], k[3], k[4]]),
        "the export of g1 holds other keys"
    );
    for e in &g1 {
        let want = keys
            .iter()
            .find(|r| r.key.key_link == e.key.key_link)
            .ok_or("an exported key was never made")?;
        ensure!(
            e.key.material.expose() == want.key.material.expose()
                && e.key.key_id == want.key.key_id
                && e.key.expires_at_ms == want.key.expires_at_ms
                && e.policy_id == "p",
            "an exported key differs from the key made"
        );
    }
    ensure!(
        export("g2", None).await?.len() == 1 && export("g3", None).await?.is_empty(),
        "exports of other groups are wrong"
    );
    ensure!(
        export("g1", Some(i64::MAX)).await?.is_empty()
            && export("g1", Some(before - 60_000)).await?.len() == 4,
        "exports since an instant are wrong"
    );
    let expired = s
        .count_expired(86_400_000 + 1)
        .await
        .map_err(|e| format!("count_expired: {e}"))?;
    ensure!(expired == 4, "count_expired: {expired}, not 4");
    let still = s
        .get_by_key_links(&k)
        .await
        .map_err(|e| format!("get_by_key_links: {e}"))?;
    ensure!(
        still.iter().all(Option::is_some),
        "counting expired keys deleted some"
    );
    Ok(())
}

/// `forget` returns the destroyed key links, tombstones their scopes and audits the erasure
/// with the subject's hash; a later request of a forgotten scope gets a new key flagged
/// `after_forget` (every time it is asked for), while other scopes are neither changed nor
/// flagged.
pub async fn forget_receipt_and_tombstones(h: &KeyStoreHarness) -> std::result::Result<(), String> {
    let s = h.store.as_ref();
    let hash = s.lookup_key().subject_hash(b"alice");
    let reqs = vec![
        with_subject(s, scope(s, "g", b"a1", 0), b"alice"),
        with_subject(s, scope(s, "g", b"a1", 1), b"alice"),
        with_subject(s, scope(s, "g", b"shared", 0), b"alice"),
        with_subject(s, scope(s, "g", b"shared", 0), b"bob"),
        with_subject(s, scope(s, "g", b"b1", 0), b"bob"),
    ];
    let keys = get_or_create(s, &reqs, "creating").await?;
    ensure!(
        keys.iter().all(|k| !k.after_forget),
        "new scopes are flagged as forgotten"
    );
    let l = links(&keys);
    let receipt = s.forget(&hash).await.map_err(|e| format!("forget: {e}"))?;
    ensure!(receipt.subject == hash, "the receipt names another subject");
    ensure!(
        sorted(receipt.key_links.clone()) == sorted(vec![l[0], l[1], l[2]]),
        "the receipt does not name exactly alice's 3 keys"
    );
    ensure!(
        receipt.at_ms > 0 && receipt.at_ms <= crate::keystore::now_ms() + 60_000,
        "the receipt's time is wrong"
    );
    let again = get_or_create(s, &reqs, "after forgetting").await?;
    for i in [0, 1, 2] {
        ensure!(
            again[i].key.key_link != l[i] && again[i].after_forget,
            "forgotten scope {i} got its old key back, or is not flagged"
        );
    }
    ensure!(
        again[3].key.key_link == again[2].key.key_link && again[3].after_forget,
        "a forgotten scope's second request differs"
    );
    ensure!(
        again[4].key.key_link == l[4] && !again[4].after_forget && !again[4].created,
        "bob's own key changed or is flagged"
    );
    let third = get_or_create(s, &reqs[..1], "asking again").await?;
    ensure!(
        third[0].after_forget
            && !third[0].created
            && third[0].key.key_link == again[0].key.key_link,
        "a re-created scope is not flagged when asked again"
    );
    let second = s.forget(&hash).await.map_err(|e| format!("forget: {e}"))?;
    ensure!(
        second.key_links.len() == 3,
        "forgetting alice again did not destroy her 3 new keys"
    );
    let nobody = s
        .forget(&s.lookup_key().subject_hash(b"nobody"))
        .await
        .map_err(|e| format!("forget: {e}"))?;
    ensure!(
        nobody.key_links.is_empty(),
        "forgetting nobody destroyed keys"
    );
    let log = s.audit_log().await.map_err(|e| format!("audit_log: {e}"))?;
    let forgotten: Vec<&AuditEntry> = log
        .iter()
        .filter(|e| e.operation == AuditOperation::Forgotten)
        .collect();
    ensure!(
        forgotten.len() == 3
            && forgotten[0].subject == Some(hash)
            && forgotten[0].keys == 3
            && forgotten[2].keys == 0,
        "the audit log does not hold the three erasures"
    );
    Ok(())
}

/// Appended entries come back oldest first with every field; `purge_expired` and `forget`
/// append their own entries with their counts.
pub async fn audit_log_kept(h: &KeyStoreHarness) -> std::result::Result<(), String> {
    let s = h.store.as_ref();
    let e1 = AuditEntry {
        at_ms: 1_000,
        operation: AuditOperation::Created,
        keys: 7,
        subject: None,
        group: Some("g".into()),
        detail: "by a test".into(),
    };
    let e2 = AuditEntry {
        at_ms: 2_000,
        operation: AuditOperation::Exported,
        keys: 3,
        subject: Some(s.lookup_key().subject_hash(b"x")),
        group: None,
        detail: String::new(),
    };
    for e in [&e1, &e2] {
        s.append_audit(e)
            .await
            .map_err(|e| format!("append_audit: {e}"))?;
    }
    get_or_create(
        s,
        &[
            scope(s, "g", b"old", -200_000_000),
            scope(s, "g", b"new", 0),
        ],
        "creating",
    )
    .await?;
    let purged = s
        .purge_expired(1)
        .await
        .map_err(|e| format!("purge_expired: {e}"))?;
    ensure!(purged == 1, "purge deleted {purged} keys, not 1");
    let log = s.audit_log().await.map_err(|e| format!("audit_log: {e}"))?;
    ensure!(
        log.len() == 3,
        "the audit log has {} entries, not 3",
        log.len()
    );
    ensure!(
        log[0] == e1 && log[1] == e2,
        "appended entries come back different"
    );
    ensure!(
        log[2].operation == AuditOperation::Purged && log[2].keys == 1 && log[2].subject.is_none(),
        "purging was not audited with its count"
    );
    Ok(())
}

/// After `rotate_master`, every key reads back the same through a handle opened with the new
/// master key; the old master key no longer opens the store; a second call has nothing to do;
/// and the rotation is in the audit log.
pub async fn rotation_rewraps_every_key(h: &KeyStoreHarness) -> std::result::Result<(), String> {
    let (Some(open), Some(old)) = (&h.open_with_master, &h.master) else {
        return Err(
            "the harness gives no way to open the store with another master key \
             (KeyStoreHarness::with_master)"
                .into(),
        );
    };
    let s = h.store.as_ref();
    let vals = values(300);
    let reqs: Vec<_> = vals
        .iter()
        .map(|v| with_subject(s, scope(s, "g", v, 0), b"s"))
        .collect();
    let keys = get_or_create(s, &reqs, "creating").await?;
    let stale = (h.open)()
        .await
        .map_err(|e| format!("cannot open a second handle: {e}"))?;
    let new = MasterKey::generate().map_err(|e| e.to_string())?;
    let report = s
        .rotate_master(&new)
        .await
        .map_err(|e| format!("rotate_master: {e}"))?;
    ensure!(
        report.rewrapped == 300 && !report.resumed && !report.already_done,
        "rotation report: {report:?}"
    );
    let reopened = open(new.clone())
        .await
        .map_err(|e| format!("the new master key does not open the store: {e}"))?;
    let found = reopened
        .get_by_key_links(&links(&keys))
        .await
        .map_err(|e| format!("get_by_key_links after rotation: {e}"))?;
    for (k, f) in keys.iter().zip(&found) {
        let f = f.as_ref().ok_or("a key is missing after rotation")?;
        ensure!(
            f.material.expose() == k.key.material.expose() && f.key_id == k.key.key_id,
            "a key reads back different after rotation"
        );
    }
    let hash = s.lookup_key().scope_hash("g", &vals[0]);
    ensure!(
        reopened.lookup_key().scope_hash("g", &vals[0]) == hash,
        "the lookup secret changed with the rotation"
    );
    ensure!(
        open(old.clone()).await.is_err(),
        "the old master key still opens the store"
    );
    let again = reopened
        .rotate_master(&new)
        .await
        .map_err(|e| format!("rotate_master again: {e}"))?;
    ensure!(
        again.already_done && again.rewrapped == 0,
        "a second rotation to the same key did work: {again:?}"
    );
    ensure!(
        stale
            .get_or_create(&[scope(s, "g", b"made-by-a-stale-handle", 0)])
            .await
            .is_err(),
        "a handle still holding the old master key added a key after the rotation"
    );
    let more = get_or_create(reopened.as_ref(), &reqs[..5], "after rotation").await?;
    ensure!(
        more.iter()
            .zip(&keys)
            .all(|(a, b)| a.key.key_link == b.key.key_link && !a.created),
        "scopes resolve to other keys after rotation"
    );
    let log = reopened
        .audit_log()
        .await
        .map_err(|e| format!("audit_log: {e}"))?;
    ensure!(
        log.iter()
            .any(|e| e.operation == AuditOperation::Rotated && e.keys == 300),
        "the rotation is not in the audit log"
    );
    Ok(())
}
