//! The tamper-evident form of the trail: a hash chain of records and signed checkpoints.
//!
//! Each [`Record`] carries the SHA-256 of its own contents and of the record before it, so
//! altering, removing or reordering a record breaks the chain at that point. A hash chain alone
//! does not stop someone with write access from rewriting the tail and recomputing the hashes,
//! nor from appending records or cutting the tail off. [`Checkpoint`]s do: the writer signs
//! (ed25519) the chain head and the record count **at every group commit**, in the same
//! transaction as the records, so every durable record is covered by a signature that only the
//! holder of the signing key can make. A record beyond the last valid checkpoint was therefore
//! not written by Weir.
//!
//! What the chain cannot see on its own: cutting the tail off *at a checkpoint boundary*
//! (records and their checkpoints together) leaves a shorter trail that verifies. An auditor
//! who kept a later checkpoint (from an earlier export, `weir audit verify` output or a log)
//! feeds it to the [`Verifier`] and the truncation is found.
//!
//! [`Verifier`] checks a trail in one pass and bounded memory: records in sequence order, with
//! checkpoints merged in by sequence number ([`verify_trail`] does the merge for two streams).
//!
//! Encodings are fixed and domain-separated ([`record_hash`], [`checkpoint_message`]);
//! changing either is a format change (bump the `-v1` tag).
//!
//! This module is pure: no files, no clock, no threads. The caller supplies timestamps, reads
//! and writes key files ([`key_from_file_text`], [`key_to_file_text`]) and stores records.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// The `prev` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// Domain tag of [`record_hash`].
const RECORD_DOMAIN: &[u8] = b"weir-audit-v1\0";
/// Domain tag of [`checkpoint_message`].
const CHECKPOINT_DOMAIN: &[u8] = b"weir-checkpoint-v1\0";

/// One event, sealed into the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1-based position in the trail; also the number of events up to and including this one.
    pub seq: u64,
    /// When it was sealed, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// The hash of the record before ([`GENESIS`] for the first).
    pub prev: [u8; 32],
    /// [`record_hash`] of this record's other fields.
    pub hash: [u8; 32],
    /// The event as JSON ([`crate::Event::to_json`]); hashed byte for byte.
    pub body: String,
}

impl Record {
    /// Whether `hash` is the hash of the record's contents (its link to `prev` is not checked).
    pub fn is_intact(&self) -> bool {
        record_hash(self.seq, self.ts_us, &self.prev, &self.body) == self.hash
    }
}

/// SHA-256 over `"weir-audit-v1\0" ‖ seq ‖ ts_us ‖ prev ‖ len(body) ‖ body`, integers
/// big-endian (seq u64, ts_us i64, len u64). The length prefix keeps the encoding unambiguous.
pub fn record_hash(seq: u64, ts_us: i64, prev: &[u8; 32], body: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(RECORD_DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(ts_us.to_be_bytes());
    h.update(prev);
    h.update((body.len() as u64).to_be_bytes());
    h.update(body.as_bytes());
    h.finalize().into()
}

/// The head of the chain: the last record's sequence number and hash, which the next record
/// links to. A writer keeps one; it is 48 bytes and `Copy`, so a batch can be sealed on a copy
/// and the copy kept only once the batch is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    last_seq: u64,
    head: [u8; 32],
}

impl Default for Chain {
    fn default() -> Chain {
        Chain::new()
    }
}

impl Chain {
    /// An empty trail: the first record sealed will be `seq` 1 with `prev` = [`GENESIS`].
    pub fn new() -> Chain {
        Chain {
            last_seq: 0,
            head: GENESIS,
        }
    }

    /// Continues a stored trail whose last record is `last_seq` with hash `head`
    /// (`resume(0, GENESIS)` is an empty trail).
    pub fn resume(last_seq: u64, head: [u8; 32]) -> Chain {
        Chain { last_seq, head }
    }

