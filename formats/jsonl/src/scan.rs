//! The line scanner: validates one line as JSON and finds the planned fields in one pass.
//!
//! A hand-written, iterative (no recursion) RFC 8259 validator with the acceptance of
//! `serde_json::from_slice::<serde::de::IgnoredAny>` on UTF-8 input: any nesting depth, escapes
//! checked for shape only (a lone surrogate `\ud800` is valid JSON text here, as in serde_json's
//! skipping; it only matters when a *planned* string holds one, see [`unescape`]). The tests
//! compare it with serde_json on generated and mutated inputs.
//!
//! While validating, it tracks where it is in the plan's [`Trie`]: objects reached through
//! planned keys are "tracked", everything else is only validated. Values of planned keys are
//! recorded as [`Capture`]s (byte spans in the line). A duplicate planned key or the reserved
//! top-level key is remembered and reported only once the whole line has validated, so a line
//! that is not JSON is always reported as such. It allocates nothing once its reusable buffers
//! have grown to the deepest nesting / most planned fields / longest escaped planned key seen.

use keylink_core::FieldPlan;

/// "No node" / "no slot".
pub(crate) const NONE: u32 = u32::MAX;

/// The top-level key the encoder writes; an input object must not have it already.
pub(crate) const RESERVED_KEY: &str = "strmMeta";

/// The plan's field paths as a tree of object keys. Node 0 is the top-level object.
#[derive(Debug)]
pub(crate) struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    /// Child keys with their node index.
    children: Vec<Child>,
    /// The slot of the path ending here, or [`NONE`].
    slot: u32,
    /// The top-level reserved key.
    reserved: bool,
    /// The path from the top to here (`customer/id`), for reject details.
    path: Box<str>,
}

/// A child key, with its length and first 8 bytes (zero-padded) for a quick comparison.
#[derive(Debug)]
struct Child {
    len: usize,
    prefix: u64,
    key: Box<[u8]>,
    node: u32,
}

/// The first (up to) 8 bytes of `key`, zero-padded.
#[inline]
fn prefix8(key: &[u8]) -> u64 {
    if key.len() >= 8 {
        u64::from_le_bytes(key[..8].try_into().unwrap())
    } else {
        // in registers: a copy to a stack buffer and a wide load would stall store forwarding
        let mut v = 0u64;
        for (i, &c) in key.iter().enumerate() {
            v |= u64::from(c) << (8 * i);
        }
        v
    }
}

impl Trie {
    /// Builds the tree of `plan`'s paths (`/`-separated segments), plus the reserved key.
    pub(crate) fn new(plan: &FieldPlan) -> Trie {
        let mut trie = Trie {
            nodes: vec![Node {
                children: Vec::new(),
                slot: NONE,
                reserved: false,
                path: "".into(),
            }],
        };
        for (slot, field) in plan.fields().iter().enumerate() {
            let mut node = 0u32;
            let mut path = String::new();
            for (i, seg) in field.segments().enumerate() {
                if i > 0 {
                    path.push('/');
                }
                path.push_str(seg);
                node = trie.child_or_insert(node, seg, &path);
            }
            trie.nodes[node as usize].slot = slot as u32;
        }
        // A plan that asks for `strmMeta/...` reads keylink output (`keylink decrypt`): there the
        // key is expected, not reserved.
        let reads_meta = plan
            .fields()
            .iter()
            .any(|f| f.segments().next() == Some(RESERVED_KEY));
        if !reads_meta {
            let r = trie.child_or_insert(0, RESERVED_KEY, RESERVED_KEY);
            trie.nodes[r as usize].reserved = true;
        }
        trie
    }

    fn child_or_insert(&mut self, node: u32, seg: &str, path: &str) -> u32 {
        let existing = self.child(node, seg.as_bytes());
        if existing != NONE {
            return existing;
        }
        let c = self.nodes.len() as u32;
        self.nodes.push(Node {
            children: Vec::new(),
            slot: NONE,
            reserved: false,
            path: path.into(),
        });
        self.nodes[node as usize].children.push(Child {
            len: seg.len(),
            prefix: prefix8(seg.as_bytes()),
            key: seg.as_bytes().into(),
            node: c,
        });
        c
    }

    /// The child of `node` under the (unescaped) key `key`, or [`NONE`]. A linear scan: plans
    /// have few fields, and most keys differ from a child in length or first 8 bytes.
    #[inline]
    fn child(&self, node: u32, key: &[u8]) -> u32 {
        let prefix = prefix8(key);
        for c in &self.nodes[node as usize].children {
            if c.len == key.len() && c.prefix == prefix && (c.len <= 8 || c.key[8..] == key[8..]) {
                return c.node;
            }
        }
        NONE
    }

