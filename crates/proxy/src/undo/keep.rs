//! Keeping an image: sealing it (`Sealer`), committing it to the store (`ImageWriter`),
//! recording its `before_image` event (`keep`), and purging it after retention.

use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::{Digest, Sha256};

use super::{CaptureSpec, Image, Outcome};

/// Seals and opens before-images: AES-256-GCM, a fresh random nonce per image, the change id
/// and target as associated data (a ciphertext moved to another change does not open).
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

fn aad(change: &str, target: &str) -> Vec<u8> {
    format!("weir before-image v1\0{change}\0{target}").into_bytes()
}

impl Sealer {
    /// The key in `[audit] before_image_key_file`, made (0600) if missing.
    pub fn open(config: &weir_config::Config) -> Result<Sealer, String> {
        let path = &config.audit.before_image_key_file;
        let key =
            weir_store::audit::load_or_create_secret(path, 32, "[audit] before_image_key_file")
                .map_err(|e| format!("[audit] before_image_key_file {}: {e}", path.display()))?;
        Sealer::from_key(&key)
    }

    pub fn from_key(key: &[u8]) -> Result<Sealer, String> {
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| "a bad AES-256 key")?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
        })
    }

    /// (nonce, ciphertext with tag).
    pub fn seal(
        &self,
        change: &str,
        target: &str,
        plain: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(change, target)),
                &mut data,
            )
            .map_err(|_| "sealing failed".to_owned())?;
        Ok((nonce.to_vec(), data))
    }

    pub fn unseal(
        &self,
        change: &str,
        target: &str,
        nonce: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, String> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "a bad nonce")?;
        let mut data = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(change, target)), &mut data)
            .map_err(|_| {
                "the before-image does not open with this key (another key, or it was altered)"
                    .to_owned()
            })?;
        Ok(plain.to_vec())
    }
}

/// The hex SHA-256 the `before_image` event carries: of the nonce and the ciphertext.
pub fn sealed_digest(nonce: &[u8], sealed: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(nonce);
    h.update(sealed);
    hex::encode(h.finalize())
}

/// What keeping an image needs of its session, owned (a keep in the client's transaction
/// runs beside the session's next statements).
pub(crate) struct Keeper {
    shared: Arc<crate::Shared>,
    session: u64,
    identity: String,
    target: Arc<str>,
}

impl Keeper {
    pub fn of(s: &crate::pipeline::SessionInfo) -> Keeper {
        Keeper {
            shared: Arc::clone(&s.shared),
            session: s.session,
            identity: s.identity.name.clone(),
            target: Arc::clone(&s.target_name),
        }
    }
}

/// Seals and stores a write's image, then records its `before_image` event (with `durable`,
/// waiting until it is: before Weir's own COMMIT). In the client's transaction the session
/// runs this beside its next statements and waits for it before anything that may end the
/// transaction (`FrontendHalf::settle_images`), so the event is in the trail before the
/// COMMIT's, which waits for both. A failure makes the change not undoable (the event says
/// why); the write itself has already been decided and recorded.
pub(crate) async fn keep(
    s: Keeper,
    request: u64,
    spec: Arc<CaptureSpec>,
    outcome: Outcome,
    durable: bool,
) {
    let shared = &s.shared;
    let (rows, bytes, digest, reason) = match outcome {
        Outcome::NotKept(why) => (0, 0, None, Some(why)),
        Outcome::Kept(rows) => {
            let image = Image {
                kind: spec.plan.kind.as_str().into(),
                table: spec.table.clone(),
                key: spec.key.clone(),
                sensitive: spec.sensitive.clone(),
                rows,
            };
            let n = image.rows.len() as u64;
            match store_image(&s, &spec, &image).await {
                Ok((bytes, digest)) => (n, bytes, Some(digest), None),
                Err(e) => {
                    tracing::warn!(cause = %e, "a before-image could not be kept; the change is not undoable");
                    (
                        n,
                        0,
                        None,
                        Some(format!("the before-image could not be stored: {e}")),
                    )
                }
            }
        }
    };
    let event = weir_audit::Event::BeforeImage {
        change: spec.change.to_string(),
        session: s.session,
        request,
        identity: s.identity.clone(),
        target: s.target.to_string(),
        table: spec.table.clone(),
        key: spec.key.clone(),
        rows,
        bytes,
        undoable: digest.is_some(),
        sha256: digest,
        reason: reason.map(|r| format!("not undoable: {r}")),
    };
    if !durable {
        // Rides with the next event someone waits for (the COMMIT's at the latest): no
        // flush of its own.
        shared.audit.append_lazy(event);
        return;
    }
    if let Err(e) = shared.audit.append(event).wait().await {
        tracing::warn!(cause = %e, "a before-image event could not be recorded");
    }
}

