//! The trail's journal: where a batch of audit records becomes durable.
//!
//! A SQLite commit writes every page a batch touches (the table, four indexes, the
//! checkpoints) and fsyncs, which on this class of disk costs about three times a plain
//! flush. The journal makes a batch durable with one `pwrite` and one `fdatasync` into a
//! pre-zeroed segment file (no size or extent change, so the flush writes the data and
//! nothing else); the SQLite tables become the *index*, filled behind it in large
//! transactions ([`crate::audit::AuditStore::index_journal`]) and read by search, export,
//! replay, tail and verify.
//!
//! **Layout.** A directory beside the store's file, named after it with `-trail` appended
//! (`weir.db` → `weir.db-trail/`), mode 0700, holding `lock` (an advisory lock every
//! appender holds while it appends), segment files `000000000001.seg`, `…2.seg`, … (1 MiB
//! for the first, doubling up to 32 MiB) and at most one `…N.spare` (the next segment,
//! pre-zeroed ahead of time). A segment is a sequence of
//! frames: `"WJ1\0"`, payload length (u32 LE), the first 8 bytes of the payload's SHA-256,
//! then the payload (one batch: its records and the checkpoint signed over the last). A
//! frame `"WJN\0"` says the trail continues in the next segment. Zeros end the data.
//!
//! **Invariant:** frames are appended under the lock, each continuing the chain's head
//! (refused otherwise, as the SQLite store refuses), and a batch is acknowledged only after
//! its frame's `fdatasync`. A torn frame (a crash mid-write) fails its checksum and ends the
//! data; the next append overwrites it. After a failed write or flush of a frame, that
//! appender appends nothing more until it is opened again (fail closed: the kernel may have
//! dropped the failed pages, and no later frame may sit behind a hole). Segments are removed
//! only once every record in them
//! is in the index ([`Journal::remove_indexed`]), and never the last one.
//!
//! Several processes may append (the gateway, `weir mcp`, the CLI recording an
//! administrative action): each follows the others' frames before it appends.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use weir_audit::chain::{self, Checkpoint, Record};

use crate::StoreError;

mod frame;
pub use frame::decode_segment;
use frame::{encode, read_slot, Slot, HEADER, NEXT};

/// Bytes of the largest segments. Large enough that making one (written with zeros and
/// flushed, ahead of time when possible) is rare; a batch larger than this gets a segment
/// of its own size.
pub const SEGMENT_BYTES: u64 = 32 << 20;

/// Bytes of segment `ordinal`: 1 MiB for the first, doubling up to [`SEGMENT_BYTES`], so a
/// trail that records little (a demo, a test, a quiet gateway) never zeroes much.
fn segment_bytes(ordinal: u64) -> u64 {
    // 1 MiB << 5 is SEGMENT_BYTES.
    let doublings = ordinal.saturating_sub(1).min(5);
    ((1u64 << 20) << doublings).min(SEGMENT_BYTES)
}

/// The journal directory of the store file at `store`.
pub fn dir_for(store: &Path) -> PathBuf {
    let mut name = store
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push("-trail");
    store.with_file_name(name)
}

fn segment_path(dir: &Path, ordinal: u64) -> PathBuf {
    dir.join(format!("{ordinal:012}.seg"))
}