    #[inline]
    fn slot(&self, node: u32) -> u32 {
        if node == NONE {
            NONE
        } else {
            self.nodes[node as usize].slot
        }
    }

    #[inline]
    fn has_children(&self, node: u32) -> bool {
        node != NONE && !self.nodes[node as usize].children.is_empty()
    }

    /// The path of `node` (`customer/id`).
    pub(crate) fn path(&self, node: u32) -> &str {
        &self.nodes[node as usize].path
    }

    /// The path of the node holding `slot`.
    pub(crate) fn slot_path(&self, slot: u32) -> &str {
        self.nodes
            .iter()
            .find(|n| n.slot == slot)
            .map_or("", |n| &n.path)
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// What a planned value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CapKind {
    /// `null`.
    Null,
    /// A number, boolean, object or array.
    Json,
    /// A string without backslash escapes: the value is the text between the quotes.
    Text,
    /// A string with escapes: the value must be unescaped.
    TextEscaped,
}

/// A planned value found in the line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Capture {
    pub slot: u32,
    /// The JSON value's byte range in the line (strings: including the quotes).
    pub start: u32,
    pub end: u32,
    pub kind: CapKind,
}

/// Why a line is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    /// Not JSON: an unexpected byte at this 0-based index.
    Syntax(usize),
    /// Not JSON: the line ends inside a value (index = line length).
    Eof(usize),
    /// A complete JSON value followed by more than whitespace, at this index.
    Trailing(usize),
    /// A planned key (this node) appears twice in one object.
    Duplicate(u32),
    /// The top-level object has the reserved key.
    Reserved,
}

#[derive(Clone, Copy)]
struct Frame {
    /// `{` (else `[`).
    obj: bool,
    /// The trie node of this object when tracked, else [`NONE`].
    node: u32,
    /// The slot capturing this whole container, else [`NONE`].
    cap: u32,
    /// Where the container starts (for `cap`).
    start: u32,
}

/// Reusable scanner state. No `Debug`: `key_buf` holds input bytes.
#[derive(Default)]
pub(crate) struct Scanner {
    stack: Vec<Frame>,
    /// Per trie node: the generation (line) in which its key was last seen.
    seen: Vec<u64>,
    generation: u64,
    key_buf: Vec<u8>,
    /// A duplicate or reserved key found so far; reported once the line is known to be JSON.
    deferred: Option<Fail>,
    /// The planned values of the last scanned line.
    pub captures: Vec<Capture>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.obj { "{" } else { "[" })
    }
}

#[inline]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

#[inline]
fn at(b: &[u8], i: usize) -> Fail {
    if i >= b.len() {
        Fail::Eof(b.len())
    } else {
        Fail::Syntax(i)
    }
}

/// Bytes that end a run of plain string content: `"`, `\` and control characters.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The index of the first byte at or after `j` that is `"`, `\` or below 0x20, or `b.len()`.
#[inline]
pub(crate) fn find_special(b: &[u8], mut j: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while j + 8 <= b.len() {
        let v = u64::from_le_bytes(b[j..j + 8].try_into().unwrap());
        let quote = v ^ (LO * b'"' as u64);
        let bslash = v ^ (LO * b'\\' as u64);
        // High bit set in a byte that is zero / below 0x20. The lowest flagged byte is exact (a
        // borrow only propagates upwards from a real hit); checked again below regardless.
        let m = ((quote.wrapping_sub(LO) & !quote)
            | (bslash.wrapping_sub(LO) & !bslash)
            | (v.wrapping_sub(LO * 0x20) & !v))
            & HI;
        if m != 0 {
            let k = j + (m.trailing_zeros() / 8) as usize;
            if SPECIAL[b[k] as usize] {
                return k;
            }
            j = k + 1;
        } else {
            j += 8;
        }
    }
    while j < b.len() && !SPECIAL[b[j] as usize] {
        j += 1;
    }
    j
}

#[inline]
fn is_hex(c: u8) -> bool {
    c.is_ascii_hexdigit()
}

