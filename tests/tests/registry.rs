//! End-to-end: the component registry (issue #15). The CLI under test is built the way a third
//! party builds theirs, with the `shelf` connector of tests/example-connector (a crate depending
//! on keylink-core alone) compiled in; it must show up everywhere ours do. All data is synthetic.

mod common;

use common::*;

const HEADER: &str = "SessionId,UserId,Email,UserName,Time,Consent\n";

fn rows(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "s{},u{},shelf-mail-{i}@example.com,Shelf Person {i},2024-03-01 1{}:00:00,{}\n",
                i / 4,
                i % 5,
                i % 10,
                ["1", "2", "0"][i % 3]
            )
        })
        .collect()
}

#[test]
fn a_third_party_connector_is_listed_and_serves_its_scheme() {
    let d = JobDir::new();
    // `keylink list`, as text and JSON, and `--version`
    let r = d.run(&["list"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(r.stdout.contains("shelf"), "{}", r.stdout);
    assert!(r.stdout.contains("a third-party example"), "{}", r.stdout);
    assert!(r.stdout.contains("shelf://"), "{}", r.stdout);
    let r = d.run(&["list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let shelf = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "shelf")
        .expect("shelf in `keylink list --json`");
    assert_eq!(shelf["kind"], "connector");
    assert_eq!(shelf["schemes"], serde_json::json!(["shelf"]));
    assert_eq!(shelf["example"]["type"], "shelf");
    for ours in ["local", "csv", "jsonl", "embedded"] {
        assert!(
            list.as_array().unwrap().iter().any(|c| c["name"] == ours),
            "{ours} missing"
        );
    }
    let r = d.run(&["--version"]);
    let connectors = r
        .stdout
        .lines()
        .find(|l| l.starts_with("connectors:"))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(connectors.contains("shelf"), "{connectors}");

    // a job on the third party's connector, then `keylink decrypt` on its shelf:// locations
    d.write("contracts/c.json", contract(""));
    d.write(
        "keylink.yaml",
        "connectors:\n  files: { type: shelf, dir: store }\ncontracts: ./contracts\n\
         key_store: { type: embedded, path: ./keys.db }\n",
    );
    std::fs::create_dir_all(d.path().join("store/data")).unwrap();
    std::fs::write(
        d.path().join("store/data/clicks.csv"),
        format!("{HEADER}{}", rows(60)),
    )
    .unwrap();
    d.write("job.json", job("*.csv", "csv", ""));
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(d.exists("store/out/encrypted.csv") && d.exists("store/out/keys.csv"));
    let r = d.run(&[
        "decrypt",
        "--input",
        "shelf://store/out/encrypted.csv",
        "--keys",
        "shelf://store/out/keys.csv",
        "--contract",
        "contracts/c.json",
        "--purposes",
        "1",
        "--output",
        "shelf://later/decrypted.csv",
    ]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let decrypted = d.read("later/decrypted.csv");
    // the rows consenting to purpose 1 come back with Email in plaintext, the others not at all
    assert!(
        decrypted.contains("shelf-mail-3@example.com"),
        "{decrypted}"
    );
    assert!(
        !decrypted.contains("shelf-mail-1@example.com"),
        "{decrypted}"
    );
    assert_eq!(decrypted.lines().count(), 1 + 20);

    // a scheme no component serves: the error lists those that are
    let r = d.run(&[
        "decrypt",
        "--input",
        "ftp://host/out/encrypted.csv",
        "--keys",
        "shelf://store/out/keys.csv",
        "--contract",
        "contracts/c.json",
        "--purposes",
        "1",
        "--output",
        "later/x.csv",
    ]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    for s in ["ftp://", "shelf://", "s3://", "file://"] {
        assert!(r.stderr.contains(s), "{s}: {}", r.stderr);
    }
}