    /// Seals the next record: assigns its `seq`, links it to the head, hashes it, and makes it
    /// the new head.
    pub fn seal(&mut self, ts_us: i64, body: String) -> Record {
        let seq = self.last_seq.saturating_add(1);
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

    /// The last sealed record's `seq` (0 when empty) = the number of records.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The `seq` the next sealed record gets.
    pub fn next_seq(&self) -> u64 {
        self.last_seq.saturating_add(1)
    }

    /// The last sealed record's hash ([`GENESIS`] when empty).
    pub fn head(&self) -> [u8; 32] {
        self.head
    }
}

/// A signed statement: "the trail's first `seq` records end in the record whose hash is
/// `head`". The writer makes one per group commit; `seq` is both the last covered record and
/// the number of records covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub head: [u8; 32],
    /// When it was signed, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// ed25519 over [`checkpoint_message`].
    pub signature: [u8; 64],
}

/// What a checkpoint's signature covers: `"weir-checkpoint-v1\0" ‖ seq ‖ head ‖ ts_us`,
/// integers big-endian (seq u64, ts_us i64).
pub fn checkpoint_message(seq: u64, head: &[u8; 32], ts_us: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 8 + 32 + 8);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(&ts_us.to_be_bytes());
    m
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no randomness for a new signing key: {0}")]
    Random(String),
    #[error("signing key file: expected one line of 64 hex digits (the ed25519 seed)")]
    Format,
    #[error("public key: expected 64 hex digits (an ed25519 public key)")]
    PublicFormat,
}

/// Signs checkpoints (ed25519). Its `Debug` does not show the key.
///
/// Key file format ([`key_to_file_text`]): the 32-byte ed25519 seed as 64 lowercase hex
/// digits and a newline; reading accepts either case and ignores surrounding whitespace.
/// The file must be private (the store creates it with mode 0600).
pub struct Signer {
    key: SigningKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A new random key, from the operating system's generator.
    pub fn generate() -> Result<Signer, KeyError> {
        let mut seed = [0u8; 32];
        let filled = getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()));
        let signer = filled.map(|()| Signer::from_bytes(&seed));
        seed.zeroize();
        signer
    }

    /// The key whose ed25519 seed is `seed`.
    pub fn from_bytes(seed: &[u8; 32]) -> Signer {
        Signer {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The key auditors verify with.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// [`Signer::public_key`] as 64 hex digits (what `weir audit` exports).
    pub fn public_key_hex(&self) -> String {
        self.public_key().to_hex()
    }

    /// Signs "the first `seq` records end in `head`", at time `ts_us`.
    pub fn sign_checkpoint(&self, seq: u64, head: [u8; 32], ts_us: i64) -> Checkpoint {
        let signature = self.key.sign(&checkpoint_message(seq, &head, ts_us));
        Checkpoint {
            seq,
            head,
            ts_us,
            signature: signature.to_bytes(),
        }
    }
}

/// Reads a key file's text (see [`Signer`] for the format).
pub fn key_from_file_text(text: &str) -> Result<Signer, KeyError> {
    let mut bytes = hex::decode(text.trim()).map_err(|_| KeyError::Format)?;
    let signer = <&[u8; 32]>::try_from(bytes.as_slice())
        .map(Signer::from_bytes)
        .map_err(|_| KeyError::Format);
    bytes.zeroize();
    signer
}

/// The key file's text for `signer` (see [`Signer`] for the format).
pub fn key_to_file_text(signer: &Signer) -> String {
    let mut seed = signer.key.to_bytes();
    let text = format!("{}\n", hex::encode(seed));
    seed.zeroize();
    text
}

/// The key an auditor verifies checkpoints with. Exported and read as 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Reads 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<PublicKey, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::PublicFormat)?;
        let raw = <&[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::PublicFormat)?;
        VerifyingKey::from_bytes(raw)
            .map(PublicKey)
            .map_err(|_| KeyError::PublicFormat)
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// Whether `c` carries a valid signature by this key (strict ed25519 verification).
    pub fn verifies(&self, c: &Checkpoint) -> bool {
        self.0
            .verify_strict(
                &checkpoint_message(c.seq, &c.head, c.ts_us),
                &Signature::from_bytes(&c.signature),
            )
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The first thing wrong with a trail. Every variant names the first bad event
/// ([`VerifyError::first_bad_event`]) at the start of its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The record's hash is not the hash of its contents.
    #[error("event {seq}: hash does not match its contents (altered)")]
    Altered { seq: u64 },
    /// The record does not link to the one before: one of the two was altered (and re-hashed),
    /// or records were removed and the rest renumbered, or reordered.
    #[error(
        "event {seq}: does not link to event {} (one of them altered and re-hashed, or events removed or reordered)",
        seq.saturating_sub(1)
    )]
    Unlinked { seq: u64 },
    /// Records skip from `expected - 1` to `found`.
    #[error(
        "event {expected}: missing (removed or reordered): event {found} follows event {}",
        expected.saturating_sub(1)
    )]
    Missing { expected: u64, found: u64 },
    /// A record with a `seq` at or below one already seen.
    #[error("event {seq}: out of order after event {after} (reordered or duplicated)")]
    OutOfOrder { seq: u64, after: u64 },
    /// A checkpoint whose signature does not verify with the key.
    #[error(
        "checkpoint at event {seq}: signature does not verify (forged, altered, or signed with another key)"
    )]
    BadSignature { seq: u64 },
    /// A valid checkpoint disagrees with the chain at its `seq`: a record after the previous
    /// matching checkpoint (`from`) and up to `to` was altered and the chain re-hashed from
    /// there, or replaced.
    #[error(
        "event {from}: the chain up to event {to} does not match the signed checkpoint at event {to} (an event from {from} to {to} altered and re-hashed, removed or replaced)"
    )]
    Rewritten { from: u64, to: u64 },
    /// Two valid checkpoints disagree about the head at the same `seq`.
    #[error(
        "checkpoint at event {seq}: conflicts with another signed checkpoint at the same event"
    )]
    Conflicting { seq: u64 },
    /// A valid checkpoint covers records that are not there.
    #[error(
        "event {missing}: missing; the signed checkpoint at event {covers} covers events up to {covers} but the trail ends at event {} (tail truncated)",
        missing.saturating_sub(1)
    )]
    Truncated { missing: u64, covers: u64 },
    /// Records after the last valid checkpoint: Weir signs every batch it writes, so these
    /// were not written by Weir.
    #[error(
        "event {seq}: not covered by a signed checkpoint (appended by hand?); the last signed checkpoint is at event {covered}"
    )]
    Unsigned { seq: u64, covered: u64 },
    /// A checkpoint fed after records beyond it: checkpoints must come in `seq` order.
    #[error("checkpoint at event {seq}: out of order (after event {after})")]
    CheckpointOutOfOrder { seq: u64, after: u64 },
}

