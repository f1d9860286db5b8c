//! The tamper-evident form of the trail: a hash chain of records and signed checkpoints.
//!
//! Each [`Record`] carries the SHA-256 of its own contents and of the record before it, so
//! altering, removing or reordering a record breaks the chain at that point. A hash chain alone
//! does not stop someone with write access from rewriting the tail and recomputing the hashes,
//! nor from appending records or cutting the tail off; [`Checkpoint`]s do: the writer signs
//! (ed25519) the chain head and the record count at every group commit, so every durable record
//! is covered by a signature that only the holder of the signing key can make.
//!
//! [`Verifier`] checks a trail in one pass and bounded memory: records in sequence order, each
//! checkpoint fed right after the record it covers.
//!
//! Encodings are fixed and domain-separated (see [`record_hash`], [`checkpoint_message`]);
//! changing them is a format change.

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

/// The `prev` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// One event, sealed into the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1-based position in the trail.
    pub seq: u64,
    /// When it was sealed, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// The hash of the record before (GENESIS for the first).
    pub prev: [u8; 32],
    /// [`record_hash`] of this record.
    pub hash: [u8; 32],
    /// The event, as JSON.
    pub body: String,
}

/// SHA-256 over `"weir-audit-v1\0" ‖ seq ‖ ts_us ‖ prev ‖ len(body) ‖ body`, integers
/// big-endian, the length as u64.
pub fn record_hash(seq: u64, ts_us: i64, prev: &[u8; 32], body: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"weir-audit-v1\0");
    h.update(seq.to_be_bytes());
    h.update(ts_us.to_be_bytes());
    h.update(prev);
    h.update((body.len() as u64).to_be_bytes());
    h.update(body.as_bytes());
    h.finalize().into()
}

/// The head of the chain: what the next record links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    last_seq: u64,
    head: [u8; 32],
}

impl Default for Chain {
    fn default() -> Chain {
        Chain {
            last_seq: 0,
            head: GENESIS,
        }
    }
}

impl Chain {
    /// Continues a stored trail whose last record is `last_seq` with hash `head`.
    pub fn resume(last_seq: u64, head: [u8; 32]) -> Chain {
        Chain { last_seq, head }
    }

    /// Seals the next record.
    pub fn seal(&mut self, ts_us: i64, body: String) -> Record {
        let seq = self.last_seq + 1;
        let hash = record_hash(seq, ts_us, &self.head, &body);
        let record = Record {
            seq,
            ts_us,
            prev: self.head,
            hash,
            body,
        };
        self.last_seq = seq;
        self.head = hash;
        record
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn head(&self) -> [u8; 32] {
        self.head
    }
}

/// A signed statement: "the trail's first `seq` records end in `head`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub head: [u8; 32],
    pub ts_us: i64,
    pub signature: [u8; 64],
}

/// What a checkpoint's signature covers: `"weir-checkpoint-v1\0" ‖ seq ‖ head ‖ ts_us`.
pub fn checkpoint_message(seq: u64, head: &[u8; 32], ts_us: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(19 + 8 + 32 + 8);
    m.extend_from_slice(b"weir-checkpoint-v1\0");
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(&ts_us.to_be_bytes());
    m
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no randomness for a new signing key: {0}")]
    Random(String),
    #[error("signing key file: expected 64 hex digits (the ed25519 seed)")]
    Format,
    #[error("public key: expected 64 hex digits")]
    PublicFormat,
}

/// The checkpoint signer (ed25519).
pub struct Signer {
    key: SigningKey,
}

impl Signer {
    pub fn generate() -> Result<Signer, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Signer::from_seed(&seed))
    }

    pub fn from_seed(seed: &[u8; 32]) -> Signer {
        Signer {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// Reads the key file's text: the 32-byte seed in hex, surrounding whitespace ignored.
    pub fn from_file_text(text: &str) -> Result<Signer, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::Format)?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Format)?;
        Ok(Signer::from_seed(&seed))
    }

    /// The key file's text (keep it private: mode 0600).
    pub fn to_file_text(&self) -> String {
        format!("{}\n", hex::encode(self.key.to_bytes()))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    pub fn sign(&self, seq: u64, head: [u8; 32], ts_us: i64) -> Checkpoint {
        let signature = self.key.sign(&checkpoint_message(seq, &head, ts_us));
        Checkpoint {
            seq,
            head,
            ts_us,
            signature: signature.to_bytes(),
        }
    }
}

