//! Tests of the CSV format.

use keylink_core::format::{Decoder, Encoder, Format, FormatConfig, Layout, META_COLUMNS};
use keylink_core::record::{Edit, FieldPlan, OutputRows, RecordBatch, RowMeta, Slot, ValueKind};
use keylink_core::reject::{Reject, RejectReason, Rejects};
use keylink_core::{ErrorKind, Result};
use proptest::prelude::*;

use crate::{CsvConfig, CsvDecoder, CsvEncoder, CsvFormat};

const KEY_LINK: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";
const CONTRACT: &str = "acme/clicks/1.0.0";
const META_HEADER: &str =
    "strmMeta.eventContractRef,strmMeta.timestamp,strmMeta.keyLink,strmMeta.consentLevels";

// ---------------------------------------------------------------------------------------------
// helpers

fn plan(fields: &[(&str, bool)]) -> FieldPlan {
    let mut p = FieldPlan::new();
    for (f, req) in fields {
        p.slot(f, *req);
    }
    p
}

/// A slot, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnedSlot {
    Missing,
    Value(Vec<u8>, (u32, u32)),
}

/// A decoded record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    line: u64,
    fields: Vec<Vec<u8>>,
    raw: Vec<u8>,
    offsets: Vec<u32>,
    slots: Vec<OwnedSlot>,
}

/// Everything a decode produced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decoded {
    records: Vec<Rec>,
    rejects: Vec<Reject>,
    raw_rejects: Vec<u8>,
    layout: Option<Layout>,
}

fn fields_of(raw: &[u8], offsets: &[u32]) -> Vec<Vec<u8>> {
    let mut start = 0;
    offsets
        .iter()
        .map(|&e| {
            let f = raw[start..e as usize].to_vec();
            start = e as usize;
            f
        })
        .collect()
}

fn collect(batch: &RecordBatch, into: &mut Vec<Rec>) {
    for r in batch.records() {
        let slots = r
            .slots()
            .iter()
            .map(|s| match *s {
                Slot::Missing => OwnedSlot::Missing,
                Slot::Null => panic!("csv never yields null"),
                Slot::Value { value, span, kind } => {
                    assert_eq!(kind, ValueKind::Text);
                    OwnedSlot::Value(r.value_bytes(value).to_vec(), span)
                }
            })
            .collect();
        into.push(Rec {
            line: r.line(),
            fields: fields_of(r.raw(), r.offsets()),
            raw: r.raw().to_vec(),
            offsets: r.offsets().to_vec(),
            slots,
        });
    }
}

/// Decodes `input` cut at `cuts` (sorted positions), clearing the batch after every call as the
/// engine does.
fn decode_cut(input: &[u8], cuts: &[usize], plan: &FieldPlan) -> Result<Decoded> {
    let mut dec = CsvDecoder::new(plan, b',');
    decode_with(&mut dec, input, cuts, plan)
}

fn decode_with(
    dec: &mut dyn Decoder,
    input: &[u8],
    cuts: &[usize],
    plan: &FieldPlan,
) -> Result<Decoded> {
    let mut batch = RecordBatch::new(plan.len());
    let mut rejects = Rejects::new(true);
    let mut records = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        dec.decode(&input[prev..c], &mut batch, &mut rejects)?;
        collect(&batch, &mut records);
        batch.clear();
        prev = c;
    }
    dec.finish(&mut batch, &mut rejects)?;
    collect(&batch, &mut records);
    let (rejects, raw_rejects) = rejects.drain();
    Ok(Decoded {
        records,
        rejects,
        raw_rejects,
        layout: dec.layout(),
    })
}

fn decode(input: &[u8], plan: &FieldPlan) -> Result<Decoded> {
    decode_cut(input, &[], plan)
}

fn meta(rows: &mut OutputRows, record: usize, ts: i64, levels: &[u8]) {
    let consent_levels = rows.push_text(levels);
    let key_link = KEY_LINK.parse().unwrap();
    rows.push_row(
        record,
        RowMeta {
            timestamp_ms: ts,
            key_link,
            consent_levels,
            json_fields: (0, 0),
        },
    );
}

/// Decodes `input` whole and encodes every record with all-Keep edits.
fn round_trip(input: &[u8]) -> Vec<u8> {
    round_trip_with(input, CsvFormat::default())
}

fn round_trip_with(input: &[u8], format: CsvFormat) -> Vec<u8> {
    let plan = plan(&[("b", false)]);
    let mut dec = format.decoder(&plan);
    let mut batch = RecordBatch::new(plan.len());
    let mut rejects = Rejects::new(false);
    dec.decode(input, &mut batch, &mut rejects).unwrap();
    dec.finish(&mut batch, &mut rejects).unwrap();
    assert!(rejects.is_empty(), "{:?}", rejects.items());
    let layout = dec.layout().unwrap();
    let mut enc = format.encoder(&plan, &layout, CONTRACT).unwrap();
    let mut rows = OutputRows::new(plan.len());
    for i in 0..batch.len() {
        meta(&mut rows, i, 1_700_000_000_000, b"[1,2]");
    }
    let mut out = Vec::new();
    enc.begin(&mut out).unwrap();
    enc.encode(&batch, &rows, &mut out).unwrap();
    out
}

/// Parses CSV with the csv crate (no header handling, flexible).
fn csv_crate_records(input: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut rec = csv::ByteRecord::new();
    let mut all = Vec::new();
    while rdr.read_byte_record(&mut rec).unwrap() {
        all.push(rec.iter().map(|f| f.to_vec()).collect());
    }
    all
}

fn meta_suffix(levels: &str) -> String {
    format!("{CONTRACT},1700000000000,{KEY_LINK},{levels}")
}

// ---------------------------------------------------------------------------------------------
// config