impl VerifyError {
    /// The sequence number of the first event the error is about.
    pub fn first_bad_event(&self) -> u64 {
        match *self {
            VerifyError::Altered { seq }
            | VerifyError::Unlinked { seq }
            | VerifyError::OutOfOrder { seq, .. }
            | VerifyError::BadSignature { seq }
            | VerifyError::Conflicting { seq }
            | VerifyError::Unsigned { seq, .. }
            | VerifyError::CheckpointOutOfOrder { seq, .. } => seq,
            VerifyError::Missing { expected, .. } => expected,
            VerifyError::Rewritten { from, .. } => from,
            VerifyError::Truncated { missing, .. } => missing,
        }
    }
}

/// What a trail that verified holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Events (= the last event's `seq`).
    pub events: u64,
    /// Valid checkpoints seen.
    pub checkpoints: u64,
}

/// Checks a trail in one pass.
///
/// Feed every record with [`Verifier::event`] in `seq` order, and every checkpoint with
/// [`Verifier::checkpoint`] in `seq` order, merged so that a checkpoint comes after the record
/// it covers and before the next one (or at any time *before* that record: a checkpoint ahead
/// of the records is held until its record arrives; memory grows only with checkpoints fed
/// ahead). Then [`Verifier::finish`]. The first error is final: stop feeding after it.
///
/// Memory is constant for a trail fed in merged order, whatever its length.
#[derive(Debug)]
pub struct Verifier {
    key: PublicKey,
    /// The last verified record.
    chain: Chain,
    /// The last record a valid checkpoint matched.
    covered: u64,
    checkpoints: u64,
    /// Valid checkpoints beyond the records seen so far: seq → head.
    ahead: BTreeMap<u64, [u8; 32]>,
}

