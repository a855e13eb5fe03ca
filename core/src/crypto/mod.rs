//! Cryptography: data keys, Tink-compatible deterministic encryption, keyed-hash masking.
//!
//! - [`KeyMaterial`]: a 64-byte AES-256-SIV key, zeroized on drop, never printed.
//! - [`tink`]: the Tink Deterministic AEAD (AES256_SIV) wire format and Tink JSON keysets.
//! - [`mask`]: lowercase hex HMAC-SHA256 masking of field values.

pub mod mask;
pub mod tink;

use std::fmt;

use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};

/// Length in bytes of an AES-256-SIV key (two AES-256 keys: one for S2V/CMAC, one for CTR).
pub const KEY_LEN: usize = 64;

/// The secret bytes of one data key. Zeroized on drop; `Debug` shows nothing.
#[derive(Clone)]
pub struct KeyMaterial(Zeroizing<[u8; KEY_LEN]>);

impl KeyMaterial {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(bytes.as_mut())?;
        Ok(KeyMaterial(bytes))
    }

    /// Wraps existing key bytes; fails unless there are exactly 64 of them.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            Error::crypto(format!(
                "an AES-256-SIV key has {KEY_LEN} bytes, got {}",
                bytes.len()
            ))
        })?;
        Ok(KeyMaterial(Zeroizing::new(arr)))
    }

    /// The key bytes. Use only to build a cipher or to export the key.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(**REDACTED**)")
    }
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| {
        Error::new(
            ErrorKind::Crypto,
            format!("the operating system's random number generator failed: {e}"),
        )
    })
}

/// A random Tink key id in `[1, 2^31 - 1]` (Tink rejects 0 and negative ids).
pub fn generate_key_id() -> Result<u32> {
    loop {
        let mut b = [0u8; 4];
        fill_random(&mut b)?;
        let id = u32::from_be_bytes(b) & 0x7fff_ffff;
        if id != 0 {
            return Ok(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_material_is_random_and_redacted() {
        let a = KeyMaterial::generate().unwrap();
        let b = KeyMaterial::generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(format!("{a:?}"), "KeyMaterial(**REDACTED**)");
        assert!(KeyMaterial::from_slice(&[0u8; 32]).is_err());
    }

    #[test]
    fn key_ids_are_positive_i32() {
        for _ in 0..1000 {
            let id = generate_key_id().unwrap();
            assert!(id >= 1 && id <= i32::MAX as u32);
        }
    }
}
