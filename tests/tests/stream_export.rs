//! The exporters of `keylink stream` (issue #14): a topic exported to the S3 emulator and to
//! local disk, and the keys exported next to it, across `kill -9` restarts while events flow;
//! against the tansu broker and moto that `cargo xtask test` starts (KEYLINK_TEST_KAFKA,
//! KEYLINK_TEST_S3_ENDPOINT; these tests fail loudly without them). All data is synthetic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::kafka::{Streamer, broker, kafka, rt, unique};
use common::*;
use keylink_connector_s3::{S3Config, S3Credentials};
use keylink_core::Sensitive;
use keylink_core::connector::{BuildContext, ConnectorConfig};
use keylink_core::stream::{OutMessage, Subscription};

fn s3_endpoint() -> String {
    std::env::var("KEYLINK_TEST_S3_ENDPOINT").expect(
        "KEYLINK_TEST_S3_ENDPOINT is not set: start the emulators with `cargo xtask emulators \
         start` (or run `cargo xtask test`), then export what it prints",
    )
}

fn s3(bucket: &str) -> S3Config {
    let mut c = S3Config::new(bucket);
    c.region = Some("us-east-1".into());
    c.endpoint = Some(s3_endpoint());
    c.force_path_style = Some(true);
    c.credentials = Some(S3Credentials {
        access_key_id: Sensitive::new("test".into()),
        secret_access_key: Sensitive::new("test".into()),
        session_token: None,
    });
    c
}

/// A JSON object event with PII (Email, UserName) that carries the markers scanned for.
fn event(seq: usize) -> String {
    format!(
        r#"{{"Seq":{seq},"SessionId":"sess-{:03}","UserId":"cust-{:03}","Email":"person{seq}@example.com","UserName":"Person Number {seq}","Time":"2024-04-0{}T10:00:00Z","Consent":"[1]"}}"#,
        seq % 29,
        seq % 31,
        1 + seq % 3,
    )
}

fn seq_of(payload: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(payload).unwrap();
    v["Seq"].as_u64().unwrap()
}

const EXPORTERS: &str = r#",
  "batch_exporters": [
    { "from": "ENC", "interval_seconds": 1,
      "target": { "data_connector_ref": { "name": "lake" }, "path_prefix": "export/encrypted",
                  "data_type": { "jsonl": {} } } },
    { "from": "ENC", "interval_seconds": 1,
      "target": { "data_connector_ref": { "name": "disk" }, "path_prefix": "export/encrypted" } } ],
  "encryption_keys_data": { "interval_seconds": 1,
      "target": { "data_connector_ref": { "name": "disk" }, "path_prefix": "export/keys" } }"#;

fn setup(dir: &JobDir, input: &str, enc: &str, bucket: &str, exporters: &str) {
    dir.write("contracts/clicks.json", contract(""));
    dir.write(
        "keylink.yaml",
        format!(
            "connectors:\n  disk: {{ type: local, root: ./lake }}\n\
             \x20 lake: {{ type: s3, bucket: {bucket}, region: us-east-1, endpoint: \"{ep}\", \
             force_path_style: true, credentials: {{ access_key_id: test, secret_access_key: test }} }}\n\
             \x20 bus:\n    type: kafka\n    bootstrap_servers: \"{b}\"\n    properties: {{ \
             session.timeout.ms: \"6000\", heartbeat.interval.ms: \"1000\", \
             max.poll.interval.ms: \"7000\" }}\n\
             contracts: ./contracts\nkey_store: {{ type: embedded, path: ./keys.db }}\n",
            ep = s3_endpoint(),
            b = broker(),
        ),
    );
    dir.write(
        "stream.json",
        format!(
            r#"{{
  "source": {{ "kafka": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "{input}",
                          "group_id": "{group}" }} }},
  "data_contract_ref": {{ "handle": "test", "name": "clicks", "version": "1.0.0" }},
  "consent": {{ "default_consent_levels": [0], "consent_level_extractor": {{ "field": "Consent" }} }},
  "encryption": {{ "timestamp_config": {{ "field": "Time", "format": "iso8601" }},
                  "batch_job_group_id": "{kg}" }},
  "encrypted_data": {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "{enc}" }} }}
  {exporters}
}}"#,
            group = unique("keylink"),
            kg = unique("kg"),
            exporters = exporters.replace("ENC", enc),
        ),
    );
}

