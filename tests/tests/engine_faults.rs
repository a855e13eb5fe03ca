//! The engine on an in-memory store with injected faults (issue #8): commits, aborts, rollbacks,
//! order and counts, without a file system or an emulator between the engine and the test. All
//! data is synthetic.

use std::path::Path;
use std::sync::Arc;

use keylink as _; // links the csv format's registration
use keylink_core::engine::{self, Mode, RunOptions};
use keylink_core::job::{BatchJob, Config};
use keylink_core::summary::JobSummary;
use keylink_core::testkit::memory::MemoryStore;

const HEADER: &str = "SessionId,Email,Time,Consent\n";

/// `n` rows, every 1000th with a bad timestamp; the session id is the row number, so output
/// order can be checked.
fn rows(n: usize) -> String {
    let mut s = String::from(HEADER);
    for i in 0..n {
        let time = if i % 1000 == 999 {
            "not a time".to_string()
        } else {
            format!("2024-03-0{} 10:00:00", 1 + i % 3)
        };
        s.push_str(&format!("row{i:06},m{i}@example.com,{time},1\n"));
    }
    s
}

const CONTRACT: &str = r#"{ "ref": { "handle": "t", "name": "c", "version": "1" },
  "keyField": "SessionId", "piiFields": { "Email": 1 } }"#;

fn job(encrypted: &str, keys: &str, derived: &str) -> String {
    format!(
        r#"{{
  "source_data": {{ "data_connector_ref": {{ "name": "mem" }}, "path_prefix": "data",
                   "file_name": "*.csv", "data_type": {{ "csv": {{}} }} }},
  "consent": {{ "default_consent_levels": [0], "consent_level_extractor": {{ "field": "Consent" }} }},
  "encryption": {{ "timestamp_config": {{ "field": "Time", "format": "yyyy-MM-dd HH:mm:ss" }},
                  "batch_job_group_id": "g" }},
  "event_contract_ref": {{ "handle": "t", "name": "c", "version": "1" }},
  "encrypted_data": {{ "target": {{ "data_connector_ref": {{ "name": "mem" }}, "path_prefix": "out", "file_name": "{encrypted}" }} }},
  "derived_data": [ {{ "target": {{ "data_connector_ref": {{ "name": "mem" }}, "path_prefix": "out", "file_name": "{derived}" }}, "consent_levels": [1] }} ],
  "encryption_keys_data": {{ "target": {{ "data_connector_ref": {{ "name": "mem" }}, "path_prefix": "out", "file_name": "{keys}" }} }}
}}"#
    )
}

