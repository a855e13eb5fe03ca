//! End-to-end: fail closed (issue #7, SPEC §8). No configuration mistake may leak personal data or
//! destroy data: each test is named after one of the issue's items and was seen failing on the
//! code before the fix. All data is synthetic.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

const HEADER: &str = "SessionId,UserId,Email,UserName,Time,Consent,Page\n";

/// Rows whose PII values carry a marker (`plainmail`, `Plain Person`), so a leak is easy to find
/// by scanning bytes.
fn rows(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "s{},cust{},plainmail{}@example.com,Plain Person {},2024-03-0{} 1{}:00:00,{},/p/{}\n",
                i / 3,
                i % 5,
                i,
                i,
                1 + i % 3,
                i % 10,
                ["1", "2", "\"[1,2]\"", "0"][i % 4],
                i
            )
        })
        .collect()
}

/// A derived target under out/.
fn target(file: &str) -> String {
    format!(
        r#"{{ "data_connector_ref": {{ "name": "files" }}, "path_prefix": "out", "file_name": "{file}" }}"#
    )
}

/// The common job plus `derived` entries.
fn job_with_derived(derived: &str) -> String {
    job("*.csv", "csv", "").replacen(
        "\"encryption_keys_data\"",
        &format!("\"derived_data\": [ {derived} ],\n  \"encryption_keys_data\""),
        1,
    )
}

fn masked(pattern: &str) -> String {
    format!(
        r#"{{ "target": {}, "consent_levels": [1, 2],
             "masked_fields": {{ "seed": "s3cr3t", "field_patterns":
               {{ "test/clicks/1.0.0": {{ "field_patterns": ["{pattern}"] }} }} }} }}"#,
        target("derived.csv")
    )
}

fn job_dir() -> JobDir {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write("data/clicks.csv", format!("{HEADER}{}", rows(60)));
    d
}

fn mode(d: &JobDir, rel: &str) -> u32 {
    std::fs::metadata(d.path().join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn issue_7_item_1_a_misspelt_exact_masked_field_is_refused() {
    let d = job_dir();
    d.write("job.json", job_with_derived(&masked("email")));
    for cmd in ["validate", "run"] {
        let r = d.run(&[cmd, "job.json"]);
        assert_eq!(r.code, 2, "{cmd}: {}", r.all_output());
        assert!(r.stderr.contains("no column 'email'"), "{}", r.stderr);
        assert!(
            r.stderr.contains("derived_data[0].masked_fields"),
            "{}",
            r.stderr
        );
        assert!(!d.exists("out"), "{cmd} wrote output");
    }
    // the right name works, and the derived output then holds no e-mail in plaintext
    d.write("job.json", job_with_derived(&masked("Email")));
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(!d.read("out/derived.csv").contains("plainmail"));

    // keylink decrypt --mask email likewise
    d.write("seed.txt", "s3cr3t\n");
    let decrypt = |mask: &str| {
        d.run(&[
            "decrypt",
            "--input",
            "out/encrypted.csv",
            "--keys",
            "out/keys.csv",
            "--contract",
            "contracts/c.json",
            "--purposes",
            "1,2",
            "--mask",
            mask,
            "--seed-file",
            "seed.txt",
            "--output",
            "later/d.csv",
        ])
    };
    let r = decrypt("email");
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("no column 'email'"), "{}", r.stderr);
    assert!(!d.exists("later/d.csv"));
    let r = decrypt("Nope*");
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("matches no"), "{}", r.stderr);
    let r = decrypt("Email");
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(!d.read("later/d.csv").contains("plainmail"));
}

