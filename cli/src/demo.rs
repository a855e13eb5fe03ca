//! `keylink demo`: a small, realistic, entirely synthetic clickstream, its contract, a job and a
//! config — then the job runs and the CLI explains what came out.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use keylink_core::engine::{self, Mode, RunOptions};
use keylink_core::job::{BatchJob, Config};

use crate::output;

const CONTRACT: &str = r#"{
  "ref": { "handle": "demo", "name": "clickstream", "version": "1.0.0" },
  "keyField": "SessionId",
  "dataSubjectField": "UserId",
  "fieldMetadata": [
    { "fieldName": "UserId",   "personalDataConfig": { "isPii": true, "purposeLevel": 1 } },
    { "fieldName": "Email",    "personalDataConfig": { "isPii": true, "purposeLevel": 2 } },
    { "fieldName": "UserName", "personalDataConfig": { "isPii": true, "purposeLevel": 2 } },
    { "fieldName": "Country",  "personalDataConfig": { "isPii": false, "isQuasiId": true } }
  ],
  "validations": [ { "field": "Email", "type": "regex", "value": "^[^@ ]+@[^@ ]+\\.[a-z]+$" } ]
}
"#;

const JOB: &str = r#"{
  "source_data": {
    "data_connector_ref": { "name": "demo" },
    "path_prefix": "data",
    "file_name": "*.csv",
    "data_type": { "csv": { "charset": "UTF-8" } }
  },
  "consent": {
    "default_consent_levels": [0],
    "consent_level_extractor": {
      "field": "Consent",
      "field_patterns": {
        "necessary": { "consent_levels": [0] },
        "analytics": { "consent_levels": [0, 1] },
        "marketing": { "consent_levels": [0, 1, 2] }
      }
    }
  },
  "encryption": {
    "timestamp_config": {
      "field": "EventTime",
      "format": "yyyy-MM-dd HH:mm:ss",
      "default_time_zone": { "id": "Europe/Amsterdam" }
    }
  },
  "event_contract_ref": { "handle": "demo", "name": "clickstream", "version": "1.0.0" },
  "encrypted_data": {
    "target": {
      "data_connector_ref": { "name": "demo" },
      "path_prefix": "out",
      "file_name": "clickstream-encrypted.csv",
      "data_type": { "csv": { "charset": "UTF-8" } }
    }
  },
  "encryption_keys_data": {
    "target": {
      "data_connector_ref": { "name": "demo" },
      "path_prefix": "out",
      "file_name": "clickstream-keys.csv"
    }
  },
  "derived_data": [
    {
      "target": {
        "data_connector_ref": { "name": "demo" },
        "path_prefix": "out",
        "file_name": "clickstream-analytics.csv"
      },
      "consent_levels": [1],
      "consent_level_type": "GRANULAR"
    },
    {
      "target": {
        "data_connector_ref": { "name": "demo" },
        "path_prefix": "out",
        "file_name": "clickstream-recommender.csv"
      },
      "consent_levels": [2],
      "consent_level_type": "CUMULATIVE",
      "masked_fields": {
        "hash_type": "HMAC_SHA256",
        "seed": "demo-seed-change-me",
        "field_patterns": {
          "demo/clickstream/1.0.0": { "field_patterns": ["UserId", "Email"] }
        }
      }
    }
  ],
  "policy_id": ""
}
"#;

const CONFIG: &str = "# keylink config for the demo: see README.md
connectors:
  demo: { type: local, root: . }
contracts: ./contracts
key_store: { type: embedded, path: ./keylink-keys.db }
";

const FIRST: &[&str] = &[
    "Anna", "Bram", "Chloé", "Daan", "Eva", "Finn", "Greta", "Hugo", "Iris", "Jonas", "Katja",
    "Lars", "Mila", "Noah", "Olga", "Pieter", "Quinn", "Rosa", "Sem", "Tess", "Ümit", "Vera",
    "Wout", "Xena", "Yara", "Zoë",
];
const LAST: &[&str] = &[
    "de Vries", "Jansen", "Bakker", "Visser", "Smit", "Meijer", "Mulder", "de Boer", "Bos", "Vos",
    "Peters", "Hendriks", "O'Neill", "Müller", "García",
];
const COUNTRIES: &[&str] = &["NL", "BE", "DE", "FR", "ES", "IE"];
const PAGES: &[&str] = &[
    "/",
    "/products",
    "/products/42",
    "/cart",
    "/checkout",
    "/account",
    "/search?q=shoes,red",
    "/blog/privacy-by-design",
];
const CONSENT: &[&str] = &[
    "necessary",
    "analytics",
    "marketing",
    "analytics",
    "marketing",
];

