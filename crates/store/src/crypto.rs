//! Encryption at rest for user secrets: store keys, the keyring, and XChaCha20-Poly1305 sealing.
//!
//! A sealed secret is `nonce (24 bytes) || ciphertext+tag`, with a fresh random nonce per write.
//! The associated data binds it to the user and slot it belongs to, so a ciphertext copied to
//! another row fails authentication instead of leaking one user's token to another. The key id
//! is stored beside the ciphertext so keys can rotate: any configured key decrypts, the
//! current key encrypts.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

use crate::error::{Error, Result};

const NONCE_LEN: usize = 24;
const AAD_CONTEXT: &[u8] = b"messenger-bridge/store/secret/v1\0";

/// One 32-byte encryption key with its id.
#[derive(Clone)]
pub struct StoreKey {
    id: String,
    key: Key,
}

impl StoreKey {
    /// Builds a key from raw bytes. The id must be 1–64 characters of `[A-Za-z0-9._-]`.
    pub fn new(id: impl Into<String>, bytes: [u8; 32]) -> Result<Self> {
        let id = id.into();
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok {
            return Err(Error::InvalidKey {
                reason: format!("key id `{id}` must be 1-64 characters of A-Z a-z 0-9 . _ -"),
            });
        }
        Ok(Self {
            id,
            key: Key::from(bytes),
        })
    }

    /// Builds a key from its id and standard base64 (32 bytes once decoded).
    pub fn from_base64(id: impl Into<String>, b64: &str) -> Result<Self> {
        let id = id.into();
        let bytes = STANDARD.decode(b64.trim()).map_err(|e| Error::InvalidKey {
            reason: format!("key `{id}` is not valid base64 ({e})"),
        })?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| Error::InvalidKey {
            reason: format!("key `{id}` decodes to {} bytes, expected 32", b.len()),
        })?;
        Self::new(id, bytes)
    }

    /// Parses `id:BASE64`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (id, b64) = spec
            .trim()
            .split_once(':')
            .ok_or_else(|| Error::InvalidKey {
                reason: "expected `id:BASE64`".to_owned(),
            })?;
        Self::from_base64(id, b64)
    }

    /// A fresh random key, e.g. for a `generate-key` command.
    pub fn generate(id: impl Into<String>) -> Result<Self> {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        Self::new(id, key.into())
    }

    /// The key id stored beside every ciphertext made with this key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `id:BASE64`, the form [`StoreKey::parse`] reads. This reveals the key.
    pub fn to_spec(&self) -> String {
        format!("{}:{}", self.id, STANDARD.encode(self.key))
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The keys the store knows: one current key for writing, older ones for reading.
#[derive(Clone)]
pub struct Keyring {
    current: StoreKey,
    previous: Vec<StoreKey>,
}

impl Keyring {
    /// A keyring with only `current`.
    pub fn new(current: StoreKey) -> Self {
        Self {
            current,
            previous: Vec::new(),
        }
    }

    /// Adds an older key that can still decrypt; its id must differ from the others.
    pub fn with_previous(mut self, key: StoreKey) -> Result<Self> {
        if self.get(key.id()).is_some() {
            return Err(Error::InvalidKey {
                reason: format!("key id `{}` given twice", key.id()),
            });
        }
        self.previous.push(key);
        Ok(self)
    }

    /// Parses keys separated by commas, whitespace or newlines; the first is current.
    /// Lines starting with `#` are comments.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut keys = spec
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split([',', ' ', '\t']))
            .filter(|s| !s.is_empty())
            .map(StoreKey::parse);
        let current = keys.next().ok_or_else(|| Error::InvalidKey {
            reason: "no key given".to_owned(),
        })??;
        keys.try_fold(Self::new(current), |ring, key| ring.with_previous(key?))
    }

    /// Reads [`Keyring::parse`] format from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::InvalidKey {
            reason: format!("cannot read key file {}: {e}", path.display()),
        })?;
        Self::parse(&text)
    }

    /// Reads [`Keyring::parse`] format from an environment variable.
    pub fn from_env(var: &str) -> Result<Self> {
        let text = std::env::var(var).map_err(|e| Error::InvalidKey {
            reason: format!("environment variable {var}: {e}"),
        })?;
        Self::parse(&text)
    }

    /// The id of the key new secrets are encrypted with.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// All configured key ids, current first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(StoreKey::id)
    }

    fn get(&self, id: &str) -> Option<&StoreKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }

    /// Encrypts with the current key; returns the key id and `nonce || ciphertext`.
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> (String, Vec<u8>) {
        let cipher = XChaCha20Poly1305::new(&self.current.key);
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption only fails for messages beyond ~256 GiB; secrets are tiny.
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default();
        let mut sealed = Vec::with_capacity(NONCE_LEN + ct.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ct);
        (self.current.id.clone(), sealed)
    }

    /// Decrypts `nonce || ciphertext` made with key `key_id`.
    pub(crate) fn open(
        &self,
        key_id: &str,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        let key = self.get(key_id).ok_or(OpenError::UnknownKey)?;
        if sealed.len() < NONCE_LEN {
            return Err(OpenError::Corrupt);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        XChaCha20Poly1305::new(&key.key)
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| OpenError::Corrupt)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish()
    }
}