#[test]
fn issue_7_item_2_a_pii_column_missing_from_the_csv_header_is_refused() {
    let d = job_dir();
    // upstream renamed Email to E-mail: the e-mails would go out in plaintext
    d.write(
        "data/clicks.csv",
        format!("{}{}", HEADER.replace("Email", "E-mail"), rows(30)),
    );
    d.write("job.json", job("*.csv", "csv", ""));
    for cmd in ["validate", "run"] {
        let r = d.run(&[cmd, "job.json"]);
        assert_eq!(r.code, 2, "{cmd}: {}", r.all_output());
        assert!(r.stderr.contains("no column 'Email'"), "{}", r.stderr);
        assert!(r.stderr.contains("PII"), "{}", r.stderr);
        assert!(r.stderr.contains("clicks.csv"), "{}", r.stderr);
        assert!(!r.all_output().contains("plainmail"));
        assert!(!d.exists("out"), "{cmd} wrote output");
    }
    // every other named field too: the subject field, the consent field
    for (from, to) in [("UserId", "UserID"), ("Consent", "consent")] {
        d.write(
            "data/clicks.csv",
            format!("{}{}", HEADER.replace(from, to), rows(30)),
        );
        let r = d.run(&["run", "job.json"]);
        assert_eq!(r.code, 2, "{from}: {}", r.all_output());
        assert!(
            r.stderr.contains(&format!("no column '{from}'")),
            "{}",
            r.stderr
        );
        assert!(!d.exists("out"));
    }
}

#[test]
fn issue_7_item_2_jsonl_pii_field_that_no_record_carries_is_reported() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    let lines: String = (0..20)
        .map(|i| {
            format!(
                r#"{{"SessionId":"s{i}","UserId":"plaincust{i}","E-mail":"plainmail{i}@example.com","UserName":"Plain Person {i}","Time":"2024-03-01 10:00:00","Consent":"1"}}"#
            ) + "\n"
        })
        .collect();
    d.write("data/clicks.jsonl", lines);
    d.write("job.json", job("*.jsonl", "jsonl", ""));
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        s["inputs"][0]["fields_never_seen"],
        serde_json::json!(["Email"])
    );
    let text = d.run(&["run", "job.json"]);
    assert_eq!(text.code, 1);
    assert!(text.all_output().contains("Email"), "{}", text.all_output());
}

/// The same check on an input large enough to be decoded in pieces (#8): a field that only
/// records far into the input carry is seen (what the pieces saw is merged), and the field that
/// no record carries is still the one reported.
#[test]
fn jsonl_a_field_only_late_records_carry_counts_as_seen() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    let lines: String = (0..6000)
        .map(|i| {
            // UserName only from record 5000 on, ~0.9 MB into the input: in pieces
            let name = if i >= 5000 {
                format!(r#","UserName":"Plain Person {i}""#)
            } else {
                String::new()
            };
            format!(
                r#"{{"SessionId":"s{i}","UserId":"plaincust{i}","E-mail":"plainmail{i}@example.com","Time":"2024-03-01 10:00:00","Consent":"1","Page":"/products/{i}/a/long/path/that/fills/the/line/out"{name}}}"#
            ) + "\n"
        })
        .collect();
    assert!(lines.len() > 1 << 20, "{} bytes", lines.len());
    d.write("data/clicks.jsonl", lines);
    d.write("job.json", job("*.jsonl", "jsonl", ""));
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    // (every record fails the Email validation: no record has an Email)
    assert_eq!(s["rows_read"], 6000, "{s}");
    assert_eq!(
        s["inputs"][0]["fields_never_seen"],
        serde_json::json!(["Email"])
    );
}

#[test]
fn issue_7_item_3_an_output_on_the_jobs_own_input_is_refused() {
    let d = job_dir();
    let before = d.read("data/clicks.csv");
    d.write(
        "job.json",
        job("*.csv", "csv", "").replace(
            r#""path_prefix": "out", "file_name": "encrypted.csv""#,
            r#""path_prefix": "data", "file_name": "clicks.csv""#,
        ),
    );
    for cmd in ["validate", "run"] {
        let r = d.run(&[cmd, "job.json"]);
        assert_eq!(r.code, 2, "{cmd}: {}", r.all_output());
        assert!(r.stderr.contains("would destroy"), "{}", r.stderr);
        assert_eq!(
            d.read("data/clicks.csv"),
            before,
            "the input was overwritten"
        );
    }
    // an output the next run would read back as input is refused too
    d.write(
        "job.json",
        job("*.csv", "csv", "").replace(
            r#""path_prefix": "out", "file_name": "encrypted.csv""#,
            r#""path_prefix": "data", "file_name": "encrypted.csv""#,
        ),
    );
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("selects its inputs"), "{}", r.stderr);
    assert!(!d.exists("data/encrypted.csv"));
}

