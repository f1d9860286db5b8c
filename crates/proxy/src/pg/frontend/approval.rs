//! The approval wait as a PostgreSQL client sees it: the pipeline asks and follows the
//! request ([`pipeline::approval`]); this shows the wait as a NOTICE, reads the client's
//! bytes meanwhile (a client that leaves or cancels withdraws the request), and forwards
//! the request or its refusal.

use super::*;
use crate::pipeline::approval::{self, Ask};

/// What ended a wait early.
enum Interrupt {
    /// A cancel request for this session.
    Cancelled,
    /// The client closed the connection.
    Left,
}

impl FrontendHalf<'_> {
    /// A request that needs approval: forwarded at once (an earlier approval or policy
    /// covers it), held for approvers (`self.held`), or refused.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn approval_or_refusal(
        &mut self,
        id: u64,
        items: Vec<Item>,
        next_scope: Option<Scope>,
        end: BatchEnd,
        rule: &str,
        reason: &str,
        rows: Option<u64>,
        out: &mut BytesMut,
    ) -> Result<(), Fatal> {
        let cancels_before = self.ctx.cancel.count();
        match approval::ask(&self.ctx.info, id, &items, rule, reason, rows).await {
            Ask::Go => self.forward(id, &items, next_scope, out, None).await,
            Ask::Wait(waiting) => {
                self.held = Some(Held {
                    request: id,
                    items,
                    next_scope,
                    end,
                    waiting,
                    cancels_before,
                });
                Ok(())
            }
            Ask::Refuse(refusal) => self.refuse(out, &refusal, end).await,
        }
    }

    /// Waits for the held request's outcome, then forwards it or its refusal. Meanwhile the
    /// client's bytes are read (and kept) so that a client that goes away is noticed, and a
    /// cancel request withdraws the wait. Returns false when the client went away.
    pub(super) async fn wait_for_approval<R: AsyncRead + Unpin>(
        &mut self,
        held: Held,
        cr: &mut R,
        out: &mut BytesMut,
    ) -> Result<bool, Fatal> {
        let ctx = self.ctx;
        self.inbox.tell_client(
            Backend::notice(
                Fields::new("NOTICE", "00000", &held.waiting.notice())
                    .with(b'H', &held.waiting.hint()),
            )
            .freeze(),
        );
        let max = ctx.shared.config.gateway.max_message_size;
        let buf = &mut self.buf;
        let interrupt = async {
            tokio::select! {
                () = ctx.cancel.fired_since(held.cancels_before) => Interrupt::Cancelled,
                () = client_gone(cr, buf, max) => Interrupt::Left,
            }
        };
        let (outcome, why) = approval::wait(&ctx.info, &held.waiting, interrupt).await;
        let concluded = approval::conclude(&ctx.info, &held.waiting, &outcome).await;
        if matches!(why, Some(Interrupt::Left)) {
            return Ok(false);
        }
        match concluded {
            Ok(()) => {
                self.forward(held.request, &held.items, held.next_scope, out, None)
                    .await?
            }
            Err(refusal) => self.refuse(out, &refusal, held.end).await?,
        }
        Ok(true)
    }
}

/// Reads the client's bytes into `buf` (kept for after the wait) until it closes the
/// connection; stops reading, without returning, once `buf` holds more than `max`.
async fn client_gone<R: AsyncRead + Unpin>(cr: &mut R, buf: &mut BytesMut, max: usize) {
    loop {
        if buf.len() > max {
            std::future::pending::<()>().await;
        }
        match read_more(cr, buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