/// A job directory for `store`: config, contract, job. Returns the job file.
fn setup(dir: &Path, store: &str, job_json: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("contracts")).unwrap();
    std::fs::write(dir.join("contracts/c.json"), CONTRACT).unwrap();
    std::fs::write(
        dir.join("keylink.yaml"),
        format!(
            "connectors:\n  mem: {{ type: memory, store: {store} }}\ncontracts: ./contracts\n\
             key_store: {{ type: embedded, path: ./keys.db }}\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("job.json"), job_json).unwrap();
    dir.join("job.json")
}

async fn run(dir: &Path, parallelism: usize) -> keylink_core::Result<JobSummary> {
    run_with(
        dir,
        RunOptions {
            parallelism,
            ..RunOptions::default()
        },
    )
    .await
}

async fn run_with(dir: &Path, opts: RunOptions) -> keylink_core::Result<JobSummary> {
    let job_file = dir.join("job.json");
    let config = Config::from_file(&dir.join("keylink.yaml"))?;
    let job = BatchJob::from_file(&job_file)?;
    let prepared = engine::prepare(&job, &job_file, &config, None, Mode::Run).await?;
    prepared.run(opts).await
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn store(name: &str) -> (tempfile::TempDir, Arc<MemoryStore>) {
    let dir = tempfile::tempdir().unwrap();
    let s = MemoryStore::register(&format!("{name}-{}", std::process::id()));
    (dir, s)
}

#[test]
fn outputs_commit_in_input_order_and_every_record_is_counted() {
    let (dir, s) = store("order");
    let name = s.name().to_string();
    setup(dir.path(), &name, &job("enc.csv", "keys.csv", "d.csv"));
    s.put("data/a.csv", rows(30_000)); // several batches, processed 4 at a time
    let summary = rt().block_on(run(dir.path(), 4)).unwrap();
    assert_eq!(summary.rows_read, 30_000);
    assert_eq!(summary.rows_rejected, 30);
    assert_eq!(
        summary.rows_accepted + summary.rows_rejected,
        summary.rows_read
    );
    assert_eq!(
        s.paths("out/"),
        ["out/d.csv", "out/enc.csv", "out/keys.csv"]
    );
    assert_eq!(s.open_writers(), 0);
    let enc = s.objects()["out/enc.csv"].clone();
    let ids: Vec<&str> = std::str::from_utf8(&enc)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "output order is not input order");
    assert_eq!(ids.len(), 29_970);
    // the keys export holds every key the output uses
    let keys = String::from_utf8(s.objects()["out/keys.csv"].to_vec()).unwrap();
    assert_eq!(keys.lines().count() as u64, 1 + summary.keys_created);
}

#[test]
fn a_failed_write_aborts_every_output() {
    let (dir, s) = store("write");
    let name = s.name().to_string();
    setup(dir.path(), &name, &job("enc.csv", "keys.csv", "d.csv"));
    s.put("data/a.csv", rows(20_000));
    s.fail_nth_write(5);
    let e = rt().block_on(run(dir.path(), 2)).unwrap_err();
    assert!(e.to_string().contains("injected failure of write 5"), "{e}");
    assert!(e.to_string().contains("data/a.csv"), "{e}");
    assert!(s.paths("out/").is_empty(), "{:?}", s.paths("out/"));
    assert_eq!(s.open_writers(), 0, "writers left open");
}

#[test]
fn a_failed_commit_removes_the_outputs_committed_before_it() {
    let (dir, s) = store("commit");
    let name = s.name().to_string();
    setup(dir.path(), &name, &job("enc.csv", "keys.csv", "d.csv"));
    s.put("data/a.csv", rows(2_000));
    s.fail_commit("keys");
    let e = rt().block_on(run(dir.path(), 2)).unwrap_err();
    assert!(e.to_string().contains("committing"), "{e}");
    assert_eq!(
        s.commits(),
        ["out/enc.csv"],
        "the encrypted output commits first"
    );
    assert!(
        s.paths("out/").is_empty(),
        "not rolled back: {:?}",
        s.paths("out/")
    );
    assert_eq!(s.open_writers(), 0);
}

#[test]
fn a_failed_read_fails_the_job_naming_the_object() {
    let (dir, s) = store("read");
    let name = s.name().to_string();
    setup(dir.path(), &name, &job("enc.csv", "keys.csv", "d.csv"));
    s.put("data/a.csv", rows(5_000));
    s.put("data/b.csv", rows(5_000));
    s.fail_read("b.csv");
    s.fail_abort(); // a failing abort must not hide the cause
    let e = rt().block_on(run(dir.path(), 2)).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("injected read failure") && m.contains("data/b.csv"),
        "{m}"
    );
    assert!(s.paths("out/").is_empty());
    assert_eq!(s.open_writers(), 0);
}

#[test]
fn per_input_outputs_commit_together_or_not_at_all() {
    let (dir, s) = store("units");
    let name = s.name().to_string();
    setup(
        dir.path(),
        &name,
        &job("{input}-enc.csv", "{input}-keys.csv", "{input}-d.csv"),
    );
    s.put("data/a.csv", rows(3_000));
    s.put("data/b.csv", rows(3_000));
    let summary = rt().block_on(run(dir.path(), 2)).unwrap();
    assert_eq!(summary.inputs.len(), 2);
    assert_eq!(s.paths("out/").len(), 6);
    // the same objects again, b unreadable: a's outputs are not replaced either
    let before = s.objects();
    s.put("data/a.csv", rows(3_100));
    s.fail_read("b.csv");
    assert!(rt().block_on(run(dir.path(), 2)).is_err());
    for (p, v) in before.iter().filter(|(p, _)| p.starts_with("out/")) {
        assert_eq!(&s.objects()[p], v, "{p} changed although the job failed");
    }
    assert_eq!(s.open_writers(), 0);
}