#[test]
fn an_output_on_the_key_stores_own_files_is_refused() {
    // the JobDir config keeps the embedded store in ./keys.db (master key ./keys.db.master-key)
    let d = job_dir();
    d.write("job.json", job("*.csv", "csv", ""));
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let db = std::fs::read(d.path().join("keys.db")).unwrap();
    let key = d.read("keys.db.master-key");
    // a keys export (or any output) over the database, its WAL or the master key would destroy
    // every key: refused before anything is written, by validate and run alike
    for file in ["keys.db", "keys.db-wal", "keys.db.master-key"] {
        d.write(
            "job.json",
            job("*.csv", "csv", "").replace(
                r#""path_prefix": "out", "file_name": "keys.csv""#,
                &format!(r#""path_prefix": "", "file_name": "{file}""#),
            ),
        );
        for cmd in ["validate", "run"] {
            let r = d.run(&[cmd, "job.json"]);
            assert_eq!(r.code, 2, "{cmd} {file}: {}", r.all_output());
            assert!(r.stderr.contains("key store"), "{}", r.stderr);
        }
    }
    assert_eq!(std::fs::read(d.path().join("keys.db")).unwrap(), db);
    assert_eq!(d.read("keys.db.master-key"), key);
}

#[test]
fn issue_7_item_4_decrypt_output_on_its_input_or_keys_is_refused() {
    let d = job_dir();
    d.write("job.json", job("*.csv", "csv", ""));
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let enc = d.read("out/encrypted.csv");
    let keys = d.read("out/keys.csv");
    d.write("seed.txt", "s\n");
    for (output, what) in [
        ("out/encrypted.csv", "--input"),
        ("out/keys.csv", "--keys"),
        ("./out/../out/keys.csv", "--keys"),
        ("contracts/c.json", "--contract"),
        ("seed.txt", "--seed-file"),
    ] {
        let r = d.run(&[
            "decrypt",
            "--input",
            "out/encrypted.csv",
            "--keys",
            "out/keys.csv",
            "--contract",
            "contracts/c.json",
            "--purposes",
            "1",
            "--seed-file",
            "seed.txt",
            "--mask",
            "Page",
            "--output",
            output,
        ]);
        assert_eq!(r.code, 2, "{output}: {}", r.all_output());
        assert!(r.stderr.contains(what), "{output}: {}", r.stderr);
    }
    assert_eq!(d.read("out/encrypted.csv"), enc);
    assert_eq!(d.read("out/keys.csv"), keys);
    assert_eq!(d.read("seed.txt"), "s\n");
}

#[test]
fn issue_7_item_5_outputs_colliding_through_two_connectors_or_a_symlink_are_refused() {
    let d = job_dir();
    std::os::unix::fs::symlink(d.path().join("out"), d.path().join("out-link")).unwrap();
    std::fs::create_dir_all(d.path().join("out")).unwrap();
    d.write(
        "keylink.yaml",
        "connectors:\n  files: { type: local, root: . }\n  same: { type: local, root: ./ }\n  \
         linked: { type: local, root: ./out-link }\ncontracts: ./contracts\n\
         key_store: { type: embedded, path: ./keys.db }\n",
    );
    for (connector, prefix) in [("same", "out"), ("linked", "")] {
        let derived = format!(
            r#"{{ "target": {{ "data_connector_ref": {{ "name": "{connector}" }}, "path_prefix": "{prefix}", "file_name": "encrypted.csv" }}, "consent_levels": [1] }}"#
        );
        d.write("job.json", job_with_derived(&derived));
        let r = d.run(&["run", "job.json"]);
        assert_eq!(r.code, 2, "{connector}: {}", r.all_output());
        assert!(r.stderr.contains("are the same object"), "{}", r.stderr);
        assert!(!d.exists("out/encrypted.csv"));
    }
}

#[test]
fn issue_7_item_6_temporary_files_of_a_killed_run_are_removed_by_the_next_run() {
    let d = job_dir();
    d.write("job.json", job("*.csv", "csv", ""));
    // what kill -9 leaves: hidden temporary files holding keys and plaintext, no process
    // holding them
    d.write(
        "out/.keys.csv.keylink-tmp-00000000deadbeef",
        "keyLink,encryptionKey\nplainmail0@example.com\n",
    );
    d.write(
        "out/.encrypted.csv.keylink-tmp-0000000012345678",
        "Plain Person 1\n",
    );
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let left: Vec<String> = files_under(&d.path().join("out"))
        .into_iter()
        .filter(|f| f.contains(".keylink-tmp-"))
        .collect();
    assert!(left.is_empty(), "stale temporary files left: {left:?}");
    assert_no_plaintext(&d, &["plainmail", "Plain Person"], &[]);
}

#[test]
fn issue_7_item_7_keys_derived_and_rejected_outputs_are_private() {
    let d = job_dir();
    d.write(
        "data/clicks.csv",
        format!(
            "{HEADER}{}s9,c,not-an-email,n,2024-03-01 10:00:00,1,/p\n",
            rows(30)
        ),
    );
    let derived = format!(
        r#"{{ "target": {}, "consent_levels": [1] }}"#,
        target("d.csv")
    );
    d.write(
        "job.json",
        job_with_derived(&derived).replacen(
            "\"encryption_keys_data\"",
            &format!(
                "\"rejected_data\": {{ \"target\": {} }},\n  \"encryption_keys_data\"",
                target("rejected.csv")
            ),
            1,
        ),
    );
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    for f in ["out/keys.csv", "out/d.csv", "out/rejected.csv"] {
        assert_eq!(mode(&d, f), 0o600, "{f}");
    }
    // the encrypted output is for everyone: the usual permissions
    assert_ne!(mode(&d, "out/encrypted.csv") & 0o044, 0);

    // keylink decrypt's output holds plaintext: private too
    let r = d.run(&[
        "decrypt",
        "--input",
        "out/encrypted.csv",
        "--keys",
        "out/keys.csv",
        "--contract",
        "contracts/c.json",
        "--purposes",
        "1",
        "--output",
        "later/d.csv",
    ]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert_eq!(mode(&d, "later/d.csv"), 0o600);
}

#[test]
fn issue_7_item_8_demo_never_overwrites_an_existing_directory() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("mine")).unwrap();
    std::fs::write(d.path().join("mine/job.json"), "my own job").unwrap();
    let r = keylink(d.path(), &["demo", "mine", "--rows", "10"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("never overwrites"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(d.path().join("mine/job.json")).unwrap(),
        "my own job"
    );
    // an empty directory is fine
    std::fs::create_dir_all(d.path().join("empty")).unwrap();
    let r = keylink(d.path(), &["demo", "empty", "--rows", "10"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
}

#[test]
fn issue_7_input_that_already_carries_strmmeta_columns_is_refused() {
    let d = job_dir();
    d.write("job.json", job("*.csv", "csv", ""));
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    // the encrypted output fed back in as input
    std::fs::rename(
        d.path().join("out/encrypted.csv"),
        d.path().join("data/clicks.csv"),
    )
    .unwrap();
    std::fs::remove_dir_all(d.path().join("out")).unwrap();
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("strmMeta."), "{}", r.stderr);
    assert!(!d.exists("out"));
}

/// A small deterministic generator (xorshift), so the property test needs no extra crate and
/// every case can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// For random contracts, headers and masked fields, a job either refuses to start (exit 2,
/// nothing written) or every value of every contract PII column is, in the encrypted output,
/// never plaintext, and in a derived output plaintext only where that output decrypts the
/// field's purpose and does not mask it.
#[test]
fn issue_7_property_pii_is_never_plaintext_where_it_must_not_be() {
    let columns = [
        "SessionId",
        "UserId",
        "Email",
        "UserName",
        "Phone",
        "Time",
        "Consent",
        "Page",
    ];
    let pii_candidates = [
        "UserId", "Email", "UserName", "Phone", "Page", "Emial", "Name",
    ];
    let mut refused = 0;
    let mut ran = 0;
    for seed in 1..=16u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let d = JobDir::new();
        // a header: the fixed columns, sometimes with one PII column renamed
        let mut header: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        if rng.pick(3) == 0 {
            let i = 1 + rng.pick(4);
            header[i] = format!("{}X", header[i]);
        }
        // a contract: 1..4 PII fields with purposes 1..3
        let mut pii: Vec<(String, i32)> = Vec::new();
        for _ in 0..1 + rng.pick(4) {
            let f = pii_candidates[rng.pick(pii_candidates.len())].to_string();
            if !pii.iter().any(|(p, _)| *p == f) {
                pii.push((f, 1 + rng.pick(3) as i32));
            }
        }
        let pii_json: Vec<String> = pii.iter().map(|(f, l)| format!("\"{f}\": {l}")).collect();
        d.write(
            "contracts/c.json",
            format!(
                r#"{{ "ref": {{ "handle": "test", "name": "clicks", "version": "1.0.0" }},
                     "keyField": "SessionId", "piiFields": {{ {} }} }}"#,
                pii_json.join(", ")
            ),
        );
        // rows: every value of field f in row i is "v-<f>-<i>-plain", under whatever name its
        // column has in this header (a renamed column still holds the field's data)
        let mut data = header.join(",") + "\n";
        for i in 0..40 {
            let row: Vec<String> = columns
                .iter()
                .map(|c| match *c {
                    "SessionId" => format!("s{}", i / 4),
                    "Time" => format!("2024-03-0{} 10:00:00", 1 + i % 2),
                    "Consent" => ["1", "2", "3", "\"[1,2,3]\"", "0"][i % 5].to_string(),
                    field => format!("v-{field}-{i}-plain"),
                })
                .collect();
            data += &(row.join(",") + "\n");
        }
        d.write("data/in.csv", &data);
        // a derived output: random purposes, maybe a masked field (exact, glob or misspelt)
        let levels: Vec<i32> = (1..=3).filter(|_| rng.pick(2) == 0).collect();
        let levels = if levels.is_empty() { vec![1] } else { levels };
        let mask = ["", "Email", "User*", "email", "Phone"][rng.pick(5)];
        let masked_json = if mask.is_empty() {
            String::new()
        } else {
            format!(
                r#", "masked_fields": {{ "seed": "k", "field_patterns": {{ "test/clicks/1.0.0": {{ "field_patterns": ["{mask}"] }} }} }}"#
            )
        };
        let derived = format!(
            r#"{{ "target": {}, "consent_levels": {levels:?}{masked_json} }}"#,
            target("derived.csv")
        );
        d.write("job.json", job_with_derived(&derived));
        let r = d.run(&["run", "job.json"]);
        let case = format!(
            "seed {seed}: header {header:?}, pii {pii:?}, levels {levels:?}, mask {mask:?}"
        );
        if r.code == 2 {
            refused += 1;
            assert!(!d.exists("out"), "{case}: refused but wrote output");
            // a refusal must have a reason that names a field or setting
            assert!(
                r.stderr.contains("no column") || r.stderr.contains("matches no"),
                "{case}: {}",
                r.stderr
            );
            continue;
        }
        assert!(r.code == 0 || r.code == 1, "{case}: {}", r.all_output());
        ran += 1;
        let read_csv = |rel: &str| -> Vec<Vec<String>> {
            let mut rd = csv::Reader::from_path(d.path().join(rel)).unwrap();
            let mut rows = vec![rd.headers().unwrap().iter().map(String::from).collect()];
            rows.extend(
                rd.records()
                    .map(|r| r.unwrap().iter().map(String::from).collect()),
            );
            rows
        };
        for (file, is_derived) in [("out/encrypted.csv", false), ("out/derived.csv", true)] {
            let table = read_csv(file);
            for row in &table[1..] {
                for (col, v) in row.iter().enumerate() {
                    // a plaintext value: which field's data is it?
                    let Some(field) = v.strip_prefix("v-").and_then(|r| r.split('-').next()) else {
                        continue;
                    };
                    let Some((_, purpose)) = pii.iter().find(|(p, _)| p == field) else {
                        continue; // not personal data under this contract
                    };
                    let column = &table[0][col];
                    let masked_here = match mask {
                        "" | "email" => false,
                        "User*" => column.starts_with("User"),
                        m => m == column,
                    };
                    let may_be_plain =
                        is_derived && column == field && levels.contains(purpose) && !masked_here;
                    assert!(
                        may_be_plain,
                        "{case}: {file} column {column} holds plaintext of PII field {field}"
                    );
                }
            }
        }
    }
    // the generator must exercise both outcomes, or the property says nothing
    assert!(refused > 0 && ran > 0, "refused {refused}, ran {ran}");
}

