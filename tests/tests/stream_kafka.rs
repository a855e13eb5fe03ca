//! `keylink stream` from a Kafka topic to Kafka topics (issue #13), against the tansu broker that
//! `cargo xtask test` starts (KEYLINK_TEST_KAFKA=host:port; these tests fail loudly without it).
//! All data is synthetic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::kafka::{Streamer, broker, kafka, rt, unique};
use common::*;
use keylink_core::connector::{BuildContext, ConnectorConfig};
use keylink_core::stream::{OutMessage, Subscription};

/// Topic names of one test: in, encrypted, derived, rejected (created, two partitions each).
struct Topics {
    input: String,
    encrypted: String,
    derived: String,
    rejected: String,
}

fn topics(rt: &tokio::runtime::Runtime) -> Topics {
    let t = Topics {
        input: unique("in"),
        encrypted: unique("enc"),
        derived: unique("der"),
        rejected: unique("rej"),
    };
    rt.block_on(async {
        for name in [&t.input, &t.encrypted, &t.derived, &t.rejected] {
            kafka().create_topic(name, 2).await.unwrap();
        }
    });
    t
}

fn produce(rt: &tokio::runtime::Runtime, topic: &str, events: &[String]) {
    rt.block_on(async {
        let sink = kafka()
            .build_message_sink(&BuildContext::default())
            .await
            .unwrap();
        let msgs: Vec<OutMessage> = events
            .iter()
            .map(|e| OutMessage {
                key: None,
                payload: e.clone().into(),
            })
            .collect();
        sink.send(topic, &msgs).await.unwrap();
    });
}

/// A message read back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    payload: String,
}

/// Reads a whole topic with a fresh group until `done(messages)` holds (bounded: 120 s), then
/// for 2 s more (to see extras).
fn read_topic(
    rt: &tokio::runtime::Runtime,
    topic: &str,
    done: impl Fn(&[Msg]) -> bool,
    what: &str,
) -> Vec<Msg> {
    read_topic_quiet(rt, topic, done, what, Duration::from_secs(2))
}

/// [`read_topic`], waiting `quiet` for extras.
fn read_topic_quiet(
    rt: &tokio::runtime::Runtime,
    topic: &str,
    done: impl Fn(&[Msg]) -> bool,
    what: &str,
    quiet: Duration,
) -> Vec<Msg> {
    rt.block_on(async {
        let sub = Subscription {
            topic: topic.to_string(),
            group_id: unique("reader"),
        };
        let mut src = kafka()
            .build_message_source(&BuildContext::default(), &sub)
            .await
            .unwrap();
        let mut got: Vec<Msg> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut quiet_until: Option<Instant> = None;
        loop {
            for m in src.poll(1000, Duration::from_millis(300)).await.unwrap() {
                got.push(Msg {
                    payload: String::from_utf8(m.payload.to_vec()).unwrap(),
                });
            }
            if quiet_until.is_none() && done(&got) {
                quiet_until = Some(Instant::now() + quiet);
            }
            if quiet_until.is_some_and(|q| Instant::now() >= q) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "waited 120 s for {what} on {topic}; have {} messages",
                got.len()
            );
        }
    })
}

/// `(key, payload)` of every message of a topic, read with a plain rdkafka consumer (the
/// message key is not part of keylink's source API).
fn keys_of(topic: &str, expect: usize) -> Vec<(Option<String>, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", unique("keys"))
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
    while out.len() < expect && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(300)) {
            out.push((
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            ));
        }
    }
    out
}

/// A JSON object event: session `s`, sequence number `seq`, consent `consent`, at `time`.
fn event(seq: usize, time: &str) -> String {
    format!(
        r#"{{"Seq":{seq},"SessionId":"sess-{:03}","UserId":"cust-{:03}","Email":"person{seq}@example.com","UserName":"Person Number {seq}","Time":"{time}","Consent":"{}"}}"#,
        seq % 17,
        seq % 23,
        if seq.is_multiple_of(2) {
            "[1,2]"
        } else {
            "[0]"
        }
    )
}

fn setup(dir: &JobDir, t: &Topics, group: &str, extra: &str) {
    dir.write("contracts/clicks.json", contract(""));
    dir.write(
        "keylink.yaml",
        format!(
            "connectors:\n  files: {{ type: local, root: . }}\n  bus:\n    type: kafka\n    \
             bootstrap_servers: \"{}\"\n    properties: {{ session.timeout.ms: \"6000\", \
             heartbeat.interval.ms: \"1000\", max.poll.interval.ms: \"7000\" }}\n\
             contracts: ./contracts\nkey_store: {{ type: embedded, path: ./keys.db }}\n",
            broker()
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
                  "batch_job_group_id": "clicks-stream" }},
  "encrypted_data": {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "{enc}" }} }},
  "derived_data": [ {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "{der}" }},
                      "consent_levels": [1], "consent_level_type": "GRANULAR" }} ],
  "rejected_data": {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "{rej}" }} }}
  {extra}
}}"#,
            input = t.input,
            enc = t.encrypted,
            der = t.derived,
            rej = t.rejected,
        ),
    );
}

