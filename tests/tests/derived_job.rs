//! End-to-end: purpose-bound derived datasets (issue #3), checked against an independent oracle.
//! All data is synthetic.

mod common;

use common::*;

const HEADER: &str = "SessionId,UserId,Email,UserName,UserAgent,Page,Time,Consent\n";

/// Rows with mixed consent values: mapped names, unknown names, empty, and (for the parsing job)
/// ints, arrays and malformed values.
fn rows(n: usize, consents: &[&str]) -> String {
    let mut s = String::new();
    for i in 0..n {
        let c = consents[i % consents.len()];
        s.push_str(&format!(
            "s{},cust-{},user{}@example.com,\"Name {}, {}\",agent-{},/p/{},2024-05-0{} 1{}:00:00,{}\n",
            i / 5,
            i % 13,
            i % 17,
            i % 11,
            i % 3,
            i % 4,
            i % 9,
            1 + i % 4,
            i % 10,
            if c.contains(',') { format!("\"{c}\"") } else { c.to_string() },
        ));
    }
    s
}

const CONTRACT: &str = r#"{
  "ref": { "handle": "test", "name": "clicks", "version": "1.0.0" },
  "keyField": "SessionId",
  "piiFields": { "UserId": 1, "Email": 2, "UserName": 3 }
}"#;

fn target(file: &str) -> String {
    format!(
        r#"{{ "data_connector_ref": {{ "name": "files" }}, "path_prefix": "out", "file_name": "{file}" }}"#
    )
}

fn job(consent: &str, derived: &str) -> String {
    format!(
        r#"{{
  "source_data": {{ "data_connector_ref": {{ "name": "files" }}, "path_prefix": "data",
                   "file_name": "in.csv", "data_type": {{ "csv": {{}} }} }},
  "consent": {consent},
  "encryption": {{ "timestamp_config": {{ "field": "Time", "format": "yyyy-MM-dd HH:mm:ss" }} }},
  "event_contract_ref": {{ "handle": "test", "name": "clicks", "version": "1.0.0" }},
  "encrypted_data": {{ "target": {} }},
  "encryption_keys_data": {{ "target": {} }},
  "derived_data": [ {derived} ]
}}"#,
        target("encrypted.csv"),
        target("keys.csv")
    )
}

const MAPPED_CONSENT: &str = r#"{ "default_consent_levels": [0],
  "consent_level_extractor": { "field": "Consent", "field_patterns": {
    "basic": { "consent_levels": [0] },
    "analytics": { "consent_levels": [0, 1] },
    "marketing": { "consent_levels": [1, 2] },
    "all": { "consent_levels": [0, 1, 2, 3] } } } }"#;

