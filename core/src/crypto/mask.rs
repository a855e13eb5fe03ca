//! Keyed-hash masking: a field value is replaced by the lowercase hex HMAC-SHA256 of it, keyed
//! by a secret seed.
//!
//! Equal values under the same seed give equal masks (so masked columns can still be joined and
//! counted), but without the seed a mask cannot be recomputed from a guessed value.
//!
//! The keyed HMAC state (the inner and outer pads hashed once) is computed in [`Masker::new`];
//! each [`Masker::mask_hex_into`] clones it, so masking a value costs two SHA-256 compressions
//! for short values plus the hex encoding, and allocates nothing beyond growing the output.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Length in characters of a mask: 32 bytes of HMAC-SHA256 as lowercase hex.
pub const MASK_HEX_LEN: usize = 64;

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// HMAC-SHA256 keyed by a seed; masks values as lowercase hex.
///
/// Cheap to clone (a few hundred bytes of precomputed hash state). `Debug` does not show the
/// seed or anything derived from it.
#[derive(Clone)]
pub struct Masker {
    /// HMAC-SHA256 with the key already absorbed; cloned for every value.
    keyed: Hmac<Sha256>,
}

impl Masker {
    /// A masker keyed by `seed` (any length; HMAC hashes seeds longer than 64 bytes).
    pub fn new(seed: &[u8]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(seed)
            .expect("HMAC-SHA256 accepts keys of any length");
        Masker { keyed }
    }

    /// Appends lowercase hex HMAC-SHA256(seed, value) (64 chars) to `out`.
    pub fn mask_hex_into(&self, value: &[u8], out: &mut Vec<u8>) {
        let mut mac = self.keyed.clone();
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        out.reserve(MASK_HEX_LEN);
        for &b in digest.iter() {
            out.push(HEX_DIGITS[usize::from(b >> 4)]);
            out.push(HEX_DIGITS[usize::from(b & 0x0f)]);
        }
    }
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Masker { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mask(seed: &[u8], value: &[u8]) -> String {
        let mut out = Vec::new();
        Masker::new(seed).mask_hex_into(value, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// Known answers computed with Python 3.11.7's stdlib:
    /// `hmac.new(seed, value, hashlib.sha256).hexdigest()`.
    #[test]
    fn known_answers_from_python_hmac() {
        let zoe = "Zoë 😀".as_bytes();
        let long_seed = [b's'; 100];
        let cases: [(&[u8], &[u8], &str); 9] = [
            (
                b"",
                b"",
                "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad",
            ),
            (
                b"",
                b"alice@example.com",
                "0cf19c8f102ecc62b033b451c1d7cbe462dbb7a67636d9f843145c96788ed961",
            ),
            (
                b"",
                zoe,
                "3c78cc084d0c484cef08dfbd0e7cc7b0346e382c52bdca709ce9dabaaa390d97",
            ),
            (
                b"keylink-seed",
                b"",
                "31d163eeb2b1a0ff2c8bf6f2df303012fa388357d17a808b9e6a22f758da5e5f",
            ),
            (
                b"keylink-seed",
                b"alice@example.com",
                "2fda488a91fd030c49cc0540ca54a0a5c88f7b294609d8f86e2822091b7e266b",
            ),
            (
                b"keylink-seed",
                zoe,
                "48648e2a02b19d2699010a0d16def75a09efe18e3af82297df6d6c38bfff6449",
            ),
            (
                &long_seed,
                b"",
                "71438446517e1acb3f824d0289300efb085064d1ae89150de1169ff87e9c42d5",
            ),
            (
                &long_seed,
                b"alice@example.com",
                "6952590984dd2d6e2ac9586a16878fbfa91a3786b21c5ce3c82abc1ff7b6e511",
            ),
            (
                &long_seed,
                zoe,
                "af80c2632fa219ffcbfae63204663c3845e96f4bcba641acec9aff1a4e56f737",
            ),
        ];
        for (seed, value, expected) in cases {
            assert_eq!(mask(seed, value), expected);
        }
    }

    #[test]
    fn appends_and_reuses_state() {
        let m = Masker::new(b"keylink-seed");
        let mut out = b"prefix:".to_vec();
        m.mask_hex_into(b"alice@example.com", &mut out);
        m.mask_hex_into(b"alice@example.com", &mut out);
        assert_eq!(out.len(), 7 + 2 * MASK_HEX_LEN);
        assert_eq!(&out[..7], b"prefix:");
        assert_eq!(&out[7..71], &out[71..]);
        assert_eq!(
            &out[7..71],
            b"2fda488a91fd030c49cc0540ca54a0a5c88f7b294609d8f86e2822091b7e266b"
        );
        // A clone masks identically.
        let mut again = Vec::new();
        m.clone().mask_hex_into(b"alice@example.com", &mut again);
        assert_eq!(&again[..], &out[7..71]);
    }

    #[test]
    fn debug_hides_the_seed() {
        let m = Masker::new(b"very-secret-seed");
        let dbg = format!("{m:?}");
        assert_eq!(dbg, "Masker { .. }");
    }

    #[test]
    fn masker_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Masker>();
    }

    proptest! {
        #[test]
        fn masks_are_64_lowercase_hex_and_seed_dependent(
            value in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let a = mask(b"seed-a", &value);
            let b = mask(b"seed-b", &value);
            prop_assert_eq!(a.len(), MASK_HEX_LEN);
            prop_assert!(a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
            prop_assert_ne!(&a, &b);
            prop_assert_eq!(a, mask(b"seed-a", &value));
        }
    }
}