/// Why a sealed secret could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// No configured key has the recorded id.
    UnknownKey,
    /// Authentication failed: wrong key material, or the data was altered.
    Corrupt,
}

/// Associated data binding a ciphertext to its owner and slot (length-prefixed, unambiguous).
pub(crate) fn secret_aad(matrix_user: &str, slot: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_CONTEXT.len() + 8 + matrix_user.len() + slot.len());
    aad.extend_from_slice(AAD_CONTEXT);
    for part in [matrix_user, slot] {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> StoreKey {
        StoreKey::new(id, [byte; 32]).unwrap()
    }

    #[test]
    fn seal_then_open_round_trips_with_fresh_nonces() {
        let ring = Keyring::new(key("k1", 1));
        let aad = secret_aad("@a:x", "oauth_access");
        let (id, s1) = ring.seal(&aad, b"token");
        let (_, s2) = ring.seal(&aad, b"token");
        assert_eq!(id, "k1");
        assert_ne!(s1, s2, "each write must use a new nonce");
        assert_eq!(ring.open("k1", &aad, &s1).unwrap(), b"token");
    }

    #[test]
    fn ciphertext_moved_to_another_user_or_slot_fails() {
        let ring = Keyring::new(key("k1", 1));
        let (_, sealed) = ring.seal(&secret_aad("@a:x", "oauth_access"), b"token");
        for aad in [
            secret_aad("@b:x", "oauth_access"),
            secret_aad("@a:x", "password"),
        ] {
            assert_eq!(ring.open("k1", &aad, &sealed), Err(OpenError::Corrupt));
        }
    }

    #[test]
    fn wrong_key_unknown_id_and_truncation_are_errors() {
        let aad = secret_aad("@a:x", "password");
        let (_, sealed) = Keyring::new(key("k1", 1)).seal(&aad, b"pw");
        let other = Keyring::new(key("k1", 2));
        assert_eq!(other.open("k1", &aad, &sealed), Err(OpenError::Corrupt));
        assert_eq!(other.open("k9", &aad, &sealed), Err(OpenError::UnknownKey));
        let ring = Keyring::new(key("k1", 1));
        assert_eq!(
            ring.open("k1", &aad, &sealed[..10]),
            Err(OpenError::Corrupt)
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(ring.open("k1", &aad, &flipped), Err(OpenError::Corrupt));
    }

    #[test]
    fn previous_keys_decrypt_current_key_encrypts() {
        let aad = secret_aad("@a:x", "password");
        let (_, old) = Keyring::new(key("old", 1)).seal(&aad, b"pw");
        let ring = Keyring::new(key("new", 2))
            .with_previous(key("old", 1))
            .unwrap();
        assert_eq!(ring.open("old", &aad, &old).unwrap(), b"pw");
        assert_eq!(ring.seal(&aad, b"pw").0, "new");
    }

    #[test]
    fn keyring_parses_specs_and_rejects_bad_ones() {
        let k1 = StoreKey::generate("k1").unwrap();
        let k0 = StoreKey::generate("k0").unwrap();
        let ring = Keyring::parse(&format!("# keys\n{}\n{}", k1.to_spec(), k0.to_spec())).unwrap();
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["k1", "k0"]);
        assert_eq!(ring.current_id(), "k1");
        let short = format!("k1:{}", STANDARD.encode([0u8; 16]));
        for bad in ["", "nokey", "k1:!!!", short.as_str(), "bad id:AAAA"] {
            assert!(
                matches!(Keyring::parse(bad), Err(Error::InvalidKey { .. })),
                "{bad:?}"
            );
        }
        let dup = format!("{},{}", k1.to_spec(), k1.to_spec());
        assert!(Keyring::parse(&dup).is_err());
    }

    #[test]
    fn debug_output_never_shows_key_bytes() {
        let k = StoreKey::new("k1", [7; 32]).unwrap();
        let spec = k.to_spec();
        let b64 = spec.split_once(':').unwrap().1;
        assert!(!format!("{k:?} {:?}", Keyring::new(k.clone())).contains(b64));
    }
}