#[test]
fn derived_outputs_match_the_oracle_in_one_pass() {
    let d = JobDir::new();
    d.write("contracts/c.json", CONTRACT);
    d.write(
        "data/in.csv",
        format!(
            "{HEADER}{}",
            rows(
                3000,
                &["basic", "analytics", "marketing", "all", "unknown", ""]
            )
        ),
    );
    let derived = format!(
        r#"{{ "target": {}, "consent_levels": [1] }},
           {{ "target": {}, "consent_levels": [2], "consent_level_type": "CUMULATIVE",
             "masked_fields": {{ "hash_type": "HMAC_SHA256", "seed": "oracle-seed",
               "field_patterns": {{ "test/clicks/1.0.0": {{ "field_patterns": ["User*", "Page"] }} }} }} }},
           {{ "target": {}, "consent_levels": [1, 2], "consent_level_type": 2,
             "masked_fields": {{ "seed": "another-seed",
               "field_patterns": {{ "test/clicks/1.0.0": {{ "field_patterns": ["Email"] }} }} }} }}"#,
        target("analytics.csv"),
        target("recommender.csv"),
        target("marketing.csv")
    );
    d.write("job.json", job(MAPPED_CONSENT, &derived));
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["rows_read"], 3000);
    // "unknown" and "" are not in the mapping: default consent, counted
    assert_eq!(s["consent_defaulted"], 1000);
    let outputs = s["outputs"].as_array().unwrap();
    let rows_of = |name: &str| {
        outputs.iter().find(|o| o["name"] == name).unwrap()["rows"]
            .as_u64()
            .unwrap()
    };
    // analytics [1] granular: analytics, marketing, all
    assert_eq!(rows_of("derived[0]"), 1500);
    // cumulative [2]: max(levels) >= 2: marketing, all
    assert_eq!(rows_of("derived[1]"), 1000);
    // granular [1,2]: marketing, all
    assert_eq!(rows_of("derived[2]"), 1000);
    for (i, file) in ["analytics.csv", "recommender.csv", "marketing.csv"]
        .iter()
        .enumerate()
    {
        let out = oracle_check(
            &d,
            "job.json",
            "contracts/c.json",
            "data/in.csv",
            &format!("out/{file}"),
            i,
        );
        assert!(out.contains("0 mismatches"), "{out}");
    }
    // the recommender dataset: UserId (purpose 1 <= 2) decrypted and masked, consistently
    let rec = d.read("out/recommender.csv");
    assert!(!rec.contains("cust-"), "a masked UserId leaked");
    assert!(
        !rec.contains("Name "),
        "UserName (purpose 3) must stay ciphertext"
    );
    // the source was read once: one input in the summary, 3000 rows
    assert_eq!(s["inputs"].as_array().unwrap().len(), 1);
}

#[test]
fn consent_parsed_from_the_field_without_a_mapping() {
    let d = JobDir::new();
    d.write("contracts/c.json", CONTRACT);
    d.write(
        "data/in.csv",
        format!(
            "{HEADER}{}",
            rows(
                600,
                &[
                    "2", "[1,2]", "[0]", "[3, 1]", "-1", "[1,-2]", "two", "[1,", ""
                ]
            )
        ),
    );
    let consent =
        r#"{ "default_consent_levels": [0], "consent_level_extractor": { "field": "Consent" } }"#;
    let derived = format!(
        r#"{{ "target": {}, "consent_levels": [1] }}, {{ "target": {}, "consent_levels": [1], "consent_level_type": "CUMULATIVE" }}"#,
        target("g.csv"),
        target("c.csv")
    );
    d.write("job.json", job(consent, &derived));
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    // -1, [1,-2], two, [1, and "" fall back to the default, counted, no crash
    let defaulted = (0..600).filter(|i| i % 9 >= 4).count() as u64;
    assert_eq!(s["consent_defaulted"], defaulted);
    for (i, f) in ["out/g.csv", "out/c.csv"].iter().enumerate() {
        let out = oracle_check(&d, "job.json", "contracts/c.json", "data/in.csv", f, i);
        assert!(out.contains("0 mismatches"), "{out}");
    }
    for leak in ["user1@example.com", "Name 3"] {
        assert!(!r.all_output().contains(leak));
    }
}

