//! End-to-end: the JSON Schemas for editors (issue #15, part 2).
//!
//! - The committed `schemas/*.schema.json` are what `keylink schema …` of the default build
//!   prints (`cargo xtask schemas` regenerates them). The CLI under test is the default build
//!   plus the third-party `shelf` connector (tests/example-connector, depending on keylink-core
//!   alone): its schemas must list `shelf`, and once the components the default build does not
//!   have are taken out (`shelf`, and the testkit's `memory` when cargo unifies that feature in),
//!   they must equal the committed ones.
//! - Every example job, config and contract in the repository — the README's code blocks, the
//!   demo's files, the test helpers' output, tests/fixtures — validates against the committed
//!   schemas with an independent validator (python-jsonschema, tests/python/validate_schemas.py),
//!   and mutated copies (a misspelt key, a wrong type) do not; tests/fixtures/schema-cases.json
//!   pins what the hand-written schemas (credentials, aliases, contract key casing) accept.
//!
//! All data is synthetic.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// Components the CLI under test has and the default build does not.
const NOT_IN_THE_DEFAULT_BUILD: [&str; 2] = ["shelf", "memory"];

fn committed(what: &str) -> serde_json::Value {
    let file = root().join(format!("schemas/{what}.schema.json"));
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask schemas`", file.display()));
    serde_json::from_str(&text).unwrap()
}

fn generated(what: &str) -> serde_json::Value {
    let d = JobDir::new();
    let r = d.run(&["schema", what]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    serde_json::from_str(&r.stdout).unwrap()
}

/// The tags of a `oneOf` over components (`type` const, or the format's key).
fn tags(one_of: &serde_json::Value) -> Vec<String> {
    one_of
        .as_array()
        .unwrap()
        .iter()
        .map(|v| match v.pointer("/properties/type/const") {
            Some(t) => t.as_str().unwrap().to_string(),
            None => v["required"][0].as_str().unwrap().to_string(),
        })
        .collect()
}

/// Takes the components of [`NOT_IN_THE_DEFAULT_BUILD`] out of a schema's component `oneOf`s.
fn without_extras(mut schema: serde_json::Value) -> serde_json::Value {
    for def in ["Connector", "Format", "KeyStore"] {
        if let Some(serde_json::Value::Array(variants)) =
            schema.pointer_mut(&format!("/$defs/{def}/oneOf"))
        {
            variants.retain(|v| {
                let tag = tags(&serde_json::Value::Array(vec![v.clone()])).remove(0);
                !NOT_IN_THE_DEFAULT_BUILD.contains(&tag.as_str())
            });
        }
    }
    schema
}

#[test]
fn committed_schemas_are_fresh_and_a_third_party_connector_shows_up() {
    for what in ["job", "stream-job", "config", "contract"] {
        let ours = generated(what);
        assert!(
            without_extras(ours.clone()) == committed(what),
            "schemas/{what}.schema.json is stale: run `cargo xtask schemas`"
        );
    }
    let config = generated("config");
    let connectors = tags(config.pointer("/$defs/Connector/oneOf").unwrap());
    for tag in ["shelf", "local", "s3", "gcs", "azure"] {
        assert!(
            connectors.iter().any(|t| t == tag),
            "{tag} in {connectors:?}"
        );
    }
    let shelf = config["$defs"]["Connector"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v.pointer("/properties/type/const") == Some(&"shelf".into()))
        .unwrap();
    assert_eq!(shelf["required"], serde_json::json!(["type", "dir"]));
    assert_eq!(
        shelf["properties"]["dir"]["description"],
        "The directory holding the objects."
    );
    // the committed schema is the default build's: no third party's connector in it
    let committed_connectors = tags(
        committed("config")
            .pointer("/$defs/Connector/oneOf")
            .unwrap(),
    );
    assert!(!committed_connectors.iter().any(|t| t == "shelf"));
    let formats = tags(generated("job").pointer("/$defs/Format/oneOf").unwrap());
    assert_eq!(formats, ["csv", "jsonl"]);
    let key_stores = tags(config.pointer("/$defs/KeyStore/oneOf").unwrap());
    assert_eq!(key_stores, ["embedded", "postgres"]);
}

#[test]
fn the_stream_job_schema_is_generated() {
    let r = JobDir::new().run(&["schema", "stream-job"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(r.stdout.contains("keylink stream job"), "{}", r.stdout);
}

/// The repository's examples: `(kind or auto, file)`.
fn examples(d: &JobDir) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    // the demo's job, config and contract
    let r = d.run(&["demo", "demo", "--rows", "20"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    for f in [
        "demo/job.json",
        "demo/keylink.yaml",
        "demo/contracts/clickstream.json",
    ] {
        assert!(d.exists(f), "{f}");
        out.push(("auto".into(), d.path().join(f)));
    }
    // the test helpers' output (the config JobDir writes, jobs with every option they use)
    d.write("helpers/contract.json", contract(r#", "Extra": 1"#));
    d.write("helpers/csv-job.json", job("*.csv", "csv", ""));
    d.write(
        "helpers/jsonl-job.json",
        job(
            "**/*.jsonl",
            "jsonl",
            r#", "batch_job_group_id": "g", "window_hours": 1"#,
        ),
    );
    out.push(("contract".into(), d.path().join("helpers/contract.json")));
    out.push(("job".into(), d.path().join("helpers/csv-job.json")));
    out.push(("job".into(), d.path().join("helpers/jsonl-job.json")));
    out.push(("config".into(), d.path().join("keylink.yaml")));
    // every compiled component's own example (`keylink list`), in a config or a job
    let r = d.run(&["list", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let list: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mut connectors = serde_json::Map::new();
    for c in list.as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        if NOT_IN_THE_DEFAULT_BUILD.contains(&name) {
            continue;
        }
        let file = format!("components/{}-{name}.json", c["kind"].as_str().unwrap());
        match c["kind"].as_str().unwrap() {
            "connector" => {
                connectors.insert(name.into(), c["example"].clone());
                continue;
            }
            "key_store" => d.write(
                &file,
                serde_json::json!({ "key_store": c["example"] }).to_string(),
            ),
            "format" => {
                let mut job: serde_json::Value =
                    serde_json::from_str(&job("*", "csv", "")).unwrap();
                job["source_data"]["data_type"] = c["example"].clone();
                d.write(&file, job.to_string());
            }
            other => panic!("unknown kind {other}"),
        }
        out.push(("auto".into(), d.path().join(file)));
    }
    d.write(
        "components/connectors.json",
        serde_json::json!({ "connectors": connectors }).to_string(),
    );
    out.push(("config".into(), d.path().join("components/connectors.json")));
    // fixtures: the original system's shapes
    let fixtures = root().join("tests/fixtures/original-system");
    for e in std::fs::read_dir(&fixtures).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json" || x == "yaml") {
            out.push(("auto".into(), p));
        }
    }
    out
}

#[test]
fn the_fixtures_are_jobs_keylink_runs() {
    let d = JobDir::new();
    let fixtures = root().join("tests/fixtures/original-system");
    let read = |f: &str| std::fs::read_to_string(fixtures.join(f)).unwrap();
    d.write(
        "keylink.yaml",
        "connectors:\n  s3-connector: { type: local, root: . }\ncontracts: ./contracts\n\
         key_store: { type: embedded, path: ./keys.db }\n\
         policies:\n  marketing-7y: { retention_days: 2557 }\n",
    );
    d.write("contracts/quickstart.json", read("wrapped-contract.json"));
    d.write("job.json", read("quickstart-job.json"));
    d.write(
        "input/quickstart.csv",
        "session,user,email,ts,collection_ground\n\
         s1,u1,a@example.com,2024-03-01T10:00:00,marketing\n\
         s2,u2,b@example.com,2024-03-01T11:00:00,legitimate interest\n",
    );
    let r = d.run(&["run", "job.json", "--no-progress"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(d.exists("derived/recommender.csv"), "{}", r.all_output());
}

#[test]
fn every_example_validates_with_an_independent_validator_and_mutations_do_not() {
    let d = JobDir::new();
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/python/validate_schemas.py"))
        .arg(root().join("schemas"))
        .arg("--readme")
        .arg(root().join("README.md"))
        .arg("--cases")
        .arg(root().join("tests/fixtures/schema-cases.json"));
    for (kind, path) in examples(&d) {
        cmd.arg(format!("{kind}:{}", path.display()));
    }
    let out = cmd.output().expect("run validate_schemas.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // every kind was seen, and at least one mutation per example was rejected
    let summary = stdout.lines().next().unwrap_or_default();
    for kind in ["job", "config", "contract"] {
        let none = [format!("{kind} 0,"), format!("{kind} 0;")];
        assert!(!none.iter().any(|n| summary.contains(n)), "{summary}");
    }
    assert!(!summary.contains("mutations rejected: 0;"), "{summary}");
    assert!(!summary.contains("cases: 0;"), "{summary}");
}
