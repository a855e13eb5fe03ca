//! A stream event's own `strmMeta` (SPEC §11): an event may carry its consent as
//! `"strmMeta": {"consentLevels": [1, 2]}`.
//!
//! Batch inputs never carry `strmMeta` (the JSON Lines decoder refuses the reserved key: it is
//! what keylink's outputs add, see `core/src/safety.rs`). Stream events may, but only that one
//! member: [`split_event_meta`] finds a top-level `strmMeta` member, checks that it holds exactly
//! `consentLevels` — an array of at most [`MAX_EVENT_CONSENT_LEVELS`] ints from 0 to
//! [`MAX_EVENT_CONSENT_LEVEL`] — and returns the levels and the event without the member (the
//! output's `strmMeta` is keylink's own). Anything else is an error whose detail names what was
//! expected, never a value. The bytes of the event are otherwise kept as they are, so a replayed
//! event still yields byte-identical messages.

/// The largest consent level an event may carry in `strmMeta.consentLevels`.
pub const MAX_EVENT_CONSENT_LEVEL: u64 = 65_535;

/// The most levels an event may carry in `strmMeta.consentLevels`.
pub const MAX_EVENT_CONSENT_LEVELS: usize = 64;

const RESERVED: &[u8] = b"strmMeta";

/// An event's `strmMeta`, taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// `strmMeta.consentLevels`, sorted and without duplicates.
    pub consent_levels: Vec<i32>,
    /// The event without its `strmMeta` member.
    pub stripped: Vec<u8>,
}

/// Finds the event's top-level `strmMeta` member. `Ok(None)`: there is none (or the event is not
/// a well-formed JSON object: the decoder rejects it then). `Err(detail)`: the member is there but
/// is not `{"consentLevels": [ints]}`.
pub fn split_event_meta(event: &[u8]) -> Result<Option<EventMeta>, &'static str> {
    // fast path: no member can be named strmMeta (an escaped name needs a backslash)
    if memmem(event, RESERVED).is_none() && memchr::memchr(b'\\', event).is_none() {
        return Ok(None);
    }
    let Some(members) = top_level_members(event) else {
        return Ok(None);
    };
    let mut found = None;
    for (k, m) in members.iter().enumerate() {
        if key_is_reserved(&event[m.key.0..m.key.1]) {
            if found.is_some() {
                return Err("strmMeta appears more than once in the event");
            }
            found = Some(k);
        }
    }
    let Some(k) = found else {
        return Ok(None);
    };
    let m = &members[k];
    let consent_levels = parse_meta(&event[m.value.0..m.value.1])?;
    // the bytes removed: the member and one comma next to it
    let (from, to) = if k + 1 < members.len() {
        (m.key.0, members[k + 1].key.0)
    } else if k > 0 {
        (members[k - 1].value.1, m.value.1)
    } else {
        (m.key.0, m.value.1)
    };
    let mut stripped = Vec::with_capacity(event.len() - (to - from));
    stripped.extend_from_slice(&event[..from]);
    stripped.extend_from_slice(&event[to..]);
    Ok(Some(EventMeta {
        consent_levels,
        stripped,
    }))
}