#[test]
fn masking_config_errors_come_before_any_output() {
    let cases = [
        (
            r#""masked_fields": { "field_patterns": { "test/clicks/1.0.0": { "field_patterns": ["Email"] } } }"#,
            "seed",
        ),
        (
            r#""masked_fields": { "seed": "s", "field_patterns": { "test/clicks/1.0.0": { "field_patterns": ["Nothing*"] } } }"#,
            "matches no field",
        ),
        (
            r#""masked_fields": { "seed": "s", "field_patterns": { "test/clickz/1.0.0": { "field_patterns": ["Email"] } } }"#,
            "not the job's contract",
        ),
        (
            r#""masked_fields": { "seed": "s", "hash_type": "MURMUR3", "field_patterns": { "test/clicks/1.0.0": { "field_patterns": ["Email"] } } }"#,
            "not supported",
        ),
        (r#""consent_level_type": "SOMETIMES""#, "consent_level_type"),
    ];
    for (extra, expect) in cases {
        let d = JobDir::new();
        d.write("contracts/c.json", CONTRACT);
        d.write("data/in.csv", format!("{HEADER}{}", rows(10, &["all"])));
        let derived = format!(
            r#"{{ "target": {}, "consent_levels": [1], {extra} }}"#,
            target("d.csv")
        );
        d.write("job.json", job(MAPPED_CONSENT, &derived));
        let r = d.run(&["run", "job.json"]);
        assert_eq!(r.code, 2, "{expect}: {}", r.all_output());
        assert!(r.stderr.contains(expect), "{expect}: {}", r.stderr);
        assert!(r.stderr.contains("derived_data[0]"), "{}", r.stderr);
        assert!(!d.exists("out"), "{expect}: output written");
        assert!(!r.stderr.contains("\"s\""));
    }
}

/// A job over `n` rows of mixed consent with two derived outputs, run: `now-granular.csv`
/// (purposes 1 and 2, `UserName` and `Page` masked with the seed in `seed.txt`) and
/// `now-cumulative.csv` (purposes up to 1).
fn run_two_purpose_job(n: usize) -> JobDir {
    let d = JobDir::new();
    d.write("contracts/c.json", CONTRACT);
    d.write(
        "data/in.csv",
        format!(
            "{HEADER}{}",
            rows(n, &["basic", "analytics", "marketing", "all", "x"])
        ),
    );
    let derived = format!(
        r#"{{ "target": {}, "consent_levels": [1, 2],
             "masked_fields": {{ "seed": "later-seed",
               "field_patterns": {{ "test/clicks/1.0.0": {{ "field_patterns": ["UserName", "Page"] }} }} }} }},
           {{ "target": {}, "consent_levels": [1], "consent_level_type": "CUMULATIVE" }}"#,
        target("now-granular.csv"),
        target("now-cumulative.csv")
    );
    d.write("job.json", job(MAPPED_CONSENT, &derived));
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    d.write("seed.txt", "later-seed\n");
    d
}

/// The `keylink decrypt` options that give [`run_two_purpose_job`]'s outputs again: (the
/// purposes and the other options, the output they should equal).
const LATER: [(&str, &[&str], &str); 2] = [
    (
        "1,2",
        &["--mask", "UserName,Page", "--seed-file", "seed.txt"],
        "now-granular.csv",
    ),
    ("1", &["--type", "cumulative"], "now-cumulative.csv"),
];

/// `keylink decrypt` of the job's encrypted output with the keys in `keys`, for `purposes`, into
/// `output`, with `extra` options.
fn decrypt_later(d: &JobDir, keys: &str, purposes: &str, extra: &[&str], output: &str) -> Run {
    let mut args = vec![
        "decrypt",
        "--input",
        "out/encrypted.csv",
        "--keys",
        keys,
        "--contract",
        "contracts/c.json",
        "--purposes",
        purposes,
        "--output",
        output,
    ];
    args.extend_from_slice(extra);
    d.run(&args)
}

