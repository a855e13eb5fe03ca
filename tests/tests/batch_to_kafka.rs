//! Batch jobs writing Kafka topics in transactions (issue #14, SPEC §11 "batch input → stream
//! output"). All data is synthetic.
//!
//! Two kinds of tests:
//!
//! - `memory_*` and `refused_*`: the engine on the in-memory store and the in-memory bus of the
//!   testkit, with fault injection. These are the strict abort checks: the memory bus shows a
//!   transaction's messages only after its commit, so "nothing visible after a failed job" is
//!   checked exactly, and a failed transaction commit is injected to see the committed objects
//!   removed.
//! - `kafka_*`: the CLI against the tansu broker `cargo xtask test` starts
//!   (KEYLINK_TEST_KAFKA=host:port; they fail loudly without it), read back with plain
//!   `read_committed` rdkafka consumers. SERVICES.md says an aborted transaction's records were
//!   never visible on tansu even to `read_uncommitted` consumers, which would make a real-broker
//!   abort check weaker than on Apache Kafka; measured here (tansu 0.6, 2026-11-29) it is worse:
//!   after `abort_transaction` succeeds, tansu delivers the aborted records to `read_committed`
//!   consumers too. So the real-broker abort test is `#[ignore]`d with that reason (run it with
//!   `--ignored` against Apache Kafka), and the strict abort checks are the memory-bus ones.
//!   What tansu does show correctly, and is checked on it: records of an open transaction are
//!   invisible until the commit (the connector's conformance suite), and a committed job's
//!   topics hold exactly its rows.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::{broker, rt, unique};
use common::*;
use keylink as _; // links the formats' and connectors' registrations
use keylink_core::engine::{self, Mode, RunOptions};
use keylink_core::job::{BatchJob, Config};
use keylink_core::summary::JobSummary;
use keylink_core::testkit::memory::MemoryStore;
use keylink_core::testkit::stream::MemoryBus;

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// Row `i` as a JSON Lines record: unique RowId, sessions of 4 rows, consent `[1,2]` or `[0]`.
/// `bad`: an Email the contract's validation rejects.
fn record(i: usize, bad: bool) -> String {
    let email = if bad {
        format!("not-an-address-{i}")
    } else {
        format!("person{i}@example.com")
    };
    format!(
        r#"{{"RowId":"r{i:05}","SessionId":"s{}","UserId":"c{}","Email":"{email}","UserName":"Person {i}","Page":"/p/{}","Time":"2024-05-0{} 1{}:00:00","Consent":"{}"}}"#,
        i / 4,
        i % 7,
        i % 11,
        1 + i % 3,
        i % 10,
        if i.is_multiple_of(3) { "[0]" } else { "[1,2]" }
    )
}

/// `n` records (every 100th bad when `with_bad`), as the input file and as the lines it has.
fn records(n: usize, with_bad: bool) -> (String, Vec<(String, bool)>) {
    let lines: Vec<(String, bool)> = (0..n)
        .map(|i| {
            let bad = with_bad && i % 100 == 50;
            (record(i, bad), bad)
        })
        .collect();
    let mut text = String::new();
    for (l, _) in &lines {
        text.push_str(l);
        text.push('\n');
    }
    (text, lines)
}

fn row_id(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).expect("a JSON object per message");
    v["RowId"].as_str().expect("RowId").to_string()
}

fn key_link(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).expect("a JSON object per message");
    v["strmMeta"]["keyLink"]
        .as_str()
        .expect("strmMeta.keyLink")
        .to_string()
}