fn parse_meta(value: &[u8]) -> Result<Vec<i32>, &'static str> {
    const ONLY: &str = "strmMeta of an event may hold only consentLevels, an array of ints from 0 \
                        to 65535";
    let v: serde_json::Value = serde_json::from_slice(value).map_err(|_| ONLY)?;
    let obj = v.as_object().ok_or(ONLY)?;
    if obj.len() != 1 {
        return Err(ONLY);
    }
    let levels = obj
        .get("consentLevels")
        .and_then(|l| l.as_array())
        .ok_or(ONLY)?;
    if levels.len() > MAX_EVENT_CONSENT_LEVELS {
        return Err("strmMeta.consentLevels holds more than 64 levels");
    }
    let mut out = Vec::with_capacity(levels.len());
    for l in levels {
        match l.as_u64() {
            Some(n) if n <= MAX_EVENT_CONSENT_LEVEL => out.push(n as i32),
            _ => return Err(ONLY),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn key_is_reserved(raw: &[u8]) -> bool {
    // raw includes the quotes
    let inner = &raw[1..raw.len() - 1];
    if !inner.contains(&b'\\') {
        return inner == RESERVED;
    }
    serde_json::from_slice::<String>(raw).is_ok_and(|s| s.as_bytes() == RESERVED)
}

struct Member {
    /// The key, quotes included.
    key: (usize, usize),
    /// The value.
    value: (usize, usize),
}

/// The members of a JSON object (the whole of `b`, whitespace around allowed); `None` when `b`
/// is not shaped as one (values are skipped, not validated: the decoder validates).
fn top_level_members(b: &[u8]) -> Option<Vec<Member>> {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    let mut out = Vec::new();
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some(out);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(b, i)?;
        let key = (i, key_end);
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let value_end = skip_value(b, i)?;
        out.push(Member {
            key,
            value: (i, value_end),
        });
        i = skip_ws(b, value_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return (skip_ws(b, i + 1) == b.len()).then_some(out),
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `b[i]` is a quote: the index after the closing quote.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// The index after the value starting at `b[i]`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

fn memmem(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Result<Option<(Vec<i32>, String)>, &'static str> {
        split_event_meta(s.as_bytes())
            .map(|o| o.map(|m| (m.consent_levels, String::from_utf8(m.stripped).unwrap())))
    }

    #[test]
    fn no_meta_leaves_the_event_alone() {
        assert_eq!(split(r#"{"a":1,"b":"strmMeta"}"#), Ok(None));
        assert_eq!(
            split(r#"{"a":{"strmMeta":{"consentLevels":[1]}}}"#),
            Ok(None)
        );
        assert_eq!(split(r#"{"a":"x\"y"}"#), Ok(None));
        // not an object: the decoder's business
        assert_eq!(split(r#"{"strmMeta":{"consentLevels":[1]}"#), Ok(None));
        assert_eq!(split(r#"[{"strmMeta":1}]"#), Ok(None));
    }

    #[test]
    fn consent_levels_are_taken_out() {
        assert_eq!(
            split(r#"{"a":1,"strmMeta":{"consentLevels":[2,1,2]},"b":[1,{"c":"}"}]}"#),
            Ok(Some((vec![1, 2], r#"{"a":1,"b":[1,{"c":"}"}]}"#.into())))
        );
        assert_eq!(
            split(r#"{"a":1, "strmMeta" : { "consentLevels" : [ 0 ] } }"#),
            Ok(Some((vec![0], r#"{"a":1 }"#.into())))
        );
        assert_eq!(
            split(r#"{"strmMeta":{"consentLevels":[]},"a":1}"#),
            Ok(Some((vec![], r#"{"a":1}"#.into())))
        );
        assert_eq!(
            split(r#"{"strmMeta":{"consentLevels":[65535]}}"#),
            Ok(Some((vec![65535], "{}".into())))
        );
        // an escaped key is the same key
        assert_eq!(
            split(r#"{"strm\u004deta":{"consentLevels":[3]},"a":"\\"}"#),
            Ok(Some((vec![3], r#"{"a":"\\"}"#.into())))
        );
    }

    #[test]
    fn anything_else_in_meta_is_refused_without_values() {
        for bad in [
            r#"{"strmMeta":{"consentLevels":[1],"keyLink":"k"}}"#,
            r#"{"strmMeta":{"keyLink":"secret@example.com"}}"#,
            r#"{"strmMeta":{}}"#,
            r#"{"strmMeta":[1]}"#,
            r#"{"strmMeta":"secret@example.com"}"#,
            r#"{"strmMeta":null}"#,
            r#"{"strmMeta":{"consentLevels":"[1]"}}"#,
            r#"{"strmMeta":{"consentLevels":[-1]}}"#,
            r#"{"strmMeta":{"consentLevels":[1.5]}}"#,
            r#"{"strmMeta":{"consentLevels":[65536]}}"#,
            r#"{"strmMeta":{"consentLevels":["secret@example.com"]}}"#,
            r#"{"strmMeta":{"consentLevels":[1]},"strmMeta":{"consentLevels":[1]}}"#,
        ] {
            let e = split(bad).expect_err(bad);
            assert!(!e.contains("example.com") && !e.contains("secret"), "{e}");
        }
        let many = format!(
            r#"{{"strmMeta":{{"consentLevels":[{}]}}}}"#,
            (0..65).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
        );
        assert!(split(&many).is_err());
    }
}
