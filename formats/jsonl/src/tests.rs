//! Tests of the decoder, the encoder and the scanner (against serde_json).

use keylink_core::format::{Format, FormatConfig, Layout, write_levels};
use keylink_core::record::{FieldPlan, OutputRows, RecordBatch, RowMeta, Slot, ValueKind};
use keylink_core::reject::{Reject, RejectReason, Rejects};
use proptest::prelude::*;
use serde_json::Value;

use crate::JsonlFormat;
use crate::encode::write_json_string;
use crate::scan::{Fail, Scanner, Trie};

const KEY_LINK: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";
const CONTRACT: &str = "acme/events/1.0.0";

fn plan(paths: &[&str]) -> FieldPlan {
    let mut p = FieldPlan::new();
    for path in paths {
        p.slot(path, false);
    }
    p
}

#[derive(Debug, Clone, PartialEq)]
enum Snap {
    Missing,
    Null,
    Val(ValueKind, Vec<u8>, (u32, u32)),
}

/// (line, raw, slots) of every record.
type Records = Vec<(u64, Vec<u8>, Vec<Snap>)>;

fn snapshot(batch: &RecordBatch) -> Records {
    batch
        .records()
        .map(|r| {
            let slots = (0..batch.n_slots())
                .map(|i| match r.slot(i) {
                    Slot::Missing => Snap::Missing,
                    Slot::Null => Snap::Null,
                    Slot::Value { span, kind, .. } => {
                        Snap::Val(kind, r.value(i).unwrap().to_vec(), span)
                    }
                })
                .collect();
            (r.line(), r.raw().to_vec(), slots)
        })
        .collect()
}

/// Decodes `input` cut at `cuts` (ascending); returns the records, rejects and rejected raw.
fn decode_cut(plan: &FieldPlan, input: &[u8], cuts: &[usize]) -> (Records, Vec<Reject>, Vec<u8>) {
    let mut dec = JsonlFormat::new().decoder(plan);
    assert_eq!(dec.layout(), Some(Layout { columns: None }));
    let mut batch = RecordBatch::new(plan.len());
    let mut rejects = Rejects::new(true);
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        dec.decode(&input[prev..c], &mut batch, &mut rejects)
            .unwrap();
        prev = c;
    }
    dec.finish(&mut batch, &mut rejects).unwrap();
    let (items, raw) = rejects.drain();
    (snapshot(&batch), items, raw)
}

fn decode(plan: &FieldPlan, input: &[u8]) -> (Records, Vec<Reject>) {
    let (r, j, _) = decode_cut(plan, input, &[]);
    (r, j)
}

fn decode_batch(plan: &FieldPlan, input: &[u8]) -> (RecordBatch, Rejects) {
    let mut dec = JsonlFormat::new().decoder(plan);
    let mut batch = RecordBatch::new(plan.len());
    let mut rejects = Rejects::new(false);
    dec.decode(input, &mut batch, &mut rejects).unwrap();
    dec.finish(&mut batch, &mut rejects).unwrap();
    (batch, rejects)
}

fn text(v: &str, line: &str) -> Snap {
    let span = span_of(line, v);
    Snap::Val(ValueKind::Text, unquote(v).into_bytes(), span)
}

fn json(v: &str, line: &str) -> Snap {
    Snap::Val(ValueKind::Json, v.as_bytes().to_vec(), span_of(line, v))
}

fn span_of(line: &str, v: &str) -> (u32, u32) {
    let s = line.find(v).expect("value in line") as u32;
    (s, s + v.len() as u32)
}

fn unquote(v: &str) -> String {
    serde_json::from_str::<String>(v).unwrap()
}

// ---------------------------------------------------------------------------------------------
// decoding: values and spans

