//! The Tink Deterministic AEAD (`AES256_SIV`) wire format and Tink JSON keysets.
//!
//! A keylink ciphertext is, byte for byte, what Google Tink's `DeterministicAead` primitive for
//! an `AesSivKey` with output prefix `TINK` produces for associated data `b""`, then standard
//! padded base64:
//!
//! ```text
//! base64( 0x01 || key_id (4 bytes, big-endian) || SIV tag (16 bytes) || AES-CTR ciphertext )
//! ```
//!
//! The tag and ciphertext are AES-SIV ([RFC 5297]) with a 64-byte key (the first half keys the
//! S2V CMAC, the second half AES-256-CTR) and **exactly one associated-data component, the empty
//! string**: that is what Tink passes for `associated_data = b""`. AES-SIV with *zero*
//! associated-data components gives a different tag, which Tink rejects.
//!
//! [`keyset_json`] and [`parse_keyset_json`] write and read the Tink JSON keyset holding one
//! such key, so that stock Tink (Python, Java, Go, ...) can decrypt keylink's output given the
//! exported key, and keylink can load keys made by Tink.
//!
//! # Implementation
//!
//! [`DeterministicAead`] composes S2V and CTR directly from the `aes` and `ctr` crates (the
//! crates `aes-siv` is built from, with CMAC written out below) instead of calling
//! `aes_siv::siv::Siv`: its methods
//! take `&mut self`, it is not `Clone`, and it re-expands the CTR key schedule and recomputes the
//! two constant CMACs of the associated-data part on every call. Here everything
//! that depends only on the key is computed once in [`DeterministicAead::new`]: the CMAC key
//! schedule and subkeys, the AES-256 encryption key schedule for CTR, and the S2V state
//! after the empty associated-data component, `dbl(CMAC(0^128)) xor CMAC("")`. A call then
//! runs S2V over the plaintext and CTR, both with borrowed key schedules, all on the stack; the
//! only heap activity is growing the caller's output buffer. CMAC ([RFC 4493]) is written out
//! here rather than taken from the `cmac` crate, whose state must be cloned per message (it owns
//! its key schedule, about 1 KB with `aes`'s runtime CPU detection): that copy was 6% of a
//! job's CPU time in `perf`. The tests check our CMAC against the `cmac` crate, the result
//! against `aes-siv` itself, against ciphertexts made by stock Tink, and that stock Tink
//! decrypts ours.
//!
//! Every call into the `aes` backend has a fixed cost that dominates for short values (large
//! with `aes` 0.9.3+ on CPUs with VAES, which broadcasts the round keys on each call), so the
//! code keeps those calls few: a value under 16 bytes costs one CMAC call and one CTR call;
//! longer ones at most three CMAC calls plus one CTR call per 480 bytes.
//!
//! [RFC 5297]: https://www.rfc-editor.org/rfc/rfc5297
//! [RFC 4493]: https://www.rfc-editor.org/rfc/rfc4493

use std::fmt;

use aes::Aes256Enc;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ctr::CtrCore;
use ctr::cipher::{Array, InnerIvInit, StreamCipherCore};
use ctr::flavors::Ctr128BE;
use serde_json::Value;
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{KEY_LEN, KeyMaterial};
use crate::error::{Error, Result};

/// The first byte of a ciphertext under a key with output prefix type `TINK`.
pub const TINK_PREFIX_BYTE: u8 = 0x01;

/// Bytes a (decoded) ciphertext has beyond its plaintext: the 5-byte Tink prefix (`0x01` and
/// the key id) and the 16-byte SIV tag.
pub const CIPHERTEXT_OVERHEAD: usize = PREFIX_LEN + TAG_LEN;

/// The Tink type URL of an AES-SIV key.
pub const AES_SIV_KEY_TYPE_URL: &str = "type.googleapis.com/google.crypto.tink.AesSivKey";

/// Length of the Tink output prefix: `0x01` and the 4-byte big-endian key id.
const PREFIX_LEN: usize = 5;
/// Length of the SIV tag.
const TAG_LEN: usize = 16;
/// AES block length.
const BLOCK_LEN: usize = 16;
/// Plaintext bytes encrypted per stack chunk: a multiple of the AES block (so CTR stays
/// block-aligned across chunks) and of 3 (so the base64 of consecutive chunks concatenates
/// without padding in between). `CIPHERTEXT_OVERHEAD` (21) is a multiple of 3 as well.
const CHUNK_LEN: usize = 480;
/// The chunk of short values (most PII: names, e-mail addresses, ids).
const SHORT_CHUNK_LEN: usize = 48;
const _: () = assert!(CHUNK_LEN.is_multiple_of(BLOCK_LEN) && CHUNK_LEN.is_multiple_of(3));
const _: () =
    assert!(SHORT_CHUNK_LEN.is_multiple_of(BLOCK_LEN) && SHORT_CHUNK_LEN.is_multiple_of(3));
const _: () = assert!(CIPHERTEXT_OVERHEAD.is_multiple_of(3));

type Block = [u8; BLOCK_LEN];
/// AES-256-CTR with a 128-bit big-endian counter over a borrowed key schedule.
type CtrAes256<'a> = CtrCore<&'a Aes256Enc, Ctr128BE>;

/// Standard and URL-safe base64 with or without padding: what the protobuf JSON mapping accepts
/// for `bytes` fields (Tink itself writes standard, padded).
const LENIENT_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const LENIENT_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The length of the base64 Tink ciphertext of a plaintext of `plaintext_len` bytes.
pub const fn ciphertext_base64_len(plaintext_len: usize) -> usize {
    (CIPHERTEXT_OVERHEAD + plaintext_len).div_ceil(3) * 4
}

/// A prepared AES-256-SIV cipher for one key. Send + Sync; encrypt/decrypt take &self.
///
/// Produces and reads Tink `DeterministicAead` ciphertexts (key type `AesSivKey`, output prefix
/// `TINK`, associated data `b""`), base64-encoded. `Debug` shows only the key id.
#[derive(Clone)]
pub struct DeterministicAead {
    key_id: u32,
    /// CMAC keyed with the first half of the key (S2V), subkeys precomputed.
    mac: CmacKey,
    /// AES-256 keyed with the second half of the key (CTR), key schedule precomputed.
    ctr_cipher: Aes256Enc,
    /// S2V's running value after the one associated-data component `""`:
    /// `dbl(CMAC(0^128)) xor CMAC("")`.
    s2v_after_ad: Block,
}

impl DeterministicAead {
    /// Prepares the cipher for `material` under the Tink key id `key_id`.
    pub fn new(material: &KeyMaterial, key_id: u32) -> Self {
        let key = material.expose();
        let (mac_key, ctr_key) = key.split_at(KEY_LEN / 2);
        let mac = CmacKey::new(mac_key);
        let ctr_cipher =
            <Aes256Enc as KeyInit>::new_from_slice(ctr_key).expect("AES-256 takes a 32-byte key");

        // RFC 5297 S2V: D = CMAC(<zero>); for each associated-data component A: D = dbl(D) xor
        // CMAC(A). Tink passes exactly one component, the empty string.
        let cmac_zero = mac.tag(&[0u8; BLOCK_LEN], None);
        let cmac_empty = mac.tag(&[], None);
        let s2v_after_ad = xor_block(dbl(cmac_zero), &cmac_empty);

        DeterministicAead {
            key_id,
            mac,
            ctr_cipher,
            s2v_after_ad,
        }
    }

    /// The Tink key id written into (and expected in) every ciphertext's prefix.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Appends the base64 Tink ciphertext of `plaintext` to `out`.
    ///
    /// Deterministic: the same key and plaintext always give the same ciphertext. Never fails
    /// today; the `Result` leaves room for limits.
    pub fn encrypt_base64_into(&self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        // Most PII values are short: their scratch buffer is small, since it is zeroed for every
        // value (profiled: zeroing the long one was 1.4% of a job's CPU).
        if plaintext.len() <= SHORT_CHUNK_LEN {
            self.encrypt_base64_chunked::<{ CIPHERTEXT_OVERHEAD + SHORT_CHUNK_LEN }>(plaintext, out)
        } else {
            self.encrypt_base64_chunked::<{ CIPHERTEXT_OVERHEAD + CHUNK_LEN }>(plaintext, out)
        }
    }