/// A target on `connector`: a topic, or an object under `out/`.
fn topic(connector: &str, topic: &str) -> String {
    format!(r#"{{ "data_connector_ref": {{ "name": "{connector}" }}, "topic": "{topic}" }}"#)
}

fn object(connector: &str, file: &str) -> String {
    format!(
        r#"{{ "data_connector_ref": {{ "name": "{connector}" }}, "path_prefix": "out", "file_name": "{file}" }}"#
    )
}

/// A job reading `data/*.jsonl` from `source` with the given targets (JSON snippets; `None`
/// leaves the output out). Derived: consent `[1]`, UserId masked.
fn job(
    source: &str,
    encrypted: Option<&str>,
    keys: Option<&str>,
    rejected: Option<&str>,
    derived: &[&str],
) -> String {
    let derived: Vec<String> = derived
        .iter()
        .map(|t| {
            format!(
                r#"{{ "target": {t}, "consent_levels": [1],
                     "masked_fields": {{ "hash_type": "HMAC_SHA256", "seed": "topic-seed",
                       "field_patterns": {{ "test/clicks/1.0.0": {{ "field_patterns": ["UserId"] }} }} }} }}"#
            )
        })
        .collect();
    let opt = |name: &str, t: Option<&str>| {
        t.map(|t| format!(r#""{name}": {{ "target": {t} }},"#))
            .unwrap_or_default()
    };
    format!(
        r#"{{
  "source_data": {{ "data_connector_ref": {{ "name": "{source}" }}, "path_prefix": "data",
                   "file_name": "*.jsonl", "data_type": {{ "jsonl": {{}} }} }},
  "consent": {{ "default_consent_levels": [0], "consent_level_extractor": {{ "field": "Consent" }} }},
  "encryption": {{ "timestamp_config": {{ "field": "Time", "format": "yyyy-MM-dd HH:mm:ss",
                                         "default_time_zone": {{ "id": "Europe/Amsterdam" }} }},
                  "batch_job_group_id": "topics" }},
  "event_contract_ref": {{ "handle": "test", "name": "clicks", "version": "1.0.0" }},
  {}{}{}
  "derived_data": [ {} ]
}}"#,
        opt("encrypted_data", encrypted),
        opt("encryption_keys_data", keys),
        opt("rejected_data", rejected),
        derived.join(",\n")
    )
}

// ---------------------------------------------------------------------------------------------
// The engine on the in-memory store and bus
// ---------------------------------------------------------------------------------------------

struct Mem {
    dir: tempfile::TempDir,
    store: Arc<MemoryStore>,
    bus: Arc<MemoryBus>,
}

fn mem(name: &str) -> Mem {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::register(&format!("{name}-{}", std::process::id()));
    let bus = MemoryBus::register(&format!("{name}-bus-{}", std::process::id()));
    std::fs::create_dir_all(dir.path().join("contracts")).unwrap();
    std::fs::write(dir.path().join("contracts/c.json"), contract("")).unwrap();
    std::fs::write(
        dir.path().join("keylink.yaml"),
        format!(
            "connectors:\n  mem: {{ type: memory, store: {} }}\n  mem2: {{ type: memory, store: {} }}\n  \
             bus: {{ type: memory_bus, bus: {} }}\n  bus2: {{ type: memory_bus, bus: {} }}\n\
             contracts: ./contracts\nkey_store: {{ type: embedded, path: ./keys.db }}\n",
            store.name(),
            store.name(),
            format_args!("{name}-bus-{}", std::process::id()),
            format_args!("{name}-bus-{}", std::process::id()),
        ),
    )
    .unwrap();
    Mem { dir, store, bus }
}

async fn prepare(
    dir: &Path,
    job_json: &str,
    mode: Mode,
) -> keylink_core::Result<engine::PreparedJob> {
    let job_file = dir.join("job.json");
    std::fs::write(&job_file, job_json).unwrap();
    let config = Config::from_file(&dir.join("keylink.yaml"))?;
    let job = BatchJob::from_file(&job_file)?;
    engine::prepare(&job, &job_file, &config, None, mode).await
}

/// What `keylink validate` does: checks only.
async fn check(dir: &Path, job_json: &str) -> keylink_core::Result<engine::CheckedJob> {
    let job_file = dir.join("job.json");
    std::fs::write(&job_file, job_json).unwrap();
    let config = Config::from_file(&dir.join("keylink.yaml"))?;
    let job = BatchJob::from_file(&job_file)?;
    engine::check(&job, &job_file, &config, None, Mode::Run).await
}

fn run_mem(dir: &Path, job_json: &str) -> keylink_core::Result<JobSummary> {
    rt().block_on(async {
        prepare(dir, job_json, Mode::Run)
            .await?
            .run(RunOptions {
                parallelism: 3,
                ..RunOptions::default()
            })
            .await
    })
}

fn topic_job() -> String {
    job(
        "mem",
        Some(&topic("bus", "enc")),
        Some(&object("mem", "keys.csv")),
        Some(&topic("bus", "rej")),
        &[&topic("bus", "der"), &object("mem", "der.jsonl")],
    )
}