/// The key an auditor verifies checkpoints with. Exported as 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_hex(text: &str) -> Result<PublicKey, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::PublicFormat)?;
        let raw: [u8; 32] = bytes.try_into().map_err(|_| KeyError::PublicFormat)?;
        VerifyingKey::from_bytes(&raw)
            .map(PublicKey)
            .map_err(|_| KeyError::PublicFormat)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    pub fn verifies(&self, c: &Checkpoint) -> bool {
        self.0
            .verify(
                &checkpoint_message(c.seq, &c.head, c.ts_us),
                &Signature::from_bytes(&c.signature),
            )
            .is_ok()
    }
}

/// The first thing wrong with a trail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("event {0}: hash does not match its contents (altered)")]
    Altered(u64),
    #[error("event {0}: missing (removed); the trail jumps from event {1} to event {2}")]
    Missing(u64, u64, u64),
    #[error("event {0}: does not follow event {1} (removed, reordered or replaced)")]
    Unlinked(u64, u64),
    #[error("event {0}: out of order after event {1}")]
    OutOfOrder(u64, u64),
    #[error("checkpoint at event {0}: signature does not verify (forged or altered)")]
    BadSignature(u64),
    #[error("checkpoint at event {0}: the chain head there differs (events before it altered or replaced)")]
    HeadMismatch(u64),
    #[error("event {0}: missing; a signed checkpoint covers {1} events but the trail ends at event {2} (tail truncated)")]
    Truncated(u64, u64, u64),
    #[error("event {0}: not covered by a signed checkpoint (appended by hand?)")]
    Unsigned(u64),
}

/// What a trail that verified holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub checkpoints: u64,
}

/// Checks a trail in one pass: feed records in `seq` order and each checkpoint after the record
/// it covers (or at the end, for one that covers records not present), then [`Verifier::finish`].
pub struct Verifier {
    key: PublicKey,
    chain: Chain,
    covered: u64,
    checkpoints: u64,
    /// A valid checkpoint beyond the records seen so far (only legitimate at the end).
    ahead: Option<u64>,
}

impl Verifier {
    pub fn new(key: PublicKey) -> Verifier {
        Verifier {
            key,
            chain: Chain::default(),
            covered: 0,
            checkpoints: 0,
            ahead: None,
        }
    }

    pub fn record(&mut self, r: &Record) -> Result<(), VerifyError> {
        let last = self.chain.last_seq();
        if let Some(seq) = self.ahead {
            return Err(VerifyError::Truncated(last + 1, seq, last));
        }
        let expected = last + 1;
        if r.seq < expected {
            return Err(VerifyError::OutOfOrder(r.seq, last));
        }
        if r.seq > expected {
            return Err(VerifyError::Missing(expected, last, r.seq));
        }
        if record_hash(r.seq, r.ts_us, &r.prev, &r.body) != r.hash {
            return Err(VerifyError::Altered(r.seq));
        }
        if r.prev != self.chain.head() {
            return Err(VerifyError::Unlinked(r.seq, last));
        }
        self.chain = Chain::resume(r.seq, r.hash);
        Ok(())
    }