/// A tiny deterministic generator (SplitMix64): the demo is the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

fn csv_quote(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// The demo clickstream: `rows` events of sessions over about three and a half days from
/// 2024-03-30, with two bad rows (an invalid e-mail and an unparseable timestamp) so the summary
/// shows how rejects are reported. Up to 1,000 rows the sessions come at their own pace (a few
/// hundred events a day); more rows come closer together, so that any `--rows` spans the same
/// days (it used to run on at that pace past the end of April, into dates such as 2024-04-33).
pub fn clickstream(rows: usize) -> String {
    let mut rng = Rng(42);
    let mut out = String::from("SessionId,UserId,Email,UserName,Country,Page,EventTime,Consent\n");
    let users: Vec<(String, String, String, &str)> = (0..(rows / 20).max(3))
        .map(|i| {
            let first = rng.pick(FIRST);
            let last = rng.pick(LAST);
            let mail_name: String = format!("{first}.{last}")
                .to_lowercase()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
                .collect();
            (
                format!("cust-{:05}", 10000 + i),
                format!("{mail_name}{}@example.com", i % 7),
                format!("{first} {last}"),
                rng.pick(COUNTRIES),
            )
        })
        .collect();
    // 2024-03-30 00:00 Europe/Amsterdam (the night before the switch to summer time)
    let start = chrono::NaiveDate::from_ymd_opt(2024, 3, 30).expect("a valid date");
    // time since the start, in ms: the pace of up to 1,000 rows, compressed for more
    let mut ms = 0u64;
    let pace =
        |seconds: usize| (seconds as u64 * 1000).min(seconds as u64 * 1_000_000 / rows as u64);
    let mut written = 0;
    while written < rows {
        let u = &users[rng.below(users.len())];
        let session = format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            rng.next() as u32,
            rng.next() as u16,
            rng.next() % 0x1000,
            rng.next() % 0x1000,
            rng.next() % 0x1_0000_0000_0000
        );
        let consent = rng.pick(CONSENT);
        let events = 1 + rng.below(12);
        ms += pace(rng.below(3000));
        for _ in 0..events.min(rows - written) {
            ms += pace(5 + rng.below(120));
            let (day, second) = (ms / 86_400_000, ms / 1000 % 86_400);
            let ts = format!(
                "{} {:02}:{:02}:{:02}",
                start + chrono::Days::new(day),
                second / 3600,
                second / 60 % 60,
                second % 60
            );
            let _ = writeln!(
                out,
                "{session},{},{},{},{},{},{ts},{consent}",
                u.0,
                csv_quote(&u.1),
                csv_quote(&u.2),
                u.3,
                csv_quote(rng.pick(PAGES)),
            );
            written += 1;
        }
    }
    // two bad rows, to show how rejects are reported (by line number, never by value)
    out.push_str(
        "bad-session-1,cust-99998,not-an-email,Nobody Known,NL,/,2024-03-31 12:00:00,marketing\n",
    );
    out.push_str(
        "bad-session-2,cust-99999,someone@example.com,Some One,NL,/,31/03/2024 12:00,marketing\n",
    );
    out
}