/// The key store settles while the outputs make their final flushes: when the job returns, a
/// copy of the embedded store's file alone holds every key the job made, though the store is
/// still open (a test handle keeps it, so SQLite's own checkpoint at close has not run).
#[test]
fn the_key_store_settles_beside_the_outputs_final_flushes() {
    let (dir, s) = store("settle");
    let name = s.name().to_string();
    let job_file = setup(dir.path(), &name, &job("enc.csv", "keys.csv", "d.csv"));
    s.put("data/a.csv", rows(5_000));
    rt().block_on(async {
        let config = Config::from_file(&dir.path().join("keylink.yaml")).unwrap();
        let job = BatchJob::from_file(&job_file).unwrap();
        let prepared = engine::prepare(&job, &job_file, &config, None, Mode::Run)
            .await
            .unwrap();
        let open = prepared.key_store().clone();
        let summary = prepared.run(RunOptions::default()).await.unwrap();
        assert!(summary.keys_created > 0);
        // the database file and the master key, without the WAL
        let copy = dir.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        for f in ["keylink.yaml", "keys.db", "keys.db.master-key"] {
            std::fs::copy(dir.path().join(f), copy.join(f)).unwrap();
        }
        let config = Config::from_file(&copy.join("keylink.yaml")).unwrap();
        let ctx = keylink_core::connector::BuildContext {
            base_dir: copy.clone(),
        };
        let copied = config.key_store.unwrap().build(&ctx).await.unwrap();
        let keys: u64 = copied
            .key_stats()
            .await
            .unwrap()
            .iter()
            .map(|k| k.keys)
            .sum();
        assert_eq!(
            keys, summary.keys_created,
            "the key store's file alone does not hold the job's keys"
        );
        drop(open);
    });
}

/// The key links in a CSV output: its fields that are hyphenated UUIDs.
fn key_links(csv: &[u8]) -> Vec<String> {
    std::str::from_utf8(csv)
        .unwrap()
        .lines()
        .skip(1)
        .flat_map(|l| l.split(','))
        .filter(|f| f.len() == 36 && f.matches('-').count() == 4)
        .map(str::to_string)
        .collect()
}

/// Checks that keys export `keys` holds every key encrypted output `enc` uses, each once;
/// returns how many.
fn exports_each_key_once(s: &MemoryStore, enc: &str, keys: &str) -> usize {
    let objects = s.objects();
    let used: std::collections::BTreeSet<String> = key_links(&objects[enc]).into_iter().collect();
    let exported = key_links(&objects[keys]);
    let distinct: std::collections::BTreeSet<String> = exported.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        exported.len(),
        "{keys}: a key exported twice"
    );
    assert!(
        used == distinct,
        "{keys} misses {} of the keys {enc} uses and has {} it does not",
        used.difference(&distinct).count(),
        distinct.difference(&used).count()
    );
    used.len()
}

/// Every key an encrypted output uses is in its keys export, once, also when the key-group is
/// made up for the run (no `batch_job_group_id`): with outputs per input, the units share that
/// group, so the second unit uses keys the first created, and must export them too; in one unit
/// with a one-key cache, keys leave the cache and come back from the store.
#[test]
fn every_key_an_output_uses_is_exported_once() {
    let (dir, s) = store("exported");
    let name = s.name().to_string();
    // an empty group is no group: the run makes one up
    let fresh_group = |j: String| {
        j.replace(
            r#""batch_job_group_id": "g""#,
            r#""batch_job_group_id": """#,
        )
    };
    let per_input = fresh_group(job("{input}-enc.csv", "{input}-keys.csv", "{input}-d.csv"));
    assert!(per_input.contains(r#""batch_job_group_id": """#));
    setup(dir.path(), &name, &per_input);
    // the same sessions (and days) in both objects
    s.put("data/a.csv", rows(500));
    s.put("data/b.csv", rows(500));
    let summary = rt().block_on(run(dir.path(), 2)).unwrap();
    assert_eq!(
        exports_each_key_once(&s, "out/a-enc.csv", "out/a-keys.csv"),
        500
    );
    assert_eq!(
        exports_each_key_once(&s, "out/b-enc.csv", "out/b-keys.csv"),
        500
    );
    assert_eq!(summary.keys_created, 500, "b reused a's keys");

    // one unit, a fresh group, a cache of one key and sessions that come back
    let (dir, s) = store("exported-one");
    let name = s.name().to_string();
    setup(
        dir.path(),
        &name,
        &fresh_group(job("enc.csv", "keys.csv", "d.csv")),
    );
    let mut data = rows(400);
    data.push_str(&rows(400)[HEADER.len()..]);
    s.put("data/a.csv", data);
    let summary = rt()
        .block_on(run_with(
            dir.path(),
            RunOptions {
                key_cache: 1,
                ..RunOptions::default()
            },
        ))
        .unwrap();
    let used = exports_each_key_once(&s, "out/enc.csv", "out/keys.csv");
    assert_eq!(summary.keys_created, used as u64);
    assert_eq!(summary.keys_reused, 0);
}