/// Scans a string whose opening quote is at `i - 1`. Returns (index after the closing quote,
/// whether it has escapes).
#[inline]
fn scan_string(b: &[u8], mut j: usize) -> Result<(usize, bool), Fail> {
    let mut escaped = false;
    loop {
        j = find_special(b, j);
        match b.get(j) {
            None => return Err(Fail::Eof(b.len())),
            Some(b'"') => return Ok((j + 1, escaped)),
            Some(b'\\') => {
                escaped = true;
                match b.get(j + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => j += 2,
                    Some(b'u') => {
                        for k in j + 2..j + 6 {
                            match b.get(k) {
                                Some(&c) if is_hex(c) => {}
                                _ => return Err(at(b, k)),
                            }
                        }
                        j += 6;
                    }
                    _ => return Err(at(b, j + 1)),
                }
            }
            Some(_) => return Err(Fail::Syntax(j)), // a control character
        }
    }
}

#[inline]
fn scan_digits(b: &[u8], mut j: usize) -> usize {
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    j
}

/// Scans a number starting at `i`; returns the index after it.
#[inline]
fn scan_number(b: &[u8], i: usize) -> Result<usize, Fail> {
    let mut j = i;
    if b[j] == b'-' {
        j += 1;
    }
    match b.get(j) {
        Some(b'0') => j += 1,
        Some(b'1'..=b'9') => j = scan_digits(b, j + 1),
        _ => return Err(at(b, j)),
    }
    if b.get(j) == Some(&b'.') {
        j += 1;
        if !matches!(b.get(j), Some(c) if c.is_ascii_digit()) {
            return Err(at(b, j));
        }
        j = scan_digits(b, j);
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if !matches!(b.get(j), Some(c) if c.is_ascii_digit()) {
            return Err(at(b, j));
        }
        j = scan_digits(b, j);
    }
    Ok(j)
}

#[inline]
fn scan_literal(b: &[u8], i: usize, lit: &[u8]) -> Result<usize, Fail> {
    for (k, &c) in lit.iter().enumerate() {
        if b.get(i + k) != Some(&c) {
            return Err(at(b, i + k));
        }
    }
    Ok(i + lit.len())
}

impl Scanner {
    /// Validates `b` as one JSON value followed only by whitespace, filling [`Scanner::captures`]
    /// with the planned values when it is an object. Returns the value's first byte (`{` for an
    /// object). `b` must be valid UTF-8 (checked by the caller) and shorter than 4 GiB.
    pub(crate) fn scan(&mut self, trie: &Trie, b: &[u8]) -> Result<u8, Fail> {
        self.stack.clear();
        self.captures.clear();
        self.deferred = None;
        if self.seen.len() != trie.len() {
            self.seen.clear();
            self.seen.resize(trie.len(), 0);
        }
        self.generation += 1;

        let mut i = skip_ws(b, 0);
        let first = *b.get(i).ok_or(Fail::Eof(b.len()))?;
        // The planned node whose value starts at `i`: the top-level value is the root object.
        let mut vnode: u32 = 0;
        // The innermost open container, kept out of `stack` (which holds the enclosing ones) so
        // that it stays in registers.
        let mut top: Option<Frame> = None;
        loop {
            // ---- a value at `i` ----
            let c = *b.get(i).ok_or(Fail::Eof(b.len()))?;
            let slot = trie.slot(vnode);
            let mut opened = false;
            match c {
                b'{' | b'[' => {
                    let obj = c == b'{';
                    if let Some(t) = top {
                        self.stack.push(t);
                    }
                    top = Some(Frame {
                        obj,
                        node: if obj && trie.has_children(vnode) {
                            vnode
                        } else {
                            NONE
                        },
                        cap: slot,
                        start: i as u32,
                    });
                    i += 1;
                    opened = true;
                }
                b'"' => {
                    let (end, escaped) = scan_string(b, i + 1)?;
                    if slot != NONE {
                        let kind = if escaped {
                            CapKind::TextEscaped
                        } else {
                            CapKind::Text
                        };
                        self.capture(slot, i, end, kind);
                    }
                    i = end;
                }
                b't' | b'f' | b'n' => {
                    let lit: &[u8] = match c {
                        b't' => b"true",
                        b'f' => b"false",
                        _ => b"null",
                    };
                    let end = scan_literal(b, i, lit)?;
                    if slot != NONE {
                        let kind = if c == b'n' {
                            CapKind::Null
                        } else {
                            CapKind::Json
                        };
                        self.capture(slot, i, end, kind);
                    }
                    i = end;
                }
                b'-' | b'0'..=b'9' => {
                    let end = scan_number(b, i)?;
                    if slot != NONE {
                        self.capture(slot, i, end, CapKind::Json);
                    }
                    i = end;
                }
                _ => return Err(Fail::Syntax(i)),
            }

            // ---- after a value or an opening bracket: close containers, find the next value ----
            let mut just_opened = opened;
            loop {
                let Some(t) = top else {
                    // the top-level value is complete
                    i = skip_ws(b, i);
                    return if i != b.len() {
                        Err(Fail::Trailing(i))
                    } else if let Some(fail) = self.deferred {
                        Err(fail)
                    } else {
                        Ok(first)
                    };
                };
                i = skip_ws(b, i);
                let c = *b.get(i).ok_or(Fail::Eof(b.len()))?;
                if c == if t.obj { b'}' } else { b']' } {
                    top = self.stack.pop();
                    i += 1;
                    if t.cap != NONE {
                        self.capture(t.cap, t.start as usize, i, CapKind::Json);
                    }
                    just_opened = false;
                    continue;
                }
                if !just_opened {
                    if c != b',' {
                        return Err(Fail::Syntax(i));
                    }
                    i = skip_ws(b, i + 1);
                }
                if t.obj {
                    if b.get(i) != Some(&b'"') {
                        return Err(at(b, i));
                    }
                    let (end, escaped) = scan_string(b, i + 1)?;
                    vnode = if t.node == NONE {
                        NONE
                    } else {
                        self.key(trie, t.node, &b[i + 1..end - 1], escaped)
                    };
                    i = skip_ws(b, end);
                    if b.get(i) != Some(&b':') {
                        return Err(at(b, i));
                    }
                    i = skip_ws(b, i + 1);
                } else {
                    vnode = NONE;
                }
                break;
            }
        }
    }