/// Every message of `topic` as `(partition, offset) → payload`, read with a fresh group until
/// `done` holds (bounded), then 2 s more.
fn read_topic(
    rt: &tokio::runtime::Runtime,
    topic: &str,
    done: impl Fn(&BTreeMap<(i32, i64), String>) -> bool,
) -> BTreeMap<(i32, i64), String> {
    rt.block_on(async {
        let sub = Subscription {
            topic: topic.to_string(),
            group_id: unique("reader"),
        };
        let mut src = kafka()
            .build_message_source(&BuildContext::default(), &sub)
            .await
            .unwrap();
        let mut got = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut quiet_until: Option<Instant> = None;
        loop {
            for m in src.poll(1000, Duration::from_millis(300)).await.unwrap() {
                got.insert(
                    (m.position.partition, m.position.offset),
                    String::from_utf8(m.payload.to_vec()).unwrap(),
                );
            }
            if quiet_until.is_none() && done(&got) {
                quiet_until = Some(Instant::now() + Duration::from_secs(2));
            }
            if quiet_until.is_some_and(|q| Instant::now() >= q) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "waited 180 s for {topic}; have {} messages",
                got.len()
            );
        }
    })
}

/// The exported objects of a topic: `(partition, first, last) → lines`, from any object store.
fn parse_exports(
    objects: Vec<(String, String)>,
    topic: &str,
) -> BTreeMap<(i32, i64, i64), Vec<String>> {
    let mut out = BTreeMap::new();
    for (name, text) in objects {
        let file = name.rsplit('/').next().unwrap();
        let rest = file
            .strip_prefix(&format!("{topic}-"))
            .and_then(|r| r.strip_suffix(".jsonl"))
            .unwrap_or_else(|| panic!("unexpected exported object {name}"));
        let parts: Vec<i64> = rest.split('-').map(|x| x.parse().unwrap()).collect();
        assert_eq!(parts.len(), 3, "{name}");
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        out.insert((parts[0] as i32, parts[1], parts[2]), lines);
    }
    out
}

/// Checks one target's exports against the topic: per partition the ranges follow each other
/// without overlap, every line is the message at its offset byte for byte, and together they
/// hold every message of the topic exactly once.
fn check_exports(
    what: &str,
    exports: &BTreeMap<(i32, i64, i64), Vec<String>>,
    topic: &BTreeMap<(i32, i64), String>,
) -> Vec<String> {
    let mut seen: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for ((p, first, end), lines) in exports {
        if let Some(prev) = last.get(p) {
            assert!(
                first > prev,
                "{what}: partition {p}: range {first}-{end} overlaps the one ending at {prev}"
            );
        }
        last.insert(*p, *end);
        assert_eq!(
            lines.len() as i64,
            end - first + 1,
            "{what}: {p}-{first}-{end} has {} lines",
            lines.len()
        );
        for (i, l) in lines.iter().enumerate() {
            let at = (*p, first + i as i64);
            assert_eq!(
                topic.get(&at),
                Some(l),
                "{what}: line {i} of {p}-{first}-{end} is not the message at {at:?}"
            );
            assert!(seen.insert(at, l.clone()).is_none(), "{what}: {at:?} twice");
        }
    }
    assert_eq!(
        seen.len(),
        topic.len(),
        "{what}: {} of the topic's {} messages exported",
        seen.len(),
        topic.len()
    );
    seen.into_values().collect()
}