fn seq_of(payload: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(payload).unwrap();
    v["Seq"].as_u64().unwrap()
}

/// Kafka → Kafka with a kill -9 in the middle and a restart: no event is missing, and a
/// duplicate is a byte-identical message.
#[test]
fn stream_kafka_to_kafka_survives_kill_9() {
    let rt = rt();
    let t = topics(&rt);
    let dir = JobDir::new();
    setup(&dir, &t, &unique("keylink"), "");
    let time = "2024-04-01T10:00:00Z";
    let mut first: Vec<String> = (0..300).map(|i| event(i, time)).collect();
    // bad events: no keyField, not JSON, an event an hour and more in the future
    first.push(r#"{"Seq":9001,"Email":"nokey@example.com","Time":"2024-04-01T10:00:00Z"}"#.into());
    first.push("not json at all".into());
    first.push(event(9002, "2999-01-01T00:00:00Z"));
    produce(&rt, &t.input, &first);

    let s = Streamer::start(dir.path(), &["--max-batch", "7"]);
    // kill it once part of the input made it to the encrypted topic
    read_topic_quiet(
        &rt,
        &t.encrypted,
        |m| m.len() >= 40,
        "the first encrypted events",
        Duration::ZERO,
    );
    s.kill9();

    let second: Vec<String> = (300..400).map(|i| event(i, time)).collect();
    produce(&rt, &t.input, &second);
    let mut s = Streamer::start(dir.path(), &["--max-batch", "50"]);
    let enc = read_topic(
        &rt,
        &t.encrypted,
        |m| {
            m.iter()
                .map(|x| seq_of(&x.payload))
                .collect::<BTreeSet<_>>()
                .len()
                >= 400
        },
        "all 400 good events",
    );
    let (code, log) = s.terminate(Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");

    // every good event is there; a duplicate (from the replay after kill -9) is byte-identical
    let mut by_seq: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for m in &enc {
        by_seq
            .entry(seq_of(&m.payload))
            .or_default()
            .insert(m.payload.clone());
    }
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (0..400).collect::<Vec<u64>>(),
        "events missing from (or foreign to) the encrypted topic"
    );
    for (seq, variants) in &by_seq {
        assert_eq!(
            variants.len(),
            1,
            "event {seq} came out in different versions"
        );
    }
    // no plaintext PII, a keyLink in every message, and the message key is that keyLink
    for m in &enc {
        assert!(
            !m.payload.contains("@example.com"),
            "plaintext e-mail in {}",
            m.payload
        );
        assert!(
            !m.payload.contains("Person Number"),
            "plaintext name in {}",
            m.payload
        );
    }
    for (key, payload) in keys_of(&t.encrypted, enc.len()) {
        let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
        let link = v["strmMeta"]["keyLink"].as_str().unwrap().to_string();
        assert_eq!(
            key.as_deref(),
            Some(link.as_str()),
            "message key is not the keyLink"
        );
    }
    // the derived topic: the consenting half (even Seq), with Email (purpose 1) decrypted
    let der = read_topic(
        &rt,
        &t.derived,
        |m| {
            m.iter()
                .map(|x| seq_of(&x.payload))
                .collect::<BTreeSet<_>>()
                .len()
                >= 200
        },
        "the derived events",
    );
    let seqs: BTreeSet<u64> = der.iter().map(|m| seq_of(&m.payload)).collect();
    assert_eq!(seqs, (0..400u64).filter(|s| s.is_multiple_of(2)).collect());
    for m in &der {
        let v: serde_json::Value = serde_json::from_str(&m.payload).unwrap();
        assert_eq!(
            v["Email"].as_str().unwrap(),
            format!("person{}@example.com", seq_of(&m.payload))
        );
        assert!(
            !m.payload.contains("Person Number"),
            "purpose 2 decrypted: {}",
            m.payload
        );
    }
    // the rejected topic holds the three bad events, raw
    let rej = read_topic(&rt, &t.rejected, |m| m.len() >= 3, "the rejected events");
    let rej: BTreeSet<String> = rej.into_iter().map(|m| m.payload).collect();
    assert_eq!(rej.len(), 3, "{rej:?}");
    assert!(rej.contains("not json at all"));
    assert!(rej.iter().any(|p| p.contains("9002")));
    // values never appear in the output
    assert!(!log.contains("example.com"), "{log}");
}

/// The same event in a batch job and in a stream with the same key group and key store: the
/// same keyLink and byte-identical output.
#[test]
fn stream_and_batch_agree_on_keys_and_ciphertext() {
    let rt = rt();
    let t = topics(&rt);
    let dir = JobDir::new();
    setup(&dir, &t, &unique("keylink"), "");
    let events: Vec<String> = (0..20).map(|i| event(i, "2024-04-02T08:30:00Z")).collect();
    dir.write("data/events.jsonl", events.join("\n") + "\n");
    dir.write(
        "job.json",
        r#"{
  "source_data": { "data_connector_ref": { "name": "files" }, "path_prefix": "data",
                   "file_name": "events.jsonl", "data_type": { "jsonl": {} } },
  "consent": { "default_consent_levels": [0], "consent_level_extractor": { "field": "Consent" } },
  "encryption": { "timestamp_config": { "field": "Time", "format": "iso8601" },
                  "batch_job_group_id": "clicks-stream" },
  "data_contract_ref": { "handle": "test", "name": "clicks", "version": "1.0.0" },
  "encrypted_data": { "target": { "data_connector_ref": { "name": "files" },
                                  "path_prefix": "out", "file_name": "encrypted.jsonl" } },
  "encryption_keys_data": { "target": { "data_connector_ref": { "name": "files" },
                                        "path_prefix": "out", "file_name": "keys.csv" } }
}"#,
    );
    let r = dir.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let batch: BTreeMap<u64, String> = dir
        .read("out/encrypted.jsonl")
        .lines()
        .map(|l| (seq_of(l), l.to_string()))
        .collect();
    assert_eq!(batch.len(), 20);

    let mut input = events.clone();
    input.push(r#"{"Seq":9001,"Email":"nokey@example.com","Time":"2024-04-02T08:30:00Z"}"#.into());
    input.push(event(9002, "2999-01-01T00:00:00Z"));
    produce(&rt, &t.input, &input);
    let mut s = Streamer::start(dir.path(), &[]);
    let enc = read_topic(&rt, &t.encrypted, |m| m.len() >= 20, "20 encrypted events");
    read_topic(&rt, &t.rejected, |m| m.len() >= 2, "2 rejected events");
    let (code, log) = s.terminate(Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
    // reasons are counted by name; values never appear in the output
    assert!(log.contains("20 events accepted, 2 rejected"), "{log}");
    assert!(log.contains("future_timestamp: 1"), "{log}");
    assert!(log.contains("missing_key_field: 1"), "{log}");
    assert!(!log.contains("example.com"), "{log}");
    assert_eq!(enc.len(), 20, "no duplicates without a crash");
    for m in &enc {
        let seq = seq_of(&m.payload);
        assert_eq!(
            &m.payload, &batch[&seq],
            "event {seq}: the stream's message differs from the batch job's line"
        );
    }
}

/// Configuration errors are reported before anything runs: a stream without a fixed key group,
/// a source topic that is also an output, an unknown setting.
#[test]
fn stream_config_errors_are_refused() {
    let rt = rt();
    let t = Topics {
        input: "same".into(),
        encrypted: "enc".into(),
        derived: "der".into(),
        rejected: "rej".into(),
    };
    let _ = &rt;
    let dir = JobDir::new();
    setup(&dir, &t, "g", "");
    let job = dir.read("stream.json");

    dir.write(
        "stream.json",
        job.replace(
            r#""batch_job_group_id": "clicks-stream""#,
            r#""window_hours": 24"#,
        ),
    );
    let r = dir.run(&["stream", "stream.json"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("batch_job_group_id"), "{}", r.stderr);

    dir.write(
        "stream.json",
        job.replace(r#""topic": "enc""#, r#""topic": "same""#),
    );
    let r = dir.run(&["stream", "stream.json"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(
        r.stderr.contains("topic same is also the source topic"),
        "{}",
        r.stderr
    );

    // two outputs on one topic: the derived stream would mix with the encrypted one
    dir.write(
        "stream.json",
        job.replace(r#""topic": "der""#, r#""topic": "enc""#),
    );
    let r = dir.run(&["stream", "stream.json"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(
        r.stderr
            .contains("derived_data[0].target: topic enc is also encrypted_data.target"),
        "{}",
        r.stderr
    );

    dir.write(
        "stream.json",
        job.replace(
            r#""consent_levels": [1]"#,
            r#""consent_levels": [1], "masked": 1"#,
        ),
    );
    let r = dir.run(&["stream", "stream.json"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("masked"), "{}", r.stderr);
}