    pub fn checkpoint(&mut self, c: &Checkpoint) -> Result<(), VerifyError> {
        if !self.key.verifies(c) {
            return Err(VerifyError::BadSignature(c.seq));
        }
        let last = self.chain.last_seq();
        if c.seq > last {
            // Signed, but the records it covers are not (yet) here: the tail was cut off,
            // unless more records follow, which `record` checks.
            self.ahead = Some(c.seq);
        } else if c.seq == last {
            if c.head != self.chain.head() {
                return Err(VerifyError::HeadMismatch(c.seq));
            }
            self.covered = c.seq;
        } else {
            return Err(VerifyError::HeadMismatch(c.seq));
        }
        self.checkpoints += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<Summary, VerifyError> {
        let last = self.chain.last_seq();
        if let Some(seq) = self.ahead {
            return Err(VerifyError::Truncated(last + 1, seq, last));
        }
        if self.covered < last {
            return Err(VerifyError::Unsigned(self.covered + 1));
        }
        Ok(Summary {
            events: last,
            checkpoints: self.checkpoints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trail of `n` records with a checkpoint every `every` records and at the end.
    fn trail(signer: &Signer, n: u64, every: u64) -> (Vec<Record>, Vec<Checkpoint>) {
        let mut chain = Chain::default();
        let mut records = Vec::new();
        let mut cps = Vec::new();
        for i in 1..=n {
            records.push(chain.seal(i as i64 * 10, format!("{{\"event\":\"e{i}\"}}")));
            if i % every == 0 || i == n {
                cps.push(signer.sign(i, chain.head(), i as i64 * 10));
            }
        }
        (records, cps)
    }

    fn verify(
        key: &PublicKey,
        records: &[Record],
        cps: &[Checkpoint],
    ) -> Result<Summary, VerifyError> {
        let mut v = Verifier::new(key.clone());
        let mut cps = cps.iter().peekable();
        for r in records {
            v.record(r)?;
            while let Some(c) = cps.next_if(|c| c.seq <= r.seq) {
                v.checkpoint(c)?;
            }
        }
        for c in cps {
            v.checkpoint(c)?;
        }
        v.finish()
    }

    fn setup() -> (Signer, PublicKey, Vec<Record>, Vec<Checkpoint>) {
        let signer = Signer::from_seed(&[7; 32]);
        let key = signer.public_key();
        let (r, c) = trail(&signer, 10, 3);
        (signer, key, r, c)
    }

    #[test]
    fn an_intact_trail_verifies() {
        let (_, key, r, c) = setup();
        assert_eq!(
            verify(&key, &r, &c),
            Ok(Summary {
                events: 10,
                checkpoints: 4
            })
        );
    }

    #[test]
    fn an_altered_event_is_named() {
        let (_, key, mut r, c) = setup();
        r[4].body = "{\"event\":\"nothing to see\"}".into();
        assert_eq!(verify(&key, &r, &c), Err(VerifyError::Altered(5)));
        // Recomputing its hash does not help: the next event no longer links to it.
        r[4].hash = record_hash(5, r[4].ts_us, &r[4].prev, &r[4].body);
        assert_eq!(verify(&key, &r, &c), Err(VerifyError::Unlinked(6, 5)));
    }

    #[test]
    fn a_removed_event_is_named() {
        let (_, key, mut r, c) = setup();
        r.remove(3);
        assert_eq!(verify(&key, &r, &c), Err(VerifyError::Missing(4, 3, 5)));
    }

    #[test]
    fn reordered_events_are_named() {
        let (_, key, mut r, c) = setup();
        // Swap the contents of two rows, keeping each row's position.
        let (a, b) = (r[2].clone(), r[3].clone());
        r[2] = Record { seq: 3, ..b };
        r[3] = Record { seq: 4, ..a };
        assert_eq!(verify(&key, &r, &c), Err(VerifyError::Altered(3)));
    }

    #[test]
    fn a_rewritten_chain_fails_at_the_first_checkpoint_after_the_change() {
        let (_, key, r, c) = setup();
        // Rewrite from event 2 on with valid hashes: only the checkpoints can tell.
        let mut chain = Chain::resume(1, r[0].hash);
        let forged: Vec<Record> = std::iter::once(r[0].clone())
            .chain(
                r[1..]
                    .iter()
                    .map(|x| chain.seal(x.ts_us, x.body.replace('e', "E"))),
            )
            .collect();
        assert_eq!(verify(&key, &forged, &c), Err(VerifyError::HeadMismatch(3)));
    }

    #[test]
    fn an_event_appended_by_hand_is_named() {
        let (_, key, mut r, c) = setup();
        let mut chain = Chain::resume(10, r[9].hash);
        r.push(chain.seal(999, "{\"event\":\"forged\"}".into()));
        assert_eq!(verify(&key, &r, &c), Err(VerifyError::Unsigned(11)));
        // …also with a checkpoint signed by another key.
        let mut c2 = c.clone();
        c2.push(Signer::from_seed(&[9; 32]).sign(11, chain.head(), 999));
        assert_eq!(verify(&key, &r, &c2), Err(VerifyError::BadSignature(11)));
    }

    #[test]
    fn a_truncated_tail_is_named() {
        let (_, key, mut r, c) = setup();
        r.truncate(7);
        assert_eq!(verify(&key, &r, &c), Err(VerifyError::Truncated(8, 10, 7)));
    }

    #[test]
    fn keys_round_trip_through_their_text() {
        let s = Signer::generate().unwrap();
        let again = Signer::from_file_text(&s.to_file_text()).unwrap();
        assert_eq!(s.public_key(), again.public_key());
        let pk = PublicKey::from_hex(&s.public_key().to_hex()).unwrap();
        assert!(pk.verifies(&s.sign(1, [1; 32], 5)));
        assert!(Signer::from_file_text("nothex").is_err());
    }
}
