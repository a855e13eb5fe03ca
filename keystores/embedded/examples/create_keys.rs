//! Times key creation in the embedded store the way a 1M-row encrypt job drives it: `--keys N`
//! new scopes (default 55,000) requested in batches of `--batch B` (default 275, one engine batch
//! of ~5,000 rows), each with a data subject. Prints wall and CPU seconds.
//!
//! `cargo run --release -p keylink-keystore-embedded --example create_keys -- [--keys N] [--batch B]`

use std::sync::Arc;
use std::time::Instant;

use keylink_core::keystore::envelope::MasterKey;
use keylink_core::keystore::{KeyLabels, KeyStore, ScopeRequest};
use keylink_keystore_embedded::{EmbeddedKeyStore, MasterKeySource};

fn cpu_seconds() -> f64 {
    // /proc/self/stat: utime and stime in clock ticks (fields 14 and 15)
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let (keys, batch) = (arg("--keys", 55_000), arg("--batch", 275));
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedKeyStore::open(
        &dir.path().join("keys.db"),
        MasterKeySource::Key(MasterKey::from_bytes([7; 32])),
    )
    .unwrap();
    let lookup = store.lookup_key().clone();
    let labels = Arc::new(KeyLabels {
        group: "bench".into(),
        policy_id: String::new(),
    });
    let requests: Vec<ScopeRequest> = (0..keys)
        .map(|i| ScopeRequest {
            scope: lookup.scope_hash("bench", format!("session-{i}").as_bytes()),
            window_start_ms: 1_700_000_000_000 + (i as i64 % 3) * 86_400_000,
            expires_at_ms: 1_900_000_000_000,
            subject: Some(lookup.subject_hash(format!("user-{}", i / 4).as_bytes())),
            labels: labels.clone(),
        })
        .collect();
    let (t0, c0) = (Instant::now(), cpu_seconds());
    for chunk in requests.chunks(batch) {
        let got = store.get_or_create(chunk).await.unwrap();
        assert_eq!(got.len(), chunk.len());
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    let size = std::fs::metadata(dir.path().join("keys.db")).map_or(0, |m| m.len());
    use std::io::Write;
    let _ = writeln!(
        std::io::stdout(),
        "{keys} keys in batches of {batch}: {wall:.2} s wall, {cpu:.2} s CPU, {:.0} keys/s, \
         database {:.1} MB",
        keys as f64 / wall,
        size as f64 / 1e6
    );
}