#[test]
fn nested_paths_kinds_and_spans() {
    let p = plan(&[
        "Email",
        "customer/id",
        "customer/address/zip",
        "n",
        "b",
        "o",
        "a",
        "z",
        "gone",
    ]);
    let line = r#"{ "Email" : "x@y.z", "customer": {"id": 42, "address": {"zip": "1234 AB"}}, "n": -1.5e+3, "b": true, "o": {"k": [1, {}]}, "a": [], "z": null }"#;
    let (recs, rej) = decode(&p, line.as_bytes());
    assert!(rej.is_empty(), "{rej:?}");
    assert_eq!(recs.len(), 1);
    let (no, raw, slots) = &recs[0];
    assert_eq!(*no, 1);
    assert_eq!(raw, line.as_bytes());
    assert_eq!(
        slots,
        &vec![
            text(r#""x@y.z""#, line),
            json("42", line),
            text(r#""1234 AB""#, line),
            json("-1.5e+3", line),
            json("true", line),
            json(r#"{"k": [1, {}]}"#, line),
            json("[]", line),
            Snap::Null,
            Snap::Missing,
        ]
    );
    // every span is exactly the JSON value
    for s in slots {
        if let Snap::Val(_, _, (a, b)) = s {
            serde_json::from_slice::<Value>(&raw[*a as usize..*b as usize]).unwrap();
        }
    }
}

#[test]
fn string_escapes_are_unescaped_and_spans_keep_quotes() {
    let p = plan(&["q", "e", "emoji", "mix", "plain"]);
    let line = r#"{"q":"say \"hi\"","e":"caf\u00e9","emoji":"\ud83d\ude00!","mix":"a\\b\/c\n\t\r\b\f","plain":"héllo 😀"}"#;
    let (recs, rej) = decode(&p, line.as_bytes());
    assert!(rej.is_empty());
    let slots = &recs[0].2;
    let expect = [
        "say \"hi\"",
        "café",
        "😀!",
        "a\\b/c\n\t\r\u{8}\u{c}",
        "héllo 😀",
    ];
    for (i, want) in expect.iter().enumerate() {
        match &slots[i] {
            Snap::Val(ValueKind::Text, v, (a, b)) => {
                assert_eq!(v, want.as_bytes(), "slot {i}");
                let json = &line[*a as usize..*b as usize];
                assert!(json.starts_with('"') && json.ends_with('"'));
                assert_eq!(serde_json::from_str::<String>(json).unwrap(), *want);
            }
            other => panic!("slot {i}: {other:?}"),
        }
    }
}

#[test]
fn parents_that_are_not_objects_leave_slots_missing() {
    let p = plan(&["customer/id"]);
    for line in [
        r#"{"customer":"c-1"}"#,
        r#"{"customer":[{"id":1}]}"#,
        r#"{"customer":null}"#,
        r#"{"customer":7}"#,
        r#"{"customer":{}}"#,
        r#"{"other":{"id":1}}"#,
        r#"{"x":{"customer":{"id":1}}}"#,
    ] {
        let (recs, rej) = decode(&p, line.as_bytes());
        assert!(rej.is_empty(), "{line}");
        assert_eq!(recs[0].2, vec![Snap::Missing], "{line}");
    }
}

#[test]
fn escaped_keys_match_planned_paths() {
    let p = plan(&["Email", "cüstomer/id"]);
    let line = r#"{"Em\u0061il":"x","c\u00fcstomer":{"\u0069d":1}}"#;
    let (recs, _) = decode(&p, line.as_bytes());
    let one = line.rfind('1').unwrap() as u32;
    assert_eq!(
        recs[0].2,
        vec![
            text(r#""x""#, line),
            Snap::Val(ValueKind::Json, b"1".to_vec(), (one, one + 1))
        ]
    );
}

#[test]
fn a_path_and_a_path_inside_it() {
    let p = plan(&["customer", "customer/id"]);
    let line = r#"{"customer":{"id":"c1","n":2}}"#;
    let (recs, _) = decode(&p, line.as_bytes());
    assert_eq!(
        recs[0].2,
        vec![json(r#"{"id":"c1","n":2}"#, line), text(r#""c1""#, line)]
    );
}

#[test]
fn line_endings_blank_lines_and_bom() {
    let p = plan(&["a"]);
    let input = b"\xEF\xBB\xBF{\"a\":1}\r\n\n   \r\n\t\n{\"a\":2}\n{\"a\":3}\r";
    let (recs, rej) = decode(&p, input);
    assert!(rej.is_empty(), "{rej:?}");
    let got: Vec<_> = recs.iter().map(|r| (r.0, r.1.clone())).collect();
    assert_eq!(
        got,
        vec![
            (1, b"{\"a\":1}".to_vec()),
            (5, b"{\"a\":2}".to_vec()),
            (6, b"{\"a\":3}".to_vec())
        ]
    );
    // no trailing newline, empty input, only blank lines
    assert_eq!(decode(&p, b"{\"a\":1}").0.len(), 1);
    assert_eq!(decode(&p, b"").0.len(), 0);
    assert_eq!(decode(&p, b"\n\n \n").0.len(), 0);
    // whitespace around the object belongs to the line
    let (recs, _) = decode(&p, b"  {\"a\" : 1 }  \n");
    assert_eq!(recs[0].1, b"  {\"a\" : 1 }  ");
    assert_eq!(
        recs[0].2,
        vec![Snap::Val(ValueKind::Json, b"1".to_vec(), (9, 10))]
    );
}

// ---------------------------------------------------------------------------------------------
// rejects

#[test]
fn rejects_have_reasons_lines_and_no_values() {
    let p = plan(&["Email", "customer/id"]);
    let lines: Vec<(Vec<u8>, RejectReason, &str)> = vec![
        (
            b"{\"Email\":\"SECRET-4711\xff\"}".to_vec(),
            RejectReason::InvalidUtf8,
            "invalid UTF-8 at column 22",
        ),
        (
            br#"{"Email":"SECRET-4711","#.to_vec(),
            RejectReason::BadJson,
            "unexpected end of JSON at column 24",
        ),
        (
            br#"{"Email":"SECRET-4711"#.to_vec(),
            RejectReason::BadJson,
            "unexpected end of JSON at column 22",
        ),
        (
            br#"["SECRET-4711"]"#.to_vec(),
            RejectReason::BadJson,
            "expected a JSON object, found an array",
        ),
        (
            br#""SECRET-4711""#.to_vec(),
            RejectReason::BadJson,
            "expected a JSON object, found a string",
        ),
        (
            b"4711".to_vec(),
            RejectReason::BadJson,
            "expected a JSON object, found a number",
        ),
        (
            b"null".to_vec(),
            RejectReason::BadJson,
            "expected a JSON object, found null",
        ),
        (
            b" true ".to_vec(),
            RejectReason::BadJson,
            "expected a JSON object, found a boolean",
        ),
        (
            br#"{"Email":"x"} SECRET-4711"#.to_vec(),
            RejectReason::BadJson,
            "trailing characters at column 15",
        ),
        (
            br#"{"Email":"x"}{}"#.to_vec(),
            RejectReason::BadJson,
            "trailing characters at column 14",
        ),
        (
            br#"{"Email":SECRET-4711}"#.to_vec(),
            RejectReason::BadJson,
            "invalid JSON at column 10",
        ),
        (
            br#"{"Email":"SECRET-4711","Email":"SECRET-4711"}"#.to_vec(),
            RejectReason::BadJson,
            "duplicate key 'Email'",
        ),
        (
            br#"{"customer":{"id":"SECRET-4711","id":"SECRET-4711"}}"#.to_vec(),
            RejectReason::BadJson,
            "duplicate key 'customer/id'",
        ),
        (
            br#"{"customer":"SECRET-4711","customer":{"id":"SECRET-4711"}}"#.to_vec(),
            RejectReason::BadJson,
            "duplicate key 'customer'",
        ),
        (
            br#"{"Email":"SECRET-4711","Em\u0061il":"SECRET-4711"}"#.to_vec(),
            RejectReason::BadJson,
            "duplicate key 'Email'",
        ),
        (
            br#"{"strmMeta":{"keyLink":"SECRET-4711"}}"#.to_vec(),
            RejectReason::BadJson,
            "reserved key 'strmMeta'",
        ),
        (
            br#"{"Email":"SECRET-4711\ud800"}"#.to_vec(),
            RejectReason::BadJson,
            "invalid \\u escape (lone surrogate) in field 'Email'",
        ),
        (
            b"{\"Email\":\"SECRET-4711\x01\"}".to_vec(),
            RejectReason::BadJson,
            "invalid JSON at column 22",
        ),
    ];
    let good = br#"{"Email":"ok","dup":1,"dup":2,"x":{"strmMeta":1},"y":"\udfff"}"#;
    let mut input = Vec::new();
    let mut expect = Vec::new();
    for (i, (line, reason, detail)) in lines.iter().enumerate() {
        input.extend_from_slice(good);
        input.extend_from_slice(b"\n\n");
        input.extend_from_slice(line);
        input.extend_from_slice(if i % 2 == 0 { b"\n" } else { b"\r\n" });
        expect.push(Reject {
            line: 3 * i as u64 + 3,
            reason: *reason,
            detail: detail.to_string(),
        });
    }
    let (recs, rejects, raw) = decode_cut(&p, &input, &[]);
    assert_eq!(rejects, expect);
    // good lines (with duplicate keys off the plan, a nested strmMeta and a lone surrogate in an
    // unplanned string) pass; the rejected ones are absent
    assert_eq!(recs.len(), lines.len());
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.0, 3 * i as u64 + 1);
        assert_eq!(r.1, good);
    }
    for r in &rejects {
        assert!(
            !r.detail.contains("SECRET") && !r.detail.contains("4711"),
            "{r:?}"
        );
    }
    // the raw rejected lines, newline-terminated, without `\r`
    let mut want_raw = Vec::new();
    for (line, ..) in &lines {
        want_raw.extend_from_slice(line);
        want_raw.push(b'\n');
    }
    assert_eq!(raw, want_raw);
}

#[test]
fn a_line_that_is_not_json_is_reported_as_such_even_with_a_duplicate_key() {
    let p = plan(&["customer/id"]);
    let (_, rej) = decode(&p, br#"{"customer":{"i\u0064":1 , "id":null}"#);
    assert_eq!(rej[0].detail, "unexpected end of JSON at column 38");
    let (_, rej) = decode(&p, br#"{"strmMeta":1,"customer":{"id":1,"id":2}}"#);
    assert_eq!(
        rej[0].detail, "reserved key 'strmMeta'",
        "the first one found"
    );
    let (_, rej) = decode(&p, br#"{"strmMeta":1} x"#);
    assert_eq!(rej[0].detail, "trailing characters at column 16");
}

#[test]
fn syntax_errors_are_rejected() {
    let p = plan(&["a"]);
    for bad in [
        "{",
        "}",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\":1,}",
        "{,}",
        "{\"a\":1 \"b\":2}",
        "{\"a\" 1}",
        "{a:1}",
        "{'a':1}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":.5}",
        "{\"a\":+1}",
        "{\"a\":-}",
        "{\"a\":1e}",
        "{\"a\":tru}",
        "{\"a\":nul}",
        "{\"a\":True}",
        "{\"a\":[1,]}",
        "{\"a\":[,1]}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\\u12\"}",
        "{\"a\":\"\\u12g4\"}",
        "{\"a\":\"tab\there\"}",
        "{\"a\":1}}",
        "{\"a\":[}",
        "{\"a\":{]}",
        "{\"a\":NaN}",
        "{\"a\":\u{a0}1}",
        " \u{feff}{}",
    ] {
        let (recs, rej) = decode(&p, bad.as_bytes());
        assert!(recs.is_empty(), "{bad:?} accepted");
        assert_eq!(rej.len(), 1, "{bad:?}");
        assert_eq!(rej[0].reason, RejectReason::BadJson, "{bad:?}");
        assert!(
            serde_json::from_str::<serde::de::IgnoredAny>(bad).is_err(),
            "{bad:?} is valid for serde_json"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// chunking

fn chunk_input() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(b"\xEF\xBB\xBF{\"Email\":\"\xC3\xA9t\xC3\xA9 \xF0\x9F\x98\x80\",\"customer\":{\"id\":\"c\\u00e9\"}}\r\n");
    v.extend_from_slice(b"\n  \r\n");
    v.extend_from_slice(b"[\"not an object\"]\n");
    v.extend_from_slice(b"{\"Email\":\"bad \xE9 utf8\"}\n");
    v.extend_from_slice(b"{\"Email\":null,\"customer\":{\"id\":12.5e3}} \r\n");
    v.extend_from_slice(b"{\"Email\":\"x\",\"Email\":\"y\"}\n");
    v.extend_from_slice(
        b"{\"customer\":{\"id\":[1,{\"a\":\"\xF0\x9F\x98\x80\"}]},\"zz\":\"\\ud83d\\ude00\"}\n",
    );
    v.extend_from_slice(b"{\"Email\":\"trunc");
    v.extend_from_slice(b"\n{}\n{\"Email\":\"last\"}");
    v
}

#[test]
fn every_cut_position_gives_the_same_result() {
    let p = plan(&["Email", "customer/id"]);
    let input = chunk_input();
    let whole = decode_cut(&p, &input, &[]);
    assert_eq!(whole.0.len(), 5);
    assert_eq!(whole.1.len(), 4);
    for c in 0..=input.len() {
        assert_eq!(decode_cut(&p, &input, &[c]), whole, "cut at {c}");
    }
    for c in 0..=input.len() {
        for d in c..=input.len() {
            assert_eq!(decode_cut(&p, &input, &[c, d]), whole, "cut at {c},{d}");
        }
    }
    // one byte at a time
    let ones: Vec<usize> = (1..input.len()).collect();
    assert_eq!(decode_cut(&p, &input, &ones), whole);
}

#[test]
fn a_line_over_many_chunks() {
    let p = plan(&["big", "k"]);
    let big = "é".repeat(100_000);
    let line = format!("{{\"big\":\"{big}\",\"k\":1}}\n{{\"k\":2}}\n");
    let cuts: Vec<usize> = (1..line.len()).step_by(997).collect();
    let (recs, rej, _) = decode_cut(&p, line.as_bytes(), &cuts);
    assert!(rej.is_empty());
    assert_eq!(recs.len(), 2);
    assert_eq!(
        recs[0].2[0],
        Snap::Val(ValueKind::Text, big.into_bytes(), (7, 200_009))
    );
    assert_eq!(recs[1].0, 2);
}

proptest! {
    #[test]
    fn random_cuts_give_the_same_result(mut cuts in prop::collection::vec(0usize..400, 0..12)) {
        let p = plan(&["Email", "customer/id"]);
        let input = chunk_input();
        for c in &mut cuts { *c %= input.len() + 1; }
        cuts.sort_unstable();
        prop_assert_eq!(decode_cut(&p, &input, &cuts), decode_cut(&p, &input, &[]));
    }
}

// ---------------------------------------------------------------------------------------------
// encoding

struct Enc {
    rows: OutputRows,
}

fn meta_member(ts: i64) -> String {
    format!(
        r#""strmMeta":{{"eventContractRef":"{CONTRACT}","timestamp":{ts},"keyLink":"{KEY_LINK}","consentLevels":[1,2]}}"#
    )
}

impl Enc {
    fn new(n: usize) -> Self {
        Enc {
            rows: OutputRows::new(n),
        }
    }
    fn row(&mut self, record: usize, replace: &[(usize, &str)]) {
        let mut levels = Vec::new();
        write_levels(&[1, 2], &mut levels);
        let consent_levels = self.rows.push_text(&levels);
        let meta = RowMeta {
            timestamp_ms: 1_700_000_000_123,
            key_link: KEY_LINK.parse().unwrap(),
            consent_levels,
            json_fields: (0, 0),
        };
        self.rows.push_row(record, meta);
        for (slot, t) in replace {
            let s = self.rows.values_len();
            self.rows.values_mut().extend_from_slice(t.as_bytes());
            self.rows.replace_from(*slot, s);
        }
    }
    fn encode(&self, p: &FieldPlan, batch: &RecordBatch) -> Vec<u8> {
        let mut enc = JsonlFormat::new()
            .encoder(p, &Layout::default(), CONTRACT)
            .unwrap();
        let mut out = Vec::new();
        enc.begin(&mut out).unwrap();
        assert!(out.is_empty());
        enc.encode(batch, &self.rows, &mut out).unwrap();
        out
    }
}

/// The expected output: `raw` with the spans replaced by serde_json-escaped strings and the
/// metadata member inserted at `insert_at` (with `comma`).
fn expected(raw: &str, repl: &[((u32, u32), &str)], insert_at: usize, comma: bool) -> String {
    let mut repl = repl.to_vec();
    repl.sort_by_key(|r| r.0);
    let mut out = String::new();
    let mut pos = 0;
    for ((a, b), t) in repl {
        out.push_str(&raw[pos..a as usize]);
        out.push_str(&serde_json::to_string(t).unwrap());
        pos = b as usize;
    }
    out.push_str(&raw[pos..insert_at]);
    if comma {
        out.push(',');
    }
    out.push_str(&meta_member(1_700_000_000_123));
    out.push_str(&raw[insert_at..]);
    out.push('\n');
    out
}

#[test]
fn keep_rows_are_the_input_plus_metadata() {
    let p = plan(&["a"]);
    for (line, want) in [
        (
            r#"{"a":1}"#,
            format!(r#"{{"a":1,{}}}"#, meta_member(1_700_000_000_123)),
        ),
        ("{}", format!("{{{}}}", meta_member(1_700_000_000_123))),
        (
            "{ \t }",
            format!("{{{} \t }}", meta_member(1_700_000_000_123)),
        ),
        (
            "  {\"a\" : 1.50E+2 ,\"b\":[ ] }\t ",
            format!(
                "  {{\"a\" : 1.50E+2 ,\"b\":[ ],{} }}\t ",
                meta_member(1_700_000_000_123)
            ),
        ),
        (
            r#"{"b":"}","c":{}}"#,
            format!(
                r#"{{"b":"}}","c":{{}},{}}}"#,
                meta_member(1_700_000_000_123)
            ),
        ),
        (
            r#"{"é":"😀\u00e9\n"}"#,
            format!(r#"{{"é":"😀\u00e9\n",{}}}"#, meta_member(1_700_000_000_123)),
        ),
    ] {
        let (batch, _) = decode_batch(&p, line.as_bytes());
        let mut enc = Enc::new(p.len());
        enc.row(0, &[]);
        let out = String::from_utf8(enc.encode(&p, &batch)).unwrap();
        assert_eq!(out, format!("{want}\n"), "{line:?}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["strmMeta"]["keyLink"], KEY_LINK);
        assert_eq!(v["strmMeta"]["consentLevels"], serde_json::json!([1, 2]));
    }
}

#[test]
fn replaced_values_are_json_strings_and_the_rest_is_untouched() {
    let p = plan(&[
        "Email",
        "customer/id",
        "age",
        "tags",
        "nothing",
        "none",
        "name",
    ]);
    let line = r#"{"Email" :  "a\"b@c.d" , "customer":{"id":  12 ,"x":[1, 2.50]},"age":4.20e1,"tags":["x"],"none":null,"name":"Zoë 😀","after": { "k" : true } }"#;
    let (batch, rej) = decode_batch(&p, line.as_bytes());
    assert!(rej.is_empty());
    let rec = batch.record(0);
    let span = |i| match rec.slot(i) {
        Slot::Value { span, .. } => span,
        other => panic!("{other:?}"),
    };
    let repl: Vec<(usize, &str)> = vec![
        (0, "ATx9+/=="),
        (1, "quote\" backslash\\ ctrl\u{1}\u{1f}\n\t é😀 \u{2028}"),
        (2, ""),
        (3, "[\"x\"]"),
        (4, "ignored: missing"),
        (5, "ignored: null"),
        (6, "Zoë 😀 masked"),
    ];
    let mut enc = Enc::new(p.len());
    enc.row(0, &repl);
    let out = String::from_utf8(enc.encode(&p, &batch)).unwrap();

    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Email"], repl[0].1);
    assert_eq!(v["customer"]["id"], repl[1].1);
    assert_eq!(v["age"], "");
    assert_eq!(v["tags"], "[\"x\"]");
    assert!(v.get("nothing").is_none());
    assert_eq!(v["none"], Value::Null);
    assert_eq!(v["name"], repl[6].1);
    assert_eq!(v["customer"]["x"], serde_json::json!([1, 2.5]));

    let spans: Vec<_> = [0, 1, 2, 3, 6]
        .iter()
        .map(|&i| (span(i), repl[i].1))
        .collect();
    let insert_at = line.len() - 2; // before " }"
    assert_eq!(out, expected(line, &spans, insert_at, true));
}

#[test]
fn an_object_replaced_with_a_field_inside_it_wins() {
    let p = plan(&["customer", "customer/id"]);
    let line = r#"{"customer":{"id":"c1"},"z":1}"#;
    let (batch, _) = decode_batch(&p, line.as_bytes());
    for order in [[(0, "OUTER"), (1, "inner")], [(1, "inner"), (0, "OUTER")]] {
        let mut enc = Enc::new(p.len());
        enc.row(0, &order);
        let out = String::from_utf8(enc.encode(&p, &batch)).unwrap();
        let want = format!(
            r#"{{"customer":"OUTER","z":1,{}}}"#,
            meta_member(1_700_000_000_123)
        );
        assert_eq!(out, format!("{want}\n"));
    }
    // only the inner one
    let mut enc = Enc::new(p.len());
    enc.row(0, &[(1, "inner")]);
    let out = String::from_utf8(enc.encode(&p, &batch)).unwrap();
    assert!(
        out.starts_with(r#"{"customer":{"id":"inner"},"z":1,"strmMeta""#),
        "{out}"
    );
}

/// Issue #7: a decrypted non-string value goes back as the JSON it was ([`Edit::Json`]), and a row
/// lists its non-string PII fields in `strmMeta.jsonFields` (only when it has any).
#[test]
fn jsonl_non_string_pii_json_edits_and_json_fields() {
    use keylink_core::record::Edit;
    let p = plan(&["age", "o", "s"]);
    let line = r#"{"age":42,"o":{"a":[1]},"s":"x"}"#;
    let (batch, _) = decode_batch(&p, line.as_bytes());
    let mut rows = OutputRows::new(p.len());
    let consent_levels = rows.push_text(b"[1]");
    let json_fields = rows.push_text(br#"["age","o"]"#);
    let meta = RowMeta {
        timestamp_ms: 5,
        key_link: KEY_LINK.parse().unwrap(),
        consent_levels,
        json_fields,
    };
    rows.push_row(0, meta);
    let start = rows.values_len();
    rows.values_mut().extend_from_slice(b"[true, null]");
    rows.replace_json_from(1, start);
    let start = rows.values_len();
    rows.values_mut().extend_from_slice(b"4\"2");
    rows.replace_from(0, start);
    assert!(matches!(rows.row(0).1[1], Edit::Json(..)));
    // without metadata (decrypt), then with it (a job)
    rows.push_row(
        0,
        RowMeta {
            json_fields: (0, 0),
            ..meta
        },
    );
    let mut enc = JsonlFormat::new()
        .encoder(&p, &Layout::default(), CONTRACT)
        .unwrap();
    let mut out = Vec::new();
    enc.encode(&batch, &rows, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "{{\"age\":\"4\\\"2\",\"o\":[true, null],\"s\":\"x\",\"strmMeta\":{{\"eventContractRef\":\
             \"{CONTRACT}\",\"timestamp\":5,\"keyLink\":\"{KEY_LINK}\",\"consentLevels\":[1],\
             \"jsonFields\":[\"age\",\"o\"]}}}}\n\
             {line_meta}\n",
            line_meta = line.replace(
                "\"x\"}",
                &format!(
                    "\"x\",\"strmMeta\":{{\"eventContractRef\":\"{CONTRACT}\",\"timestamp\":5,\
                     \"keyLink\":\"{KEY_LINK}\",\"consentLevels\":[1]}}}}"
                )
            )
        )
    );
}

#[test]
fn rows_select_and_repeat_records() {
    let p = plan(&["a"]);
    let (batch, _) = decode_batch(&p, b"{\"a\":\"one\"}\n{\"a\":\"two\"}\n");
    let mut enc = Enc::new(p.len());
    enc.row(1, &[(0, "X")]);
    enc.row(1, &[]);
    enc.row(0, &[(0, "Y")]);
    let out = String::from_utf8(enc.encode(&p, &batch)).unwrap();
    let m = meta_member(1_700_000_000_123);
    assert_eq!(
        out,
        format!("{{\"a\":\"X\",{m}}}\n{{\"a\":\"two\",{m}}}\n{{\"a\":\"Y\",{m}}}\n")
    );
    // a row naming a record outside the batch is an error, not a panic
    let mut enc = Enc::new(p.len());
    enc.row(2, &[]);
    let mut e = JsonlFormat::new()
        .encoder(&p, &Layout::default(), CONTRACT)
        .unwrap();
    assert!(e.encode(&batch, &enc.rows, &mut Vec::new()).is_err());
}

#[test]
fn contract_ref_is_escaped_and_empty_levels_are_an_empty_array() {
    let p = plan(&[]);
    let (batch, _) = decode_batch(&p, b"{}");
    let mut rows = OutputRows::new(0);
    rows.push_row(
        0,
        RowMeta {
            timestamp_ms: -5,
            key_link: Default::default(),
            consent_levels: (0, 0),
            json_fields: (0, 0),
        },
    );
    let mut enc = JsonlFormat::new()
        .encoder(&p, &Layout::default(), "we\"ird\\ref")
        .unwrap();
    let mut out = Vec::new();
    enc.encode(&batch, &rows, &mut out).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"strmMeta": {
            "eventContractRef": "we\"ird\\ref",
            "timestamp": -5,
            "keyLink": "00000000-0000-0000-0000-000000000000",
            "consentLevels": []
        }})
    );
}

proptest! {
    #[test]
    fn json_strings_match_serde_json(s in any::<String>()) {
        let mut out = Vec::new();
        write_json_string(s.as_bytes(), &mut out);
        prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
    }
}

// ---------------------------------------------------------------------------------------------
// config

#[test]
fn config_is_the_externally_tagged_jsonl() {
    let cfg: Box<dyn FormatConfig> = serde_json::from_str(r#"{"jsonl":{}}"#).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.build().unwrap().name(), "jsonl");
    assert_eq!(serde_json::to_string(&cfg).unwrap(), r#"{"jsonl":{}}"#);
    assert!(
        serde_json::from_str::<Box<dyn FormatConfig>>(r#"{"jsonl":{"charset":"UTF-8"}}"#).is_err()
    );
    assert!(serde_json::from_str::<Box<dyn FormatConfig>>(r#"{"jsonlines":{}}"#).is_err());
}

// ---------------------------------------------------------------------------------------------
// the scanner against serde_json

/// A random JSON value; keys from a small set so that planned paths are hit.
fn arb_value() -> impl Strategy<Value = Value> {
    let chars = prop::collection::vec(
        prop_oneof![
            Just('a'),
            Just('Z'),
            Just(' '),
            Just('"'),
            Just('\\'),
            Just('/'),
            Just('\u{1}'),
            Just('\n'),
            Just('\u{7f}'),
            Just('é'),
            Just('\u{2028}'),
            Just('😀'),
        ],
        0..6,
    )
    .prop_map(|v| v.into_iter().collect::<String>());
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // quarters: exact in binary, so parsing them back gives the same f64
        (-4_000_000i64..4_000_000).prop_map(|q| Value::from(q as f64 / 4.0)),
        chars.prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("Email".to_string()),
        Just("customer".to_string()),
        Just("id".to_string()),
        Just("é".to_string()),
    ]
}

fn arb_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((arb_key(), arb_value()), 0..6)
        .prop_map(|kv| Value::Object(kv.into_iter().collect()))
}

/// A tiny deterministic random source for layout choices.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn ws(out: &mut String, rng: &mut Rng) {
    for _ in 0..rng.pick(4).saturating_sub(2) {
        out.push([' ', '\t', ' ', '\r'][rng.pick(4) as usize]);
    }
}

/// Writes `s` as a JSON string with randomly chosen (valid) escapes.
fn emit_str(s: &str, out: &mut String, rng: &mut Rng) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' if rng.pick(2) == 0 => out.push_str("\\n"),
            c if (c as u32) < 0x20 || rng.pick(4) == 0 => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", u));
                }
            }
            '/' if rng.pick(2) == 0 => out.push_str("\\/"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn emit(v: &Value, out: &mut String, rng: &mut Rng) {
    match v {
        Value::Object(m) => {
            out.push('{');
            ws(out, rng);
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    ws(out, rng);
                }
                emit_str(k, out, rng);
                ws(out, rng);
                out.push(':');
                ws(out, rng);
                emit(v, out, rng);
                ws(out, rng);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            ws(out, rng);
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    ws(out, rng);
                }
                emit(v, out, rng);
                ws(out, rng);
            }
            out.push(']');
        }
        Value::String(s) => emit_str(s, out, rng),
        other => out.push_str(&other.to_string()),
    }
}

const PATHS: [&str; 6] = ["Email", "customer/id", "customer", "a/b/a", "é", "b/Email"];

fn lookup<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('/')
        .try_fold(v, |v, seg| v.as_object()?.get(seg))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)))]

    /// Valid objects: every slot is what serde_json finds at the path, with an exact span; the
    /// encoder keeps everything but the replaced values.
    #[test]
    fn slots_match_serde_json(v in arb_object(), seed in 1u64..) {
        let mut rng = Rng(seed);
        let mut line = String::new();
        ws(&mut line, &mut rng);
        emit(&v, &mut line, &mut rng);
        ws(&mut line, &mut rng);
        // a `\r` ending the last line is taken for half a line terminator
        let line = line.trim_end_matches('\r').to_string();
        let p = plan(&PATHS);
        let (batch, rej) = decode_batch(&p, line.as_bytes());
        prop_assert!(rej.is_empty(), "{:?} {}", rej.items(), line);
        let rec = batch.record(0);
        prop_assert_eq!(rec.raw(), line.as_bytes());
        let mut repl = Vec::new();
        for (i, path) in PATHS.iter().enumerate() {
            match (lookup(&v, path), rec.slot(i)) {
                (None, Slot::Missing) | (Some(Value::Null), Slot::Null) => {}
                (Some(want), Slot::Value { span, kind, .. }) => {
                    let json = &line[span.0 as usize..span.1 as usize];
                    prop_assert_eq!(&serde_json::from_str::<Value>(json).unwrap(), want);
                    let value = rec.value(i).unwrap();
                    match want {
                        Value::String(s) => {
                            prop_assert_eq!(kind, ValueKind::Text);
                            prop_assert_eq!(value, s.as_bytes());
                        }
                        _ => {
                            prop_assert_eq!(kind, ValueKind::Json);
                            prop_assert_eq!(value, json.as_bytes());
                        }
                    }
                    repl.push((i, span));
                }
                (want, got) => prop_assert!(false, "{path}: {want:?} vs {got:?} in {line}"),
            }
        }

        // encode, replacing every value that is not inside another replaced value
        let texts = ["E1", "c\"2", "C3", "ab\\a", "é5", "\u{1}6"];
        let mut enc = Enc::new(p.len());
        let chosen: Vec<(usize, (u32, u32))> = repl
            .iter()
            .copied()
            .filter(|(_, s)| !repl.iter().any(|(_, o)| o != s && o.0 <= s.0 && s.1 <= o.1))
            .collect();
        let edits: Vec<(usize, &str)> = repl.iter().map(|&(i, _)| (i, texts[i])).collect();
        enc.row(0, &edits);
        let out = String::from_utf8(enc.encode(&p, &batch)).unwrap();
        let close = line.rfind('}').unwrap();
        let insert_at = line[..close].trim_end_matches([' ', '\t', '\r']).len();
        let comma = !line[..insert_at].ends_with('{');
        let spans: Vec<_> = chosen.iter().map(|&(i, s)| (s, texts[i])).collect();
        prop_assert_eq!(&out, &expected(&line, &spans, insert_at, comma));
        let parsed: Value = serde_json::from_str(&out).unwrap();
        for (i, _) in chosen {
            prop_assert_eq!(lookup(&parsed, PATHS[i]).unwrap(), texts[i]);
        }
    }

    /// Any text: accepted exactly when serde_json accepts it (as a value, without building it).
    #[test]
    fn validity_matches_serde_json(v in arb_value(), seed in 1u64.., edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(vec!['{', '}', '[', ']', ',', ':', '"', '\\', 'u', '0', '1', '-', '.', 'e', '+', 'n', 't', ' ', 'é', '\u{1}', 'x'])), 0..3)) {
        let mut rng = Rng(seed);
        let mut s = String::new();
        emit(&v, &mut s, &mut rng);
        let mut chars: Vec<char> = s.chars().collect();
        for (idx, op, c) in edits {
            let i = idx.index(chars.len() + 1);
            match op {
                0 if i < chars.len() => { chars.remove(i); }
                1 if i < chars.len() => chars[i] = c,
                _ => chars.insert(i, c),
            }
        }
        let s: String = chars.into_iter().collect();
        check_validity(&s)?;
    }

    #[test]
    fn validity_matches_serde_json_on_token_soup(tokens in prop::collection::vec(prop::sample::select(vec![
        "{", "}", "[", "]", ",", ":", " ", "\t", "\"a\"", "\"Email\"", "\"\\u00e9\"", "\"\\ud800\"",
        "\"\\\"", "\"\u{1}\"", "\"\\q\"", "\"", "1", "-0", "0.5", "1e5", "-", "01", "1.", "1e",
        "true", "tru", "null", "nulll", "false", "é", "\\", "\"\\u12\"", "E", "\r",
    ]), 0..12)) {
        check_validity(&tokens.concat())?;
    }
}

