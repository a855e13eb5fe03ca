//! The stream transform with an event's own consent (`strmMeta.consentLevels`, SPEC §11), on the
//! in-memory bus and the embedded key store. All data is synthetic.

use keylink_core::Bytes;
use keylink_core::job::Config;
use keylink_core::stream_job::{self, StreamJob};
use keylink_core::testkit::stream::MemoryBus;

const CONTRACT: &str = r#"{ "ref": { "handle": "t", "name": "c", "version": "1" },
    "keyField": "SessionId", "piiFields": { "Email": 1 } }"#;

fn job(consent: &str) -> StreamJob {
    serde_json::from_str(&format!(
        r#"{{ "source": {{ "http": {{ "listen": "127.0.0.1:0" }} }},
          "data_contract_ref": {{ "handle": "t", "name": "c", "version": "1" }},
          "consent": {consent},
          "encryption": {{ "timestamp_config": {{ "field": "T", "format": "iso8601" }},
                          "batch_job_group_id": "grp" }},
          "encrypted_data": {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "enc" }} }},
          "derived_data": [ {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "an" }},
                              "consent_levels": [1] }} ] }}"#
    ))
    .unwrap()
}

async fn prepared(dir: &std::path::Path, bus: &str, consent: &str) -> stream_job::PreparedStream {
    std::fs::write(dir.join("c.json"), CONTRACT).unwrap();
    std::fs::write(
        dir.join("keylink.yaml"),
        format!(
            "connectors:\n  bus: {{ type: memory_bus, bus: {bus} }}\n\
             key_store: {{ type: embedded, path: ./keys.db }}\n"
        ),
    )
    .unwrap();
    let config = Config::from_file(&dir.join("keylink.yaml")).unwrap();
    stream_job::prepare(
        job(consent),
        "s.json".as_ref(),
        &config,
        Some(&dir.join("c.json")),
    )
    .await
    .unwrap()
}

