//! Deciding a SQL text (the pipeline's decide stage), and refusing a fastpath call that
//! cannot be decided.

use super::*;

impl FrontendHalf<'_> {
    /// Analyze + decide one SQL text, through the pipeline's decide stage.
    pub(super) fn decide(&mut self, sql: &[u8]) -> Result<Arc<Decision>, Fatal> {
        let decision = self.decider.decide(&self.ctx.info, &self.ctx.end, sql);
        if self.ctx.info.channel != pipeline::Channel::Undo {
            return Ok(decision);
        }
        // `weir undo --apply`: each statement is also the action `undo`, and the stricter
        // verdict holds.
        let s = &self.ctx.info;
        let verdicts = decision
            .analysis
            .statements
            .iter()
            .zip(&decision.verdicts)
            .map(|(f, v)| {
                v.clone()
                    .stricter(s.shared.policy.decide_undo(&s.policy, f))
            })
            .collect();
        Ok(Arc::new(Decision {
            verdicts,
            ..Decision::clone(&decision)
        }))
    }

    /// Refuses a fastpath call, on record, as a denied request.
    pub(super) async fn refuse_function_call(
        &mut self,
        out: &mut BytesMut,
        sql: &str,
        reason: &str,
    ) -> Result<(), Fatal> {
        const RULE: &str = "weir.protocol.function_call";
        let id = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if let Err(refusal) =
            pipeline::record_refused(&self.ctx.info, id, "function_call", sql, RULE).await
        {
            // Refused either way; the client hears why it was refused.
            warn!(cause = %refusal, "audit write failed for a refused function call");
        }
        self.deny_now(
            out,
            refusal_fields(&pipeline::Refusal::denied(RULE, reason)),
            BatchEnd::Sync,
        )
        .await
    }
}