/// The segments in `dir`, by ordinal.
fn segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_error("listing the trail's journal", dir, &e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error("listing the trail's journal", dir, &e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(n) = stem.parse::<u64>() {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn io_error(what: &str, path: &Path, e: &io::Error) -> StoreError {
    StoreError::Io(io::Error::new(
        e.kind(),
        format!("{what} ({}): {e}", path.display()),
    ))
}

fn open_segment(dir: &Path, ordinal: u64) -> Result<Option<(File, u64)>, StoreError> {
    let path = segment_path(dir, ordinal);
    match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => {
            let size = f
                .metadata()
                .map_err(|e| io_error("reading the trail's journal", &path, &e))?
                .len();
            Ok(Some((f, size)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("opening the trail's journal", &path, &e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("flushing the trail's journal directory", dir, &e))
}

/// Writes a zero-filled file of `size` bytes at `path` and flushes it.
fn zeroed(path: &Path, size: u64) -> Result<(), StoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error("making a journal segment", path, &e))?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(chunk.get(..n).unwrap_or(&[]))
            .map_err(|e| io_error("making a journal segment", path, &e))?;
        left -= n as u64;
    }
    f.sync_all()
        .map_err(|e| io_error("making a journal segment", path, &e))
}

/// Where the segment made ahead of time for `ordinal` waits.
fn spare_path(dir: &Path, ordinal: u64) -> PathBuf {
    dir.join(format!("{ordinal:012}.spare"))
}

/// Makes the next segment ahead of time if it is not there yet (and drops older spares).
/// Run away from the appender's path, so a new segment rarely costs an append the zeroing.
pub fn prepare_spare(dir: &Path) -> Result<(), StoreError> {
    let Some(&last) = segments(dir)?.last() else {
        return Ok(());
    };
    let next = last + 1;
    let spare = spare_path(dir, next);
    if spare.exists() {
        return Ok(());
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".spare"))
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let tmp = dir.join(format!("{next:012}.{}.tmp", std::process::id()));
    zeroed(&tmp, segment_bytes(next))?;
    fs::rename(&tmp, &spare).map_err(|e| io_error("making a journal segment", &spare, &e))
}

/// The chain's last record: its `seq` and hash.
type Head = (u64, [u8; 32]);

/// The segment appends go to.
struct Tail {
    ordinal: u64,
    file: File,
    size: u64,
    /// Where its data ends.
    end: u64,
}

/// An appender. See the module documentation.
pub struct Journal {
    lock: File,
    inner: Inner,
}

/// What an appender knows, changed only under the lock.
struct Inner {
    dir: PathBuf,
    tail: Tail,
    head: Option<Head>,
    /// A write or flush failed. After a failed `fdatasync` the kernel may have dropped the
    /// dirty pages, so what follows could sit behind a hole on disk: nothing more is appended
    /// through this journal (every batch fails, the statements do not run) until the process
    /// opens it again and finds where the durable data really ends.
    broken: Option<String>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.inner.dir)
            .field("head", &self.inner.head.map(|h| h.0))
            .finish_non_exhaustive()
    }
}

/// Holds the journal's lock while alive.
struct Locked<'a>(&'a File);