/// `keylink validate` checks a job without building what a run writes with (issue #8): it opens
/// no key store (an embedded store would create its database) and creates no output; `run` of
/// the same job does both, so the check can fail.
#[test]
fn issue_8_validate_opens_no_key_store_and_creates_nothing() {
    let d = job_dir();
    d.write("job.json", job("*.csv", "csv", ""));
    let r = d.run(&["validate", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(r.stdout.contains("is valid"), "{}", r.stdout);
    for made_by_a_run in ["keys.db", "out"] {
        assert!(
            !d.exists(made_by_a_run),
            "validate made {made_by_a_run}: {}",
            r.all_output()
        );
    }
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    for made_by_a_run in ["keys.db", "out/encrypted.csv", "out/keys.csv"] {
        assert!(d.exists(made_by_a_run), "run did not make {made_by_a_run}");
    }
}

/// The keys export is CSV whatever the data's format (SPEC §2), and rejected records are written
/// as they were read: a `data_type` that says otherwise is refused, naming the setting, before
/// anything is made; one that agrees is accepted.
#[test]
fn issue_8_keys_and_rejected_targets_refuse_a_data_type_they_cannot_honour() {
    let d = job_dir();
    let with = |field: &str, data_type: &str| {
        let mut job = job("*.csv", "csv", "");
        if field == "rejected_data" {
            job = job.replacen(
                "\"encryption_keys_data\"",
                &format!(
                    "\"rejected_data\": {{ \"target\": {} }},\n  \"encryption_keys_data\"",
                    target("rejected.csv")
                ),
                1,
            );
        }
        let key = format!(
            "\"file_name\": \"{}\"",
            if field == "rejected_data" {
                "rejected.csv"
            } else {
                "keys.csv"
            }
        );
        job.replacen(&key, &format!("{key}, \"data_type\": {data_type}"), 1)
    };
    for (field, data_type, expected) in [
        (
            "encryption_keys_data",
            r#"{ "jsonl": {} }"#,
            "encryption_keys_data.target.data_type: the keys export is always CSV, found jsonl",
        ),
        (
            "rejected_data",
            r#"{ "jsonl": {} }"#,
            "rejected_data.target.data_type: rejected records are written as they were read, \
             in the input's format (csv); found jsonl",
        ),
    ] {
        d.write("job.json", with(field, data_type));
        let r = d.run(&["run", "job.json"]);
        assert_ne!(r.code, 0, "{field}: {}", r.all_output());
        assert!(r.stderr.contains(expected), "{field}: {}", r.stderr);
        assert!(!d.exists("out"), "{field}: the refused run made out/");
    }
    for field in ["encryption_keys_data", "rejected_data"] {
        d.write("job.json", with(field, r#"{ "csv": {} }"#));
        let r = d.run(&["run", "job.json"]);
        assert_eq!(r.code, 0, "{field}: {}", r.all_output());
        assert!(
            d.read("out/keys.csv")
                .starts_with("keyLink,encryptionKey,policyId,expiresAt\n"),
            "{field}"
        );
        std::fs::remove_dir_all(d.path().join("out")).unwrap();
    }
}