fn check_validity(s: &str) -> Result<(), TestCaseError> {
    let trie = Trie::new(&plan(&PATHS));
    let mut sc = Scanner::default();
    let ours = match sc.scan(&trie, s.as_bytes()) {
        Ok(_) | Err(Fail::Duplicate(_) | Fail::Reserved) => true,
        Err(Fail::Syntax(_) | Fail::Eof(_) | Fail::Trailing(_)) => false,
    };
    let theirs = serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok();
    prop_assert_eq!(ours, theirs, "{:?}", s);
    Ok(())
}

#[test]
fn deep_nesting_is_fine() {
    let p = plan(&["a"]);
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let (recs, rej) = decode(&p, deep.as_bytes());
    assert!(rej.is_empty());
    assert_eq!(recs.len(), 1);
    let unbalanced = format!("{{\"a\":{}1{}}}", "[".repeat(1000), "]".repeat(999));
    assert_eq!(decode(&p, unbalanced.as_bytes()).1.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// no allocation per line once warm

mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        /// Allocations by this thread while counting (`None`: not counting).
        pub static COUNT: Cell<Option<u64>> = const { Cell::new(None) };
    }

    pub struct Counting;

    fn count() {
        let _ = COUNT.try_with(|c| {
            if let Some(n) = c.get() {
                c.set(Some(n + 1));
            }
        });
    }

    // SAFETY: forwards to the system allocator.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOC: Counting = Counting;

    /// Runs `f` and returns how many allocations this thread made meanwhile.
    pub fn allocations(f: impl FnOnce()) -> u64 {
        COUNT.with(|c| c.set(Some(0)));
        f();
        COUNT.with(|c| c.replace(None)).unwrap()
    }
}