    #[inline]
    fn capture(&mut self, slot: u32, start: usize, end: usize, kind: CapKind) {
        self.captures.push(Capture {
            slot,
            start: start as u32,
            end: end as u32,
            kind,
        });
    }

    /// Looks the raw key text `raw` (between the quotes) up among `node`'s children, checking the
    /// reserved key and duplicates: those are remembered in `deferred` (the first one counts) and
    /// the rest of the line is only validated, so that a line that is not JSON at all is reported
    /// as such.
    #[inline]
    fn key(&mut self, trie: &Trie, node: u32, raw: &[u8], escaped: bool) -> u32 {
        let child = if escaped {
            self.key_buf.clear();
            if unescape(raw, &mut self.key_buf).is_err() {
                // a lone surrogate: equal to no planned (valid UTF-8) key
                return NONE;
            }
            trie.child(node, &self.key_buf)
        } else {
            trie.child(node, raw)
        };
        if child != NONE {
            let fail = if trie.nodes[child as usize].reserved && node == 0 {
                Fail::Reserved
            } else if self.seen[child as usize] == self.generation {
                Fail::Duplicate(child)
            } else {
                self.seen[child as usize] = self.generation;
                return child;
            };
            self.deferred.get_or_insert(fail);
            return NONE;
        }
        child
    }
}

/// A `\u` escape that is a lone surrogate (not valid Unicode text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoneSurrogate;

fn hex4(b: &[u8]) -> Option<u16> {
    let s = b.get(..4)?;
    let mut v = 0u16;
    for &c in s {
        v = v << 4 | (c as char).to_digit(16)? as u16;
    }
    Some(v)
}

/// Appends the unescaped text of a JSON string's content `src` (between the quotes; already
/// validated by [`Scanner::scan`]) to `out`. Fails on a lone surrogate escape.
pub(crate) fn unescape(src: &[u8], out: &mut Vec<u8>) -> Result<(), LoneSurrogate> {
    let mut i = 0;
    while let Some(k) = memchr::memchr(b'\\', &src[i..]) {
        out.extend_from_slice(&src[i..i + k]);
        i += k;
        let c = *src.get(i + 1).ok_or(LoneSurrogate)?;
        i += 2;
        let byte = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let hi = hex4(&src[i..]).ok_or(LoneSurrogate)?;
                i += 4;
                let cp = match hi {
                    0xD800..=0xDBFF => {
                        if src.get(i..i + 2) != Some(b"\\u") {
                            return Err(LoneSurrogate);
                        }
                        let lo = hex4(&src[i + 2..]).ok_or(LoneSurrogate)?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(LoneSurrogate);
                        }
                        i += 6;
                        0x10000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(lo) - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err(LoneSurrogate),
                    _ => u32::from(hi),
                };
                let ch = char::from_u32(cp).ok_or(LoneSurrogate)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            _ => return Err(LoneSurrogate),
        };
        out.push(byte);
    }
    out.extend_from_slice(&src[i..]);
    Ok(())
}