    /// [`Self::encrypt_base64_into`] through a scratch buffer of `N` bytes: the prefix, the tag
    /// and `N - CIPHERTEXT_OVERHEAD` bytes of ciphertext at a time.
    fn encrypt_base64_chunked<const N: usize>(
        &self,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        const { assert!(N > CIPHERTEXT_OVERHEAD) };
        let chunk_len = N - CIPHERTEXT_OVERHEAD;
        debug_assert!(chunk_len.is_multiple_of(BLOCK_LEN) && chunk_len.is_multiple_of(3));
        let tag = self.s2v(plaintext);
        let mut ctr = self.ctr(&tag);
        out.reserve(ciphertext_base64_len(plaintext.len()));

        // The prefix and tag go in front of the first chunk so that values up to a chunk's
        // length are base64-encoded in one go.
        let mut buf = [0u8; N];
        buf[0] = TINK_PREFIX_BYTE;
        buf[1..PREFIX_LEN].copy_from_slice(&self.key_id.to_be_bytes());
        buf[PREFIX_LEN..CIPHERTEXT_OVERHEAD].copy_from_slice(&tag);
        let mut encode_from = 0;
        let mut rest = plaintext;
        loop {
            let n = rest.len().min(chunk_len);
            let (chunk, tail) = rest.split_at(n);
            let body = &mut buf[CIPHERTEXT_OVERHEAD..];
            body[..n].copy_from_slice(chunk);
            // Whole blocks, so the keystream is applied in one call; the bytes past `n` are
            // scratch and never output.
            xor_keystream(&mut ctr, &mut body[..n.next_multiple_of(BLOCK_LEN)]);
            base64_append(&buf[encode_from..CIPHERTEXT_OVERHEAD + n], out);
            if tail.is_empty() {
                return Ok(());
            }
            rest = tail;
            encode_from = CIPHERTEXT_OVERHEAD;
        }
    }

