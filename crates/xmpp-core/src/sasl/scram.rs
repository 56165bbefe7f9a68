//! SCRAM-SHA-1 (RFC 5802) and SCRAM-SHA-256 (RFC 7677) without channel binding (`n,,`).
//!
//! Usernames are sent with `=` and `,` escaped (RFC 5802 §5.1). Passwords are used as UTF-8
//! without SASLprep: the servers we target store ASCII passwords, and a mismatch shows up as an
//! ordinary `not-authorized`, never as silent success.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::SaslError;

/// Iteration counts above this are refused: a hostile server could otherwise make us burn
/// seconds of CPU per login (RFC 7677 §4 recommends at least 4096).
const MAX_ITERATIONS: u32 = 1_000_000;

/// The hash a SCRAM variant uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    /// SCRAM-SHA-1.
    Sha1,
    /// SCRAM-SHA-256.
    Sha256,
}

impl ScramHash {
    fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "SCRAM-SHA-1",
            Self::Sha256 => "SCRAM-SHA-256",
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => {
                let mut m =
                    <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Self::Sha256 => {
                let mut m =
                    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => Sha1::digest(data).to_vec(),
            Self::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Self::Sha1 => {
                let mut out = [0u8; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            Self::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }
}

/// A random client nonce (printable, no commas).
pub(super) fn random_nonce() -> String {
    let bytes: [u8; 18] = rand::random();
    STANDARD.encode(bytes)
}

#[derive(Debug)]
pub(super) struct ScramClient {
    hash: ScramHash,
    password: String,
    client_nonce: String,
    client_first_bare: String,
    /// Set after client-final: the server signature we expect.
    expected_server_signature: Option<Vec<u8>>,
    verified: bool,
}

impl ScramClient {
    /// Returns the client and its client-first message.
    pub(super) fn new(
        hash: ScramHash,
        username: &str,
        password: &str,
        nonce: String,
    ) -> (Self, String) {
        let user = username.replace('=', "=3D").replace(',', "=2C");
        let client_first_bare = format!("n={user},r={nonce}");
        let first = format!("n,,{client_first_bare}");
        let client = Self {
            hash,
            password: password.to_owned(),
            client_nonce: nonce,
            client_first_bare,
            expected_server_signature: None,
            verified: false,
        };
        (client, first)
    }

    fn err(&self, reason: impl Into<String>) -> SaslError {
        SaslError::Protocol {
            mechanism: self.hash.name(),
            reason: reason.into(),
        }
    }

    /// Handles server-first (→ client-final) or, as a challenge, server-final (→ empty).
    pub(super) fn handle_server_message(&mut self, data: &[u8]) -> Result<Vec<u8>, SaslError> {
        if self.expected_server_signature.is_some() {
            self.verify_server_final(data)?;
            return Ok(Vec::new());
        }
        let server_first =
            std::str::from_utf8(data).map_err(|_| self.err("server-first is not UTF-8"))?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            match part.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = Some(v),
                Some(("m", _)) => return Err(self.err("mandatory extension not supported")),
                _ => {}
            }
        }
        let nonce = nonce.ok_or_else(|| self.err("no nonce"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(self.err("the server nonce does not extend ours"));
        }
        let salt = STANDARD
            .decode(salt.ok_or_else(|| self.err("no salt"))?)
            .map_err(|e| self.err(format!("bad salt: {e}")))?;
        let iterations: u32 = iterations
            .ok_or_else(|| self.err("no iteration count"))?
            .parse()
            .map_err(|_| self.err("bad iteration count"))?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(self.err(format!("iteration count {iterations} out of range")));
        }
        let h = self.hash;
        let salted = h.salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = h.hmac(&salted, b"Client Key");
        let stored_key = h.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = h.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = h.hmac(&salted, b"Server Key");
        self.expected_server_signature = Some(h.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    fn verify_server_final(&mut self, data: &[u8]) -> Result<(), SaslError> {
        let text = std::str::from_utf8(data).map_err(|_| self.err("server-final is not UTF-8"))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(self.err(format!("server error: {e}")));
        }
        let v = text
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .ok_or_else(|| self.err("no server signature"))?;
        let got = STANDARD
            .decode(v)
            .map_err(|e| self.err(format!("bad server signature: {e}")))?;
        let expected = self
            .expected_server_signature
            .as_deref()
            .unwrap_or_default();
        // Not secret, but compare fully anyway.
        if got.len() != expected.len()
            || got
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0
        {
            return Err(self.err("wrong server signature: the server does not know the password"));
        }
        self.verified = true;
        Ok(())
    }

    /// On `<success/>`: verifies the server-final it carries (or that a challenge did).
    pub(super) fn finish(&mut self, data: &[u8]) -> Result<(), SaslError> {
        if !data.is_empty() {
            self.verify_server_final(data)?;
        }
        if !self.verified {
            return Err(self.err("success without a server signature"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AuthIdentity, Credentials, Mechanism, SaslExchange};
    use super::*;

    fn run(
        mech: Mechanism,
        nonce: &str,
        server_first: &str,
        client_final: &str,
        server_final: &str,
    ) {
        let identity = AuthIdentity {
            username: Some("user".into()),
            bare_jid: None,
        };
        let (mut ex, first) = SaslExchange::start_with_nonce(
            mech,
            &Credentials::Password("pencil".into()),
            &identity,
            nonce.into(),
        )
        .unwrap();
        assert_eq!(
            STANDARD.decode(first).unwrap(),
            format!("n,,n=user,r={nonce}").as_bytes()
        );
        let reply = ex.challenge(&STANDARD.encode(server_first)).unwrap();
        assert_eq!(
            String::from_utf8(STANDARD.decode(reply).unwrap()).unwrap(),
            client_final
        );
        ex.success(&STANDARD.encode(server_final)).unwrap();
    }

    /// RFC 5802 §5.
    #[test]
    fn rfc5802_sha1_test_vector() {
        run(
            Mechanism::ScramSha1,
            "fyko+d2lbbFgONRv9qkxdawL",
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        );
    }

    /// RFC 7677 §3.
    #[test]
    fn rfc7677_sha256_test_vector() {
        run(
            Mechanism::ScramSha256,
            "rOprNGfwEbeRWgbNEkqO",
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        );
    }

    fn started() -> SaslExchange {
        let identity = AuthIdentity {
            username: Some("user".into()),
            bare_jid: None,
        };
        SaslExchange::start_with_nonce(
            Mechanism::ScramSha1,
            &Credentials::Password("pencil".into()),
            &identity,
            "abc".into(),
        )
        .unwrap()
        .0
    }

    #[test]
    fn wrong_server_signature_is_rejected() {
        let mut ex = started();
        ex.challenge(&STANDARD.encode("r=abcdef,s=QSXCR+Q6sek8bf92,i=4096"))
            .unwrap();
        assert!(
            ex.success(&STANDARD.encode("v=rmF9pqV8S7suAoZWja4dJRkFsKQ="))
                .is_err()
        );
    }

    #[test]
    fn success_without_signature_is_rejected() {
        let mut ex = started();
        ex.challenge(&STANDARD.encode("r=abcdef,s=QSXCR+Q6sek8bf92,i=4096"))
            .unwrap();
        assert!(ex.success("").is_err());
    }

    #[test]
    fn nonce_must_extend_ours_and_iterations_are_bounded() {
        for bad in [
            "r=zzz,s=QSXCR+Q6sek8bf92,i=4096",
            "r=abc,s=QSXCR+Q6sek8bf92,i=4096",
            "r=abcd,s=QSXCR+Q6sek8bf92,i=0",
            "r=abcd,s=QSXCR+Q6sek8bf92,i=99999999",
            "r=abcd,s=%%%,i=4096",
            "m=ext,r=abcd,s=QSXCR+Q6sek8bf92,i=4096",
        ] {
            assert!(started().challenge(&STANDARD.encode(bad)).is_err(), "{bad}");
        }
    }
}