#[test]
fn memory_topic_outputs_commit_with_the_job() {
    let m = mem("ok");
    let (text, lines) = records(20_000, true); // several batches
    m.store.put("data/a.jsonl", text);
    let s = run_mem(m.dir.path(), &topic_job()).unwrap();
    let good: Vec<&String> = lines.iter().filter(|(_, b)| !b).map(|(l, _)| l).collect();
    let bad: Vec<&String> = lines.iter().filter(|(_, b)| *b).map(|(l, _)| l).collect();
    let enc = m.bus.messages("enc");
    assert_eq!(enc.len(), good.len());
    // in input order (one partition), one message per accepted record, keyed by its keyLink
    let ids: Vec<String> = enc
        .iter()
        .map(|m| row_id(std::str::from_utf8(&m.payload).unwrap()))
        .collect();
    let expected: Vec<String> = good.iter().map(|l| row_id(l)).collect();
    assert_eq!(ids, expected);
    for msg in &enc {
        let p = std::str::from_utf8(&msg.payload).unwrap();
        assert_eq!(msg.key.as_deref(), Some(key_link(p).as_bytes()));
        assert!(
            !p.contains("@example.com"),
            "plaintext Email in an encrypted message"
        );
        assert!(!p.ends_with('\n'));
    }
    // the derived topic is, message for message, the same job's derived file
    let der: Vec<String> = m
        .bus
        .messages("der")
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    let file = m.store.objects()["out/der.jsonl"].clone();
    let file_lines: Vec<String> = std::str::from_utf8(&file)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert!(!der.is_empty());
    assert_eq!(der, file_lines);
    // rejected: the raw records, no key
    let rej = m.bus.messages("rej");
    assert_eq!(rej.len(), bad.len());
    for (msg, line) in rej.iter().zip(&bad) {
        assert_eq!(msg.key, None);
        assert_eq!(&msg.payload[..], line.as_bytes());
    }
    assert_eq!(
        m.bus.transactions(),
        (1, 0),
        "one transaction for all topics"
    );
    let names: Vec<(&str, &str)> = s
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), o.object.as_str()))
        .collect();
    assert!(
        names.iter().any(|(n, o)| *n == "encrypted"
            && o.starts_with("memory_bus://")
            && o.ends_with("/enc")),
        "{names:?}"
    );
    // topic outputs commit last
    let last_object = s
        .outputs
        .iter()
        .rposition(|o| !o.object.starts_with("memory_bus://"));
    let first_topic = s
        .outputs
        .iter()
        .position(|o| o.object.starts_with("memory_bus://"));
    assert!(last_object < first_topic, "{names:?}");
    assert_eq!(m.store.paths("out/"), ["out/der.jsonl", "out/keys.csv"]);
}

/// keys.csv comes before the topic outputs in the job's order, der.jsonl (derived[1]) after
/// them: either failing must leave no message (topic outputs commit after every object).
#[test]
fn memory_a_failed_object_commit_shows_no_message() {
    for failing in ["keys.csv", "der.jsonl"] {
        let m = mem(&format!("objfail-{}", &failing[..3]));
        m.store.put("data/a.jsonl", records(3_000, true).0);
        m.store.fail_commit(failing);
        let e = run_mem(m.dir.path(), &topic_job()).unwrap_err();
        assert!(e.to_string().contains(failing), "{e}");
        for t in ["enc", "der", "rej"] {
            assert!(
                m.bus.messages(t).is_empty(),
                "{t} has messages of a job whose {failing} failed"
            );
        }
        assert_eq!(
            m.bus.transactions(),
            (0, 1),
            "the transaction was not aborted"
        );
        assert!(
            m.bus.sends() > 0,
            "nothing was sent before the failure: the test proves nothing"
        );
        assert!(
            m.store.paths("out/").is_empty(),
            "{:?}",
            m.store.paths("out/")
        );
        assert_eq!(m.store.open_writers(), 0);
    }
}

#[test]
fn memory_a_failed_transaction_commit_removes_the_committed_objects() {
    let m = mem("txfail");
    m.store.put("data/a.jsonl", records(3_000, false).0);
    m.bus.fail_transaction_commits(true);
    let e = run_mem(m.dir.path(), &topic_job()).unwrap_err();
    assert!(
        e.to_string()
            .contains("injected transaction commit failure"),
        "{e}"
    );
    assert!(m.bus.messages("enc").is_empty());
    // keys.csv and der.jsonl were committed before the transaction, then deleted
    assert!(m.store.commits().iter().any(|c| c.contains("keys.csv")));
    assert!(
        m.store.paths("out/").is_empty(),
        "{:?}",
        m.store.paths("out/")
    );
}