/// Files under `dir` (recursively, relative to it) with their text.
fn local_objects(dir: &Path) -> Vec<(String, String)> {
    files_under(dir)
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(dir.join(&f)).unwrap();
            (f, text)
        })
        .collect()
}

/// A Kafka stream with two batch exporters (S3 emulator, local disk) and a keys exporter,
/// killed with kill -9 three times while events flow, then stopped cleanly: each target's
/// exports hold every message of the encrypted topic exactly once, every event is there, every
/// keyLink has its key in the keys exports, and stock Tink decrypts the exports with them.
#[test]
fn exports_survive_kill_9_exactly_once() {
    let rt = rt();
    let (input, enc) = (unique("in"), unique("enc"));
    let bucket = unique("kl-export").to_lowercase().replace('_', "-");
    let bucket = bucket[..bucket.len().min(63)].to_string();
    rt.block_on(async {
        kafka().create_topic(&input, 2).await.unwrap();
        kafka().create_topic(&enc, 2).await.unwrap();
        let store = s3(&bucket).build_store().await.unwrap();
        store
            .client()
            .create_bucket()
            .bucket(store.bucket())
            .send()
            .await
            .unwrap();
    });
    let dir = JobDir::new();
    setup(&dir, &input, &enc, &bucket, EXPORTERS);

    // a producer sends 1200 events in small batches while the stream is killed and restarted
    const TOTAL: usize = 1200;
    let producer = {
        let input = input.clone();
        std::thread::spawn(move || {
            let rt = self::rt();
            rt.block_on(async {
                let sink = kafka()
                    .build_message_sink(&BuildContext::default())
                    .await
                    .unwrap();
                for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(10) {
                    let msgs: Vec<OutMessage> = chunk
                        .iter()
                        .map(|&i| OutMessage {
                            key: Some(format!("k{}", i % 7).into()),
                            payload: event(i).into(),
                        })
                        .collect();
                    sink.send(&input, &msgs).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
        })
    };
    let mut logs = String::new();
    let exported_objects = || files_under(&dir.path().join("lake/export/encrypted")).len();
    let mut kills_after_exports = Vec::new();
    for round in 0..3u64 {
        let s = Streamer::start(dir.path(), &["--max-batch", "25"]);
        // kill it once this run exported something (so kill -9 lands between exports, or in
        // one), at a different moment each round
        let before = exported_objects();
        let deadline = Instant::now() + Duration::from_secs(90);
        while exported_objects() <= before {
            assert!(
                Instant::now() < deadline,
                "round {round}: no export within 90 s:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300 * round + 150));
        kills_after_exports.push(exported_objects());
        logs.push_str(&s.log());
        s.kill9();
    }
    let mut s = Streamer::start(dir.path(), &["--max-batch", "25"]);
    producer.join().unwrap();
    // wait until the encrypted topic has every event, then stop: the final export must take
    // what the periodic ones have not yet
    let topic = read_topic(&rt, &enc, |m| {
        m.values().map(|p| seq_of(p)).collect::<BTreeSet<_>>().len() >= TOTAL
    });
    let (code, log) = s.terminate(Duration::from_secs(120));
    logs.push_str(&log);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("exported in"), "{log}");

    // every event is in the topic; a duplicate (replay after kill -9) is byte-identical
    let mut by_seq: BTreeMap<u64, BTreeSet<&String>> = BTreeMap::new();
    for p in topic.values() {
        by_seq.entry(seq_of(p)).or_default().insert(p);
    }
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (0..TOTAL as u64).collect::<Vec<_>>()
    );
    assert!(
        by_seq.values().all(|v| v.len() == 1),
        "differing duplicates"
    );

    // local disk and S3 exports: every message exactly once, byte for byte
    let local = parse_exports(
        local_objects(&dir.path().join("lake/export/encrypted")),
        &enc,
    );
    let local_lines = check_exports("local", &local, &topic);
    let s3_objects = rt.block_on(async {
        let src = s3(&bucket)
            .build_source(&BuildContext::default())
            .await
            .unwrap();
        let mut out = Vec::new();
        for o in src.list("export/encrypted/").await.unwrap() {
            let bytes = keylink_core::connector::read_all(&*src, &o.path)
                .await
                .unwrap();
            out.push((o.path, String::from_utf8(bytes).unwrap()));
        }
        out
    });
    let remote = parse_exports(s3_objects, &enc);
    check_exports("s3", &remote, &topic);
    let exported_seqs: BTreeSet<u64> = local_lines.iter().map(|l| seq_of(l)).collect();
    assert_eq!(exported_seqs.len(), TOTAL, "every event exported");
    assert!(
        local.len() > kills_after_exports[2],
        "the last run exported nothing: {} objects, {kills_after_exports:?} at the kills",
        local.len()
    );

    // keys: private files, exact ranges, covering every keyLink of the exports
    let keys_dir = dir.path().join("lake/export/keys");
    let mut merged = String::from("keyLink,encryptionKey,policyId,expiresAt\n");
    let mut links = BTreeSet::new();
    let mut ranges = Vec::new();
    for (name, text) in local_objects(&keys_dir) {
        let r = name
            .strip_prefix("keys-")
            .and_then(|r| r.strip_suffix(".csv"))
            .unwrap_or_else(|| panic!("unexpected keys object {name}"));
        let (a, b) = r.split_once('-').unwrap();
        ranges.push((a.parse::<i64>().unwrap(), b.parse::<i64>().unwrap()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(keys_dir.join(&name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name} is not private");
        }
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("keyLink,encryptionKey,policyId,expiresAt")
        );
        for l in lines {
            links.insert(l.split(',').next().unwrap().to_string());
            merged.push_str(l);
            merged.push('\n');
        }
    }
    ranges.sort();
    assert_eq!(ranges[0].0, 0, "the first keys export starts at 0");
    for w in ranges.windows(2) {
        assert!(w[1].0 >= w[0].1, "keys ranges overlap: {ranges:?}");
    }
    for l in &local_lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let link = v["strmMeta"]["keyLink"].as_str().unwrap();
        assert!(links.contains(link), "keyLink {link} is in no keys export");
    }

    // stock Tink decrypts the exports with the exported keys
    dir.write("check/keys.csv", &merged);
    dir.write("check/encrypted.jsonl", local_lines.join("\n") + "\n");
    let originals: Vec<String> = local_lines
        .iter()
        .map(|l| event(seq_of(l) as usize))
        .collect();
    dir.write("data/original.jsonl", originals.join("\n") + "\n");
    let out = tink_check(
        &dir.path().join("check/keys.csv"),
        &dir.path().join("check/encrypted.jsonl"),
        &dir.path().join("data/original.jsonl"),
        "Email,UserName",
        "jsonl",
    );
    assert!(out.contains("0 mismatches"), "{out}");

    // no plaintext PII in the exports, the key store or the logs
    assert_no_plaintext(&dir, &["@example.com", "Person Number"], &[]);
    assert!(!logs.contains("example.com"));
}

/// Exporter settings are refused before anything runs (exit 2, naming the setting).
#[test]
fn exporter_settings_are_refused() {
    let dir = JobDir::new();
    setup(&dir, "in-topic", "enc-topic", "no-bucket", EXPORTERS);
    let job = dir.read("stream.json");
    let cases: [(&str, &str, &str); 7] = [
        (
            r#""interval_seconds": 1,"#,
            r#""interval_seconds": 0,"#,
            "batch_exporters[0].interval_seconds: must be at least 1",
        ),
        (
            r#""interval_seconds": 1,"#,
            "",
            "batch_exporters[0].interval_seconds: missing",
        ),
        (
            r#""from": "enc-topic""#,
            r#""from": "enc-topik""#,
            "batch_exporters[0].from: \"enc-topik\" is not a topic this job writes",
        ),
        (
            r#""name": "lake" }"#,
            r#""name": "laek" }"#,
            "connector 'laek' is not defined",
        ),
        (
            r#""name": "disk" }, "path_prefix": "export/keys""#,
            r#""name": "bus" }, "path_prefix": "in-topic""#,
            "is where the job reads",
        ),
        (
            r#""path_prefix": "export/keys""#,
            r#""path_prefix": "export/encrypted/keys""#,
            "overlaps batch_exporters[1].target",
        ),
        (
            r#""data_type": { "jsonl": {} }"#,
            r#""data_type": { "csv": {} }"#,
            "csv exports are not supported",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(job.contains(from), "{from}");
        dir.write("stream.json", job.replacen(from, to, 1));
        let r = dir.run(&["stream", "stream.json"]);
        assert_eq!(r.code, 2, "{to}: {}", r.all_output());
        assert!(r.stderr.contains(expected), "{expected}: {}", r.stderr);
    }
    // the keys interval too, and a misspelt field
    dir.write(
        "stream.json",
        job.replace(
            r#""encryption_keys_data": { "interval_seconds": 1,"#,
            r#""encryption_keys_data": {"#,
        ),
    );
    let r = dir.run(&["stream", "stream.json"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(
        r.stderr
            .contains("encryption_keys_data.interval_seconds: missing"),
        "{}",
        r.stderr
    );
    dir.write(
        "stream.json",
        job.replacen(r#""interval_seconds": 1,"#, r#""interval_secs": 1,"#, 1),
    );
    let r = dir.run(&["stream", "stream.json"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("interval_secs"), "{}", r.stderr);
}

/// A measurement, run by hand (`cargo test -p keylink-e2e --test stream_export -- --ignored
/// --nocapture`): 50,000 events already on the input topic, one stream with a local batch
/// exporter (interval 1 s): how long until every encrypted message is in the exported files.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_export_throughput() {
    use std::io::Write;
    let rt = rt();
    let (input, enc) = (unique("in"), unique("enc"));
    rt.block_on(async {
        kafka().create_topic(&input, 2).await.unwrap();
        kafka().create_topic(&enc, 2).await.unwrap();
    });
    let dir = JobDir::new();
    let only_local = r#",
  "batch_exporters": [ { "from": "ENC", "interval_seconds": 1,
      "target": { "data_connector_ref": { "name": "disk" }, "path_prefix": "export/encrypted" } } ]"#;
    setup(&dir, &input, &enc, "unused", only_local);
    const N: usize = 50_000;
    rt.block_on(async {
        let sink = kafka()
            .build_message_sink(&BuildContext::default())
            .await
            .unwrap();
        for chunk in (0..N).collect::<Vec<_>>().chunks(5000) {
            let msgs: Vec<OutMessage> = chunk
                .iter()
                .map(|&i| OutMessage {
                    key: Some(format!("k{}", i % 7).into()),
                    payload: event(i).into(),
                })
                .collect();
            sink.send(&input, &msgs).await.unwrap();
        }
    });
    let started = Instant::now();
    let mut s = Streamer::start(dir.path(), &["--max-batch", "25"]);
    let out = dir.path().join("lake/export/encrypted");
    let count = || -> usize {
        local_objects(&out)
            .iter()
            .map(|(_, t)| t.lines().count())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while count() < N {
        assert!(Instant::now() < deadline, "{} of {N} exported", count());
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = started.elapsed();
    let (code, log) = s.terminate(Duration::from_secs(120));
    assert_eq!(code, 0, "{log}");
    let bytes: u64 = files_under(&out)
        .iter()
        .map(|f| std::fs::metadata(out.join(f)).unwrap().len())
        .sum();
    let _ = writeln!(
        std::io::stderr(),
        "measure: {N} events through the stream and exported ({} objects, {} MiB) in {:.1} s \
         ({:.0} events/s end to end)",
        files_under(&out).len(),
        bytes >> 20,
        took.as_secs_f64(),
        N as f64 / took.as_secs_f64()
    );
}
