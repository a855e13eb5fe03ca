//! The envelope every key store of keylink puts data keys in: AES-256-GCM under a 32-byte master
//! key, a random 96-bit nonce per sealed value, and associated data that binds a sealed value to
//! its place (a store chooses it: key link, scope hash, window, key id).
//!
//! Shared by the store crates so that they all encrypt keys at rest the same way.

use std::fmt;

pub use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::crypto::{KEY_LEN, KeyMaterial, fill_random};
use crate::error::{Error, Result};

/// The environment variable holding the master key (base64 of 32 bytes). It wins over key files.
pub const MASTER_KEY_ENV: &str = "KEYLINK_MASTER_KEY";

/// Length in bytes of the master key (an AES-256 key).
pub const MASTER_KEY_LEN: usize = 32;

/// Length of an AES-GCM nonce.
const NONCE_LEN: usize = 12;

/// The master key: 32 bytes, zeroized on drop; `Debug` shows nothing.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; MASTER_KEY_LEN]>);

impl MasterKey {
    /// Wraps key bytes.
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        MasterKey(Zeroizing::new(bytes))
    }

    /// Parses the base64 (standard alphabet, padded) of 32 bytes; surrounding whitespace is
    /// ignored. `what` names the source in the error ("the master key file /x/y").
    pub fn from_base64(text: &str, what: &str) -> Result<Self> {
        let decoded = Zeroizing::new(BASE64.decode(text.trim()).map_err(|_| {
            Error::config(format!(
                "{what} is not valid: expected the base64 encoding of {MASTER_KEY_LEN} bytes, \
                 found text that is not base64"
            ))
        })?);
        let bytes: [u8; MASTER_KEY_LEN] = decoded.as_slice().try_into().map_err(|_| {
            Error::config(format!(
                "{what} is not valid: expected the base64 encoding of {MASTER_KEY_LEN} bytes, \
                 found {} bytes",
                decoded.len()
            ))
        })?;
        Ok(MasterKey::from_bytes(bytes))
    }

    /// A new random key.
    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        fill_random(bytes.as_mut())?;
        Ok(MasterKey(bytes))
    }
}

impl MasterKey {
    /// The key bytes.
    pub fn expose(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.0
    }

    /// AES-256-GCM under this key, for [`seal`] and [`unseal`].
    pub fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.0.as_slice()).expect("a 32-byte key")
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(**REDACTED**)")
    }
}

/// OS randomness drawn in 16 KiB refills rather than one `getrandom` call per value: creating a
/// key needs four random values (key, key id, key link, nonce), and thousands of keys are created
/// per transaction. The buffer is zeroized on drop.
pub struct RandomPool {
    buf: zeroize::Zeroizing<Vec<u8>>,
    pos: usize,
}

impl RandomPool {
    const REFILL: usize = 16 << 10;

    /// An empty pool; the first `take` fills it.
    pub fn new() -> Self {
        RandomPool {
            buf: zeroize::Zeroizing::new(Vec::new()),
            pos: 0,
        }
    }