async fn store_image(
    s: &Keeper,
    spec: &CaptureSpec,
    image: &Image,
) -> Result<(u64, String), String> {
    let sealer = s
        .shared
        .sealer
        .as_ref()
        .ok_or("no before-image key is loaded")?;
    let plain = serde_json::to_vec(image).map_err(|e| e.to_string())?;
    let (nonce, sealed) = sealer.seal(&spec.change, &s.target, &plain)?;
    let digest = sealed_digest(&nonce, &sealed);
    let bytes = sealed.len() as u64;
    let record = weir_store::BeforeImage {
        change: spec.change.to_string(),
        target: s.target.to_string(),
        table: spec.table.clone(),
        rows: image.rows.len() as u64,
        created_ms: s.shared.approvals.clock().now_ms(),
        sealed: Some((nonce, sealed)),
        purged_ms: None,
        undone_by: None,
    };
    let writer = s
        .shared
        .image_writer
        .as_ref()
        .ok_or("no before-image writer is running")?;
    writer.put(record).await?;
    Ok((bytes, digest))
}

/// Keeps sealed images in the store with group commit: one thread takes whatever images
/// queued while it committed the last batch and commits them in one transaction (one fsync),
/// then answers each session. Under load many writes share a commit, as the trail's do.
pub struct ImageWriter {
    tx: std::sync::Mutex<std::sync::mpsc::Sender<ImageJob>>,
}

/// An image to keep, and where its commit is answered.
type ImageJob = (
    weir_store::BeforeImage,
    tokio::sync::oneshot::Sender<Result<(), String>>,
);

/// Most images one batch commits.
const MAX_IMAGE_BATCH: usize = 256;

impl ImageWriter {
    pub fn start(store: Arc<dyn weir_store::Store>) -> Result<ImageWriter, String> {
        let (tx, rx) = std::sync::mpsc::channel::<ImageJob>();
        std::thread::Builder::new()
            .name("weir-images".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_IMAGE_BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let (images, acks): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let result = store.put_before_images(&images).map_err(|e| e.to_string());
                    for ack in acks {
                        let _ = ack.send(result.clone());
                    }
                }
            })
            .map_err(|e| format!("cannot start the before-image writer: {e}"))?;
        Ok(ImageWriter {
            tx: std::sync::Mutex::new(tx),
        })
    }

    /// Keeps one image; answers once it is committed.
    pub async fn put(&self, image: weir_store::BeforeImage) -> Result<(), String> {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send((image, ack))
            .map_err(|_| "the before-image writer stopped".to_owned())?;
        done.await
            .unwrap_or_else(|_| Err("the before-image writer stopped".into()))
    }
}

/// Purges the images past retention, and records the purge. Returns how many.
pub fn purge(
    store: &dyn weir_store::Store,
    audit: &dyn crate::audit::AuditSink,
    config: &weir_config::Config,
    now_ms: u64,
) -> Result<usize, String> {
    let keep = u64::try_from(config.audit.before_image_retention.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now_ms.saturating_sub(keep);
    let changes = store
        .purge_before_images(cutoff, now_ms)
        .map_err(|e| e.to_string())?;
    if changes.is_empty() {
        return Ok(0);
    }
    let n = changes.len();
    audit
        .append(weir_audit::Event::BeforeImagesPurged {
            changes,
            older_than_ms: cutoff,
        })
        .wait_blocking()
        .map_err(|e| e.to_string())?;
    Ok(n)
}
