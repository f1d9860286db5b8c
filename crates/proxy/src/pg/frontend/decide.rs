//! Deciding a SQL text (the pipeline's decide stage), and refusing a fastpath call that
//! cannot be decided.

use super::*;

impl FrontendHalf<'_> {
    /// Analyze + decide one SQL text, through the pipeline's decide stage.
    pub(super) fn decide(&mut self, sql: &[u8]) -> Result<Arc<Decision>, Fatal> {
        Ok(self.decider.decide(&self.ctx.info, &self.ctx.end, sql))
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
        let recorded = self
            .ctx
            .shared
            .audit
            .append(Event::Statement {
                session: self.ctx.session,
                request: id,
                identity: Arc::clone(&self.ctx.identity_name),
                target: Arc::clone(&self.ctx.target_name),
                via: "function_call",
                sql: Arc::from(sql),
                fingerprint: 0,
                statements: Arc::from(Vec::new()),
                decision: "deny",
                rule: Some(RULE.into()),
            })
            .wait()
            .await;
        if let Err(e) = recorded {
            warn!(cause = %e, "audit write failed for a refused function call");
        }
        let fields = Fields::new(
            "ERROR",
            "42501",
            &format!("weir: denied by {RULE}: {reason}"),
        );
        self.deny_now(out, fields, BatchEnd::Sync).await
    }
}