fn ev(i: usize, meta: &str) -> Bytes {
    let base =
        format!(r#""SessionId":"s{i}","Email":"p{i}@example.com","T":"2024-04-01T10:00:00Z""#);
    if meta.is_empty() {
        format!("{{{base}}}").into()
    } else {
        format!(r#"{{{base},"strmMeta":{meta}}}"#).into()
    }
}

/// Without an extractor an event's own levels are its consent: they decide the derived output
/// and are what the output's (keylink's own) strmMeta says; anything else in strmMeta rejects
/// the event, without a value; a replay is byte-identical.
#[tokio::test(flavor = "multi_thread")]
async fn an_events_own_consent_decides_its_purposes() {
    let dir = tempfile::tempdir().unwrap();
    let _bus = MemoryBus::register("cli-consent-own");
    let p = prepared(
        dir.path(),
        "cli-consent-own",
        r#"{ "default_consent_levels": [0] }"#,
    )
    .await;
    let evs = vec![
        ev(0, r#"{"consentLevels":[1]}"#),
        ev(1, r#"{"consentLevels":[0]}"#),
        ev(2, ""),
        ev(3, r#"{"consentLevels":[2,1]}"#),
        ev(4, r#"{"consentLevels":[1],"keyLink":"forged"}"#),
        ev(5, r#"{"consentLevels":["p5@example.com"]}"#),
        ev(6, r#"{"consentLevels":[-1]}"#),
    ];
    let t = p.transform(&evs).await.unwrap();
    assert_eq!(t.accepted, 4);
    let rejects: Vec<(usize, &str)> = t
        .rejects
        .iter()
        .map(|r| (r.index, r.reason.as_str()))
        .collect();
    assert_eq!(
        rejects,
        vec![
            (4, "bad_strm_meta"),
            (5, "bad_strm_meta"),
            (6, "bad_strm_meta")
        ]
    );
    for r in &t.rejects {
        assert!(!r.detail.contains("example.com") && !r.detail.contains("forged"));
    }
    let meta = |m: &keylink_core::stream::OutMessage| -> (String, Vec<i32>) {
        let text = String::from_utf8(m.payload.to_vec()).unwrap();
        assert_eq!(
            text.matches("strmMeta").count(),
            1,
            "one strmMeta: {}",
            text.len()
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        (
            v["SessionId"].as_str().unwrap().to_string(),
            serde_json::from_value(v["strmMeta"]["consentLevels"].clone()).unwrap(),
        )
    };
    let enc: Vec<(String, Vec<i32>)> = t.messages[0].iter().map(meta).collect();
    assert_eq!(
        enc,
        vec![
            ("s0".into(), vec![1]),
            ("s1".into(), vec![0]),
            ("s2".into(), vec![0]),
            ("s3".into(), vec![1, 2]),
        ]
    );
    let derived: Vec<(String, Vec<i32>)> = t.messages[1].iter().map(meta).collect();
    assert_eq!(
        derived,
        vec![("s0".into(), vec![1]), ("s3".into(), vec![1, 2])]
    );
    let again = p.transform(&evs).await.unwrap();
    assert_eq!(again.messages, t.messages, "a replay is byte-identical");
}

/// With a consent_level_extractor, an event that also carries its own consent is ambiguous and
/// rejected; one without it is read from the field as before.
#[tokio::test(flavor = "multi_thread")]
async fn own_consent_next_to_an_extractor_is_ambiguous() {
    let dir = tempfile::tempdir().unwrap();
    let _bus = MemoryBus::register("cli-consent-ambiguous");
    let p = prepared(
        dir.path(),
        "cli-consent-ambiguous",
        r#"{ "default_consent_levels": [0], "consent_level_extractor": { "field": "Consent" } }"#,
    )
    .await;
    let with_field: Bytes =
        r#"{"SessionId":"a","Email":"q@example.com","T":"2024-04-01T10:00:00Z","Consent":"[1]"}"#
            .into();
    let t = p
        .transform(&[ev(0, r#"{"consentLevels":[1]}"#), with_field])
        .await
        .unwrap();
    assert_eq!(t.accepted, 1);
    assert_eq!(t.rejects.len(), 1);
    assert_eq!(t.rejects[0].index, 0);
    assert_eq!(t.rejects[0].reason.as_str(), "bad_strm_meta");
    assert!(
        t.rejects[0].detail.contains("ambiguous"),
        "{}",
        t.rejects[0].detail
    );
    assert_eq!(
        t.messages[1].len(),
        1,
        "the field's consent [1] reaches the derived topic"
    );
}

/// The jsonl format, counting the encoders it builds.
#[derive(Debug)]
struct CountingEncoders {
    inner: std::sync::Arc<dyn keylink_core::Format>,
    built: std::sync::atomic::AtomicUsize,
}

impl keylink_core::Format for CountingEncoders {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn decoder(&self, plan: &keylink_core::record::FieldPlan) -> Box<dyn keylink_core::Decoder> {
        self.inner.decoder(plan)
    }
    fn encoder(
        &self,
        plan: &keylink_core::record::FieldPlan,
        layout: &keylink_core::format::Layout,
        contract_ref: &str,
    ) -> keylink_core::Result<Box<dyn keylink_core::Encoder>> {
        self.built.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.encoder(plan, layout, contract_ref)
    }
}

/// Issue #8: a stream builds one encoder per output and reuses it for every batch of events, as
/// batch jobs do; the messages are the same as with fresh encoders.
#[tokio::test(flavor = "multi_thread")]
async fn issue_8_a_stream_builds_its_encoders_once_not_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let _bus = MemoryBus::register("cli-encoders-once");
    let mut p = prepared(
        dir.path(),
        "cli-encoders-once",
        r#"{ "default_consent_levels": [0] }"#,
    )
    .await;
    let counting = std::sync::Arc::new(CountingEncoders {
        inner: p.format.clone(),
        built: Default::default(),
    });
    p.format = counting.clone();
    let evs: Vec<Bytes> = (0..4).map(|i| ev(i, r#"{"consentLevels":[1]}"#)).collect();
    let first = p.transform(&evs).await.unwrap();
    assert_eq!(first.messages[0].len(), 4);
    assert_eq!(first.messages[1].len(), 4);
    for _ in 0..20 {
        let again = p.transform(&evs).await.unwrap();
        assert_eq!(again.messages, first.messages);
    }
    // two outputs with rows (encrypted, derived): two encoders for 21 batches
    assert_eq!(counting.built.load(std::sync::atomic::Ordering::SeqCst), 2);
}