impl Verifier {
    pub fn new(key: PublicKey) -> Verifier {
        Verifier {
            key,
            chain: Chain::new(),
            covered: 0,
            checkpoints: 0,
            ahead: BTreeMap::new(),
        }
    }

    /// Checks the next record.
    pub fn event(&mut self, r: &Record) -> Result<(), VerifyError> {
        let last = self.chain.last_seq();
        let expected = self.chain.next_seq();
        if r.seq <= last {
            return Err(VerifyError::OutOfOrder {
                seq: r.seq,
                after: last,
            });
        }
        if r.seq > expected {
            return Err(VerifyError::Missing {
                expected,
                found: r.seq,
            });
        }
        if !r.is_intact() {
            return Err(VerifyError::Altered { seq: r.seq });
        }
        if r.prev != self.chain.head() {
            return Err(VerifyError::Unlinked { seq: r.seq });
        }
        self.chain = Chain::resume(r.seq, r.hash);
        if let Some(head) = self.ahead.remove(&r.seq) {
            self.matched(r.seq, head)?;
        }
        Ok(())
    }

    /// Checks a checkpoint: its signature now, its head against the chain when the chain
    /// reaches its `seq`.
    pub fn checkpoint(&mut self, c: &Checkpoint) -> Result<(), VerifyError> {
        if !self.key.verifies(c) {
            return Err(VerifyError::BadSignature { seq: c.seq });
        }
        self.checkpoints = self.checkpoints.saturating_add(1);
        let last = self.chain.last_seq();
        if c.seq > last {
            match self.ahead.insert(c.seq, c.head) {
                Some(other) if other != c.head => Err(VerifyError::Conflicting { seq: c.seq }),
                _ => Ok(()),
            }
        } else if c.seq == last {
            self.matched(c.seq, c.head)
        } else {
            Err(VerifyError::CheckpointOutOfOrder {
                seq: c.seq,
                after: last,
            })
        }
    }

    /// A valid checkpoint at `seq` (the last verified record) says the head is `head`.
    fn matched(&mut self, seq: u64, head: [u8; 32]) -> Result<(), VerifyError> {
        if head == self.chain.head() {
            self.covered = seq;
            Ok(())
        } else if self.covered >= seq {
            // An earlier checkpoint at this very record matched: the key signed two heads.
            Err(VerifyError::Conflicting { seq })
        } else {
            Err(VerifyError::Rewritten {
                from: self.covered.saturating_add(1),
                to: seq,
            })
        }
    }

    /// Ends the trail: every record must be covered, and no checkpoint may cover more.
    pub fn finish(self) -> Result<Summary, VerifyError> {
        let last = self.chain.last_seq();
        if let Some((&covers, _)) = self.ahead.iter().next_back() {
            return Err(VerifyError::Truncated {
                missing: last.saturating_add(1),
                covers,
            });
        }
        if self.covered < last {
            return Err(VerifyError::Unsigned {
                seq: self.covered.saturating_add(1),
                covered: self.covered,
            });
        }
        Ok(Summary {
            events: last,
            checkpoints: self.checkpoints,
        })
    }
}