    /// `n` fresh random bytes (n <= REFILL); each byte is handed out once.
    pub fn take(&mut self, n: usize) -> Result<&[u8]> {
        debug_assert!(n <= Self::REFILL);
        if self.buf.len() - self.pos < n {
            self.buf.resize(Self::REFILL, 0);
            fill_random(&mut self.buf)?;
            self.pos = 0;
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
}

/// AES-256-GCM with a random nonce; returns `nonce || ciphertext || tag`.
pub fn seal(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    seal_with(cipher, plaintext, aad, &mut RandomPool::new())
}

/// [`seal`] with the nonce drawn from `random`.
pub fn seal_with(
    cipher: &Aes256Gcm,
    plaintext: &[u8],
    aad: &[u8],
    random: &mut RandomPool,
) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(random.take(NONCE_LEN)?);
    let sealed = cipher
        .encrypt(
            &Nonce::<Aes256Gcm>::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| Error::crypto("AES-GCM encryption failed"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Inverse of [`seal`]; `None` if the data or the associated data were altered (or the key is
/// wrong).
pub fn unseal(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    cipher
        .decrypt(
            &Nonce::<Aes256Gcm>::from(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

impl Default for RandomPool {
    fn default() -> Self {
        Self::new()
    }
}

/// A new data key from `random`: material, a Tink key id in `[1, 2^31 - 1]`, a UUIDv4 key link.
pub fn new_data_key(random: &mut RandomPool) -> Result<(KeyMaterial, u32, Uuid)> {
    let material = KeyMaterial::from_slice(random.take(KEY_LEN)?)?;
    let key_id = loop {
        let b = random.take(4)?;
        let id = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
        if id != 0 {
            break id;
        }
    };
    let key_link =
        uuid::Builder::from_random_bytes(random.take(16)?.try_into().expect("took 16 bytes"))
            .into_uuid();
    Ok((material, key_id, key_link))
}

/// A keyed hash of the master key under a store's `label`. A store keeps its output, so that
/// opening the store with another master key is recognised (and refused) before anything is
/// unwrapped.
pub fn master_key_verifier(master: &MasterKey, label: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(master.expose().as_slice())
        .expect("HMAC accepts any key length")
        .chain_update(label)
}

/// The associated data of a wrapped data key: the store's `prefix`, then the key link, scope,
/// window start and key id, binding the wrapped key to its row (a row's wrapped key moved to
/// another row does not unwrap). All parts but the prefix have fixed lengths for a store.
pub fn data_key_aad(
    prefix: &[u8],
    key_link: &Uuid,
    scope: &[u8],
    window_start_ms: i64,
    key_id: u32,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(prefix.len() + 16 + scope.len() + 8 + 4);
    aad.extend_from_slice(prefix);
    aad.extend_from_slice(key_link.as_bytes());
    aad.extend_from_slice(scope);
    aad.extend_from_slice(&window_start_ms.to_be_bytes());
    aad.extend_from_slice(&key_id.to_be_bytes());
    aad
}

/// The master keys a store handle can unwrap with, by fingerprint, and the one it wraps new
/// keys with. Two keys only while a rotation is pending: the current one and the next one.
pub struct MasterCiphers {
    /// The fingerprint of the key new keys are wrapped with.
    pub current: i64,
    /// The verifier of the current key ([`master_key_verifier`]), as the store holds it.
    pub verifier: Vec<u8>,
    /// Every key this handle can unwrap with.
    pub by_fp: std::collections::HashMap<i64, Aes256Gcm>,
}

impl MasterCiphers {
    /// `master` alone; its verifier under the store's `verifier_label`.
    pub fn one(master: &MasterKey, verifier_label: &[u8]) -> Self {
        use hmac::Mac;
        let fp = super::master_key_fingerprint(master);
        MasterCiphers {
            current: fp,
            verifier: master_key_verifier(master, verifier_label)
                .finalize()
                .into_bytes()
                .to_vec(),
            by_fp: std::collections::HashMap::from([(fp, master.cipher())]),
        }
    }

    /// The current key: its fingerprint and cipher.
    pub fn current(&self) -> (i64, &Aes256Gcm) {
        (self.current, &self.by_fp[&self.current])
    }
}

impl fmt::Debug for MasterCiphers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterCiphers")
            .field("current", &self.current)
            .field("keys", &self.by_fp.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_aad() {
        let key = MasterKey::from_bytes([3; 32]);
        let sealed = seal(&key.cipher(), b"secret", b"here").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            unseal(&key.cipher(), &sealed, b"here").unwrap().as_slice(),
            b"secret"
        );
        assert!(unseal(&key.cipher(), &sealed, b"there").is_none());
        let other = MasterKey::from_bytes([4; 32]);
        assert!(unseal(&other.cipher(), &sealed, b"here").is_none());
        assert_ne!(sealed, seal(&key.cipher(), b"secret", b"here").unwrap());
        assert_eq!(format!("{key:?}"), "MasterKey(**REDACTED**)");
        let (_, id, link) = new_data_key(&mut RandomPool::new()).unwrap();
        assert!((1..=i32::MAX as u32).contains(&id));
        assert_eq!(link.get_version_num(), 4);
    }
}