/// How long an appender waits for another to release the lock before the batch fails (as
/// the SQLite store's busy timeout).
const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl<'a> Locked<'a> {
    fn take(lock: &'a File, dir: &Path) -> Result<Locked<'a>, StoreError> {
        let deadline = std::time::Instant::now() + LOCK_TIMEOUT;
        let mut pause = std::time::Duration::from_micros(20);
        loop {
            match lock.try_lock() {
                Ok(()) => return Ok(Locked(lock)),
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(1));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(io_error(
                        "locking the trail's journal",
                        dir,
                        &io::Error::new(
                            io::ErrorKind::TimedOut,
                            "another process held it for 10 s",
                        ),
                    ))
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(io_error("locking the trail's journal", dir, &e))
                }
            }
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir`. `index_head` is the head of the index: where
    /// the journal continues when it holds nothing later (a new journal beside an existing
    /// trail).
    pub fn open(dir: &Path, index_head: Option<Head>) -> Result<Journal, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error("making the trail's journal", dir, &e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| io_error("opening the trail's journal lock", &lock_path, &e))?;
        let locked = Locked::take(&lock, dir)?;
        let (tail, head) = Journal::scan(dir)?;
        drop(locked);
        let head = match (head, index_head) {
            (Some(j), Some(i)) if i.0 > j.0 => Some(i),
            (None, i) => i,
            (j, _) => j,
        };
        Ok(Journal {
            lock,
            inner: Inner {
                dir: dir.to_owned(),
                tail,
                head,
                broken: None,
            },
        })
    }

    /// The last segment and the journal's head (the last record of the last segment that
    /// holds any). Makes the first segment of an empty journal.
    fn scan(dir: &Path) -> Result<(Tail, Option<Head>), StoreError> {
        let all = segments(dir)?;
        let mut head = None;
        for &ordinal in all.iter().rev() {
            let Some((file, size)) = open_segment(dir, ordinal)? else {
                continue;
            };
            let mut at = 0;
            while let Slot::Frame(records, _, len) = read_slot(&file, size, at)? {
                if let Some(r) = records.last() {
                    head = Some((r.seq, r.hash));
                }
                at += len;
            }
            if head.is_some() {
                break;
            }
        }
        let tail = match all.last() {
            Some(&ordinal) => Journal::tail_at(dir, ordinal)?,
            None => Journal::create_segment(dir, 1, 0)?,
        };
        Ok((tail, head))
    }

    /// Segment `ordinal`, positioned at the end of its data.
    fn tail_at(dir: &Path, ordinal: u64) -> Result<Tail, StoreError> {
        let (file, size) = open_segment(dir, ordinal)?.ok_or_else(|| {
            io_error(
                "opening the trail's journal",
                &segment_path(dir, ordinal),
                &io::Error::from(io::ErrorKind::NotFound),
            )
        })?;
        let mut end = 0;
        while let Slot::Frame(_, _, len) = read_slot(&file, size, end)? {
            end += len;
        }
        Ok(Tail {
            ordinal,
            file,
            size,
            end,
        })
    }

    /// Makes segment `ordinal` from the spare when it is large enough, otherwise anew.
    fn create_segment(dir: &Path, ordinal: u64, at_least: u64) -> Result<Tail, StoreError> {
        let path = segment_path(dir, ordinal);
        let size = segment_bytes(ordinal);
        let from_spare = at_least <= size && fs::rename(spare_path(dir, ordinal), &path).is_ok();
        if !from_spare {
            let tmp = dir.join(format!("{ordinal:012}.{}.tmp", std::process::id()));
            zeroed(&tmp, at_least.max(size))?;
            fs::rename(&tmp, &path).map_err(|e| io_error("making a journal segment", &path, &e))?;
        }
        sync_dir(dir)?;
        Journal::tail_at(dir, ordinal)
    }

    /// The head of the chain: the last record appended by anyone.
    pub fn head(&mut self) -> Result<Option<Head>, StoreError> {
        let _locked = Locked::take(&self.lock, &self.inner.dir)?;
        self.inner.follow()?;
        Ok(self.inner.head)
    }

    /// Durably appends one batch (records continuing the head, and the checkpoint over the
    /// last of them): when this returns `Ok`, it survives a crash. Refused, with nothing
    /// written, when it does not continue the head.
    pub fn append(&mut self, records: &[Record], cp: &Checkpoint) -> Result<(), StoreError> {
        let _locked = Locked::take(&self.lock, &self.inner.dir)?;
        self.inner.follow()?;
        self.inner.append(records, cp)
    }
}

impl Inner {
    /// Follows what other appenders wrote since this one last looked. Under the lock.
    fn follow(&mut self) -> Result<(), StoreError> {
        loop {
            match read_slot(&self.tail.file, self.tail.size, self.tail.end)? {
                Slot::Frame(records, _, len) => {
                    if let Some(r) = records.last() {
                        self.head = Some((r.seq, r.hash));
                    }
                    self.tail.end += len;
                }
                Slot::Next => match open_segment(&self.dir, self.tail.ordinal + 1)? {
                    // Read from its start: its frames move the head.
                    Some((file, size)) => {
                        self.tail = Tail {
                            ordinal: self.tail.ordinal + 1,
                            file,
                            size,
                            end: 0,
                        }
                    }
                    None => {
                        // Removed meanwhile (fully indexed): start from what is there.
                        let (tail, head) = Journal::scan(&self.dir)?;
                        self.tail = tail;
                        if head.is_some_and(|h| self.head.is_none_or(|mine| h.0 > mine.0)) {
                            self.head = head;
                        }
                        return Ok(());
                    }
                },
                Slot::End => return Ok(()),
            }
        }
    }

    /// Appends under the lock, after [`Inner::follow`].
    fn append(&mut self, records: &[Record], cp: &Checkpoint) -> Result<(), StoreError> {
        if let Some(why) = &self.broken {
            return Err(StoreError::Io(io::Error::other(format!(
                "the trail's journal failed earlier ({why}); restart weir to append again"
            ))));
        }
        self.append_frame(records, cp)
    }

    fn append_frame(&mut self, records: &[Record], cp: &Checkpoint) -> Result<(), StoreError> {
        let (mut last, mut hash) = self.head.unwrap_or((0, chain::GENESIS));
        for r in records {
            if r.seq != last.saturating_add(1) || r.prev != hash {
                return Err(StoreError::Refused(format!(
                    "audit batch does not continue the trail: event {} after event {last}",
                    r.seq
                )));
            }
            (last, hash) = (r.seq, r.hash);
        }
        if cp.seq != last || cp.head != hash {
            return Err(StoreError::Refused(format!(
                "audit checkpoint at event {} does not cover the batch, which ends at event {last}",
                cp.seq
            )));
        }
        let frame = encode(records, cp);
        let len = frame.len() as u64;
        if self.tail.end + len + HEADER > self.tail.size {
            // Room for the continuation marker is always kept at the end.
            let mut next = [0u8; HEADER as usize];
            next[..4].copy_from_slice(NEXT);
            self.tail
                .file
                .write_all_at(&next, self.tail.end)
                .map_err(|e| io_error("writing the trail's journal", &self.dir, &e))?;
            self.tail = Journal::create_segment(&self.dir, self.tail.ordinal + 1, len + HEADER)?;
        }
        if let Err(e) = self
            .tail
            .file
            .write_all_at(&frame, self.tail.end)
            .and_then(|()| self.tail.file.sync_data())
        {
            self.broken = Some(e.to_string());
            return Err(io_error("writing the trail's journal", &self.dir, &e));
        }
        self.tail.end += len;
        self.head = Some((last, hash));
        Ok(())
    }
}

impl Journal {
    /// Removes every segment but the last whose records are all at or before `indexed`.
    pub fn remove_indexed(dir: &Path, indexed: u64) -> Result<(), StoreError> {
        let all = segments(dir)?;
        for &ordinal in all.iter().rev().skip(1).rev() {
            let Some((file, size)) = open_segment(dir, ordinal)? else {
                continue;
            };
            let mut at = 0;
            let mut last = 0;
            while let Slot::Frame(_, cp, len) = read_slot(&file, size, at)? {
                last = cp.seq;
                at += len;
            }
            if last > indexed {
                break;
            }
            let path = segment_path(dir, ordinal);
            fs::remove_file(&path)
                .map_err(|e| io_error("removing an indexed journal segment", &path, &e))?;
        }
        Ok(())
    }
}

/// Reads the journal's batches in order, resuming where it stopped.
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    ordinal: u64,
    at: u64,
}

impl Reader {
    pub fn new(dir: &Path) -> Reader {
        Reader {
            dir: dir.to_owned(),
            ordinal: 0,
            at: 0,
        }
    }

    /// Calls `f` with every batch after the last one read, in order. Only durable batches:
    /// they are read under the appenders' lock (a batch is written and flushed under it),
    /// in bounded slices, and `f` runs with the lock released.
    pub fn each(
        &mut self,
        f: &mut dyn FnMut(Vec<Record>, Checkpoint) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        loop {
            let slice = self.slice(16 << 20)?;
            if slice.is_empty() {
                return Ok(());
            }
            for (records, cp) in slice {
                f(records, cp)?;
            }
        }
    }

    /// Up to about `max` bytes of batches after the last one read, under the lock.
    fn slice(&mut self, max: u64) -> Result<Vec<(Vec<Record>, Checkpoint)>, StoreError> {
        let lock_path = self.dir.join("lock");
        let lock = match OpenOptions::new().read(true).write(true).open(&lock_path) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("opening the trail's journal lock", &lock_path, &e)),
        };
        let _locked = Locked::take(&lock, &self.dir)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        loop {
            let file = if self.ordinal == 0 {
                None
            } else {
                open_segment(&self.dir, self.ordinal)?
            };
            let Some((file, size)) = file else {
                // Not started, or the segment was removed (indexed): the first one after it.
                match segments(&self.dir)?.into_iter().find(|&o| o > self.ordinal) {
                    Some(o) => {
                        self.ordinal = o;
                        self.at = 0;
                        continue;
                    }
                    None => return Ok(out),
                }
            };
            loop {
                if bytes >= max {
                    return Ok(out);
                }
                match read_slot(&file, size, self.at)? {
                    Slot::Frame(records, cp, len) => {
                        out.push((records, cp));
                        self.at += len;
                        bytes += len;
                    }
                    Slot::Next => {
                        self.ordinal += 1;
                        self.at = 0;
                        break;
                    }
                    Slot::End => return Ok(out),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use weir_audit::chain::{Chain, Signer};

    fn batch(chain: &mut Chain, n: usize, size: usize) -> (Vec<Record>, Checkpoint) {
        let records: Vec<Record> = (0..n)
            .map(|i| chain.seal(1, format!("{i}{}", "x".repeat(size))))
            .collect();
        let cp = Signer::from_bytes(&[7; 32]).sign_checkpoint(chain.last_seq(), chain.head(), 1);
        (records, cp)
    }

    fn all(dir: &Path) -> Vec<u64> {
        let mut seqs = Vec::new();
        Reader::new(dir)
            .each(&mut |records, _| {
                seqs.extend(records.iter().map(|r| r.seq));
                Ok(())
            })
            .unwrap();
        seqs
    }

    #[test]
    fn batches_survive_reopening_and_a_torn_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("weir.db-trail");
        let mut chain = Chain::new();
        let mut j = Journal::open(&dir, None).unwrap();
        for _ in 0..3 {
            let (r, cp) = batch(&mut chain, 4, 10);
            j.append(&r, &cp).unwrap();
        }
        drop(j);
        // A crash mid-write: garbage where the next frame would go.
        let seg = segment_path(&dir, 1);
        let end = Journal::tail_at(&dir, 1).unwrap().end;
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(b"WJ1\0\x10\0\0\0garbage-garbage-garbage", end)
            .unwrap();
        let mut j = Journal::open(&dir, None).unwrap();
        assert_eq!(j.head().unwrap().map(|h| h.0), Some(12));
        let (r, cp) = batch(&mut chain, 2, 10);
        j.append(&r, &cp).unwrap();
        assert_eq!(all(&dir), (1..=14).collect::<Vec<_>>());
        // Not continuing the head: refused, nothing written.
        let (r, cp) = batch(&mut Chain::new(), 1, 1);
        assert!(matches!(j.append(&r, &cp), Err(StoreError::Refused(_))));
        assert_eq!(all(&dir).len(), 14);
    }

    #[test]
    fn two_appenders_follow_each_other_across_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t-trail");
        let mut a = Journal::open(&dir, None).unwrap();
        let mut b = Journal::open(&dir, None).unwrap();
        let mut chain = Chain::new();
        // Batches of ~1 MiB: segments of 1, 2, 4, 8 … MiB, so this crosses several.
        for i in 0..40 {
            let j = if i % 3 == 0 { &mut a } else { &mut b };
            let head = j.head().unwrap();
            assert_eq!(head.map(|h| h.0).unwrap_or(0), chain.last_seq());
            let (r, cp) = batch(&mut chain, 2, 512 << 10);
            j.append(&r, &cp).unwrap();
        }
        assert!(segments(&dir).unwrap().len() >= 2);
        assert_eq!(all(&dir), (1..=80).collect::<Vec<_>>());
        // Removing what is indexed keeps the last segment, and a reader resumes past it.
        Journal::remove_indexed(&dir, 80).unwrap();
        assert_eq!(segments(&dir).unwrap().len(), 1);
        let (r, cp) = batch(&mut chain, 1, 1);
        a.append(&r, &cp).unwrap();
        assert_eq!(all(&dir).last(), Some(&81));
    }

    #[test]
    fn the_tables_are_filled_from_the_journal_unless_changed_at_their_end() {
        use crate::audit::{AuditStore, AuditTrail};
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("weir.db");
        let dir = dir_for(&db);
        assert_eq!(dir, tmp.path().join("weir.db-trail"));
        let mut index = AuditStore::open(&db).unwrap();
        let mut j = Journal::open(&dir, None).unwrap();
        let mut chain = Chain::new();
        for _ in 0..3 {
            let (r, cp) = batch(&mut chain, 3, 10);
            j.append(&r, &cp).unwrap();
        }
        let mut reader = Reader::new(&dir);
        assert_eq!(index.index_journal(&mut reader).unwrap(), 9);
        assert_eq!(index.index_journal(&mut reader).unwrap(), 0);
        let key = Signer::from_bytes(&[7; 32]).public_key();
        assert!(index.verify(&key).unwrap().is_ok());
        let (r, cp) = batch(&mut chain, 2, 10);
        j.append(&r, &cp).unwrap();
        // A fresh reader (another process) skips what is indexed.
        assert_eq!(index.index_journal(&mut Reader::new(&dir)).unwrap(), 2);
        // The tail cut off by hand: not filled in again.
        index
            .connection()
            .execute("DELETE FROM audit_events WHERE seq > 9", [])
            .unwrap();
        assert!(matches!(
            index.index_journal(&mut Reader::new(&dir)),
            Err(StoreError::Refused(_))
        ));
    }

    #[test]
    fn a_segment_decodes_to_its_batches_up_to_the_first_bad_frame() {
        let mut chain = Chain::new();
        let (r1, c1) = batch(&mut chain, 2, 3);
        let (r2, c2) = batch(&mut chain, 1, 3);
        let mut bytes = encode(&r1, &c1);
        let second = encode(&r2, &c2);
        bytes.extend_from_slice(&second);
        assert_eq!(decode_segment(&bytes).len(), 2);
        // One flipped byte in the second frame's payload: only the first is read.
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(decode_segment(&bytes).len(), 1);
        assert!(decode_segment(&bytes[..10]).is_empty());
        assert!(decode_segment(&[]).is_empty());
    }

    #[test]
    fn segments_grow_from_one_mebibyte() {
        assert_eq!(segment_bytes(1), 1 << 20);
        assert_eq!(segment_bytes(2), 2 << 20);
        assert_eq!(segment_bytes(6), SEGMENT_BYTES);
        assert_eq!(segment_bytes(u64::MAX), SEGMENT_BYTES);
    }

    #[test]
    fn a_new_journal_continues_the_index() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t-trail");
        let mut chain = Chain::new();
        let _ = batch(&mut chain, 5, 1);
        let mut j = Journal::open(&dir, Some((chain.last_seq(), chain.head()))).unwrap();
        let (r, cp) = batch(&mut chain, 1, 1);
        j.append(&r, &cp).unwrap();
        assert_eq!(all(&dir), vec![6]);
    }
}