#[test]
fn memory_a_failed_input_aborts_the_transaction() {
    let m = mem("readfail");
    m.store.put("data/a.jsonl", records(3_000, false).0);
    m.store.put("data/b.jsonl", records(3_000, false).0);
    m.store.fail_read("b.jsonl");
    assert!(run_mem(m.dir.path(), &topic_job()).is_err());
    assert!(
        m.bus.sends() > 0,
        "a.jsonl was not sent before b failed: the test proves nothing"
    );
    for t in ["enc", "der", "rej"] {
        assert!(
            m.bus.messages(t).is_empty(),
            "{t} has messages of a failed job"
        );
    }
    assert_eq!(m.bus.transactions(), (0, 1));
    assert!(m.store.paths("out/").is_empty());
}

/// Every refusal of a topic target: before any data is read, in validate mode too, naming the
/// setting.
#[test]
fn refused_topic_settings() {
    let m = mem("refused");
    m.store.put("data/a.jsonl", records(10, false).0);
    m.store.put(
        "data/a.csv",
        "RowId,SessionId,UserId,Email,UserName,Page,Time,Consent\n\
         r1,s1,c1,a@example.com,A,/p,2024-05-01 10:00:00,[0]\n",
    );
    let keys = object("mem", "keys.csv");
    let cases: Vec<(String, &str)> = vec![
        // a topic on a connector that cannot send messages
        (
            job("mem", Some(&topic("mem", "enc")), Some(&keys), None, &[]),
            "encrypted_data.target.topic: connector 'mem' cannot take",
        ),
        // a message connector without a topic
        (
            job(
                "mem",
                Some(&object("bus", "enc.jsonl")),
                Some(&keys),
                None,
                &[],
            ),
            "connector 'bus' has topics, not objects",
        ),
        // topic together with file_name / path_prefix
        (
            job(
                "mem",
                Some(
                    r#"{ "data_connector_ref": { "name": "bus" }, "topic": "enc", "file_name": "x.jsonl" }"#,
                ),
                Some(&keys),
                None,
                &[],
            ),
            "encrypted_data.target.file_name: a target with a topic",
        ),
        (
            job(
                "mem",
                Some(
                    r#"{ "data_connector_ref": { "name": "bus" }, "topic": "enc", "path_prefix": "x" }"#,
                ),
                Some(&keys),
                None,
                &[],
            ),
            "encrypted_data.target.path_prefix: a target with a topic",
        ),
        // two outputs on one topic
        (
            job(
                "mem",
                Some(&topic("bus", "same")),
                Some(&keys),
                None,
                &[&topic("bus", "same")],
            ),
            "derived_data[0].target.topic: encrypted_data.target writes to topic \"same\" too",
        ),
        // the same topic through two connector names on one bus: caught by location
        (
            job(
                "mem",
                Some(&topic("bus", "same")),
                Some(&keys),
                None,
                &[&topic("bus2", "same")],
            ),
            "",
        ),
        // the keys export stays an object
        (
            job(
                "mem",
                Some(&topic("bus", "enc")),
                Some(&topic("bus", "keys")),
                None,
                &[],
            ),
            "encryption_keys_data.target.topic: the keys export is always a CSV object",
        ),
        // an empty topic
        (
            job("mem", Some(&topic("bus", " ")), Some(&keys), None, &[]),
            "encrypted_data.target.topic: must name a topic",
        ),
        // csv on a topic target
        (
            job(
                "mem",
                Some(
                    r#"{ "data_connector_ref": { "name": "bus" }, "topic": "enc", "data_type": { "csv": {} } }"#,
                ),
                Some(&keys),
                None,
                &[],
            ),
            "encrypted_data.target.data_type: a topic target carries one JSON Lines record",
        ),
        // csv input with topic targets
        (
            job("mem", Some(&topic("bus", "enc")), Some(&keys), None, &[])
                .replace("*.jsonl", "*.csv")
                .replace(r#"{ "jsonl": {} }"#, r#"{ "csv": {} }"#),
            "but the input is csv",
        ),
        // {input} with topic targets
        (
            job(
                "mem",
                Some(&topic("bus", "enc")),
                Some(&object("mem", "{input}-keys.csv")),
                None,
                &[],
            ),
            "{input} in the keys output's file_name with topic targets is not supported",
        ),
        (
            job(
                "mem",
                Some(&topic("bus", "enc-{input}")),
                Some(&object("mem", "{input}-keys.csv")),
                None,
                &[],
            ),
            "{input} in the encrypted output's topic with topic targets is not supported",
        ),
        // topics on two connectors (two transactions could not be all or nothing)
        (
            job(
                "mem",
                Some(&topic("bus", "enc")),
                Some(&keys),
                None,
                &[&topic("bus2", "der")],
            ),
            "topic targets of one job must share one connector",
        ),
        // a topic as a batch job's source
        (
            job("mem", Some(&topic("bus", "enc")), Some(&keys), None, &[]).replace(
                r#""path_prefix": "data","#,
                r#""path_prefix": "data", "topic": "in","#,
            ),
            "source_data.topic",
        ),
    ];
    rt().block_on(async {
        for (j, expected) in &cases {
            let e = check(m.dir.path(), j)
                .await
                .err()
                .unwrap_or_else(|| panic!("accepted by check: {j}"));
            assert!(
                e.to_string().contains(expected),
                "check: expected {expected:?} in: {e}"
            );
            let e = prepare(m.dir.path(), j, Mode::Run)
                .await
                .err()
                .unwrap_or_else(|| panic!("accepted by prepare: {j}"));
            assert!(
                e.to_string().contains(expected),
                "prepare: expected {expected:?} in: {e}"
            );
        }
        // watch and shard: refused too
        let ok = job("mem", Some(&topic("bus", "enc")), Some(&keys), None, &[]);
        let e = prepare(m.dir.path(), &ok, Mode::Watch).await.unwrap_err();
        assert!(e.to_string().contains("--watch` with topic targets"), "{e}");
        let p = check(m.dir.path(), &ok).await.unwrap();
        let e = p.with_shard("1/2".parse().unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("sharding a job with topic targets"),
            "{e}"
        );
        assert_eq!(e.kind(), keylink_core::ErrorKind::NotSupported);
    });
    assert_eq!(m.bus.sends(), 0);
    assert!(m.store.paths("out/").is_empty());
}

// ---------------------------------------------------------------------------------------------
// The CLI against the tansu broker
// ---------------------------------------------------------------------------------------------

fn create_topics(names: &[&str]) {
    rt().block_on(async {
        let k = keylink_connector_kafka::KafkaConfig::new(broker());
        for n in names {
            k.create_topic(n, 3).await.unwrap();
        }
    });
}

/// `(key, payload)` of the committed messages of `topic` (all partitions, from the start), read
/// with a plain `isolation.level=read_committed` consumer until `expect` came (bounded: 120 s),
/// then for `quiet` more to see extras.
fn read_committed(topic: &str, expect: usize, quiet: Duration) -> Vec<(Option<String>, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "7000")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_until: Option<Instant> = None;
    loop {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(300)) {
            out.push((
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            ));
        }
        if quiet_until.is_none() && out.len() >= expect {
            quiet_until = Some(Instant::now() + quiet);
        }
        if quiet_until.is_some_and(|q| Instant::now() >= q) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "waited 120 s for {expect} messages on {topic}; have {}",
            out.len()
        );
    }
}

