//! End-to-end: many workers on one job (issue #9, SPEC §10). Four `keylink run --shard I/4`
//! processes at once over one PostgreSQL key store (the real server `cargo xtask test` starts)
//! and a shared key group, on inputs whose sessions cross object boundaries; `keylink finalize`.
//! All data is synthetic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const HEADER: &str = "SessionId,UserId,Email,UserName,Time,Consent,Page\n";
const URL_ENV: &str = "KEYLINK_TEST_POSTGRES_URL";

/// Rows `from..to` of one long synthetic clickstream: seven rows per session, so sessions cross
/// object boundaries, and a session's rows fall on two days (two key windows).
fn rows(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| {
            format!(
                "s{},cust{},mail-{i}@example.com,Person {i},2024-03-0{} 1{}:00:00,{},/p/{i}\n",
                i / 7,
                i % 11,
                1 + (i / 3) % 2,
                i % 10,
                ["1", "2", "\"[1,2]\"", "0"][i % 4],
            )
        })
        .collect()
}

/// A fresh database on the test server; its URL.
fn fresh_database() -> String {
    let admin = std::env::var(URL_ENV).unwrap_or_else(|_| {
        panic!(
            "{URL_ENV} is not set: run the tests with `cargo xtask test`, or start a server with \
             `cargo xtask postgres start` and export what it prints"
        )
    });
    let name = format!(
        "shard_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e}"));
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
    });
    let base = admin.rsplit_once('/').expect("a URL with a database").0;
    format!("{base}/{name}")
}

/// A job directory with `objects` inputs of `per_object` rows, a Postgres key store in a fresh
/// database, and a job with a fixed key group writing under `out`.
fn sharded_dir(objects: usize, per_object: usize) -> JobDir {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write(
        "master.key",
        "bWFzdGVyLWtleS1vZi10aGUtc2hhcmRlZC10ZXN0cyE=\n",
    );
    d.write(
        "keylink.yaml",
        format!(
            "connectors:\n  files: {{ type: local, root: . }}\ncontracts: ./contracts\n\
             key_store: {{ type: postgres, url: \"{}\", master_key_file: ./master.key }}\n",
            fresh_database()
        ),
    );
    for o in 0..objects {
        d.write(
            &format!("data/in-{o:02}.csv"),
            format!("{HEADER}{}", rows(o * per_object, (o + 1) * per_object)),
        );
    }
    d.write(
        "job.json",
        job("*.csv", "csv", r#", "batch_job_group_id": "shared-group""#),
    );
    d
}

fn spawn(cwd: &Path, args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("KEYLINK_MASTER_KEY")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("KEYLINK_SHARDS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the CLI")
}

/// A CSV file's data lines (after the header).
fn body(text: &str) -> Vec<&str> {
    text.lines().skip(1).collect()
}

/// Column `name` of every data row of a CSV text.
fn column(text: &str, name: &str) -> Vec<String> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let i = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name}"));
    r.records().map(|rec| rec.unwrap()[i].to_string()).collect()
}