/// `keylink decrypt` over the encrypted output and the keys export equals the job's own derived
/// output, byte for byte; deleting keys (crypto-shredding) makes exactly their rows unrecoverable,
/// counted and never guessed.
#[test]
fn decrypt_later_equals_the_jobs_derived_output() {
    let d = run_two_purpose_job(500);
    for (purposes, extra, now) in LATER {
        let later = decrypt_later(&d, "out/keys.csv", purposes, extra, &format!("later/{now}"));
        assert_eq!(later.code, 0, "{}", later.all_output());
        assert_eq!(
            d.read(&format!("later/{now}")),
            d.read(&format!("out/{now}"))
        );
    }

    // crypto-shredding: drop every other key from the export
    let keys = d.read("out/keys.csv");
    let mut lines = keys.lines();
    let mut kept = format!("{}\n", lines.next().unwrap());
    let mut deleted = Vec::new();
    for (i, l) in lines.enumerate() {
        if i % 2 == 0 {
            kept.push_str(l);
            kept.push('\n');
        } else {
            deleted.push(l.split(',').next().unwrap().to_string());
        }
    }
    d.write("partial-keys.csv", kept);
    let enc = d.read("out/encrypted.csv");
    let shredded = enc
        .lines()
        .skip(1)
        .filter(|l| deleted.iter().any(|k| l.contains(k.as_str())))
        .count();
    assert!(shredded > 0);
    let r = decrypt_later(
        &d,
        "partial-keys.csv",
        "1",
        &["--type", "cumulative", "--json"],
        "later/partial.csv",
    );
    assert_eq!(
        r.code,
        1,
        "rows without keys are reported: {}",
        r.all_output()
    );
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        s["input"]["rejects"]["unknown_key"]["count"],
        shredded as u64
    );
    let partial = d.read("later/partial.csv");
    for k in &deleted {
        assert!(
            !partial.contains(k.as_str()),
            "a row of a deleted key was output"
        );
    }
    assert!(!r.all_output().contains("@example.com"));
}

/// Issue #8: `keylink decrypt` keeps its batches, rows' edits, encoder and output buffers from one
/// batch to the next; over an encrypted input of several batches (~2 MB, 512 KiB each) it still
/// equals the job's own derived outputs, byte for byte.
#[test]
fn issue_8_decrypt_over_many_batches_equals_the_jobs_derived_output() {
    let d = run_two_purpose_job(8_000);
    assert!(
        d.read("out/encrypted.csv").len() > 3 * (512 << 10),
        "the encrypted input spans several batches"
    );
    for (purposes, extra, now) in LATER {
        let later = decrypt_later(&d, "out/keys.csv", purposes, extra, "later/out.csv");
        assert_eq!(later.code, 0, "{}", later.all_output());
        assert!(
            d.read("later/out.csv") == d.read(&format!("out/{now}")),
            "decrypt --purposes {purposes} differs from the job's {now}"
        );
        std::fs::remove_file(d.path().join("later/out.csv")).unwrap();
    }
}

#[test]
fn decrypt_jsonl_later_equals_the_jobs_derived_output() {
    let d = JobDir::new();
    d.write("contracts/c.json", CONTRACT);
    let mut data = String::new();
    for i in 0..200 {
        data.push_str(&format!(
            "{{\"SessionId\":\"s{}\",\"UserId\":\"c{}\",\"Email\":\"u{}@example.com\",\"UserName\":\"N \\\"{}\\\"\",\"Time\":\"2024-05-01 1{}:00:00\",\"Consent\":\"{}\",\"strmX\":{{\"a\":[1,2]}}}}\n",
            i / 4, i % 9, i % 5, i % 3, i % 10, ["analytics", "marketing", "all"][i % 3]
        ));
    }
    d.write("data/in.jsonl", data);
    let derived = format!(
        r#"{{ "target": {}, "consent_levels": [2] }}"#,
        target("now.jsonl")
    );
    let j = job(MAPPED_CONSENT, &derived)
        .replace("\"in.csv\"", "\"in.jsonl\"")
        .replace("{ \"csv\": {} }", "{ \"jsonl\": {} }")
        .replace("encrypted.csv", "encrypted.jsonl");
    d.write("job.json", j);
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let later = d.run(&[
        "decrypt",
        "--input",
        "out/encrypted.jsonl",
        "--keys",
        "out/keys.csv",
        "--contract",
        "contracts/c.json",
        "--purposes",
        "2",
        "--output",
        "later/now.jsonl",
    ]);
    assert_eq!(later.code, 0, "{}", later.all_output());
    assert_eq!(d.read("later/now.jsonl"), d.read("out/now.jsonl"));
}

