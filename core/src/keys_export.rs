//! The keys export (SPEC §2): one CSV row per key, `keyLink,encryptionKey,policyId,expiresAt`,
//! where `encryptionKey` is the Tink JSON keyset holding the key (so stock Tink decrypts with it).
//!
//! Its shape is fixed by the spec whatever the job's data format, so it is written here, once,
//! for every writer of keys: batch jobs, `keylink keys export` and the stream keys exporter.

use crate::crypto::tink::keyset_json;
use crate::keystore::DataKey;

/// Header of the keys export.
pub const KEYS_HEADER: &str = "keyLink,encryptionKey,policyId,expiresAt\n";

/// Appends one keys-export row: `keyLink,"<Tink JSON keyset>",policyId,expiresAt`, with
/// `policy_csv` the policy id as a CSV field ([`csv_field`]: computed once per export).
pub fn write_key_row(k: &DataKey, policy_csv: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(k.key_link.hyphenated().to_string().as_bytes());
    out.push(b',');
    out.extend_from_slice(&csv_field(keyset_json(&k.material, k.key_id).as_bytes()));
    out.push(b',');
    out.extend_from_slice(policy_csv);
    out.push(b',');
    out.extend_from_slice(crate::format::itoa_i64(k.expires_at_ms).as_bytes());
    out.push(b'\n');
}

/// A CSV field (RFC 4180), quoted when it must be.
pub fn csv_field(v: &[u8]) -> Vec<u8> {
    if !v.iter().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        return v.to_vec();
    }
    let mut out = Vec::with_capacity(v.len() + 2);
    out.push(b'"');
    for &b in v {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyMaterial;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field(b"abc"), b"abc");
        assert_eq!(
            csv_field(b"{\"a\":1,\"b\":2}"),
            b"\"{\"\"a\"\":1,\"\"b\"\":2}\""
        );
        assert_eq!(csv_field(b"a\nb"), b"\"a\nb\"");
        assert_eq!(csv_field(b""), b"");
    }

    #[test]
    fn a_row_has_four_fields_and_the_keyset_round_trips() {
        let material = KeyMaterial::generate().unwrap();
        let key = DataKey {
            key_link: uuid::Uuid::new_v4(),
            key_id: 7,
            material,
            window_start_ms: 0,
            expires_at_ms: 86_400_000,
        };
        let mut out = Vec::new();
        write_key_row(&key, &csv_field(b"po,licy"), &mut out);
        let row = String::from_utf8(out).unwrap();
        assert!(row.ends_with(",\"po,licy\",86400000\n"), "{row}");
        let link = key.key_link.hyphenated().to_string();
        assert!(row.starts_with(&format!("{link},\"{{")), "{row}");
        // the keyset field, unquoted, is the Tink keyset of the key
        let inner = &row[link.len() + 2..row.len() - ",\"po,licy\",86400000\n".len() - 1];
        let json = inner.replace("\"\"", "\"");
        let parsed = crate::crypto::tink::parse_keyset_json(&json).unwrap();
        assert_eq!(parsed.0, 7);
    }
}