#[test]
fn four_shards_at_once_equal_one_unsharded_run() {
    let d = sharded_dir(10, 700);
    let children: Vec<Child> = (0..4)
        .map(|i| spawn(d.path(), &["run", "job.json", "--shard", &format!("{i}/4")]))
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "shard {i}/4:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // before finalize there is no manifest; finalize writes one naming every part
    assert!(!d.exists("out/_SUCCESS"));
    let r = d.run(&["finalize", "job.json", "--shards", "4", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let manifest: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        manifest,
        serde_json::from_str::<serde_json::Value>(&d.read("out/_SUCCESS")).unwrap()
    );
    assert_eq!(manifest["rows_accepted"], 7000);
    assert_eq!(manifest["rows_by_output"]["encrypted"], 7000);
    let parts = manifest["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 4);
    for (i, p) in parts.iter().enumerate() {
        // 10 objects in 4 slices: 2, 3, 2, 3
        assert_eq!(p["inputs"].as_array().unwrap().len(), [2, 3, 2, 3][i]);
        let enc = &p["outputs"][0];
        assert_eq!(enc["path"], format!("out/encrypted.part-{i}-of-4.csv"));
        let bytes =
            std::fs::read(d.path().join(format!("out/encrypted.part-{i}-of-4.csv"))).unwrap();
        assert_eq!(enc["bytes"], bytes.len() as u64);
        assert_eq!(enc["sha256"].as_str().unwrap().len(), 64);
    }

    // the parts in shard order, headers dropped, are the encrypted rows of all inputs in order
    let header = d
        .read("out/encrypted.part-0-of-4.csv")
        .lines()
        .next()
        .unwrap()
        .to_string();
    let part_texts: Vec<String> = (0..4)
        .map(|i| d.read(&format!("out/encrypted.part-{i}-of-4.csv")))
        .collect();
    let sharded: Vec<&str> = part_texts.iter().flat_map(|t| body(t)).collect();
    assert_eq!(sharded.len(), 7000);
    let originals = rows(0, 7000);

    // exactly one keyLink per (session, day) across all parts, though sessions cross objects
    // and so shards
    let mut links: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let enc_links = column(
        &format!("{header}\n{}\n", sharded.join("\n")),
        "strmMeta.keyLink",
    );
    let all_originals = format!("{HEADER}{originals}");
    let sessions = column(&all_originals, "SessionId");
    let times = column(&all_originals, "Time");
    assert_eq!(enc_links.len(), sessions.len());
    for ((link, session), time) in enc_links.iter().zip(sessions).zip(times) {
        links
            .entry((session, time[..10].to_string()))
            .or_default()
            .insert(link.clone());
    }
    assert!(links.len() > 1000, "{} windows", links.len());
    for (window, l) in &links {
        assert_eq!(l.len(), 1, "window {window:?} has {} keyLinks", l.len());
    }
    // the keys exports together hold every key once
    let mut key_rows = BTreeSet::new();
    let mut keys_union = String::from("keyLink,encryptionKey,policyId,expiresAt\n");
    for i in 0..4 {
        for row in body(&d.read(&format!("out/keys.part-{i}-of-4.csv"))) {
            if key_rows.insert(row.to_string()) {
                keys_union.push_str(row);
                keys_union.push('\n');
            }
        }
    }
    assert_eq!(key_rows.len(), links.len());

    // stock Tink decrypts every part with the union of the keys exports
    d.write("check/keys.csv", &keys_union);
    d.write(
        "check/encrypted.csv",
        format!("{header}\n{}\n", sharded.join("\n")),
    );
    d.write("check/original.csv", format!("{HEADER}{originals}"));
    tink_check(
        &d.path().join("check/keys.csv"),
        &d.path().join("check/encrypted.csv"),
        &d.path().join("check/original.csv"),
        "Email,UserName",
        "csv",
    );

    // one unsharded run with the same group against the same store writes the same rows, byte
    // for byte, and the same keys
    let whole = d.read("job.json").replace("\"out\"", "\"whole\"");
    d.write("whole.json", whole);
    let r = d.run(&["run", "whole.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let unsharded = d.read("whole/encrypted.csv");
    assert_eq!(unsharded.lines().next().unwrap(), header);
    assert!(
        body(&unsharded) == sharded,
        "the unsharded run differs from the union of the parts"
    );
    let whole_keys: BTreeSet<String> = body(&d.read("whole/keys.csv"))
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(whole_keys, key_rows);
    assert!(
        r.stdout.contains("0 created"),
        "the unsharded run made new keys: {}",
        r.stdout
    );

    // no plaintext PII in the parts, keys, markers or manifest (the inputs and our own check
    // files aside); the key store's bytes are checked by the conformance suite
    assert_no_plaintext(
        &d,
        &["mail-1@example.com", "Person 1,"],
        &["check/original.csv"],
    );
}

#[test]
fn a_killed_shard_blocks_finalize_until_it_is_rerun() {
    // big enough objects that a debug build takes a while on one
    let d = sharded_dir(4, 40_000);
    let mut others: Vec<Child> = [0, 1, 2]
        .iter()
        .map(|i| spawn(d.path(), &["run", "job.json", "--shard", &format!("{i}/4")]))
        .collect();
    let mut victim = spawn(d.path(), &["run", "job.json", "--shard", "3/4"]);
    // kill -9 once it is writing its encrypted part (a temp file next to it)
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let writing = files_under(&d.path().join("out"))
            .iter()
            .any(|f| f.contains("encrypted.part-3-of-4") && f.contains("keylink-"));
        if writing {
            break;
        }
        assert!(
            victim.try_wait().unwrap().is_none(),
            "shard 3 ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "shard 3 never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    victim.kill().unwrap();
    victim.wait().unwrap();
    for (i, c) in others.drain(..).enumerate() {
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "shard {i}/4: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // its parts are absent, the others' committed
    for name in ["encrypted", "keys"] {
        assert!(!d.exists(&format!("out/{name}.part-3-of-4.csv")));
        for i in 0..3 {
            assert!(d.exists(&format!("out/{name}.part-{i}-of-4.csv")));
        }
    }
    let r = d.run(&["finalize", "job.json", "--shards", "4"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(
        r.stderr.contains("shard 3 of 4 has not committed"),
        "{}",
        r.stderr
    );
    assert!(!d.exists("out/_SUCCESS"));

    // a rerun of that shard completes the job
    let r = d.run(&["run", "job.json", "--shard", "3/4"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let r = d.run(&["finalize", "job.json", "--shards", "4"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(d.exists("out/_SUCCESS"));
    // the killed run left nothing behind that the next create did not sweep
    assert!(
        !files_under(&d.path().join("out"))
            .iter()
            .any(|f| f.contains("keylink-")),
        "{:?}",
        files_under(&d.path().join("out"))
    );

    // a later run of any shard withdraws _SUCCESS until finalize runs again, and finalize
    // refuses a shard whose inputs changed since it ran
    let r = d.run(&["run", "job.json", "--shard", "0/4"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(!d.exists("out/_SUCCESS"));
    d.write("data/in-00.csv", format!("{HEADER}{}", rows(0, 10)));
    let r = d.run(&["finalize", "job.json", "--shards", "4"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("rerun shard 0"), "{}", r.stderr);
}

#[test]
fn sharding_is_refused_where_it_would_split_keys_or_names() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write("data/in.csv", format!("{HEADER}{}", rows(0, 10)));
    // no key group: every shard would make its own keys
    d.write("job.json", job("*.csv", "csv", ""));
    let r = d.run(&["run", "job.json", "--shard", "0/2"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("batch_job_group_id"), "{}", r.stderr);
    assert!(!d.exists("out"));
    // a bad --shard, and half a Kubernetes environment
    d.write(
        "job.json",
        job("*.csv", "csv", r#", "batch_job_group_id": "g""#),
    );
    for bad in ["2/2", "1", "a/b"] {
        let r = d.run(&["run", "job.json", "--shard", bad]);
        assert_eq!(r.code, 2, "{bad}: {}", r.all_output());
        assert!(r.stderr.contains("shard"), "{}", r.stderr);
    }
    let out = Command::new(bin())
        .args(["run", "job.json"])
        .current_dir(d.path())
        .env("JOB_COMPLETION_INDEX", "1")
        .env_remove("KEYLINK_SHARDS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEYLINK_SHARDS"));
    assert!(!d.exists("out"));
    // the environment alone shards the run
    let out = Command::new(bin())
        .args(["run", "job.json"])
        .current_dir(d.path())
        .env("JOB_COMPLETION_INDEX", "1")
        .env("KEYLINK_SHARDS", "2")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.exists("out/encrypted.part-1-of-2.csv"));
    assert!(d.exists("out/_encrypted.part-1-of-2.json"));
    // one input, two shards: shard 0 has nothing to read and still commits (empty) parts
    let r = d.run(&["run", "job.json", "--shard", "0/2"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let r = d.run(&["finalize", "job.json", "--shards", "2"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    // finalize with another shard count finds no such parts
    let r = d.run(&["finalize", "job.json", "--shards", "3"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    // a watcher is not sharded
    let r = d.run(&["run", "job.json", "--watch", "--shard", "0/2"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
}