#[test]
fn decrypt_refuses_masking_without_a_seed() {
    let d = JobDir::new();
    d.write("contracts/c.json", CONTRACT);
    d.write("enc.csv", "x\n");
    d.write("keys.csv", "keyLink,encryptionKey,policyId,expiresAt\n");
    let r = d.run(&[
        "decrypt",
        "--input",
        "enc.csv",
        "--keys",
        "keys.csv",
        "--contract",
        "contracts/c.json",
        "--purposes",
        "1",
        "--mask",
        "Email",
        "--output",
        "out.csv",
    ]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("seed"), "{}", r.stderr);
    assert!(!d.exists("out.csv"));
}

/// Issue #7: in JSON Lines a decrypted non-string PII value (number, boolean, object, array) keeps
/// its JSON type in the job's derived output and in `keylink decrypt`, which agree byte for byte;
/// strings (also those that look like JSON) stay strings; null and empty values stay as they are.
#[test]
fn jsonl_non_string_pii_decrypt_equals_the_jobs_derived_output() {
    let d = JobDir::new();
    d.write(
        "contracts/c.json",
        r#"{ "ref": { "handle": "test", "name": "clicks", "version": "1.0.0" },
             "keyField": "SessionId",
             "piiFields": { "age": 1, "flag": 1, "obj": 1, "arr": 2, "n": 1, "empty": 1,
                            "customer/id": 1, "customer/name": 1, "str42": 1, "strobj": 1,
                            "masked": 1, "Email": 3 } }"#,
    );
    let consents = ["analytics", "marketing", "all"];
    let mut data = String::new();
    for i in 0..90 {
        data.push_str(&format!(
            concat!(
                r#"{{"SessionId":"s{s}","Time":"2024-05-01 1{h}:00:00","Consent":"{c}","#,
                r#""age":{age},"flag":{flag},"obj": {{ "k" : [{i}, "v\"{i}"], "z": null }} ,"#,
                r#""arr":[{i}, 1.5e3, "x"],"n":null,"empty":"","#,
                r#""customer":{{"id":{i},"name":"N\u00e9 \"{i}\""}},"str42":"{i}","#,
                r#""strobj":"{{\"a\":{i}}}","masked":{m},"Email":"u{i}@example.com","#,
                r#""other":{{"keep": [1, 2 ]}}}}"#,
                "\n"
            ),
            s = i / 3,
            h = i % 10,
            c = consents[i % 3],
            age = if i % 7 == 0 {
                "-0.5E+2".to_string()
            } else {
                (20 + i).to_string()
            },
            flag = i % 2 == 0,
            i = i,
            m = i % 4,
        ));
    }
    d.write("data/in.jsonl", &data);
    let derived = format!(
        r#"{{ "target": {}, "consent_levels": [1, 2],
             "masked_fields": {{ "seed": "json-seed",
               "field_patterns": {{ "test/clicks/1.0.0": {{ "field_patterns": ["masked"] }} }} }} }},
           {{ "target": {}, "consent_levels": [1] }}"#,
        target("now12.jsonl"),
        target("now1.jsonl")
    );
    let j = job(MAPPED_CONSENT, &derived)
        .replace("\"in.csv\"", "\"in.jsonl\"")
        .replace("{ \"csv\": {} }", "{ \"jsonl\": {} }")
        .replace("encrypted.csv", "encrypted.jsonl");
    d.write("job.json", j);
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    d.write("seed.txt", "json-seed\n");
    let decrypt = |purposes: &str, extra: &[&str], input: &str, output: &str| {
        let mut args = vec![
            "decrypt",
            "--input",
            input,
            "--keys",
            "out/keys.csv",
            "--contract",
            "contracts/c.json",
            "--purposes",
            purposes,
            "--output",
            output,
            "--json",
        ];
        args.extend_from_slice(extra);
        d.run(&args)
    };
    let mask = ["--mask", "masked", "--seed-file", "seed.txt"];
    let later = decrypt("1,2", &mask, "out/encrypted.jsonl", "later/now12.jsonl");
    assert_eq!(later.code, 0, "{}", later.all_output());
    let later = decrypt("1", &[], "out/encrypted.jsonl", "later/now1.jsonl");
    assert_eq!(later.code, 0, "{}", later.all_output());
    for f in ["now12.jsonl", "now1.jsonl"] {
        let (now, later) = (d.read(&format!("out/{f}")), d.read(&format!("later/{f}")));
        assert!(!now.is_empty());
        assert_eq!(
            later, now,
            "{f}: decrypt differs from the job's derived output"
        );
    }

    // the values themselves: as in the source, with their JSON types
    let source: Vec<serde_json::Value> = data
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_id = |v: &serde_json::Value| {
        let i: usize = v["str42"].as_str().unwrap().parse().unwrap();
        &source[i]
    };
    let non_strings = ["age", "arr", "customer/id", "flag", "masked", "obj"];
    for (f, arr_decrypted) in [("now12.jsonl", true), ("now1.jsonl", false)] {
        let out = d.read(&format!("out/{f}"));
        for line in out.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let src = by_id(&v);
            for k in [
                "age", "flag", "obj", "n", "empty", "str42", "strobj", "other",
            ] {
                assert_eq!(v[k], src[k], "{f}: {k}");
            }
            assert_eq!(v["customer"], src["customer"], "{f}");
            assert!(v["str42"].is_string() && v["strobj"].is_string(), "{f}");
            if arr_decrypted {
                assert_eq!(v["arr"], src["arr"], "{f}");
                let m = v["masked"].as_str().unwrap();
                assert!(
                    m.len() == 64 && m.bytes().all(|c| c.is_ascii_hexdigit()),
                    "{f}"
                );
            } else {
                assert!(
                    v["arr"].as_str().unwrap().starts_with('A'),
                    "{f}: ciphertext"
                );
                assert_eq!(v["masked"], src["masked"], "{f}");
            }
            assert!(
                v["Email"].as_str().unwrap().starts_with('A'),
                "{f}: ciphertext"
            );
            let mut listed: Vec<&str> = v["strmMeta"]["jsonFields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap())
                .collect();
            listed.sort();
            assert_eq!(listed, non_strings, "{f}");
        }
    }
    // whitespace inside a decrypted object is kept, and one row holds exactly one line
    assert!(
        d.read("out/now1.jsonl")
            .contains(r#""obj": { "k" : [3, "v\"3"], "z": null } ,"#)
    );

    // stock Tink decrypts the encrypted output: non-strings to their JSON text
    let out = tink_check(
        &d.path().join("out/keys.csv"),
        &d.path().join("out/encrypted.jsonl"),
        &d.path().join("data/in.jsonl"),
        "age,flag,obj,arr,n,empty,customer/id,customer/name,str42,strobj,masked,Email",
        "jsonl",
    );
    assert!(out.contains("90 rows"), "{out}");

    // a tampered jsonFields (a string field listed as JSON) makes its row undecryptable, counted
    let enc = d.read("out/encrypted.jsonl");
    let mut lines: Vec<String> = enc.lines().map(String::from).collect();
    lines[1] = lines[1].replace(r#""jsonFields":["#, r#""jsonFields":["customer/name","#);
    d.write("tampered.jsonl", lines.join("\n") + "\n");
    let r = decrypt("1", &[], "tampered.jsonl", "later/tampered.jsonl");
    assert_eq!(r.code, 1, "{}", r.all_output());
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["input"]["rejects"]["undecryptable"]["count"], 1, "{s}");
    assert_eq!(
        s["input"]["rejects"]["undecryptable"]["lines"],
        serde_json::json!([2])
    );
    assert!(!r.all_output().contains("u1@example.com") && !r.all_output().contains("N\\u00e9"));
}