fn kafka_dir() -> JobDir {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write(
        "keylink.yaml",
        format!(
            "connectors:\n  files: {{ type: local, root: . }}\n  bus: {{ type: kafka, bootstrap_servers: \"{}\" }}\n\
             contracts: ./contracts\nkey_store: {{ type: embedded, path: ./keys.db }}\n",
            broker()
        ),
    );
    d
}

#[test]
fn kafka_encrypted_and_derived_topics_hold_exactly_the_jobs_rows() {
    let (enc, der, rej) = (unique("enc"), unique("der"), unique("rej"));
    create_topics(&[&enc, &der, &rej]);
    let d = kafka_dir();
    let (text, lines) = records(3_000, true);
    d.write("data/in.jsonl", &text);
    d.write(
        "job.json",
        job(
            "files",
            Some(&topic("bus", &enc)),
            Some(&object("files", "keys.csv")),
            Some(&topic("bus", &rej)),
            &[&topic("bus", &der), &object("files", "der.jsonl")],
        ),
    );
    let v = d.run(&["validate", "job.json"]);
    assert_eq!(v.code, 0, "{}", v.all_output());
    let r = d.run(&["run", "job.json", "--json"]);
    // 1: finished, some records rejected
    assert_eq!(r.code, 1, "{}", r.all_output());
    assert!(!r.all_output().contains("@example.com"));
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let good: Vec<&String> = lines.iter().filter(|(_, b)| !b).map(|(l, _)| l).collect();
    let bad: Vec<&String> = lines.iter().filter(|(_, b)| *b).map(|(l, _)| l).collect();
    assert_eq!(s["rows_accepted"], good.len());

    // encrypted: every accepted row exactly once (by RowId), keyed by its keyLink
    let got = read_committed(&enc, good.len(), Duration::from_secs(3));
    let mut by_id: BTreeMap<String, String> = BTreeMap::new();
    for (key, payload) in &got {
        assert_eq!(key.as_deref(), Some(key_link(payload).as_str()));
        assert!(!payload.contains("@example.com"));
        assert!(
            by_id.insert(row_id(payload), payload.clone()).is_none(),
            "a row came twice"
        );
    }
    let expected: BTreeSet<String> = good.iter().map(|l| row_id(l)).collect();
    assert_eq!(by_id.keys().cloned().collect::<BTreeSet<_>>(), expected);
    // ... and decrypts with stock Tink and the exported keys (rows in RowId order on both sides)
    let sorted: String = by_id.values().map(|p| format!("{p}\n")).collect();
    d.write("check/enc.jsonl", sorted);
    let mut orig: Vec<&String> = good.clone();
    orig.sort_by_key(|l| row_id(l));
    d.write(
        "check/orig.jsonl",
        orig.iter().map(|l| format!("{l}\n")).collect::<String>(),
    );
    let out = tink_check(
        &d.path().join("out/keys.csv"),
        &d.path().join("check/enc.jsonl"),
        &d.path().join("check/orig.jsonl"),
        "Email,UserName",
        "jsonl",
    );
    assert!(out.contains(&format!("{} rows", good.len())), "{out}");

    // derived: byte for byte the lines of the same job's derived file (same settings)
    let file = d.read("out/der.jsonl");
    let mut file_lines: Vec<String> = file.lines().map(String::from).collect();
    let rows_derived = s["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "derived[0]")
        .unwrap()["rows"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(rows_derived, file_lines.len());
    assert!(rows_derived > 0 && rows_derived < good.len());
    let got = read_committed(&der, rows_derived, Duration::from_secs(3));
    let mut msgs: Vec<String> = got.iter().map(|(_, p)| p.clone()).collect();
    for (key, payload) in &got {
        assert_eq!(key.as_deref(), Some(key_link(payload).as_str()));
    }
    msgs.sort();
    file_lines.sort();
    assert_eq!(msgs, file_lines);

    // rejected: the raw records, without key
    let got = read_committed(&rej, bad.len(), Duration::from_secs(2));
    let mut raw: Vec<String> = got.iter().map(|(_, p)| p.clone()).collect();
    raw.sort();
    let mut want: Vec<String> = bad.iter().map(|l| l.to_string()).collect();
    want.sort();
    assert_eq!(raw, want);
    assert!(got.iter().all(|(k, _)| k.is_none()));
}

/// Ignored on the broker our tests run: tansu 0.6 delivers an aborted transaction's messages to
/// `read_committed` consumers (measured on 2026-11-29: the failed run's 2,000 messages came
/// with the good run's 300; see also the kafka connector's ignored conformance check
/// `aborted_transaction_is_never_visible`). Run it with `--ignored` against Apache Kafka; the
/// strict abort checks are the `memory_*` tests above.
#[test]
#[ignore = "tansu 0.6 delivers aborted transactions to read_committed consumers; run with \
            --ignored against Apache Kafka"]
fn kafka_a_failed_job_leaves_no_committed_message() {
    let (enc, der) = (unique("enc-fail"), unique("der-fail"));
    create_topics(&[&enc, &der]);
    let d = kafka_dir();
    d.write("data/in.jsonl", records(2_000, false).0);
    let j = job(
        "files",
        Some(&topic("bus", &enc)),
        Some(&object("files", "keys.csv")),
        None,
        &[&topic("bus", &der)],
    );
    d.write("job.json", &j);
    // the keys export cannot be committed: a non-empty directory is where it must go. Every
    // message has been sent by then (the object outputs commit first, the transaction last).
    d.write("out/keys.csv/blocker", "x");
    let r = d.run(&["run", "job.json"]);
    assert_ne!(r.code, 0, "the job should have failed:\n{}", r.all_output());
    assert!(r.all_output().contains("keys.csv"), "{}", r.all_output());
    // then a good run on the same topics: a reader sees exactly its rows, none of the failed
    // run's (which would be there twice: the same ids)
    std::fs::remove_dir_all(d.path().join("out/keys.csv")).unwrap();
    d.write("data/in.jsonl", records(300, false).0);
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let got = read_committed(&enc, 300, Duration::from_secs(5));
    let ids: BTreeSet<String> = got.iter().map(|(_, p)| row_id(p)).collect();
    assert_eq!(got.len(), 300, "messages of the failed run are visible");
    assert_eq!(ids.len(), 300);
    let got = read_committed(&der, 1, Duration::from_secs(5));
    assert!(
        got.iter()
            .all(|(_, p)| row_id(p)[1..].parse::<usize>().unwrap() < 300),
        "derived messages of the failed run are visible"
    );
}

/// A run killed (SIGKILL) while its transaction is open: its messages were sent (a
/// `read_uncommitted` consumer sees them) but never reach a `read_committed` one. Holds on
/// tansu, which hides open transactions correctly; the transaction timeout is raised so that
/// tansu does not abort it (and then, wrongly, show it) while the test reads.
#[test]
fn kafka_a_killed_run_shows_no_committed_message() {
    let enc = unique("enc-killed");
    create_topics(&[&enc]);
    let d = kafka_dir();
    d.write(
        "keylink.yaml",
        format!(
            "connectors:\n  files: {{ type: local, root: . }}\n  bus: {{ type: kafka, bootstrap_servers: \"{}\", \
             properties: {{ \"transaction.timeout.ms\": \"600000\" }} }}\n\
             contracts: ./contracts\nkey_store: {{ type: embedded, path: ./keys.db }}\n",
            broker()
        ),
    );
    d.write("data/in.jsonl", records(200_000, false).0);
    d.write(
        "job.json",
        job(
            "files",
            Some(&topic("bus", &enc)),
            Some(&object("files", "keys.csv")),
            None,
            &[],
        ),
    );
    let mut child = std::process::Command::new(bin())
        .args(["run", "job.json"])
        .current_dir(d.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // wait until messages of the open transaction are on the broker
    let seen = {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", broker())
            .set("group.id", unique("uncommitted"))
            .set("isolation.level", "read_uncommitted")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .create()
            .unwrap();
        c.subscribe(&[&enc]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut n = 0;
        while n < 1000 && Instant::now() < deadline {
            if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
                n += 1;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before it was killed: use more input"
            );
        }
        n
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        seen >= 1000,
        "no message of the open transaction reached the broker"
    );
    let got = read_committed(&enc, 0, Duration::from_secs(8));
    assert!(
        got.is_empty(),
        "{} messages of a killed run are visible to read_committed consumers",
        got.len()
    );
    assert!(!d.exists("out/keys.csv"));
}

#[test]
fn kafka_refusals_in_validate() {
    // no broker is needed to refuse: nothing is read or sent
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write(
        "keylink.yaml",
        "connectors:\n  files: { type: local, root: . }\n  bus: { type: kafka, bootstrap_servers: \"127.0.0.1:1\" }\n\
         contracts: ./contracts\nkey_store: { type: embedded, path: ./keys.db }\n",
    );
    d.write("data/in.jsonl", records(10, false).0);
    let keys = object("files", "keys.csv");
    for (j, expected) in [
        (
            job(
                "files",
                Some(&object("bus", "enc.jsonl")),
                Some(&keys),
                None,
                &[],
            ),
            "connector 'bus' has topics, not objects",
        ),
        (
            job(
                "files",
                Some(&topic("files", "enc")),
                Some(&keys),
                None,
                &[],
            ),
            "connector 'files' cannot take",
        ),
        (
            job(
                "files",
                Some(&topic("bus", "enc")),
                Some(&topic("bus", "k")),
                None,
                &[],
            ),
            "the keys export is always a CSV object",
        ),
    ] {
        d.write("job.json", &j);
        for cmd in ["validate", "run"] {
            let r = d.run(&[cmd, "job.json"]);
            assert_ne!(r.code, 0, "{cmd} accepted {j}");
            assert!(
                r.all_output().contains(expected),
                "{cmd}: {}",
                r.all_output()
            );
        }
    }
    assert!(!d.exists("out"));
}