#[test]
fn no_allocation_per_line_once_warm() {
    let p = plan(&["Email", "customer/id", "customer", "ts"]);
    let line = "{\"Em\\u0061il\":\"a\\\"b\\u00e9@x.y\",\"customer\":{\"id\":[1,{\"k\":[{\"d\":[[[]]]}]}],\"n\":\"\\ud83d\\ude00\"},\"items\":[{\"sku\":\"A1\",\"qty\":[2,{\"x\":{}}]}],\"ts\":\"2024\",\"dup\":1,\"dup\":2}\r\n";
    let input = line.repeat(200);
    let mut dec = JsonlFormat::new().decoder(&p);
    let mut enc = JsonlFormat::new()
        .encoder(&p, &Layout::default(), CONTRACT)
        .unwrap();
    let mut batch = RecordBatch::new(p.len());
    let mut rejects = Rejects::new(false);
    let mut enc_rows = Enc::new(p.len());
    for r in 0..200 {
        enc_rows.row(r, &[(0, "ATx9+/=="), (1, "c1"), (2, "masked"), (3, "T")]);
    }
    let mut out = Vec::new();
    let mut run = |batch: &mut RecordBatch, out: &mut Vec<u8>| {
        batch.clear();
        out.clear();
        // cut inside lines, so that the carry-over is used too
        for chunk in input.as_bytes().chunks(1000) {
            dec.decode(chunk, batch, &mut rejects).unwrap();
        }
        assert_eq!(batch.len(), 200);
        enc.encode(batch, &enc_rows.rows, out).unwrap();
    };
    run(&mut batch, &mut out); // warm-up
    let boxed = counting::allocations(|| drop(std::hint::black_box(Box::new(7u8))));
    assert_eq!(boxed, 1, "the counter counts");
    let n = counting::allocations(|| run(&mut batch, &mut out));
    assert_eq!(n, 0);
    assert!(rejects.is_empty());
    let first = out.split(|&b| b == b'\n').next().unwrap();
    let v: Value = serde_json::from_slice(first).unwrap();
    assert_eq!(v["Email"], "ATx9+/==");
    assert_eq!(v["customer"], "masked");
    assert_eq!(v["ts"], "T");
}