/// Verifies a whole trail from two streams, each in `seq` order: the records and the
/// checkpoints (as a store's two cursors or an export's two sections yield them). Merges them
/// for the [`Verifier`] in constant memory.
///
/// The outer `Err` is a read error of a stream (`E`); the inner result is the verdict.
pub fn verify_trail<E>(
    key: PublicKey,
    events: impl IntoIterator<Item = Result<Record, E>>,
    checkpoints: impl IntoIterator<Item = Result<Checkpoint, E>>,
) -> Result<Result<Summary, VerifyError>, E> {
    let mut v = Verifier::new(key);
    let mut checkpoints = checkpoints.into_iter();
    let mut next = checkpoints.next().transpose()?;
    for r in events {
        let r = r?;
        // Every checkpoint before this record: those at the previous record, and any out of
        // order (which the verifier names).
        while let Some(c) = next.take_if(|c| c.seq < r.seq) {
            if let Err(e) = v.checkpoint(&c) {
                return Ok(Err(e));
            }
            next = checkpoints.next().transpose()?;
        }
        if let Err(e) = v.event(&r) {
            return Ok(Err(e));
        }
    }
    while let Some(c) = next.take() {
        if let Err(e) = v.checkpoint(&c) {
            return Ok(Err(e));
        }
        next = checkpoints.next().transpose()?;
    }
    Ok(v.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// A trail of `n` records with a checkpoint every `every` records and at the end, as the
    /// writer makes it (one checkpoint per batch).
    fn trail(signer: &Signer, n: u64, every: u64) -> (Vec<Record>, Vec<Checkpoint>) {
        let mut chain = Chain::new();
        let mut records = Vec::new();
        let mut cps = Vec::new();
        for i in 1..=n {
            records.push(chain.seal(i as i64 * 10, format!("{{\"event\":\"e{i}\"}}")));
            if i % every == 0 || i == n {
                cps.push(signer.sign_checkpoint(i, chain.head(), i as i64 * 10));
            }
        }
        (records, cps)
    }

    fn verify(
        key: &PublicKey,
        records: &[Record],
        cps: &[Checkpoint],
    ) -> Result<Summary, VerifyError> {
        verify_trail::<Infallible>(
            key.clone(),
            records.iter().cloned().map(Ok),
            cps.iter().cloned().map(Ok),
        )
        .unwrap()
    }

    /// 10 records, checkpoints at 3, 6, 9 and 10.
    fn setup() -> (PublicKey, Vec<Record>, Vec<Checkpoint>) {
        let signer = Signer::from_bytes(&[7; 32]);
        let (r, c) = trail(&signer, 10, 3);
        (signer.public_key(), r, c)
    }

    #[test]
    fn an_intact_trail_verifies() {
        let (key, r, c) = setup();
        assert_eq!(
            verify(&key, &r, &c),
            Ok(Summary {
                events: 10,
                checkpoints: 4
            })
        );
        assert_eq!(
            verify(&key, &[], &[]),
            Ok(Summary {
                events: 0,
                checkpoints: 0
            })
        );
    }

    #[test]
    fn the_hash_covers_every_field_and_is_unambiguous() {
        let h = record_hash(1, 2, &[3; 32], "x");
        assert_ne!(h, record_hash(2, 2, &[3; 32], "x"));
        assert_ne!(h, record_hash(1, 3, &[3; 32], "x"));
        assert_ne!(h, record_hash(1, 2, &[4; 32], "x"));
        assert_ne!(h, record_hash(1, 2, &[3; 32], "y"));
        // Known answer: a format change must be deliberate.
        assert_eq!(
            hex::encode(record_hash(1, 0, &GENESIS, "{}")),
            hex::encode({
                let mut s = Sha256::new();
                s.update(b"weir-audit-v1\0");
                s.update(1u64.to_be_bytes());
                s.update(0i64.to_be_bytes());
                s.update([0u8; 32]);
                s.update(2u64.to_be_bytes());
                s.update(b"{}");
                <[u8; 32]>::from(s.finalize())
            })
        );
    }

    #[test]
    fn an_altered_body_is_named() {
        let (key, mut r, c) = setup();
        r[4].body = "{\"event\":\"nothing to see\"}".into();
        let err = verify(&key, &r, &c).unwrap_err();
        assert_eq!(err, VerifyError::Altered { seq: 5 });
        assert_eq!(
            err.to_string(),
            "event 5: hash does not match its contents (altered)"
        );
        assert_eq!(err.first_bad_event(), 5);
    }

    #[test]
    fn an_altered_timestamp_is_named() {
        let (key, mut r, c) = setup();
        r[1].ts_us += 1;
        assert_eq!(verify(&key, &r, &c), Err(VerifyError::Altered { seq: 2 }));
    }

    #[test]
    fn an_altered_and_rehashed_event_breaks_the_link_to_the_next() {
        let (key, mut r, c) = setup();
        r[4].body = "{}".into();
        r[4].hash = record_hash(5, r[4].ts_us, &r[4].prev, &r[4].body);
        assert_eq!(verify(&key, &r, &c), Err(VerifyError::Unlinked { seq: 6 }));
    }

    #[test]
    fn a_rewritten_chain_is_caught_by_the_next_checkpoint() {
        let (key, r, c) = setup();
        // Alter event 5 and re-hash everything after it: only the checkpoints can tell.
        let mut chain = Chain::resume(4, r[3].hash);
        let forged: Vec<Record> = r[..4]
            .iter()
            .cloned()
            .chain(
                r[4..]
                    .iter()
                    .map(|x| chain.seal(x.ts_us, x.body.replace('e', "E"))),
            )
            .collect();
        let err = verify(&key, &forged, &c).unwrap_err();
        // Checkpoint 3 still matched, checkpoint 6 does not: the change is in 4..=6.
        assert_eq!(err, VerifyError::Rewritten { from: 4, to: 6 });
        assert!(err.to_string().starts_with("event 4: "), "{err}");
    }

    #[test]
    fn a_removed_event_is_named() {
        let (key, mut r, c) = setup();
        r.remove(3);
        let err = verify(&key, &r, &c).unwrap_err();
        assert_eq!(
            err,
            VerifyError::Missing {
                expected: 4,
                found: 5
            }
        );
        assert_eq!(
            err.to_string(),
            "event 4: missing (removed or reordered): event 5 follows event 3"
        );
    }

    #[test]
    fn a_removed_event_with_the_rest_renumbered_is_named() {
        let (key, r, c) = setup();
        // Drop event 4 and shift 5.. down by one, keeping their hashes.
        let mut shifted: Vec<Record> = r[..3].to_vec();
        shifted.extend(r[4..].iter().map(|x| Record {
            seq: x.seq - 1,
            ..x.clone()
        }));
        assert_eq!(
            verify(&key, &shifted, &c),
            Err(VerifyError::Altered { seq: 4 })
        );
    }

    #[test]
    fn reordered_events_are_named() {
        let (key, mut r, c) = setup();
        // Rows exchanged in the stream (an export's lines swapped).
        r.swap(2, 3);
        assert_eq!(
            verify(&key, &r, &c),
            Err(VerifyError::Missing {
                expected: 3,
                found: 4
            })
        );
        // Contents exchanged, each row keeping its position (a table's rows edited).
        let (key, mut r, c) = setup();
        let (a, b) = (r[2].clone(), r[3].clone());
        r[2] = Record { seq: 3, ..b };
        r[3] = Record { seq: 4, ..a };
        assert_eq!(verify(&key, &r, &c), Err(VerifyError::Altered { seq: 3 }));
        // A duplicated row.
        let (key, mut r, c) = setup();
        r.insert(5, r[4].clone());
        assert_eq!(
            verify(&key, &r, &c),
            Err(VerifyError::OutOfOrder { seq: 5, after: 5 })
        );
    }

    #[test]
    fn an_event_appended_by_hand_is_named() {
        let (key, mut r, c) = setup();
        let mut chain = Chain::resume(10, r[9].hash);
        r.push(chain.seal(999, "{\"event\":\"forged\"}".into()));
        r.push(chain.seal(1000, "{\"event\":\"forged\"}".into()));
        let err = verify(&key, &r, &c).unwrap_err();
        assert_eq!(
            err,
            VerifyError::Unsigned {
                seq: 11,
                covered: 10
            }
        );
        assert_eq!(
            err.to_string(),
            "event 11: not covered by a signed checkpoint (appended by hand?); the last signed checkpoint is at event 10"
        );
    }

    #[test]
    fn a_forged_checkpoint_is_named() {
        let (key, mut r, mut c) = setup();
        let mut chain = Chain::resume(10, r[9].hash);
        r.push(chain.seal(999, "{\"event\":\"forged\"}".into()));
        // Signed with another key.
        c.push(Signer::from_bytes(&[9; 32]).sign_checkpoint(11, chain.head(), 999));
        assert_eq!(
            verify(&key, &r, &c),
            Err(VerifyError::BadSignature { seq: 11 })
        );
        // A genuine checkpoint with its count raised.
        let (key, r, mut c) = setup();
        c[3].seq = 11;
        assert_eq!(
            verify(&key, &r, &c),
            Err(VerifyError::BadSignature { seq: 11 })
        );
        // …or its head replaced.
        let (key, r, mut c) = setup();
        c[1].head = r[6].hash;
        assert_eq!(
            verify(&key, &r, &c),
            Err(VerifyError::BadSignature { seq: 6 })
        );
    }

    #[test]
    fn a_truncated_tail_is_named() {
        let (key, mut r, c) = setup();
        r.truncate(7);
        let err = verify(&key, &r, &c).unwrap_err();
        assert_eq!(
            err,
            VerifyError::Truncated {
                missing: 8,
                covers: 10
            }
        );
        assert_eq!(
            err.to_string(),
            "event 8: missing; the signed checkpoint at event 10 covers events up to 10 but the trail ends at event 7 (tail truncated)"
        );
        // Everything gone but the checkpoints.
        let (key, _, c) = setup();
        assert_eq!(
            verify(&key, &[], &c),
            Err(VerifyError::Truncated {
                missing: 1,
                covers: 10
            })
        );
    }

    #[test]
    fn a_tail_cut_at_a_checkpoint_is_found_with_a_checkpoint_kept_elsewhere() {
        let (key, r, c) = setup();
        // Events 7.. and their checkpoints removed: on its own, a valid shorter trail…
        assert!(verify(&key, &r[..6], &c[..2]).is_ok());
        // …but not against the last checkpoint an auditor kept.
        let mut v = Verifier::new(key);
        v.checkpoint(&c[3]).unwrap();
        for x in &r[..6] {
            v.event(x).unwrap();
        }
        assert_eq!(
            v.finish(),
            Err(VerifyError::Truncated {
                missing: 7,
                covers: 10
            })
        );
    }

    #[test]
    fn checkpoints_fed_ahead_are_checked_when_their_event_arrives() {
        let (key, r, c) = setup();
        let mut v = Verifier::new(key.clone());
        for cp in &c {
            v.checkpoint(cp).unwrap();
        }
        for x in &r {
            v.event(x).unwrap();
        }
        assert_eq!(v.finish().unwrap().checkpoints, 4);

        let (_, mut r2, _) = setup();
        r2[7].body = "{}".into();
        r2[7].hash = record_hash(8, r2[7].ts_us, &r2[7].prev, &r2[7].body);
        let mut chain = Chain::resume(8, r2[7].hash);
        for x in r2.iter_mut().skip(8) {
            *x = chain.seal(x.ts_us, x.body.clone());
        }
        let mut v = Verifier::new(key);
        for cp in &c {
            v.checkpoint(cp).unwrap();
        }
        let err = r2.iter().try_for_each(|x| v.event(x)).unwrap_err();
        assert_eq!(err, VerifyError::Rewritten { from: 7, to: 9 });
    }

    #[test]
    fn checkpoints_out_of_order_are_named() {
        let (key, r, mut c) = setup();
        c.swap(0, 1);
        assert_eq!(
            verify(&key, &r, &c),
            Err(VerifyError::CheckpointOutOfOrder { seq: 3, after: 6 })
        );
    }

    #[test]
    fn keys_round_trip_through_their_text() {
        let s = Signer::generate().unwrap();
        let text = key_to_file_text(&s);
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        let again = key_from_file_text(&format!("  {}  ", text.to_uppercase())).unwrap();
        assert_eq!(s.public_key(), again.public_key());
        let pk = PublicKey::from_hex(&s.public_key_hex()).unwrap();
        assert!(pk.verifies(&s.sign_checkpoint(1, [1; 32], 5)));
        assert_eq!(pk.to_string(), s.public_key_hex());
        assert_eq!(key_from_file_text("nothex").unwrap_err(), KeyError::Format);
        assert_eq!(key_from_file_text("abcd").unwrap_err(), KeyError::Format);
        assert!(PublicKey::from_hex("00").is_err());
        // Debug shows the public key only.
        let seed_hex = text.trim();
        assert!(!format!("{s:?}").contains(seed_hex));
        assert_ne!(
            Signer::generate().unwrap().public_key(),
            s.public_key(),
            "two generated keys are different"
        );
    }
}
