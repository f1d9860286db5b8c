//! The approval wait: what an approval covers, asking, waiting (the client may cancel or
//! leave), withdrawing, and what happens on each outcome.

use super::*;

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
        match self.ask_approval(id, &items, rule, reason, rows).await {
            Ask::Go => self.forward(id, &items, next_scope, out).await,
            Ask::Wait {
                id: approval,
                deadline_ms,
            } => {
                self.held = Some(Held {
                    request: id,
                    items,
                    next_scope,
                    end,
                    approval,
                    subject: format!("{rule}: {reason}"),
                    deadline_ms,
                    cancels_before,
                });
                Ok(())
            }
            Ask::Refuse(fields) => {
                self.batch.clear();
                self.ops.clear();
                self.deny_now(out, fields, end).await
            }
        }
    }

    /// What an approval of the request is for: the statements as an approver sees them
    /// (data constants as `$n`, code, names, paths and settings as written; full text for
    /// `[audit] full_text_targets`), the repeat key (`weir_analyze::approval`: equal only for
    /// texts that differ in data constants; a key that never repeats when a parameter decides
    /// what runs), and how far the approval reaches, in words.
    pub(super) fn approval_subject(&self, items: &[Item]) -> (String, String, &'static str) {
        let scopes: Vec<Option<weir_analyze::approval::ApprovalScope>> = items
            .iter()
            .map(|i| weir_analyze::approval::scope(&i.decision.analysis.sql))
            .collect();
        let sql: Vec<&str> = items
            .iter()
            .zip(&scopes)
            .map(|(i, s)| match s {
                _ if self.ctx.full_text => &*i.decision.analysis.sql,
                Some(s) => s.shown.as_str(),
                None => &*i.decision.analysis.normalized,
            })
            .collect();
        let all: Option<Vec<&weir_analyze::approval::ApprovalScope>> =
            scopes.iter().map(Option::as_ref).collect();
        let (key, reach) = all
            .and_then(|all| weir_analyze::approval::combined(&all))
            // Never the same twice: each run asks.
            .unwrap_or_else(|| {
                (
                    format!("once-{}", crate::approvals::new_id()),
                    weir_analyze::approval::ONE_RUN,
                )
            });
        (sql.join("; "), key, reach)
    }

    pub(super) fn approval_event(&self, id: &str, decision: &str) -> Event {
        Event::Approval {
            id: id.to_owned(),
            decision: decision.to_owned(),
            identity: self.ctx.identity.name.clone(),
            target: self.ctx.target_name.to_string(),
            session: Some(self.ctx.session),
            by: None,
            rule: None,
            note: None,
            sql: None,
            fingerprint: None,
            rode_on: None,
        }
    }

    /// A request that policy says needs approval: runs on an earlier approval of the same
    /// statement (within `[approvals] auto_repeat_window`), or on policy's own approval
    /// (`auto_approve`), or is recorded for approvers to decide.
    pub(super) async fn ask_approval(
        &mut self,
        request: u64,
        items: &[Item],
        rule: &str,
        reason: &str,
        rows: Option<u64>,
    ) -> Ask {
        let shared = &self.ctx.shared;
        let approvals = &shared.approvals;
        let cfg = &shared.config.approvals;
        let refuse = |what: &str, e: &dyn std::fmt::Display| {
            warn!(cause = %e, "{what}");
            Ask::Refuse(Fields::new(
                "ERROR",
                "58000",
                &format!("weir: the statement needs approval ({rule}), and {what}: {e}"),
            ))
        };
        let (sql, fingerprint, reach) = self.approval_subject(items);
        let reason = &format!("{reason}; an approval covers {reach}");
        let now = approvals.clock().now_ms();
        let window = u64::try_from(cfg.auto_repeat_window.as_millis()).unwrap_or(u64::MAX);

        // 1. The same statement approved for the same identity and target, recently.
        if window > 0 {
            let (who, target, fp) = (
                self.ctx.identity.name.clone(),
                self.ctx.target_name.to_string(),
                fingerprint.clone(),
            );
            let since = now.saturating_sub(window);
            match approvals
                .with_store(move |s| {
                    s.recent_approval(&who, &target, &fp, since, rows.unwrap_or(0))
                })
                .await
            {
                Ok(Some(earlier)) => {
                    let mut e = self.approval_event(&earlier.id, "repeated");
                    if let Event::Approval {
                        rode_on,
                        rule: r,
                        fingerprint: f,
                        ..
                    } = &mut e
                    {
                        *rode_on = Some(earlier.id.clone());
                        *r = Some(rule.to_owned());
                        *f = Some(fingerprint.clone());
                    }
                    return match shared.audit.append(e).wait().await {
                        Ok(()) => Ask::Go,
                        Err(e) => refuse("it could not be recorded", &e),
                    };
                }
                Ok(None) => {}
                Err(e) => return refuse("the approval store cannot be read", &e),
            }
        }

        // 2. Policy approving on its own.
        let facts = items
            .iter()
            .find(|i| matches!(i.decision.overall(), Verdict::RequireApproval { .. }))
            .and_then(|i| {
                i.decision
                    .verdicts
                    .iter()
                    .position(|v| matches!(v, Verdict::RequireApproval { .. }))
                    .and_then(|k| i.decision.analysis.statements.get(k))
            });
        let auto = facts.is_some_and(|facts| {
            shared.policy.may_approve(
                &self.ctx.policy,
                &weir_policy::ApprovalFacts {
                    facts,
                    sensitivity: &[],
                    requester: &self.ctx.identity.name,
                    requester_kind: self.ctx.identity.kind.as_str(),
                    rule,
                    self_approval: true,
                },
                true,
            )
        });

        // 3. A request: recorded in the trail before anyone can see it.
        let id = crate::approvals::new_id();
        let timeout = u64::try_from(cfg.timeout.as_millis()).unwrap_or(u64::MAX);
        // `timeout = "0s"`: nobody waits. The request stays open for the auto-repeat window,
        // and the client's next run of the statement rides on its approval.
        let waits = timeout > 0 && !auto;
        let deadline_ms = now.saturating_add(if timeout > 0 { timeout } else { window });
        let mut requested =
            self.approval_event(&id, if auto { "auto_approved" } else { "requested" });
        if let Event::Approval {
            rule: r,
            note,
            sql: q,
            fingerprint: f,
            by,
            ..
        } = &mut requested
        {
            *r = Some(rule.to_owned());
            *note = Some(reason.to_owned());
            *q = Some(sql.clone());
            *f = Some(fingerprint.clone());
            if auto {
                *by = Some("policy".into());
            }
        }
        if let Err(e) = shared.audit.append(requested).wait().await {
            return refuse("the request could not be recorded", &e);
        }
        let new = weir_store::NewApproval {
            id: id.clone(),
            kind: weir_store::ApprovalKind::Statement,
            grant_ms: None,
            created_ms: now,
            deadline_ms,
            identity: self.ctx.identity.name.clone(),
            identity_kind: self.ctx.identity.kind.as_str().to_owned(),
            target: self.ctx.target_name.to_string(),
            session: self.ctx.session,
            fingerprint,
            statement: sql,
            rows,
            facts: {
                let all: Vec<StatementFacts> = items
                    .iter()
                    .flat_map(|i| i.decision.analysis.statements.iter().cloned())
                    .collect();
                weir_audit::facts_json(&all).to_string()
            },
            rule: rule.to_owned(),
            reason: reason.to_owned(),
        };
        match approvals.create(new).await {
            Err(e) => return refuse("the approval request could not be stored", &e),
            Ok(stored) if !auto && shared.notifier.enabled() => {
                let notifier = Arc::clone(&shared.notifier);
                let store = Arc::clone(approvals.store());
                tokio::spawn(async move { notifier.announce(stored, store).await });
            }
            Ok(_) => {}
        }
        if auto {
            return match approvals
                .settle(&id, weir_store::ApprovalStatus::Approved, "policy")
                .await
            {
                Ok(Some((true, _))) => Ask::Go,
                Ok(_) => refuse("the automatic approval did not take", &id),
                Err(e) => refuse("the automatic approval could not be stored", &e),
            };
        }
        if !waits {
            return Ask::Refuse(Fields::new(
                "ERROR",
                "42501",
                &format!(
                    "weir: denied by {rule}: approval required: {reason} (request {id}: once it is approved, run the statement again within {})",
                    humantime::format_duration(cfg.auto_repeat_window)
                ),
            ));
        }
        info!(approval = %id, request, rule, "statement waits for approval");
        Ask::Wait { id, deadline_ms }
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
        let shared = Arc::clone(&self.ctx.shared);
        let approvals = &shared.approvals;
        let id = held.approval.clone();
        let rule = held.subject.clone();
        self.inbox.tell_client(
            Backend::notice(
                Fields::new(
                    "NOTICE",
                    "00000",
                    &format!("weir: waiting for approval of request {id} ({rule})"),
                )
                .with(
                    b'H',
                    &format!(
                        "an approver runs: weir approve {id} --config <weir.toml> --as <name>"
                    ),
                ),
            )
            .freeze(),
        );
        let since = held.cancels_before;
        let mut rx = approvals.watch(&id, held.deadline_ms);
        let max = shared.config.gateway.max_message_size;
        let mut client_open = true;
        let outcome = loop {
            tokio::select! {
                r = &mut rx => break r.unwrap_or_else(|_| Outcome::Failed("the approval watcher stopped".into())),
                () = self.ctx.cancel.fired_since(since) => {
                    approvals.forget(&id);
                    break self.withdraw(&id).await;
                }
                n = read_more(cr, &mut self.buf), if client_open && self.buf.len() <= max => {
                    match n {
                        Ok(0) | Err(_) => {
                            approvals.forget(&id);
                            client_open = false;
                            break self.withdraw(&id).await;
                        }
                        Ok(_) => {}
                    }
                }
            }
        };
        let mut fields = None;
        let mut event = self.approval_event(&id, "released");
        match &outcome {
            Outcome::Approved { by } => {
                if let Event::Approval { by: b, .. } = &mut event {
                    *b = Some(by.clone());
                }
            }
            Outcome::Denied { by, note } => {
                fields = Some(Fields::new(
                    "ERROR",
                    "42501",
                    &format!(
                        "weir: approval request {id} was denied by {by}: {}",
                        note.as_deref().unwrap_or("no reason given")
                    ),
                ));
            }
            Outcome::Expired => {
                event = self.approval_event(&id, "expired");
                fields = Some(Fields::new(
                    "ERROR",
                    "42501",
                    &format!(
                        "weir: approval request {id} timed out: nobody approved it within {}",
                        humantime::format_duration(shared.config.approvals.timeout)
                    ),
                ));
            }
            Outcome::Cancelled => {
                event = self.approval_event(&id, "cancelled");
                fields = Some(
                    Fields::new("ERROR", "57014", "canceling statement due to user request")
                        .with(b'D', &format!("weir: approval request {id} was withdrawn")),
                );
            }
            Outcome::Failed(e) => {
                fields = Some(Fields::new(
                    "ERROR",
                    "58000",
                    &format!("weir: approval request {id} cannot be followed, so the statement does not run: {e}"),
                ));
            }
        }
        // Denials were recorded by whoever denied; everything else is recorded here, before
        // the statement runs or its refusal goes out.
        let recorded = if matches!(outcome, Outcome::Denied { .. } | Outcome::Failed(_)) {
            Ok(())
        } else {
            shared.audit.append(event).wait().await
        };
        if let Err(e) = recorded {
            fields = Some(Fields::new(
                "ERROR",
                "58000",
                &format!("weir: the statement was not run because it could not be recorded in the audit trail ({e})"),
            ));
        }
        if !client_open {
            return Ok(false);
        }
        match fields {
            None => {
                info!(approval = %id, "approved; forwarding");
                self.forward(held.request, &held.items, held.next_scope, out)
                    .await?;
            }
            Some(fields) => {
                self.batch.clear();
                self.ops.clear();
                self.deny_now(out, fields, held.end).await?;
            }
        }
        Ok(true)
    }

    /// Withdraws a waiting request (the client cancelled or left). If a decision won the race,
    /// the client still asked to stop: the statement does not run either way.
    pub(super) async fn withdraw(&self, id: &str) -> Outcome {
        match self
            .ctx
            .shared
            .approvals
            .settle(
                id,
                weir_store::ApprovalStatus::Cancelled,
                &self.ctx.identity.name,
            )
            .await
        {
            Ok(_) => Outcome::Cancelled,
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}