// ---------------------------------------------------------------------------------------------
// decoding in pieces (the engine's parallel decoding)

/// A random line: an object, something that is not one, or blank; ended by LF or CRLF.
fn arb_line() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        4 => arb_object().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => Just(b"[1,2]".to_vec()),
        1 => Just(b"{\"a\":".to_vec()),
        1 => Just(b"{\"a\":\"\\ud800\"}".to_vec()),
        1 => Just(b"{\"a\":\"\xFF\"}".to_vec()),
        1 => Just(b"  \t".to_vec()),
    ];
    let end = prop_oneof![3 => Just(&b"\n"[..]), 1 => Just(&b"\r\n"[..])];
    (body, end).prop_map(|(b, e)| [&b[..], e].concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Cut where the splitter says and decoded by forked decoders, JSON Lines give the records,
    /// line numbers, slots and rejects one decoder gives (a BOM on the first line, CRLF, blank
    /// lines, bad lines, a last line without a line break).
    #[test]
    fn decoding_in_pieces_gives_what_decoding_whole_gives(
        bom in any::<bool>(),
        lines in prop::collection::vec(arb_line(), 0..30),
        unended in any::<bool>(),
        chunks in prop::collection::vec(1usize..64, 1..6),
        take in prop::collection::vec(any::<bool>(), 0..5),
    ) {
        let mut input = if bom { b"\xEF\xBB\xBF".to_vec() } else { Vec::new() };
        input.extend(lines.concat());
        if unended {
            input.extend_from_slice(b"{\"id\":1}");
        }
        let p = plan(&PATHS);
        let checked = keylink_core::testkit::format::check_pieces(
            &JsonlFormat {}, &p, &input, &chunks, &take,
        );
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }
}