/// Writes the demo into `dir` and runs it.
pub async fn run(dir: &Path, rows: usize) -> Result<u8> {
    // never overwrite: a user's edited job, contract or data may be in there (SPEC §8)
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        anyhow::bail!(
            "{} already exists and is not empty; keylink demo never overwrites a directory — \
             name a new one (`keylink demo my-demo`) or remove it",
            dir.display()
        );
    }
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("{} exists and is not a directory", dir.display());
    }
    std::fs::create_dir_all(dir.join("data"))
        .and_then(|_| std::fs::create_dir_all(dir.join("contracts")))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let files = [
        (dir.join("data/clickstream.csv"), clickstream(rows)),
        (dir.join("contracts/clickstream.json"), CONTRACT.to_string()),
        (dir.join("job.json"), JOB.to_string()),
        (dir.join("keylink.yaml"), CONFIG.to_string()),
    ];
    for (path, text) in &files {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let job_file = dir.join("job.json");
    let config = Config::from_file(&dir.join("keylink.yaml"))?;
    let job = BatchJob::from_file(&job_file)?;
    let prepared = engine::prepare(&job, &job_file, &config, None, Mode::Run).await?;
    let summary = prepared.run(RunOptions::default()).await?;
    output::print(&output::summary_text(&job_file, &summary));

    let d = dir.display();
    let mut t = String::new();
    let _ = writeln!(t, "\nThe demo is in {d}:");
    let _ = writeln!(
        t,
        "  {d}/data/clickstream.csv            the input: synthetic clickstream with e-mails and names"
    );
    let _ = writeln!(
        t,
        "  {d}/contracts/clickstream.json      the data contract: UserId, Email, UserName are PII"
    );
    let _ = writeln!(
        t,
        "  {d}/job.json                        the batch job (the original system's format)"
    );
    let _ = writeln!(
        t,
        "  {d}/keylink.yaml                    connectors, contracts directory, key store"
    );
    let _ = writeln!(
        t,
        "  {d}/out/clickstream-encrypted.csv   PII encrypted with one key per session and day"
    );
    let _ = writeln!(
        t,
        "  {d}/out/clickstream-keys.csv        the keys (Tink JSON keysets): guard them like the data"
    );
    let _ = writeln!(
        t,
        "  {d}/keylink-keys.db                 the key store (keys encrypted under {d}/keylink-keys.db.master-key)"
    );
    let _ = writeln!(t, "\nRun it again:   keylink run {d}/job.json");
    let _ = writeln!(
        t,
        "Decrypt with stock Google Tink (Python): see \"Reading the output\" in README.md."
    );
    output::print(&t);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_data_is_deterministic_and_well_formed() {
        let a = clickstream(200);
        assert_eq!(a, clickstream(200));
        let lines: Vec<&str> = a.lines().collect();
        assert_eq!(lines.len(), 1 + 200 + 2);
        assert!(lines[0].starts_with("SessionId,"));
        // the last rows are the two deliberate rejects
        assert!(lines[lines.len() - 2].contains("not-an-email"));
    }

    /// Every timestamp is a real one, whatever `--rows` says, and the days are the same: at
    /// 9,600 rows and more the demo used to write dates such as 2024-04-33, which its own job
    /// rejected.
    #[test]
    fn demo_data_of_any_size_spans_the_same_real_days() {
        let date = |m: u32, d: u32| chrono::NaiveDate::from_ymd_opt(2024, m, d).unwrap();
        for rows in [1_000, 50_000] {
            let data = clickstream(rows);
            let mut days = std::collections::BTreeSet::new();
            // the header and the two deliberate rejects aside
            for line in data.lines().skip(1).take(rows) {
                let ts = line.rsplit(',').nth(1).unwrap();
                let t = chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S")
                    .unwrap_or_else(|e| panic!("{rows} rows: `{ts}` is no timestamp: {e}"));
                days.insert(t.date());
            }
            let (first, last) = (days.first().unwrap(), days.last().unwrap());
            assert_eq!(*first, date(3, 30), "{rows} rows");
            assert!(
                (date(4, 1)..=date(4, 3)).contains(last),
                "{rows} rows end on {last}"
            );
        }
    }

    #[test]
    fn demo_job_and_contract_parse() {
        let c = keylink_core::contract::DataContract::from_slice(
            CONTRACT.as_bytes(),
            Path::new("c.json"),
        )
        .unwrap();
        assert_eq!(c.pii_fields.len(), 3);
        BatchJob::from_slice(JOB.as_bytes(), Path::new("job.json")).unwrap();
    }
}