    /// Decodes + decrypts a base64 Tink ciphertext, appending the plaintext to `out`.
    /// Errors (never containing the data): bad base64, wrong prefix byte, key id mismatch, auth failure.
    ///
    /// On error `out` is left as it was.
    pub fn decrypt_base64_into(&self, ciphertext_b64: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        if STANDARD.decode_vec(ciphertext_b64, out).is_err() {
            // The decoder's error names the offending byte: not passed on.
            out.truncate(start);
            return Err(Error::crypto(
                "the ciphertext is not valid standard padded base64",
            ));
        }
        match self.open_in_place(&mut out[start..]) {
            Ok(()) => {
                out.copy_within(start + CIPHERTEXT_OVERHEAD.., start);
                out.truncate(out.len() - CIPHERTEXT_OVERHEAD);
                Ok(())
            }
            Err(e) => {
                out[start..].zeroize();
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Checks the prefix of a decoded ciphertext, decrypts its body in place and verifies the
    /// tag.
    fn open_in_place(&self, data: &mut [u8]) -> Result<()> {
        if data.len() < CIPHERTEXT_OVERHEAD {
            return Err(Error::crypto(format!(
                "the ciphertext is too short for a Tink ciphertext ({} bytes decoded, at least \
                 {CIPHERTEXT_OVERHEAD} expected)",
                data.len()
            )));
        }
        if data[0] != TINK_PREFIX_BYTE {
            return Err(Error::crypto(
                "the ciphertext does not start with Tink's output prefix byte 0x01",
            ));
        }
        let key_id = u32::from_be_bytes(data[1..PREFIX_LEN].try_into().expect("4 bytes"));
        if key_id != self.key_id {
            return Err(Error::crypto(format!(
                "the ciphertext was made with key id {key_id}, not with this key (id {})",
                self.key_id
            )));
        }
        let (header, body) = data.split_at_mut(CIPHERTEXT_OVERHEAD);
        let tag: Block = header[PREFIX_LEN..].try_into().expect("16 bytes");
        xor_keystream(&mut self.ctr(&tag), body);
        if bool::from(subtle::ConstantTimeEq::ct_eq(&self.s2v(body)[..], &tag[..])) {
            Ok(())
        } else {
            Err(Error::crypto(
                "the ciphertext failed authentication (it was altered, or made with another key)",
            ))
        }
    }

    /// S2V over the associated data `[""]` (precomputed) and `plaintext`: the SIV tag.
    fn s2v(&self, plaintext: &[u8]) -> Block {
        if plaintext.len() < BLOCK_LEN {
            // len < 16: T = dbl(D) xor pad(plaintext), pad = plaintext || 0x80 || 0*.
            let mut t = dbl(self.s2v_after_ad);
            for (t, p) in t.iter_mut().zip(plaintext) {
                *t ^= p;
            }
            t[plaintext.len()] ^= 0x80;
            self.mac.tag(&t, None)
        } else {
            // len >= 16: T = plaintext xorend D.
            self.mac.tag(plaintext, Some(&self.s2v_after_ad))
        }
    }

    /// AES-CTR keyed for this key, starting at the SIV with the two bits RFC 5297 clears.
    fn ctr(&self, tag: &Block) -> CtrAes256<'_> {
        let mut iv = *tag;
        iv[8] &= 0x7f;
        iv[12] &= 0x7f;
        CtrAes256::inner_iv_init(&self.ctr_cipher, &Array::from(iv))
    }
}

impl fmt::Debug for DeterministicAead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeterministicAead")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// XORs the next keystream bytes into `data`.
///
/// Each call to the AES backend has a fixed cost that dominates for short values, so this makes
/// one call per whole-block run: a `data` of whole blocks (what encryption passes) is processed
/// in place; otherwise (decryption) it goes through a zero-padded stack buffer in chunks of
/// `CHUNK_LEN`. A partial block consumes a whole keystream block, so only the last piece of a
/// message may be partial.
fn xor_keystream(ctr: &mut CtrAes256<'_>, data: &mut [u8]) {
    if data.len().is_multiple_of(BLOCK_LEN) {
        let (blocks, _) = data.as_chunks_mut::<BLOCK_LEN>();
        if !blocks.is_empty() {
            ctr.apply_keystream_blocks(Array::cast_slice_from_core_mut(blocks));
        }
        return;
    }
    let mut buf = [0u8; CHUNK_LEN];
    for chunk in data.chunks_mut(CHUNK_LEN) {
        let n = chunk.len();
        let padded = n.next_multiple_of(BLOCK_LEN);
        buf[..n].copy_from_slice(chunk);
        let (blocks, _) = buf[..padded].as_chunks_mut::<BLOCK_LEN>();
        ctr.apply_keystream_blocks(Array::cast_slice_from_core_mut(blocks));
        chunk.copy_from_slice(&buf[..n]);
    }
}

/// Doubling in GF(2^128) as RFC 5297 defines it (`dbl`), in constant time.
fn dbl(block: Block) -> Block {
    let x = u128::from_be_bytes(block);
    ((x << 1) ^ ((x >> 127) * 0x87)).to_be_bytes()
}

/// AES-256-CMAC ([RFC 4493]) with its subkeys precomputed, over a borrowed key schedule.
///
/// [RFC 4493]: https://www.rfc-editor.org/rfc/rfc4493
#[derive(Clone)]
struct CmacKey {
    cipher: Aes256Enc,
    k1: Block,
    k2: Block,
}

impl CmacKey {
    fn new(key: &[u8]) -> Self {
        let cipher =
            <Aes256Enc as KeyInit>::new_from_slice(key).expect("AES-256 takes a 32-byte key");
        // L = AES(K, 0^128); K1 = dbl(L); K2 = dbl(K1)
        let mut l = [0u8; BLOCK_LEN];
        encrypt_in_place(&cipher, &mut l);
        let k1 = dbl(l);
        l.zeroize();
        CmacKey {
            cipher,
            k1,
            k2: dbl(k1),
        }
    }

    /// CMAC of `msg`, or — with `xorend` — of `msg` with `xorend` XORed into its last 16 bytes
    /// (S2V's `xorend`; `msg` is then at least 16 bytes long), without copying `msg`.
    fn tag(&self, msg: &[u8], xorend: Option<&Block>) -> Block {
        let n = msg.len();
        let xorend_from = n.saturating_sub(BLOCK_LEN);
        // the last block is the one holding the last byte (an empty message: one empty block)
        let last_start = n.saturating_sub(1) / BLOCK_LEN * BLOCK_LEN;
        let mut x = [0u8; BLOCK_LEN];
        let mut start = 0;
        loop {
            let end = (start + BLOCK_LEN).min(n);
            let mut m = [0u8; BLOCK_LEN];
            m[..end - start].copy_from_slice(&msg[start..end]);
            if let Some(d) = xorend {
                for j in start.max(xorend_from)..end {
                    m[j - start] ^= d[j - xorend_from];
                }
            }
            if start == last_start {
                // complete last block: XOR K1; else pad with 0x80 0* and XOR K2
                if end - start == BLOCK_LEN {
                    m = xor_block(m, &self.k1);
                } else {
                    m[end - start] = 0x80;
                    m = xor_block(m, &self.k2);
                }
            }
            x = xor_block(x, &m);
            encrypt_in_place(&self.cipher, &mut x);
            if start == last_start {
                return x;
            }
            start = end;
        }
    }
}

impl Drop for CmacKey {
    fn drop(&mut self) {
        self.k1.zeroize();
        self.k2.zeroize();
    }
}

fn encrypt_in_place(cipher: &Aes256Enc, block: &mut Block) {
    let mut b = Array::from(*block);
    cipher.encrypt_block(&mut b);
    *block = b.into();
}

fn xor_block(mut a: Block, b: &Block) -> Block {
    for (a, b) in a.iter_mut().zip(b) {
        *a ^= b;
    }
    a
}

/// Appends the standard padded base64 of `input` to `out`.
fn base64_append(input: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let n = base64::encoded_len(input.len(), true).expect("base64 length overflows usize");
    out.resize(start + n, 0);
    let written = STANDARD
        .encode_slice(input, &mut out[start..])
        .expect("output sized by encoded_len");
    debug_assert_eq!(written, n);
}

/// The key id in a base64 Tink ciphertext's prefix, without decrypting.
///
/// `None` unless the text is long enough for a Tink ciphertext and its first bytes decode to
/// the `TINK` prefix byte `0x01`. Only the first 8 base64 characters are decoded.
pub fn ciphertext_key_id(ciphertext_b64: &[u8]) -> Option<u32> {
    if ciphertext_b64.len() < ciphertext_base64_len(0) {
        return None;
    }
    let mut head = [0u8; 6];
    let n = STANDARD
        .decode_slice(&ciphertext_b64[..8], &mut head)
        .ok()?;
    if n != head.len() || head[0] != TINK_PREFIX_BYTE {
        return None;
    }
    Some(u32::from_be_bytes(head[1..PREFIX_LEN].try_into().ok()?))
}

/// The Tink JSON keyset above.
///
/// Exactly (no whitespace)
/// `{"primaryKeyId":ID,"key":[{"keyData":{"typeUrl":"type.googleapis.com/google.crypto.tink.AesSivKey","value":B64,"keyMaterialType":"SYMMETRIC"},"status":"ENABLED","keyId":ID,"outputPrefixType":"TINK"}]}`
/// where `B64` is the standard base64 of the serialized `AesSivKey` protobuf: `version` (field
/// 1, 0) omitted, `key_value` (field 2) the 64 key bytes, i.e. `0x12 0x40` then the key.
///
/// The returned string holds the key in clear: treat it like the key.
pub fn keyset_json(material: &KeyMaterial, key_id: u32) -> String {
    let mut out = Vec::with_capacity(KEYSET_JSON_LEN_MAX);
    keyset_json_into(material, key_id, &mut out);
    String::from_utf8(out).expect("the keyset JSON is ASCII")
}

/// The longest [`keyset_json`] (with 10-digit key ids).
pub const KEYSET_JSON_LEN_MAX: usize = 303;

/// Appends [`keyset_json`] to `out`, without allocating (the keys export writes one per key).
/// `out` then holds the key in clear: zeroize it after use.
pub fn keyset_json_into(material: &KeyMaterial, key_id: u32, out: &mut Vec<u8>) {
    let mut proto = Zeroizing::new([0u8; 2 + KEY_LEN]);
    proto[0] = 0x12; // field 2 (key_value), wire type 2 (length-delimited)
    proto[1] = KEY_LEN as u8; // length 64
    proto[2..].copy_from_slice(material.expose());
    let mut value = Zeroizing::new([0u8; (2 + KEY_LEN).div_ceil(3) * 4]);
    let n = STANDARD
        .encode_slice(&proto[..], &mut value[..])
        .expect("sized for 66 bytes");
    let id = crate::format::itoa_i64(i64::from(key_id));
    out.extend_from_slice(b"{\"primaryKeyId\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"key\":[{\"keyData\":{\"typeUrl\":\"");
    out.extend_from_slice(AES_SIV_KEY_TYPE_URL.as_bytes());
    out.extend_from_slice(b"\",\"value\":\"");
    out.extend_from_slice(&value[..n]);
    out.extend_from_slice(
        b"\",\"keyMaterialType\":\"SYMMETRIC\"},\"status\":\"ENABLED\",\"keyId\":",
    );
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"outputPrefixType\":\"TINK\"}]}");
}

/// Parses a Tink JSON keyset holding (at least) the primary AesSivKey: returns (key_id, material).
///
/// Accepts what stock Tink writes (Python's `tink.json_proto_keyset_format.serialize`, Java's
/// and Go's JSON keyset writers): any whitespace and field order, key ids as JSON numbers or
/// decimal strings (negative ones as Java's signed 32-bit view of the unsigned id), enums as
/// names or numbers, the `AesSivKey` `version` field present (it must be 0), and any base64
/// flavour the protobuf JSON mapping allows. Non-primary keys are ignored. The primary key must
/// be an enabled, symmetric `AesSivKey` with output prefix `TINK` and a 64-byte key.
///
/// Error messages name what is wrong, never key material.
pub fn parse_keyset_json(json: &str) -> Result<(u32, KeyMaterial)> {
    let mut root: Value = serde_json::from_str(json).map_err(|e| {
        // serde_json's syntax errors do not quote the input; only the position is passed on.
        Error::crypto(format!(
            "the Tink keyset is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let parsed = parse_keyset_value(&root);
    scrub(&mut root);
    parsed.map_err(|e| e.context("Tink keyset"))
}

fn parse_keyset_value(root: &Value) -> Result<(u32, KeyMaterial)> {
    let root = root
        .as_object()
        .ok_or_else(|| Error::crypto("expected a JSON object"))?;
    if root.contains_key("encryptedKeyset") {
        return Err(Error::crypto(
            "the keyset is encrypted (encryptedKeyset); a cleartext keyset is needed",
        ));
    }
    let primary_id = match root.get("primaryKeyId") {
        Some(v) => json_key_id(v).ok_or_else(|| {
            Error::crypto("primaryKeyId is not a 32-bit key id (a number or a decimal string)")
        })?,
        None => return Err(Error::crypto("primaryKeyId is missing")),
    };
    let keys = root
        .get("key")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::crypto("\"key\" is missing or not an array"))?;

    let mut primary = None;
    for (i, key) in keys.iter().enumerate() {
        let id = key
            .get("keyId")
            .and_then(json_key_id)
            .ok_or_else(|| Error::crypto(format!("key[{i}].keyId is missing or not a key id")))?;
        if id == primary_id {
            if primary.is_some() {
                return Err(Error::crypto(format!(
                    "several keys have the primary key id {primary_id}"
                )));
            }
            primary = Some((i, key));
        }
    }
    let (i, key) = primary.ok_or_else(|| {
        Error::crypto(format!(
            "no key has the primary key id {primary_id} ({} keys)",
            keys.len()
        ))
    })?;
    let at = |field: &str| format!("key[{i}] (the primary key, id {primary_id}): {field}");

    let key_data = key
        .get("keyData")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::crypto(at("keyData is missing or not an object")))?;
    match key_data.get("typeUrl").and_then(Value::as_str) {
        Some(AES_SIV_KEY_TYPE_URL) => {}
        Some(other) => {
            return Err(Error::crypto(at(&format!(
                "keyData.typeUrl is {other:?}; keylink needs {AES_SIV_KEY_TYPE_URL:?} \
                 (Tink's AES256_SIV deterministic AEAD)"
            ))));
        }
        None => return Err(Error::crypto(at("keyData.typeUrl is missing"))),
    }
    if let Some(t) = key_data.get("keyMaterialType")
        && !json_enum_is(t, "SYMMETRIC", 2)
    {
        return Err(Error::crypto(at(
            "keyData.keyMaterialType is not SYMMETRIC",
        )));
    }
    if !key
        .get("status")
        .is_some_and(|s| json_enum_is(s, "ENABLED", 1))
    {
        return Err(Error::crypto(at("status is not ENABLED")));
    }
    match key.get("outputPrefixType") {
        Some(p) if json_enum_is(p, "TINK", 1) => {}
        Some(p) => {
            let shown = p.as_str().map_or_else(|| p.to_string(), str::to_owned);
            return Err(Error::crypto(at(&format!(
                "outputPrefixType is {shown}; keylink writes and reads only TINK-prefixed \
                 ciphertexts"
            ))));
        }
        None => return Err(Error::crypto(at("outputPrefixType is missing"))),
    }
    let value_b64 = key_data
        .get("value")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::crypto(at("keyData.value is missing or not a string")))?;
    let proto = Zeroizing::new(
        LENIENT_STANDARD
            .decode(value_b64)
            .or_else(|_| LENIENT_URL_SAFE.decode(value_b64))
            .map_err(|_| Error::crypto(at("keyData.value is not base64")))?,
    );
    let material = parse_aes_siv_key_proto(&proto).map_err(|e| e.context(at("keyData.value")))?;
    Ok((primary_id, material))
}

/// A Tink key id from JSON: a number in `[0, 2^32)`, a negative number in `[-2^31, 0)` (the
/// signed view some writers use), or a decimal string of either.
fn json_key_id(v: &Value) -> Option<u32> {
    let from_i64 = |n: i64| -> Option<u32> {
        if (0..=i64::from(u32::MAX)).contains(&n) {
            Some(n as u32)
        } else if (i64::from(i32::MIN)..0).contains(&n) {
            Some(n as i32 as u32)
        } else {
            None
        }
    };
    match v {
        Value::Number(n) => n.as_i64().and_then(from_i64),
        Value::String(s) => s.trim().parse::<i64>().ok().and_then(from_i64),
        _ => None,
    }
}

/// Whether a protobuf JSON enum value is `name` (or its number).
fn json_enum_is(v: &Value, name: &str, number: i64) -> bool {
    match v {
        Value::String(s) => s == name,
        Value::Number(n) => n.as_i64() == Some(number),
        _ => false,
    }
}

/// Parses a serialized `google.crypto.tink.AesSivKey` (`uint32 version = 1; bytes key_value =
/// 2;`), skipping unknown fields as protobuf does.
fn parse_aes_siv_key_proto(bytes: &[u8]) -> Result<KeyMaterial> {
    let malformed = || Error::crypto("is not a serialized AesSivKey protobuf");
    let mut pos = 0;
    let mut version = 0u64;
    let mut key_value: Option<&[u8]> = None;
    while pos < bytes.len() {
        let tag = read_varint(bytes, &mut pos).ok_or_else(malformed)?;
        let (field, wire_type) = (tag >> 3, tag & 7);
        match (field, wire_type) {
            (0, _) => return Err(malformed()),
            (1, 0) => version = read_varint(bytes, &mut pos).ok_or_else(malformed)?,
            (2, 2) => {
                key_value = Some(read_length_delimited(bytes, &mut pos).ok_or_else(malformed)?)
            }
            (1 | 2, _) => return Err(malformed()),
            (_, 0) => {
                read_varint(bytes, &mut pos).ok_or_else(malformed)?;
            }
            (_, 1) => {
                pos = pos
                    .checked_add(8)
                    .filter(|&p| p <= bytes.len())
                    .ok_or_else(malformed)?
            }
            (_, 2) => {
                read_length_delimited(bytes, &mut pos).ok_or_else(malformed)?;
            }
            (_, 5) => {
                pos = pos
                    .checked_add(4)
                    .filter(|&p| p <= bytes.len())
                    .ok_or_else(malformed)?
            }
            _ => return Err(malformed()),
        }
    }
    if version != 0 {
        return Err(Error::crypto(format!(
            "AesSivKey version {version} is not supported (only 0)"
        )));
    }
    let key_value = key_value.ok_or_else(|| Error::crypto("AesSivKey has no key_value"))?;
    if key_value.len() != KEY_LEN {
        return Err(Error::crypto(format!(
            "AesSivKey holds a {}-byte key; AES256_SIV needs {KEY_LEN} bytes",
            key_value.len()
        )));
    }
    KeyMaterial::from_slice(key_value)
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn read_length_delimited<'a>(bytes: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(read_varint(bytes, pos)?).ok()?;
    let end = pos.checked_add(len).filter(|&e| e <= bytes.len())?;
    let field = &bytes[*pos..end];
    *pos = end;
    Some(field)
}

/// Overwrites every string in a parsed keyset (the base64 key values among them) before it is
/// dropped. Best effort: the caller's JSON text and the parser's scratch space are not ours.
fn scrub(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(scrub),
        Value::Object(fields) => fields.values_mut().for_each(scrub),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_siv::siv::Aes256Siv;
    use proptest::prelude::*;

    proptest! {
        /// Our CMAC equals the `cmac` crate's, for every length around the block boundaries,
        /// and with `xorend` it is the CMAC of the message with its last 16 bytes XORed.
        #[test]
        fn cmac_matches_the_cmac_crate(
            key in proptest::collection::vec(any::<u8>(), 32),
            msg in proptest::collection::vec(any::<u8>(), 0..100),
            d in any::<[u8; 16]>(),
        ) {
            use cmac::Mac;
            let ours = CmacKey::new(&key);
            let reference = |m: &[u8]| -> Block {
                let mut c = <cmac::Cmac<Aes256Enc> as KeyInit>::new_from_slice(&key).unwrap();
                c.update(m);
                c.finalize().into_bytes().into()
            };
            prop_assert_eq!(ours.tag(&msg, None), reference(&msg));
            if msg.len() >= BLOCK_LEN {
                let mut t = msg.clone();
                let from = t.len() - BLOCK_LEN;
                for (a, b) in t[from..].iter_mut().zip(d) {
                    *a ^= b;
                }
                prop_assert_eq!(ours.tag(&msg, Some(&d)), reference(&t));
            }
        }
    }

    /// Generated by stock Python tink 1.16.1: `tink.new_keyset_handle(AES256_SIV)`, serialized with
    /// `tink.json_proto_keyset_format.serialize` (verbatim, whitespace included).
    const PY_TINK_KEYSET: &str = r#"{
  "primaryKeyId": 347466171,
  "key": [
    {
      "keyData": {
        "typeUrl": "type.googleapis.com/google.crypto.tink.AesSivKey",
        "value": "EkA4rVnb8bvEg/W6Z83PjwEkA9hkFoRNjWGxMqtH+2roD+in2u97NCrKtk7uIhWkSoXNTVzzhXGXO9K8h+byMh6u",
        "keyMaterialType": "SYMMETRIC"
      },
      "status": "ENABLED",
      "keyId": 347466171,
      "outputPrefixType": "TINK"
    }
  ]
}"#;

    /// `base64(encrypt_deterministically(plaintext, b""))` by Python tink 1.16.1 under
    /// [`PY_TINK_KEYSET`], for each of [`plaintexts`] in order.
    const PY_TINK_CIPHERTEXTS: [&str; 9] = [
        "ARS16bsQRQ90rNqTl4Ho8e3LDumQ",
        "ARS16bvliIYFbHgZvGjHFYq2wPbnig==",
        "ARS16bvov0vZ3+en0Pl8wF3j8o194AE37y+1H+6CMmM0cwRr",
        "ARS16bvceVNU7fsEU+azX6QBKyKWvK4EbcNed08WilmCFq2PDA==",
        "ARS16btC621+13wk4A11eSpcJrNpSeUDVQ+/L1Xjgg3dGWpg8TI=",
        "ARS16btzpP87CqdbgdtBZyHz40wbdkW/BDZ7e1mbkd4BW89AOVM=",
        "ARS16bs+d/RW1GbBwe799z4WoSOkOwGII0nNsl7V",
        "ARS16buTla7u4eR+i8AHn1Ur9gNDPQDf5X00bKmjZtKLZfUxh1Pm9rIcw8yGhRA8D1QQBVQ=",
        "ARS16bvC/ZQd/znP1Vh2WBYU/1j+3lAUrJf2aPqz0HGlX5KRoX2pjC5N542DMBAzyX2+Cr31eb6V88fHupe05X85TUw+Hi2S/4fa5k0RGHb5oAcnVWzB8pDORzQyd5jbSoy6BYzWouX/xgN/w8wuR432AXmmCUyY3GvVAPIAVv3VWNCvGLTWL2KQkgHgleBpIlcFDQAIV+YdGw043NJehOAmx3AlxYMmCl5JTv2FdlCn+iCW4pbqp15PXGsB+zDWjaC/uJX9cC9kXiO3aszdDw/zNrlsNnAI5stwIt+uJh1OZgWq2icKfZ1jMgH9hK0w520O0+kEW7tCNdpd5XGg6z12m3WdOl5GLXzA3zwARoQwRkb6ockRz4J3R3kEIaeCbHSk7Qkxgfpe6xFAt1zUqpiaxvOw5rdcz/SB3p1AGugNsT3DlIg7/zIjSo1MjVrNNKTM91tZm9sY2YZ4sPglExQJbtfsbCLoRvWpg0jM7pb5c3qVRvL6Ca9Cg0E2OcULgkyG9F+BszV9cUBHE3HxjC3btO3kIuKdDcGwIe7rNXTg3Dq3yvtQ60xh8WoPlDXXYtcaYb9ccPeHKLZJOJuvMqq+tai44RdizfP2YLy1eAOniM5QZ8HcyO2xfZfG7+P5y0A6xLlQC9VJeT2fsTn9uXktWAv4CP6mHNSigdM4QC6SPrtYlU38JMPncKAYynVi9mbGawc/bbtnsGbhKAgdb/8MUQkwYdN1TfL57J6mEwpsm3Y1/xwGIpSYLLwlxRAjRYJVwpratQCR1Li3RXjRWveK9ycyAyEM8GgHiIaKwBz6aNuPNGIor6X0i6Hodm7MI96a5HzuQXdf8R9NRA6fclbdaHqSStjatvK8PUOhynAxELXeImEcxcDegSLAZGPkImN9PQhfkFxPmUw+65oCUCXVNK81zxhxMnP3M2w7l71j6gjmLsc3+Z2PcCYkq7YrKF46oA/49jL3++Vv/Q1nInxK6G830WhnPW+NHTLTzO3qmY5lbdBGK0b5E4tqdw60d2YaW+McJD3cK5q7MgbLvtcIjvSmlPzccstyiNnQ1TCfL5HUyQ2YrFrVdLVycX96jydKPyEtRrFtLMQmfkNGmsIUJZux5oYRLUX7TFuBf6ICTEmPzH0OWgqlRaxCE61o8uO3Bh+lYtlqQ5fEKLpE4GUM6plcUgXvdsWz0jPFZ0Bc/O//3wlub5UEVrmW4ciZe7DIq/y0eILf8jmDyec2yN4htp9+qmaQS9iCunQ4HfBDz44pbYYxpnI5Ug5385+47ewv1TYsr1S57jDHXuxksVESVuG+AysIqvV+K08szOa5pwMRpzhIw01drp/djwbUGwj1wxoSTNM15256qPtOX9A23Dt3ZnmguErZbARk+Lvy9gXqrw==",
    ];

    /// Produced by keylink ([`keyset_json`] of a fresh key, [`DeterministicAead`]); verified
    /// decryptable (and re-encrypted identically) by stock Python tink 1.16.1.
    const KEYLINK_KEYSET: &str = r#"{"primaryKeyId":635160123,"key":[{"keyData":{"typeUrl":"type.googleapis.com/google.crypto.tink.AesSivKey","value":"EkDgQpQbcrLpua2X5k0qQdxnaaI5F9UxUjgBB5nbfIh80oeO1cjNlqFMyJt/gM4UfmJ3Dp5oKKes3O+5nfa4W1u+","keyMaterialType":"SYMMETRIC"},"status":"ENABLED","keyId":635160123,"outputPrefixType":"TINK"}]}"#;

    /// keylink's ciphertexts of [`plaintexts`] under [`KEYLINK_KEYSET`] (verified with Python
    /// tink 1.16.1).
    const KEYLINK_CIPHERTEXTS: [&str; 9] = [
        "ASXbxjv04LurpSG1xdKJShoDJljn",
        "ASXbxjtnwWFJQyKl956bXMcuxF4bAw==",
        "ASXbxjuj/E03VT9sluUdXQ6DE/npqrl3fP7OgNcH7Zmuex3d",
        "ASXbxjthmnj4TROcwkJ4CcrWrWFYN8hYKHMBCgXxPXZWt0CKeg==",
        "ASXbxjvdKmw/lKt4/yMuVUlasgdRjddMLeA7wo1tmfHXmOo4Djs=",
        "ASXbxjtQhRP9XTND/Ocg7fmbxVbbxwC8FMtZG9BrilpEBupDuw0=",
        "ASXbxjsZ79TnGVQsKrOZ7akqBfvwwdXX3CRxKebC",
        "ASXbxjvXgROVViYD6pKLCJPJc4m3GDyPbd6T9XVUhiT7CYV6KFW9QEmynEfWTxPLmaNB23o=",
        "ASXbxjuhvv4ulVtqEShIz6AfZ1bSeKlhTdMJNKZWQmPjTn6X71Mn6985ddRQGkNI8R61xQq9FvCug6ZUIlXeZ2g/ym+I2PDtzxmAELWhD0Z3lll+7V3BmrSdMTtTgn6rmP8ZR2DJTP8pJg0QaPHWYFDDB+ww4VV9Pk6U73L+EYTDsRTzgwk/TUhJjX1PWA687+kKpcXK/UmJ0F0bLqoOmc6CYyVrgROkJyCDs3oW7y6mvxizV7BAHmJEcQ7C/2xTlhzfYo/sKZtfUaGfKLEiE0rq9JIdstnzJUJEXrnrJn1d4LItoxwgGx7Ut4+wLJDuYI94eVfr7s193rgIp4OAn4c8ALjpad/h2wEpo5qeU9uLRiZ2yBqHLxN+jb7mzGHbTAE+3T7MFmeanRnWZ/hqOJMOI3NbbB9YM/4uLUrl7Jqtn3gFOorpo3Is6zNHdyTHPUUU8dShytILL+rNKwQV75pS74wsXxlsokSkOo6w9WBDgdmHrKhQNe2uTSmqSg/EX1R27MTWCVPbUcWr+cxubZZzepcuRxohZ7MiNKFiaeHVXZ4VbhvBbJrt3/K510UDEFf0mDR/o9vlHlGprbAvCKqfOyfeuIR6njhlxuw9cGXB5+/51mARXeavUc8gIMZ2+Y7FiF4KVostemIMPcmZtbuyMjktVzpfpehngrn6TFi13nwmLuDJlVOIH3P/cPL8FbuGpaldkvVZVZqoNsSQfi/p+L/keZbBkZkQhhKW9HaFRDYKcPnZbjhxRxRV8q3fLAgbhNO7PRLeO4XWc63VpeZH/q3sUEe+8HdyOEfsgx0eZzZye1zn9Eyi92OObkIF1gSa1/lH/l/ZhpmKfgYy9hEVg9xu8AypMOMBWNF6mUgsn9Y6FPHRGdLRJrjBa3hBazi1xyn0kpqECEWzxSnhUfNDwJP1pefVJ+u21KnpYfLNEC0ulbsxnEpiJxbiej0qfV7lrv5v8PP4USIEuSBa3mHYrldqyw/wM8emp5vOR5nBobHuuyZHGa7ZnyAEwtjErqZ9G2x7I7AOQxyH9MckRa2aT9wvIhf95nuX9fDehMCflAB5OCrF3BnmkebmT6L49dcSribpSSvT3Zyy/g8Dz9Fe/la+sJV+FQ1Q6qMHKQITLjBJEMqaMnCQpubuu6/2xJa+GW8YvNqciHWz+4GCGpGGufreBlyD956i3FJ7w9cEF/rMCaBpWqhxdssRZtENP0ODL9gfr2jf2NvhjSUwWPw+5bbVn2gD+IEIFsDF1rQ0PxAanVF28R+YB7ir6STh6SQb20XfzgeV7QG6FNP1RJ6gQ8H4eGt1J+BeMNKaQ5B1C0ZBfdiTgNk/VCSKF/XSGjRla/KBlwyCYXqLYRjmVAwcf0O6hg81l9oCtlDQFR3LG670jw==",
    ];

    /// A second keylink keyset, with a key id above 2^31 (verified with Python tink 1.16.1).
    const KEYLINK_KEYSET_HIGH_ID: &str = r#"{"primaryKeyId":4000000000,"key":[{"keyData":{"typeUrl":"type.googleapis.com/google.crypto.tink.AesSivKey","value":"EkAjGpCrbnvPhNJzDeA0a3bBAK03c9q75IWROjzU6XL0m3/nx3bwJdTT7GZrCeVWv73rzmzRY/5GgE1egi7wLdBZ","keyMaterialType":"SYMMETRIC"},"status":"ENABLED","keyId":4000000000,"outputPrefixType":"TINK"}]}"#;
    const KEYLINK_HIGH_ID_CIPHERTEXTS: [(&str, &str); 2] = [
        (
            "bob@example.com",
            "Ae5rKAAsLCiIDxxA04ntDEiZKskFM6HMA4AfUcX9f57+mceE",
        ),
        ("Zoë 😀", "Ae5rKACaAHQHHMOU2X22mpf7ZA35QydoYgQSnOtp"),
    ];

    /// The plaintexts of the vector sets, in order: empty, 1 byte, 15/16/17 bytes (both S2V
    /// branches around one block), ASCII e-mail, UTF-8 with a 4-byte character, two blocks, and
    /// 1 KiB of non-UTF-8 bytes (several encryption chunks).
    fn plaintexts() -> Vec<Vec<u8>> {
        let kib: Vec<u8> = (0..1024u32).map(|i| ((i * 7 + 3) % 256) as u8).collect();
        vec![
            b"".to_vec(),
            b"a".to_vec(),
            b"0123456789abcde".to_vec(),
            b"0123456789abcdef".to_vec(),
            b"0123456789abcdefg".to_vec(),
            b"alice@example.com".to_vec(),
            "Zoë 😀".as_bytes().to_vec(),
            b"0123456789abcdef0123456789abcdef".to_vec(),
            kib,
        ]
    }

    fn enc(d: &DeterministicAead, plaintext: &[u8]) -> String {
        let mut out = Vec::new();
        d.encrypt_base64_into(plaintext, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn dec(d: &DeterministicAead, ciphertext: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        d.decrypt_base64_into(ciphertext, &mut out)?;
        Ok(out)
    }

    fn aead_from(keyset: &str) -> (DeterministicAead, KeyMaterial) {
        let (id, material) = parse_keyset_json(keyset).unwrap();
        (DeterministicAead::new(&material, id), material)
    }

    fn check_vectors(keyset: &str, ciphertexts: &[&str]) -> DeterministicAead {
        let (d, _) = aead_from(keyset);
        let plaintexts = plaintexts();
        assert_eq!(plaintexts.len(), ciphertexts.len());
        for (pt, ct) in plaintexts.iter().zip(ciphertexts) {
            assert_eq!(&dec(&d, ct.as_bytes()).unwrap(), pt, "decrypting {ct}");
            assert_eq!(enc(&d, pt), *ct, "encrypting {} bytes", pt.len());
            assert_eq!(ct.len(), ciphertext_base64_len(pt.len()));
            assert_eq!(ciphertext_key_id(ct.as_bytes()), Some(d.key_id()));
        }
        d
    }

    #[test]
    fn decrypts_and_reproduces_python_tink_ciphertexts() {
        let d = check_vectors(PY_TINK_KEYSET, &PY_TINK_CIPHERTEXTS);
        assert_eq!(d.key_id(), 347_466_171);
    }

    #[test]
    fn keylink_vectors_verified_by_python_tink() {
        let (d, material) = aead_from(KEYLINK_KEYSET);
        // The exported keyset is reproduced exactly.
        assert_eq!(keyset_json(&material, d.key_id()), KEYLINK_KEYSET);
        check_vectors(KEYLINK_KEYSET, &KEYLINK_CIPHERTEXTS);

        let (d, material) = aead_from(KEYLINK_KEYSET_HIGH_ID);
        assert_eq!(d.key_id(), 4_000_000_000);
        assert_eq!(keyset_json(&material, d.key_id()), KEYLINK_KEYSET_HIGH_ID);
        for (pt, ct) in KEYLINK_HIGH_ID_CIPHERTEXTS {
            assert_eq!(dec(&d, ct.as_bytes()).unwrap(), pt.as_bytes());
            assert_eq!(enc(&d, pt.as_bytes()), ct);
            assert_eq!(ciphertext_key_id(ct.as_bytes()), Some(4_000_000_000));
        }
    }

    /// aes-siv's own `Siv`, as an independent implementation of RFC 5297: tag || ciphertext.
    fn aes_siv_oracle(material: &KeyMaterial, headers: &[&[u8]], plaintext: &[u8]) -> Vec<u8> {
        let mut siv = <Aes256Siv as aes_siv::KeyInit>::new(material.expose().into());
        siv.encrypt(headers, plaintext).unwrap()
    }

    /// Every length from 0 to past two long chunks, through both scratch buffers (short values
    /// and chunked long ones): base64 of prefix || aes-siv's tag and ciphertext.
    #[test]
    fn every_length_matches_aes_siv() {
        let (d, material) = aead_from(PY_TINK_KEYSET);
        let mut prefix = vec![TINK_PREFIX_BYTE];
        prefix.extend_from_slice(&d.key_id().to_be_bytes());
        for len in 0..=2 * CHUNK_LEN + 100 {
            let pt: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            let mut expected = prefix.clone();
            expected.extend(aes_siv_oracle(&material, &[b""], &pt));
            assert_eq!(enc(&d, &pt), STANDARD.encode(&expected), "length {len}");
        }
    }

    #[test]
    fn tink_uses_one_empty_associated_data_component_not_zero() {
        let (d, material) = aead_from(PY_TINK_KEYSET);
        for (pt, ct) in plaintexts().iter().zip(PY_TINK_CIPHERTEXTS) {
            let decoded = STANDARD.decode(ct).unwrap();
            let one_empty = aes_siv_oracle(&material, &[b""], pt);
            let none = aes_siv_oracle(&material, &[], pt);
            assert_eq!(decoded[PREFIX_LEN..], one_empty[..]);
            assert_ne!(decoded[PREFIX_LEN..], none[..]);
            // And stock Tink's ciphertext does not authenticate as a zero-component SIV.
            let mut siv = <Aes256Siv as aes_siv::KeyInit>::new(material.expose().into());
            assert!(
                siv.decrypt::<[&[u8]; 0], _>([], &decoded[PREFIX_LEN..])
                    .is_err()
            );
            assert_eq!(enc(&d, pt), ct);
        }
    }

    #[test]
    fn keyset_json_layout() {
        let key: Vec<u8> = (0..64).collect();
        let material = KeyMaterial::from_slice(&key).unwrap();
        let json = keyset_json(&material, 42);
        // the longest id fits the buffer the keys export reserves
        assert_eq!(
            keyset_json(&material, 0x7fff_ffff).len(),
            KEYSET_JSON_LEN_MAX
        );
        let expected_value = {
            let mut proto = vec![0x12, 0x40];
            proto.extend_from_slice(&key);
            STANDARD.encode(proto)
        };
        assert_eq!(
            json,
            format!(
                "{{\"primaryKeyId\":42,\"key\":[{{\"keyData\":{{\"typeUrl\":\
                 \"type.googleapis.com/google.crypto.tink.AesSivKey\",\"value\":\"{expected_value}\",\
                 \"keyMaterialType\":\"SYMMETRIC\"}},\"status\":\"ENABLED\",\"keyId\":42,\
                 \"outputPrefixType\":\"TINK\"}}]}}"
            )
        );
        assert!(expected_value.starts_with("EkA")); // 0x12 0x40 ...
        let v: Value = serde_json::from_str(&json).unwrap();
        let proto = STANDARD
            .decode(v["key"][0]["keyData"]["value"].as_str().unwrap())
            .unwrap();
        assert_eq!(proto.len(), 66);
        assert_eq!(&proto[..2], &[0x12, 0x40]);
        assert_eq!(&proto[2..], &key[..]);

        let (id, parsed) = parse_keyset_json(&json).unwrap();
        assert_eq!(id, 42);
        assert_eq!(parsed.expose(), material.expose());
        // Top key id and zero round-trip as well.
        for id in [0, 1, u32::MAX] {
            let (back, _) = parse_keyset_json(&keyset_json(&material, id)).unwrap();
            assert_eq!(back, id);
        }
    }

    fn key_b64(proto_prefix: &[u8], key: &[u8]) -> String {
        let mut proto = proto_prefix.to_vec();
        proto.extend_from_slice(key);
        STANDARD.encode(proto)
    }

    #[test]
    fn parses_keyset_variants_stock_tink_may_write() {
        let key: Vec<u8> = (100..164).collect();
        // version = 0 present (0x08 0x00), fields reordered, ids as strings, enum numbers,
        // unknown fields, a disabled non-primary key of another type before the primary.
        let with_version = key_b64(&[0x08, 0x00, 0x12, 0x40], &key);
        let json = format!(
            r#"
            {{
              "key": [
                {{ "outputPrefixType": "RAW", "keyId": 7, "status": "DISABLED",
                   "keyData": {{ "typeUrl": "type.googleapis.com/google.crypto.tink.AesGcmKey",
                                 "value": "AAAA", "keyMaterialType": "SYMMETRIC" }} }},
                {{ "outputPrefixType": 1, "status": 1, "keyId": "123456",
                   "keyData": {{ "value": "{with_version}", "keyMaterialType": 2,
                                 "typeUrl": "type.googleapis.com/google.crypto.tink.AesSivKey",
                                 "someFutureField": true }} }}
              ],
              "primaryKeyId": "123456"
            }}"#
        );
        let (id, material) = parse_keyset_json(&json).unwrap();
        assert_eq!(id, 123_456);
        assert_eq!(&material.expose()[..], &key[..]);

        // URL-safe base64 without padding, an unknown protobuf field, and Java's signed view of
        // a key id above 2^31.
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode([&[0x18, 0x05, 0x12, 0x40][..], &key].concat());
        let signed = 4_000_000_000u32 as i32;
        let json = format!(
            r#"{{"primaryKeyId":{signed},"key":[{{"keyData":{{"typeUrl":"{AES_SIV_KEY_TYPE_URL}","value":"{url_safe}"}},"status":"ENABLED","keyId":{signed},"outputPrefixType":"TINK"}}]}}"#
        );
        let (id, material) = parse_keyset_json(&json).unwrap();
        assert_eq!(id, 4_000_000_000);
        assert_eq!(&material.expose()[..], &key[..]);
    }

    #[test]
    fn rejects_bad_keysets_with_clear_messages_and_no_key_material() {
        let key: Vec<u8> = (0..64).map(|i| 0xa0 ^ i).collect();
        let good = key_b64(&[0x12, 0x40], &key);
        let keyset = |primary: &str, entries: &str| {
            format!(r#"{{"primaryKeyId":{primary},"key":[{entries}]}}"#)
        };
        let entry = |id: &str, type_url: &str, value: &str, status: &str, prefix: &str| {
            format!(
                r#"{{"keyData":{{"typeUrl":"{type_url}","value":"{value}","keyMaterialType":"SYMMETRIC"}},"status":"{status}","keyId":{id},"outputPrefixType":"{prefix}"}}"#
            )
        };
        let siv = AES_SIV_KEY_TYPE_URL;
        let ok = entry("5", siv, &good, "ENABLED", "TINK");
        assert!(parse_keyset_json(&keyset("5", &ok)).is_ok());

        let short_key = key_b64(&[0x12, 0x20], &key[..32]);
        let version_1 = key_b64(&[0x08, 0x01, 0x12, 0x40], &key);
        let truncated = STANDARD.encode([0x12, 0x40, 1, 2, 3]);
        let cases: Vec<(String, &str)> = vec![
            ("{not json".into(), "not valid JSON (line 1, column 2)"),
            ("[]".into(), "expected a JSON object"),
            (
                r#"{"encryptedKeyset":"abc","keysetInfo":{}}"#.into(),
                "encrypted",
            ),
            (format!(r#"{{"key":[{ok}]}}"#), "primaryKeyId is missing"),
            (keyset("\"x\"", &ok), "primaryKeyId is not a 32-bit key id"),
            (r#"{"primaryKeyId":5}"#.into(), "\"key\" is missing"),
            (keyset("6", &ok), "no key has the primary key id 6"),
            (keyset("5", &format!("{ok},{ok}")), "several keys"),
            (
                keyset(
                    "5",
                    &entry(
                        "5",
                        "type.googleapis.com/google.crypto.tink.AesGcmKey",
                        &good,
                        "ENABLED",
                        "TINK",
                    ),
                ),
                "AesGcmKey",
            ),
            (
                keyset("5", &entry("5", siv, &good, "ENABLED", "RAW")),
                "outputPrefixType is RAW",
            ),
            (
                keyset("5", &entry("5", siv, &good, "DISABLED", "TINK")),
                "status is not ENABLED",
            ),
            (
                keyset("5", &entry("5", siv, "not*base64", "ENABLED", "TINK")),
                "keyData.value is not base64",
            ),
            (
                keyset("5", &entry("5", siv, &short_key, "ENABLED", "TINK")),
                "32-byte key",
            ),
            (
                keyset("5", &entry("5", siv, &version_1, "ENABLED", "TINK")),
                "version 1 is not supported",
            ),
            (
                keyset("5", &entry("5", siv, &truncated, "ENABLED", "TINK")),
                "not a serialized AesSivKey",
            ),
            (
                keyset("5", &ok.replace("\"SYMMETRIC\"", "\"ASYMMETRIC_PRIVATE\"")),
                "not SYMMETRIC",
            ),
        ];
        for (json, expected) in cases {
            let err = parse_keyset_json(&json).unwrap_err();
            let msg = err.to_string();
            assert_eq!(err.kind(), crate::error::ErrorKind::Crypto);
            assert!(
                msg.contains(expected),
                "{msg:?} should mention {expected:?}"
            );
            assert!(!msg.contains(&good[4..20]), "{msg:?} leaks key material");
            assert!(
                !msg.contains(&version_1[4..20]),
                "{msg:?} leaks key material"
            );
        }
    }

    #[test]
    fn ciphertext_key_id_reads_the_prefix_only() {
        let d = DeterministicAead::new(&KeyMaterial::generate().unwrap(), 0xdead_beef);
        let ct = enc(&d, b"alice@example.com");
        assert_eq!(ciphertext_key_id(ct.as_bytes()), Some(0xdead_beef));
        // Anything after the prefix may be damaged: the id is still read.
        let mut damaged = ct.clone().into_bytes();
        damaged[30] = b'!';
        assert_eq!(ciphertext_key_id(&damaged), Some(0xdead_beef));
        assert_eq!(ciphertext_key_id(b""), None);
        assert_eq!(ciphertext_key_id(&ct.as_bytes()[..27]), None); // shorter than any Tink ciphertext
        assert_eq!(
            ciphertext_key_id(b"alice@example.com but long enough"),
            None
        );
        // Prefix byte 0x00 (Tink's LEGACY/CRUNCHY) is not ours.
        let mut legacy = STANDARD.decode(&ct).unwrap();
        legacy[0] = 0x00;
        assert_eq!(ciphertext_key_id(STANDARD.encode(&legacy).as_bytes()), None);
    }

    #[test]
    fn tampering_wrong_keys_and_garbage_fail_without_revealing_data() {
        let secret = b"alice@example.com";
        let material = KeyMaterial::generate().unwrap();
        let d = DeterministicAead::new(&material, 77);
        let ct = enc(&d, secret);
        let decoded = STANDARD.decode(&ct).unwrap();
        let leaks = |msg: &str| msg.contains("alice") || msg.contains(&ct[8..20]);

        // Every single-bit flip anywhere is rejected, with the error for the part hit.
        for byte in 0..decoded.len() {
            for bit in 0..8 {
                let mut t = decoded.clone();
                t[byte] ^= 1 << bit;
                let mut out = b"kept,".to_vec();
                let err = d
                    .decrypt_base64_into(STANDARD.encode(&t).as_bytes(), &mut out)
                    .unwrap_err();
                assert_eq!(out, b"kept,", "out must be left as it was");
                let msg = err.to_string();
                assert!(!leaks(&msg), "{msg}");
                let expected = match byte {
                    0 => "output prefix",
                    1..=4 => "key id",
                    _ => "failed authentication",
                };
                assert!(msg.contains(expected), "byte {byte}: {msg}");
            }
        }

        // Another key under the same id: authentication fails. Another id: mismatch.
        let other = DeterministicAead::new(&KeyMaterial::generate().unwrap(), 77);
        let msg = dec(&other, ct.as_bytes()).unwrap_err().to_string();
        assert!(
            msg.contains("failed authentication") && !leaks(&msg),
            "{msg}"
        );
        let other_id = DeterministicAead::new(&material, 78);
        let msg = dec(&other_id, ct.as_bytes()).unwrap_err().to_string();
        assert!(msg.contains("key id 77") && !leaks(&msg), "{msg}");

        // Not base64, unpadded, whitespace, too short.
        let unpadded = ct.trim_end_matches('=');
        assert_ne!(unpadded, ct);
        for bad in [
            "not base64!",
            unpadded,
            &format!(" {ct}"),
            &format!("{ct}\n"),
            "alice@example.com",
        ] {
            let msg = dec(&d, bad.as_bytes()).unwrap_err().to_string();
            assert!(msg.contains("base64") && !leaks(&msg), "{msg}");
        }
        for short in ["", "AQ==", "AQAAAE0="] {
            let msg = dec(&d, short.as_bytes()).unwrap_err().to_string();
            assert!(msg.contains("too short"), "{msg}");
        }
        assert_eq!(dec(&d, ct.as_bytes()).unwrap(), secret);
    }

    #[test]
    fn appends_to_existing_output() {
        let d = DeterministicAead::new(&KeyMaterial::generate().unwrap(), 9);
        let mut out = b"a,".to_vec();
        d.encrypt_base64_into(b"x", &mut out).unwrap();
        out.push(b',');
        d.encrypt_base64_into(b"", &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let parts: Vec<&str> = text.split(',').collect();
        assert_eq!(parts[0], "a");
        let mut plain = b"p:".to_vec();
        d.decrypt_base64_into(parts[1].as_bytes(), &mut plain)
            .unwrap();
        d.decrypt_base64_into(parts[2].as_bytes(), &mut plain)
            .unwrap();
        assert_eq!(plain, b"p:x");
    }

    #[test]
    fn send_sync_clone_and_debug_shows_only_the_key_id() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<DeterministicAead>();
        let (d, material) = aead_from(PY_TINK_KEYSET);
        let dbg = format!("{d:?}");
        assert_eq!(dbg, "DeterministicAead { key_id: 347466171, .. }");
        assert!(!dbg.contains(&format!("{:?}", &material.expose()[..4])));
        let clone = d.clone();
        assert_eq!(enc(&clone, b"x"), enc(&d, b"x"));
    }

    #[test]
    fn dbl_matches_rfc_5297() {
        // RFC 5297 A.1: dbl(CMAC(K, <zero>)) for the example key.
        let x: Block = [
            0x0e, 0x04, 0xdf, 0xaf, 0xc1, 0xef, 0xbf, 0x04, 0x01, 0x40, 0x58, 0x28, 0x59, 0xbf,
            0x07, 0x3a,
        ];
        let expected: Block = [
            0x1c, 0x09, 0xbf, 0x5f, 0x83, 0xdf, 0x7e, 0x08, 0x02, 0x80, 0xb0, 0x50, 0xb3, 0x7e,
            0x0e, 0x74,
        ];
        assert_eq!(dbl(x), expected);
        let mut high = [0u8; 16];
        high[0] = 0x80;
        let mut reduced = [0u8; 16];
        reduced[15] = 0x87;
        assert_eq!(dbl(high), reduced);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn roundtrip_determinism_and_agreement_with_aes_siv(
            key in proptest::collection::vec(any::<u8>(), KEY_LEN),
            key_id in any::<u32>(),
            plaintext in proptest::collection::vec(any::<u8>(), 0..1100),
        ) {
            let material = KeyMaterial::from_slice(&key).unwrap();
            let d = DeterministicAead::new(&material, key_id);
            let ct = enc(&d, &plaintext);
            prop_assert_eq!(ct.len(), ciphertext_base64_len(plaintext.len()));
            prop_assert_eq!(&ct, &enc(&d, &plaintext));
            prop_assert_eq!(&ct, &enc(&DeterministicAead::new(&material, key_id), &plaintext));
            prop_assert_eq!(ciphertext_key_id(ct.as_bytes()), Some(key_id));
            prop_assert_eq!(dec(&d, ct.as_bytes()).unwrap(), plaintext.clone());

            let decoded = STANDARD.decode(&ct).unwrap();
            prop_assert_eq!(decoded[0], TINK_PREFIX_BYTE);
            prop_assert_eq!(&decoded[1..5], &key_id.to_be_bytes()[..]);
            prop_assert_eq!(&decoded[5..], &aes_siv_oracle(&material, &[b""], &plaintext)[..]);
        }
    }
}