#[test]
fn config_deserializes_through_the_trait_object() {
    for json in [
        r#"{"csv":{}}"#,
        r#"{"csv":{"charset":"UTF-8"}}"#,
        r#"{"csv":{"charset":"utf-8"}}"#,
        r#"{"csv":{"charset":"utf8"}}"#,
        r#"{"csv":{"delimiter":";"}}"#,
        r#"{"csv":{"charset":"UTF-8","delimiter":"\t"}}"#,
    ] {
        let cfg: Box<dyn FormatConfig> = serde_json::from_str(json).unwrap();
        cfg.validate().unwrap();
        let format = cfg.build().unwrap();
        assert_eq!(format.name(), "csv");
    }
    let cfg: Box<dyn FormatConfig> = serde_json::from_str(r#"{"csv":{}}"#).unwrap();
    assert_eq!(serde_json::to_string(&cfg).unwrap(), r#"{"csv":{}}"#);
    let cfg: CsvConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg, CsvConfig::default());
    assert_eq!(cfg.delimiter_byte().unwrap(), b',');
}

#[test]
fn config_rejects_other_charsets() {
    let cfg: Box<dyn FormatConfig> =
        serde_json::from_str(r#"{"csv":{"charset":"latin1"}}"#).unwrap();
    let e = cfg.validate().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotSupported);
    assert_eq!(
        e.to_string(),
        "charset 'latin1' is not supported; only UTF-8"
    );
    assert_eq!(cfg.build().unwrap_err().kind(), ErrorKind::NotSupported);
}

#[test]
fn config_denies_unknown_fields() {
    let r: std::result::Result<Box<dyn FormatConfig>, _> =
        serde_json::from_str(r#"{"csv":{"chrset":"x"}}"#);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("chrset"), "{e}");
    let r: std::result::Result<Box<dyn FormatConfig>, _> = serde_json::from_str(r#"{"xml":{}}"#);
    assert!(r.is_err());
}

#[test]
fn config_checks_the_delimiter() {
    for bad in [r#""\"""#, r#""\n""#, r#""\r""#, r#""é""#] {
        let json = format!(r#"{{"csv":{{"delimiter":{bad}}}}}"#);
        let cfg: Box<dyn FormatConfig> = serde_json::from_str(&json).unwrap();
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{json}");
        assert!(e.to_string().contains("csv.delimiter"), "{e}");
    }
    let r: std::result::Result<Box<dyn FormatConfig>, _> =
        serde_json::from_str(r#"{"csv":{"delimiter":";;"}}"#);
    assert!(r.is_err(), "a delimiter is one character");
}

// ---------------------------------------------------------------------------------------------
// decoding

#[test]
fn decodes_values_offsets_and_slots() {
    let p = plan(&[("b", true), ("zz", false), ("a", false)]);
    let d = decode(b"a,b,c\n1,\"x,\"\"y\"\"\",\n", &p).unwrap();
    assert_eq!(
        d.layout,
        Some(Layout {
            columns: Some(vec!["a".into(), "b".into(), "c".into()])
        })
    );
    assert_eq!(d.records.len(), 1);
    let r = &d.records[0];
    assert_eq!(r.line, 2);
    assert_eq!(r.raw, b"1x,\"y\"");
    assert_eq!(r.offsets, vec![1, 6, 6]);
    assert_eq!(
        r.slots,
        vec![
            OwnedSlot::Value(b"x,\"y\"".to_vec(), (1, 0)),
            OwnedSlot::Missing,
            OwnedSlot::Value(b"1".to_vec(), (0, 0)),
        ]
    );
    // an empty field is a value of length 0, not missing
    let p = plan(&[("c", true)]);
    let d = decode(b"a,b,c\n1,2,\n", &p).unwrap();
    assert_eq!(d.records[0].slots, vec![OwnedSlot::Value(vec![], (2, 0))]);
    let d = decode(b"a,b,c\n1,2,\"\"", &p).unwrap();
    assert_eq!(d.records[0].slots, vec![OwnedSlot::Value(vec![], (2, 0))]);
}

#[test]
fn layout_is_known_once_the_header_is_read() {
    let p = plan(&[]);
    let mut dec = CsvDecoder::new(&p, b',');
    let mut batch = RecordBatch::new(0);
    let mut rejects = Rejects::new(false);
    assert_eq!(dec.layout(), None);
    dec.decode(b"x,y", &mut batch, &mut rejects).unwrap();
    assert_eq!(dec.layout(), None, "the header line is not complete yet");
    dec.decode(b"\n", &mut batch, &mut rejects).unwrap();
    assert_eq!(
        dec.layout(),
        Some(Layout {
            columns: Some(vec!["x".into(), "y".into()])
        })
    );
    assert_eq!(dec.header().unwrap(), ["x", "y"]);
}

#[test]
fn line_numbers_count_lf_blank_lines_and_quoted_newlines() {
    let p = plan(&[]);
    let input = b"a,b\r\n\
        1,2\r\n\
        \r\n\
        \n\
        \"multi\nline\r\nvalue\",3\n\
        4,5\n\
        \"x\ny\",\"\n\"\n\
        6,7\rlone,cr\n\
        8,9";
    let d = decode(input, &p).unwrap();
    let lines: Vec<u64> = d.records.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![2, 5, 8, 9, 12, 12, 13]);
    assert_eq!(d.records[1].fields[0], b"multi\nline\r\nvalue");
    assert_eq!(d.records[4].fields, vec![b"6".to_vec(), b"7".to_vec()]);
    assert_eq!(d.records[5].fields, vec![b"lone".to_vec(), b"cr".to_vec()]);
    assert!(d.rejects.is_empty());
}

#[test]
fn blank_lines_are_not_records() {
    let p = plan(&[]);
    let d = decode(b"\n\r\n\na\n\n\n1\n\n", &p).unwrap();
    assert_eq!(d.layout.unwrap().columns.unwrap(), ["a"]);
    assert_eq!(d.records.len(), 1);
    assert_eq!(d.records[0].line, 7);
    // a line of spaces is a record with one field
    let d = decode(b"a,b\n  \n", &p).unwrap();
    assert_eq!(d.rejects.len(), 1);
    assert_eq!(d.rejects[0].reason, RejectReason::WrongColumnCount);
}

#[test]
fn lenient_quotes_like_the_csv_crate() {
    let p = plan(&[]);
    let d = decode(b"a,b\nab\"c,\"x\"y\n", &p).unwrap();
    assert_eq!(d.records[0].fields, vec![b"ab\"c".to_vec(), b"xy".to_vec()]);
}

#[test]
fn bom_is_stripped_even_when_cut() {
    let p = plan(&[("id", true)]);
    let input = b"\xEF\xBB\xBFid,x\n1,2\n";
    for cut1 in 0..=input.len() {
        for cut2 in cut1..=input.len() {
            let d = decode_cut(input, &[cut1, cut2], &p).unwrap();
            assert_eq!(
                d.layout.as_ref().unwrap().columns.as_ref().unwrap()[0],
                "id"
            );
            assert_eq!(d.records.len(), 1);
        }
    }
    // a BOM later in the file is data
    let d = decode(b"id,x\n\xEF\xBB\xBF1,2\n", &p).unwrap();
    assert_eq!(d.records[0].fields[0], "\u{feff}1".as_bytes());
    // bytes that start like a BOM but are not one are data (here: an invalid header)
    for input in [&b"\xEFid\n"[..], b"\xEF\xBBid\n", b"\xEF", b"\xEF\xBB"] {
        for cut in 0..=input.len() {
            let e = decode_cut(input, &[cut], &p).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Data);
            assert!(e.to_string().contains("not valid UTF-8"), "{e}");
        }
    }
    // only a BOM: no header
    let e = decode(b"\xEF\xBB\xBF", &p).unwrap_err();
    assert!(e.to_string().contains("no header row"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// header errors

#[test]
fn empty_input_has_no_header() {
    let p = plan(&[("a", false)]);
    for input in [&b""[..], b"\n", b"\r\n\r\n\n"] {
        let mut dec = CsvDecoder::new(&p, b',');
        let mut batch = RecordBatch::new(p.len());
        let mut rejects = Rejects::new(false);
        dec.decode(input, &mut batch, &mut rejects).unwrap();
        let e = dec.finish(&mut batch, &mut rejects).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Data);
        assert!(e.to_string().contains("has no header row"), "{e}");
        // it stays failed
        assert!(dec.finish(&mut batch, &mut rejects).is_err());
        assert!(dec.decode(b"a\n", &mut batch, &mut rejects).is_err());
    }
}

#[test]
fn required_column_missing_from_the_header() {
    let p = plan(&[("a", false), ("Email", true)]);
    let mut dec = CsvDecoder::new(&p, b',');
    let mut batch = RecordBatch::new(p.len());
    let mut rejects = Rejects::new(false);
    let e = dec
        .decode(
            b"a,b,c\nsecret-1,secret-2,secret-3\n",
            &mut batch,
            &mut rejects,
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Data);
    assert_eq!(
        e.to_string(),
        "column 'Email' is required but not in the header; header has 3 columns"
    );
    assert!(batch.is_empty());
    let e2 = dec
        .decode(b"x,y,z\n", &mut batch, &mut rejects)
        .unwrap_err();
    assert_eq!(e2.to_string(), e.to_string());
    assert!(dec.finish(&mut batch, &mut rejects).is_err());
}

#[test]
fn optional_column_missing_from_the_header_stays_missing() {
    let p = plan(&[("a", true), ("nope", false)]);
    let d = decode(b"a\n1\n2\n", &p).unwrap();
    assert_eq!(d.records.len(), 2);
    for r in &d.records {
        assert_eq!(r.slots[1], OwnedSlot::Missing);
    }
}

#[test]
fn duplicate_header_names_are_an_error() {
    let p = plan(&[]);
    let e = decode(b"id,name,id\n1,2,3\n", &p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Data);
    assert!(e.to_string().contains("'id'"), "{e}");
    assert!(e.to_string().contains("more than once"), "{e}");
}

#[test]
fn header_must_be_utf8_and_closed() {
    let p = plan(&[]);
    let e = decode(b"id,n\xFFame\n1,2\n", &p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Data);
    assert!(e.to_string().contains("not valid UTF-8 in column 2"), "{e}");
    let e = decode(b"id,\"name\n1,2\n", &p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Data);
    assert!(e.to_string().contains("not closed"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// rejects

#[test]
fn wrong_column_counts_are_rejected_with_lines_and_no_values() {
    let p = plan(&[("a", true)]);
    let input = b"a,b,c\n\
        \"SECRET\nMULTI\",x,y\n\
        SECRET-FEW,PII-FEW\n\
        ok1,ok2,ok3\n\
        \"SECRET\n\nMANY\",PII-MANY,x,y\n\
        last,\"one\",here";
    let d = decode(input, &p).unwrap();
    let lines: Vec<u64> = d.records.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![2, 5, 9]);
    assert_eq!(d.records[1].fields[0], b"ok1");
    assert_eq!(
        d.rejects,
        vec![
            Reject {
                line: 4,
                reason: RejectReason::WrongColumnCount,
                detail: "expected 3 fields, found 2".into(),
            },
            Reject {
                line: 6,
                reason: RejectReason::WrongColumnCount,
                detail: "expected 3 fields, found 4".into(),
            },
        ]
    );
    for r in &d.rejects {
        assert!(!r.detail.contains("SECRET") && !r.detail.contains("PII"));
    }
    // the raw source of rejected records is kept when asked
    assert_eq!(
        d.raw_rejects,
        b"SECRET-FEW,PII-FEW\n\"SECRET\n\nMANY\",PII-MANY,x,y\n"
    );
    for r in &d.records {
        assert!(!r.raw.windows(3).any(|w| w == b"FEW" || w == b"MAN"));
    }
}

#[test]
fn invalid_utf8_fields_are_rejected() {
    let p = plan(&[("b", true)]);
    let input = b"a,b,Email\n\
        1,2,ok\xC3\xA9\n\
        \"multi\nline\",2,SECRET\xFFVALUE\n\
        3,\"SE\xC3\",\xA9CRET\n\
        4,5,6\n";
    let d = decode(input, &p).unwrap();
    let lines: Vec<u64> = d.records.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![2, 6]);
    assert_eq!(d.records[0].fields[2], "oké".as_bytes());
    assert_eq!(
        d.rejects,
        vec![
            Reject {
                line: 3,
                reason: RejectReason::InvalidUtf8,
                detail: "field 'Email' is not valid UTF-8".into(),
            },
            Reject {
                line: 5,
                reason: RejectReason::InvalidUtf8,
                detail: "field 'b' is not valid UTF-8".into(),
            },
        ]
    );
    assert_eq!(
        d.raw_rejects,
        b"\"multi\nline\",2,SECRET\xFFVALUE\n3,\"SE\xC3\",\xA9CRET\n"
    );
    for r in &d.rejects {
        assert!(
            !r.detail.contains("CRET") && !r.detail.contains("multi"),
            "{}",
            r.detail
        );
    }
}

#[test]
fn utf8_split_across_chunks_is_not_a_reject() {
    let p = plan(&[("name", true)]);
    let input = "id,name\n1,Zoë 😀 日本\n2,\"ñ,😀\"\n".as_bytes();
    let whole = decode(input, &p).unwrap();
    assert!(whole.rejects.is_empty());
    for cut in 0..=input.len() {
        let d = decode_cut(input, &[cut], &p).unwrap();
        assert!(d.rejects.is_empty(), "cut at {cut}");
        assert_eq!(d, whole, "cut at {cut}");
    }
}

#[test]
fn unterminated_quote_at_the_end_is_bad_csv() {
    let p = plan(&[]);
    let d = decode(b"a,b\n1,2\n3,\"SECRET\n\n", &p).unwrap();
    assert_eq!(d.records.len(), 1);
    assert_eq!(
        d.rejects,
        vec![Reject {
            line: 3,
            reason: RejectReason::BadCsv,
            detail: "a quoted field is not closed before the end of the input".into(),
        }]
    );
    assert_eq!(d.raw_rejects, b"3,\"SECRET\n\n");
}

// ---------------------------------------------------------------------------------------------
// chunking

const TRICKY: &[u8] = b"\xEF\xBB\xBFid,\"na,me\",note\r\n\
    1,\"Zo\xC3\xAB, \"\"the\"\" \xF0\x9F\x98\x80\",\"a\r\nb\"\r\n\
    \r\n\
    2,,\n\
    3,few\n\
    4,\"bad\xFF\",x\n\
    \"5\n\",x,\"y\"\"\"\n\
    6,more,than,three\r\
    7,\"\xE6\x97\xA5\",\"\"\n\
    8,last,no-newline";

#[test]
fn every_cut_gives_the_same_result() {
    let p = plan(&[("na,me", true), ("note", false), ("absent", false)]);
    let whole = decode(TRICKY, &p).unwrap();
    let lines: Vec<u64> = whole.records.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![2, 5, 8, 10, 11]);
    let lines: Vec<u64> = whole.rejects.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![6, 7, 10]);
    for cut in 0..=TRICKY.len() {
        assert_eq!(
            decode_cut(TRICKY, &[cut], &p).unwrap(),
            whole,
            "cut at {cut}"
        );
    }
    for a in 0..=TRICKY.len() {
        for b in a..=TRICKY.len() {
            assert_eq!(
                decode_cut(TRICKY, &[a, b], &p).unwrap(),
                whole,
                "cuts at {a},{b}"
            );
        }
    }
    // byte by byte
    let all: Vec<usize> = (0..=TRICKY.len()).collect();
    assert_eq!(decode_cut(TRICKY, &all, &p).unwrap(), whole);
}

/// Bytes random CSV is made of: structure, multi-byte UTF-8 and invalid bytes.
fn csv_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => Just(&b","[..]),
        3 => Just(&b"\""[..]),
        2 => Just(&b"\n"[..]),
        1 => Just(&b"\r\n"[..]),
        1 => Just(&b"\r"[..]),
        4 => Just(&b"x"[..]),
        1 => Just(&b" "[..]),
        1 => Just("é".as_bytes()),
        1 => Just("😀".as_bytes()),
        1 => Just(&b"\xFF"[..]),
        1 => Just(&b"\xC3"[..]),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_cuts_give_the_same_result(
        body in csv_bytes(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let input = [&b"h1,h2,h3\n"[..], &body].concat();
        let p = plan(&[("h2", true), ("h3", false)]);
        let whole = decode(&input, &p).unwrap();
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(decode_cut(&input, &cuts, &p).unwrap(), whole);
    }

    /// The decoder reads what the csv crate reads; records with the wrong field count or invalid
    /// UTF-8 become rejects, and a quoted field open at the end is a BadCsv reject.
    #[test]
    fn agrees_with_the_csv_crate(body in csv_bytes()) {
        let input = [&b"h1,h2,h3\n"[..], &body].concat();
        let p = plan(&[]);
        let d = decode(&input, &p).unwrap();
        let mut expected = csv_crate_records(&input);
        prop_assert_eq!(&expected[0], &vec![b"h1".to_vec(), b"h2".to_vec(), b"h3".to_vec()]);
        expected.remove(0);
        if d.rejects.last().is_some_and(|r| r.reason == RejectReason::BadCsv) {
            expected.pop();
        }
        let ok: Vec<Vec<Vec<u8>>> = expected
            .iter()
            .filter(|r| r.len() == 3 && r.iter().all(|f| std::str::from_utf8(f).is_ok()))
            .cloned()
            .collect();
        let got: Vec<Vec<Vec<u8>>> = d.records.iter().map(|r| r.fields.clone()).collect();
        prop_assert_eq!(got, ok);
        let bad_csv = d.rejects.iter().filter(|r| r.reason == RejectReason::BadCsv).count();
        prop_assert!(bad_csv <= 1);
        prop_assert_eq!(d.records.len() + d.rejects.len() - bad_csv, expected.len());
        // every line number points at the line the record starts on
        let lines: Vec<u64> = d.records.iter().map(|r| r.line).collect();
        let mut sorted = lines.clone();
        sorted.sort_unstable();
        prop_assert_eq!(&lines, &sorted);
    }

    /// Whatever the values, encoding then decoding gives them back.
    #[test]
    fn encoded_values_decode_back(
        values in prop::collection::vec(prop::collection::vec(csv_utf8_field(), 3), 1..8),
    ) {
        let p = plan(&[("b", true)]);
        let mut input = b"a,b,c\n".to_vec();
        let enc = CsvEncoder::new(
            &p,
            &Layout { columns: Some(vec!["x".into()]) },
            CONTRACT,
            b',',
        )
        .unwrap();
        for row in &values {
            for (i, v) in row.iter().enumerate() {
                if i > 0 {
                    input.push(b',');
                }
                enc.write_field(v.as_bytes(), &mut input);
            }
            input.push(b'\n');
        }
        let d = decode(&input, &p).unwrap();
        prop_assert!(d.rejects.is_empty());
        let got: Vec<Vec<String>> = d
            .records
            .iter()
            .map(|r| r.fields.iter().map(|f| String::from_utf8(f.clone()).unwrap()).collect())
            .collect();
        prop_assert_eq!(got, values);
    }
}

fn csv_utf8_field() -> impl Strategy<Value = String> {
    "[a,\"\r\n é😀]{0,8}"
}

// ---------------------------------------------------------------------------------------------
// encoding

#[test]
fn round_trip_gives_the_input_back_with_meta() {
    let input = "a,b,c\r\n\
        \"x,y\",\"say \"\"hi\"\"\",\"two\nlines\"\r\n\
        \"\",,plain\n\
        Zoë 😀,\"日本,語\",\" padded \"\r\n\
        \"crlf\r\ninside\",\"quoted-but-plain\",end\n\
        last,no,newline";
    let out = String::from_utf8(round_trip(input.as_bytes())).unwrap();
    let m = meta_suffix("\"[1,2]\"");
    let expected = format!(
        "a,b,c,{META_HEADER}\n\
        \"x,y\",\"say \"\"hi\"\"\",\"two\nlines\",{m}\n\
        ,,plain,{m}\n\
        Zoë 😀,\"日本,語\", padded ,{m}\n\
        \"crlf\r\ninside\",quoted-but-plain,end,{m}\n\
        last,no,newline,{m}\n"
    );
    assert_eq!(out, expected);
    // the csv crate reads the same values from input and output
    let mut from_in = csv_crate_records(input.as_bytes());
    let from_out = csv_crate_records(out.as_bytes());
    let mut header_meta: Vec<Vec<u8>> =
        META_COLUMNS.iter().map(|c| c.as_bytes().to_vec()).collect();
    from_in[0].append(&mut header_meta);
    for r in &mut from_in[1..] {
        r.extend([
            CONTRACT.as_bytes().to_vec(),
            b"1700000000000".to_vec(),
            KEY_LINK.as_bytes().to_vec(),
            b"[1,2]".to_vec(),
        ]);
    }
    assert_eq!(from_out, from_in);
}

#[test]
fn round_trip_with_another_delimiter() {
    let cfg: Box<dyn FormatConfig> = serde_json::from_str(r#"{"csv":{"delimiter":";"}}"#).unwrap();
    cfg.validate().unwrap();
    let format = CsvFormat::new(
        CsvConfig {
            charset: None,
            delimiter: Some(';'),
        }
        .delimiter_byte()
        .unwrap(),
    );
    let out = String::from_utf8(round_trip_with(b"a;b\n1,5;\"x;y\"\n", format)).unwrap();
    assert_eq!(
        out,
        format!(
            "a;b;{}\n1,5;\"x;y\";{CONTRACT};1700000000000;{KEY_LINK};[1,2]\n",
            META_HEADER.replace(',', ";")
        )
    );
    // a delimiter that occurs in key links quotes them
    let out = String::from_utf8(round_trip_with(b"a-b\n1-2\n", CsvFormat::new(b'-'))).unwrap();
    assert_eq!(
        out,
        format!(
            "a-b-{}\n1-2-{CONTRACT}-1700000000000-\"{KEY_LINK}\"-[1,2]\n",
            META_HEADER.replace(',', "-")
        )
    );
}

#[test]
fn edits_replace_slot_columns_only() {
    let p = plan(&[("email", true), ("id", true), ("absent", false)]);
    let input = b"id,email,note\n1,a@x.org,\"n,1\"\n2,b@x.org,n2\n3,c@x.org,n3\n";
    let format = CsvFormat::default();
    let mut dec = format.decoder(&p);
    let mut batch = RecordBatch::new(p.len());
    let mut rejects = Rejects::new(false);
    dec.decode(input, &mut batch, &mut rejects).unwrap();
    dec.finish(&mut batch, &mut rejects).unwrap();
    let mut enc = format
        .encoder(&p, &dec.layout().unwrap(), "h/n/1.0.0")
        .unwrap();
    let mut rows = OutputRows::new(p.len());
    // record 2 first, then 0 with its email and id replaced; record 1 is not output
    meta(&mut rows, 2, -5, b"[]");
    let s = rows.values_len();
    rows.values_mut().extend_from_slice(b"cipher \"q\", 1");
    rows.replace_from(0, s);
    meta(&mut rows, 0, 42, b"[2]");
    let s = rows.values_len();
    rows.values_mut().extend_from_slice(b"AQ8x==");
    rows.replace_from(0, s);
    let s = rows.values_len();
    rows.values_mut().extend_from_slice(b"");
    rows.replace_from(1, s);
    let mut out = Vec::new();
    enc.encode(&batch, &rows, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "3,\"cipher \"\"q\"\", 1\",n3,h/n/1.0.0,-5,{KEY_LINK},[]\n\
             ,AQ8x==,\"n,1\",h/n/1.0.0,42,{KEY_LINK},[2]\n"
        )
    );
    let (_, edits, _) = rows.row(0);
    assert_eq!(edits[1], Edit::Keep);
}

#[test]
fn header_and_meta_fields_are_escaped() {
    let p = plan(&[]);
    let layout = Layout {
        columns: Some(vec!["a,b".into(), "q\"".into(), "c".into()]),
    };
    let mut enc = CsvEncoder::new(&p, &layout, "h,x/n/1", b',').unwrap();
    let mut out = Vec::new();
    enc.begin(&mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("\"a,b\",\"q\"\"\",c,{META_HEADER}\n")
    );
    // the contract reference is escaped once, up front
    let mut batch = RecordBatch::new(0);
    let mut rejects = Rejects::new(false);
    let mut dec = CsvDecoder::new(&p, b',');
    dec.decode(b"x,y,z\n1,2,3\n", &mut batch, &mut rejects)
        .unwrap();
    let mut rows = OutputRows::new(0);
    meta(&mut rows, 0, i64::MAX, b"[1,2,3]");
    let mut out = Vec::new();
    enc.encode(&batch, &rows, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("1,2,3,\"h,x/n/1\",9223372036854775807,{KEY_LINK},\"[1,2,3]\"\n")
    );
}

#[test]
fn encoder_needs_a_csv_layout() {
    let p = plan(&[]);
    let e = CsvFormat::default()
        .encoder(&p, &Layout { columns: None }, CONTRACT)
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(
        e.to_string()
            .starts_with("the csv format needs a CSV input"),
        "{e}"
    );
}

#[test]
fn encoder_refuses_records_of_another_shape() {
    let p = plan(&[]);
    let mut batch = RecordBatch::new(0);
    let mut rejects = Rejects::new(false);
    let mut dec = CsvDecoder::new(&p, b',');
    dec.decode(b"x,y\n1,2\n", &mut batch, &mut rejects).unwrap();
    let layout = Layout {
        columns: Some(vec!["a".into()]),
    };
    let mut enc = CsvEncoder::new(&p, &layout, CONTRACT, b',').unwrap();
    let mut rows = OutputRows::new(0);
    meta(&mut rows, 0, 1, b"[]");
    let e = enc.encode(&batch, &rows, &mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("2 fields"), "{e}");
}

#[test]
fn decoder_reuses_its_buffers() {
    // After a warm-up, decoding more records of the same shape does not grow any buffer.
    let p = plan(&[("a", true), ("c", true)]);
    let mut dec = CsvDecoder::new(&p, b',');
    let mut batch = RecordBatch::new(p.len());
    let mut rejects = Rejects::new(false);
    let chunk = b"1,\"two, \"\"2\"\"\",3\n4,5,6\n".repeat(50);
    dec.decode(b"a,b,c\n", &mut batch, &mut rejects).unwrap();
    dec.decode(&chunk, &mut batch, &mut rejects).unwrap();
    batch.clear();
    let caps = (dec.rec_capacity(), dec.ends_capacity());
    for _ in 0..20 {
        dec.decode(&chunk, &mut batch, &mut rejects).unwrap();
        assert_eq!(batch.len(), 100);
        batch.clear();
    }
    assert_eq!((dec.rec_capacity(), dec.ends_capacity()), caps);
}

#[test]
fn needs_quotes_agrees_with_a_byte_by_byte_check() {
    for delim in [b',', b';', b'\t', b'a', b'b', b'|', 0x7F] {
        let enc = CsvEncoder::new(
            &plan(&[]),
            &Layout {
                columns: Some(vec![]),
            },
            "",
            delim,
        )
        .unwrap();
        let naive = |f: &[u8]| {
            f.iter()
                .any(|&b| matches!(b, b'"' | b'\r' | b'\n') || b == delim)
        };
        for len in 0..40 {
            let base: Vec<u8> = (0..len).map(|i| b"xyz0 \xC3\xA9-_"[i % 9]).collect();
            assert_eq!(enc.needs_quotes(&base), naive(&base), "{delim} {len}");
            for pos in 0..len {
                for special in [delim, b'"', b'\r', b'\n', b'a', 0x80, 0xFF, 0x00, 0x01] {
                    let mut f = base.clone();
                    f[pos] = special;
                    assert_eq!(
                        enc.needs_quotes(&f),
                        naive(&f),
                        "{delim} {len} {pos} {special}"
                    );
                }
            }
        }
    }
}

/// Issue #7: the limit was effectively half of what its message said (unescaped bytes and source
/// bytes were added up), and one record over it failed the whole object.
#[test]
fn csv_record_too_large_is_a_counted_reject_and_reading_goes_on() {
    const MAX: usize = 2 << 20;
    let p = plan(&[("a", true)]);
    let big = |n: usize| {
        // a quoted field with newlines inside: n source bytes for the record `3,"xx…"`
        let mut f = b"3,\"".to_vec();
        while f.len() < n - 1 {
            f.extend_from_slice(if f.len().is_multiple_of(1000) {
                b"\n"
            } else {
                b"x"
            });
        }
        f.push(b'"');
        assert_eq!(f.len(), n);
        f
    };
    for (size, rejected) in [(MAX, false), (MAX + 1, true)] {
        let mut input = b"a,b\n1,2\n".to_vec();
        let rec = big(size);
        let newlines = rec.iter().filter(|&&b| b == b'\n').count() as u64;
        input.extend_from_slice(&rec);
        input.extend_from_slice(b"\n5,6\n");
        // in one piece and in 64 KiB pieces
        for piece in [input.len(), 64 << 10] {
            let mut dec = CsvDecoder::new(&p, b',');
            dec.set_max_record(MAX);
            let cuts: Vec<usize> = (piece..input.len()).step_by(piece).collect();
            let d = decode_with(&mut dec, &input, &cuts, &p).unwrap();
            let lines: Vec<u64> = d.records.iter().map(|r| r.line).collect();
            if rejected {
                assert_eq!(lines, [2, 4 + newlines], "size {size}, pieces {piece}");
                assert_eq!(
                    d.rejects,
                    [Reject {
                        line: 3,
                        reason: RejectReason::RecordTooLarge,
                        detail: "the record is larger than 2 MiB".into(),
                    }]
                );
                assert_eq!(RejectReason::RecordTooLarge.as_str(), "record_too_large");
                // its bytes are not kept, not even for a rejected_data target
                assert!(d.raw_rejects.is_empty());
            } else {
                assert_eq!(lines, [2, 3, 4 + newlines], "size {size}, pieces {piece}");
                assert!(d.rejects.is_empty());
            }
        }
    }

    // a quote never closed: one reject for the rest of the input, not a failed object
    let mut dec = CsvDecoder::new(&p, b',');
    dec.set_max_record(MAX);
    let mut batch = RecordBatch::new(p.len());
    let mut rejects = Rejects::new(true);
    dec.decode(b"a,b\n1,2\n3,\"never closed", &mut batch, &mut rejects)
        .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..4 {
        dec.decode(&chunk, &mut batch, &mut rejects).unwrap();
    }
    dec.finish(&mut batch, &mut rejects).unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(rejects.items().len(), 1);
    assert_eq!(rejects.items()[0].line, 3);
    assert_eq!(rejects.items()[0].reason, RejectReason::RecordTooLarge);
    assert_eq!(
        rejects.items()[0].detail,
        "the record is larger than 2 MiB; a quoted field is not closed before the end of the input"
    );
    assert!(rejects.raw().is_empty());

    // a header over the limit fails the object
    let mut dec = CsvDecoder::new(&p, b',');
    dec.set_max_record(MAX);
    let e = (0..4)
        .find_map(|_| dec.decode(&chunk, &mut batch, &mut rejects).err())
        .expect("the header grows past the limit");
    assert_eq!(e.kind(), ErrorKind::Data);
    assert_eq!(
        e.to_string(),
        "the CSV header (line 1) is larger than 2 MiB; is a quote not closed?"
    );
    assert!(dec.finish(&mut batch, &mut rejects).is_err());
}

/// The real limit is the 64 MiB it says: a 40 MiB record (over the 32 MiB it used to be) is read.
#[test]
fn csv_record_limit_is_64_mib() {
    assert_eq!(crate::MAX_RECORD_BYTES, 64 << 20);
    let p = plan(&[("a", true)]);
    let mut input = b"a,b\n1,".to_vec();
    input.resize(input.len() + (40 << 20), b'y');
    input.extend_from_slice(b"\n2,3\n");
    let cuts: Vec<usize> = (1 << 20..input.len()).step_by(1 << 20).collect();
    let d = decode_cut(&input, &cuts, &p).unwrap();
    assert!(d.rejects.is_empty(), "{:?}", d.rejects);
    assert_eq!(d.records.len(), 2);
    assert_eq!(d.records[0].fields[1].len(), 40 << 20);
}

// ---------------------------------------------------------------------------------------------
// tables (the keys export)

/// A table row is quoted like every row this crate writes, and the csv crate reads back exactly
/// the values given, header first.
#[test]
fn a_table_reads_back_as_its_values() {
    let columns = ["keyLink", "encryptionKey", "policyId", "expiresAt"];
    let rows: [[&[u8]; 4]; 3] = [
        [
            b"k1",
            br#"{"primaryKeyId":7,"key":[]}"#,
            b"po,licy",
            b"86400000",
        ],
        [b"k2", b"plain", b"", b"-1"],
        [b"k3", b"line\nbreak\r", b"say \"hi\"", b"0"],
    ];
    let mut table = CsvFormat::default().table_encoder(&columns).unwrap();
    let mut out = Vec::new();
    table.begin(&mut out).unwrap();
    for r in &rows {
        table.row(r, &mut out).unwrap();
    }
    assert!(out.starts_with(b"keyLink,encryptionKey,policyId,expiresAt\n"));
    let read = csv_crate_records(&out);
    assert_eq!(read.len(), 1 + rows.len());
    assert_eq!(read[0], columns.map(|c| c.as_bytes().to_vec()));
    for (got, want) in read[1..].iter().zip(&rows) {
        assert_eq!(*got, want.map(|v| v.to_vec()));
    }
    // a row of the wrong width is an error, not a shifted table
    assert!(table.row(&[b"only one"], &mut out).is_err());
}

/// Another delimiter is used between the fields of a table too.
#[test]
fn a_table_uses_the_formats_delimiter() {
    let mut table = CsvFormat::new(b';').table_encoder(&["a", "b"]).unwrap();
    let mut out = Vec::new();
    table.begin(&mut out).unwrap();
    table.row(&[b"x;y", b"z"], &mut out).unwrap();
    assert_eq!(out, b"a;b\n\"x;y\";z\n");
}

// ---------------------------------------------------------------------------------------------
// decoding in pieces (the engine's parallel decoding)

/// CSV whose decoders reject records over `max_record` bytes, to reach that path in small
/// inputs.
#[derive(Debug)]
struct Limited {
    delimiter: u8,
    max_record: usize,
}

impl Format for Limited {
    fn name(&self) -> &'static str {
        "csv"
    }
    fn decoder(&self, plan: &FieldPlan) -> Box<dyn Decoder> {
        let mut d = CsvDecoder::new(plan, self.delimiter);
        d.set_max_record(self.max_record);
        Box::new(d)
    }
    fn encoder(&self, plan: &FieldPlan, layout: &Layout, c: &str) -> Result<Box<dyn Encoder>> {
        CsvFormat::new(self.delimiter).encoder(plan, layout, c)
    }
}

/// Random CSV for splitting: what [`csv_bytes`] has, other delimiters, and the bytes of a BOM.
fn csv_bytes_to_split() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => Just(&b","[..]),
        1 => Just(&b";"[..]),
        4 => Just(&b"\""[..]),
        3 => Just(&b"\n"[..]),
        1 => Just(&b"\r\n"[..]),
        1 => Just(&b"\r"[..]),
        5 => Just(&b"x"[..]),
        1 => Just("é".as_bytes()),
        1 => Just(&b"\xEF\xBB"[..]),
        1 => Just(&b"\xBF"[..]),
        1 => Just(&b"\xFF"[..]),
    ];
    prop::collection::vec(piece, 0..240).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Cut where the splitter says and decoded by forked decoders, any CSV gives the records,
    /// lines and rejects one decoder gives: quoted line breaks, CR, blank lines, a BOM (whole,
    /// cut, or half), wrong field counts, invalid UTF-8, records over the size limit, an
    /// unclosed quote, and a header that fails.
    #[test]
    fn decoding_in_pieces_gives_what_decoding_whole_gives(
        bom in prop_oneof![Just(&b""[..]), Just(&b"\xEF\xBB\xBF"[..]), Just(&b"\xEF\xBB"[..])],
        header in prop_oneof![
            Just(&b"h1,h2,h3\n"[..]),
            Just(&b"\"h\n1\",h2,\"h3\"\r\n"[..]),
            Just(&b"\n\r\nh1;h2;h3\n"[..]),
            Just(&b"h1,h2"[..]),
        ],
        body in csv_bytes_to_split(),
        delimiter in prop_oneof![Just(b','), Just(b';')],
        max_record in prop_oneof![Just(crate::MAX_RECORD_BYTES), 6usize..30],
        chunks in prop::collection::vec(1usize..40, 1..6),
        take in prop::collection::vec(any::<bool>(), 0..5),
    ) {
        let input = [bom, header, &body].concat();
        let format = Limited { delimiter, max_record };
        let p = plan(&[("h2", false), ("h3", false)]);
        let checked = keylink_core::testkit::format::check_pieces(&format, &p, &input, &chunks, &take);
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }
}

/// The splitter cuts inside long inputs: decoding in pieces is exercised, not skipped because
/// no decoder forked.
#[test]
fn long_inputs_are_decoded_in_many_pieces() {
    let mut input = b"\xEF\xBB\xBF\"a\nb\",c\r\n".to_vec();
    for i in 0..200 {
        input.extend_from_slice(format!("\"{i}\n,\"\"\",{i}\n").as_bytes());
    }
    let format = CsvFormat::new(b',');
    let p = plan(&[("c", true)]);
    let pieces = keylink_core::testkit::format::check_pieces(&format, &p, &input, &[97], &[]);
    assert!(pieces.as_ref().is_ok_and(|&n| n > 20), "{pieces:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `encode` and `encode_edited` find the fields to quote with one search per record and one
    /// per batch of edits: they quote exactly the fields `write_field`, checking each field
    /// alone, quotes. Edits may share a text written earlier, and a replaced field may hold the
    /// record's only special byte.
    #[test]
    fn batch_encoders_quote_what_a_field_by_field_check_quotes(
        records in prop::collection::vec(prop::collection::vec(csv_utf8_field(), 3), 1..6),
        edits in prop::collection::vec((0usize..4, csv_utf8_field(), any::<bool>()), 0..14),
        levels in prop_oneof![Just("[1]"), Just("[1,2]"), Just("[\"x\";1]")],
        delimiter in prop_oneof![Just(b','), Just(b';'), Just(b'\t')],
    ) {
        let p = plan(&[("a", false), ("b", false), ("c", false)]);
        let layout = Layout { columns: Some(vec!["a".into(), "b".into(), "c".into()]) };
        let mut reference = CsvEncoder::new(&p, &layout, CONTRACT, delimiter).unwrap();
        let mut input = Vec::new();
        reference.begin_unchanged(&mut input).unwrap();
        for record in &records {
            for (i, v) in record.iter().enumerate() {
                if i > 0 {
                    input.push(delimiter);
                }
                reference.write_field(v.as_bytes(), &mut input);
            }
            input.push(b'\n');
        }
        let format = CsvFormat::new(delimiter);
        let mut dec = format.decoder(&p);
        let mut batch = RecordBatch::new(p.len());
        let mut rejects = Rejects::new(false);
        dec.decode(&input, &mut batch, &mut rejects).unwrap();
        dec.finish(&mut batch, &mut rejects).unwrap();
        prop_assert!(rejects.is_empty());
        prop_assert_eq!(batch.len(), records.len());

        // the rows, and what each of their fields is
        let mut rows = OutputRows::new(p.len());
        let mut expected_fields = records.clone();
        let mut texts: Vec<((u32, u32), String)> = Vec::new();
        for (i, fields) in expected_fields.iter_mut().enumerate() {
            meta(&mut rows, i, 1_700_000_000_000, levels.as_bytes());
            for (slot, text, share) in edits.iter().skip(i).step_by(records.len()) {
                if *slot == 3 {
                    continue;
                }
                let (range, text) = match texts.first() {
                    Some(earlier) if *share => earlier.clone(),
                    _ => {
                        let start = rows.values_len();
                        rows.values_mut().extend_from_slice(text.as_bytes());
                        ((start, rows.values_len()), text.clone())
                    }
                };
                rows.set_text(*slot, range.0, range.1);
                texts.push((range, text.clone()));
                fields[*slot] = text;
            }
        }
        let mut edited = Vec::new();
        let mut full = Vec::new();
        for fields in &expected_fields {
            for (i, v) in fields.iter().enumerate() {
                if i > 0 {
                    edited.push(delimiter);
                }
                reference.write_field(v.as_bytes(), &mut edited);
                reference.write_field(v.as_bytes(), &mut full);
                full.push(delimiter);
            }
            edited.push(b'\n');
            reference.write_field(CONTRACT.as_bytes(), &mut full);
            full.extend_from_slice(format!("{0}1700000000000{0}{KEY_LINK}{0}", delimiter as char).as_bytes());
            reference.write_field(levels.as_bytes(), &mut full);
            full.push(b'\n');
        }
        let layout = dec.layout().unwrap();
        let mut enc = format.encoder(&p, &layout, CONTRACT).unwrap();
        let mut out = Vec::new();
        enc.encode_edited(&batch, &rows, &mut out).unwrap();
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&edited));
        out.clear();
        enc.encode(&batch, &rows, &mut out).unwrap();
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&full));
        // unchanged, record by record
        out.clear();
        let mut unchanged = Vec::new();
        for (i, record) in records.iter().enumerate() {
            enc.encode_unchanged(&batch, i, &mut out).unwrap();
            for (c, v) in record.iter().enumerate() {
                if c > 0 {
                    unchanged.push(delimiter);
                }
                reference.write_field(v.as_bytes(), &mut unchanged);
            }
            unchanged.push(b'\n');
        }
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&unchanged));
    }
}
