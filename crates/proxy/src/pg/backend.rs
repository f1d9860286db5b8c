//! The backend half: upstream → result stage (masking) → client, with the tracker that
//! pairs each server message with the request it answers.

use super::*;

impl BackendHalf<'_> {
    pub(super) async fn run<R, W>(&mut self, ur: &mut R, cw: &mut W) -> Result<&'static str, Fatal>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let max = self.ctx.shared.config.gateway.max_message_size;
        let mut due: Vec<Due> = Vec::new();
        loop {
            self.process(cw, max, &mut due).await?;
            // `process` wrote every whole message it had, so a message of Weir's own can go
            // out now without splitting one of the server's.
            let n = tokio::select! {
                biased;
                r = read_more(ur, &mut self.buf) => r,
                () = self.inbox.to_client_ready.notified() => {
                    for frame in self.inbox.take_for_client() {
                        write(cw, &frame).await?;
                    }
                    continue;
                }
            }
            .map_err(|e| Fatal::new("08006", format!("weir: upstream read failed: {e}")))?;
            if n == 0 {
                return Err(Fatal::new(
                    "08006",
                    "weir: the upstream server closed the connection",
                ));
            }
        }
    }

    fn drain_entries(&mut self, due: &mut Vec<Due>) {
        // Entries are queued before their request is written upstream, so every response in
        // the buffer has its entry in the inbox by now.
        let entries: Vec<Entry> = self.inbox.lock().drain(..).collect();
        for e in entries {
            self.tracker.push(e, due);
        }
    }

    /// Writes every complete message in the buffer to the client, rewritten where the result
    /// stage says so, followed by whatever became due.
    async fn process<W: AsyncWrite + Unpin>(
        &mut self,
        cw: &mut W,
        max: usize,
        due: &mut Vec<Due>,
    ) -> Result<(), Fatal> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.drain_entries(due);
        // `kept` is the length of the prefix of `buf` that goes out unchanged.
        let mut kept = 0usize;
        // Room the incomplete frame at the end still needs. Reserved only once the prefix
        // before it is written: reserving while the buffer still holds it would grow the
        // allocation by the prefix every time (it doubled up to tens of MiB on large results).
        let mut need = 0usize;
        loop {
            let rest = self.buf.get(kept..).unwrap_or(&[]);
            let Some(h) = Header::parse(rest, max).map_err(|e| {
                Fatal::new("08P01", format!("weir: upstream protocol violation: {e}"))
            })?
            else {
                break;
            };
            if rest.len() < h.frame_len() {
                need = h.frame_len() - rest.len();
                break;
            }
            if let Some((request, durability)) = self.tracker.take_durability() {
                // Write-ahead: what answers earlier requests goes now; this request's
                // answers wait until its events are durable.
                self.flush_prefix(cw, kept).await?;
                kept = 0;
                if let Err(e) = durability.wait().await {
                    warn!(cause = %e, "an overlapped statement's event failed; its answer is withheld and the session closed");
                    return Err(Fatal::new(
                        "58000",
                        format!("weir: the statement was not recorded in the audit trail ({e}), so its result is withheld; the session is closed and its open transaction rolled back"),
                    ));
                }
                self.ctx.info.write_ahead.confirmed(request);
                continue;
            }
            let body = rest.get(Header::SIZE..h.frame_len()).unwrap_or(&[]);
            let frame = rest.get(..h.frame_len()).unwrap_or(&[]);
            let mut replace: Option<Bytes> = None;
            // Whom this message is for (ParameterStatus and notifications belong to no
            // request).
            let mode = if matches!(h.tag, b'S' | b'A') {
                ModeKind::Client
            } else {
                self.tracker.mode()
            };
            if let (Some(masker), Some(cache)) = (&mut self.masker, &self.ctx.mask) {
                if matches!(
                    h.tag,
                    b't' | b'n'
                        | b'T'
                        | b'D'
                        | b'C'
                        | b'I'
                        | b's'
                        | b'Z'
                        | b'E'
                        | b'N'
                        | b'H'
                        | b'd'
                        | b'c'
                ) {
                    if masker.plans_at(h.tag) {
                        self.catalog = cache.snapshot();
                    }
                    let env = Env {
                        catalog: &self.catalog,
                        unmask: &SessionUnmask(self.ctx),
                    };
                    match masker.on_message(self.tracker.answering(), env, h.tag, body) {
                        Rewrite::Keep => {}
                        Rewrite::Replace(b) => replace = Some(b.freeze()),
                        Rewrite::Drop => replace = Some(Bytes::new()),
                    }
                }
            }
            if h.tag == b'A' {
                replace = self.translate_notification(body);
            }
            if h.tag == b'S' {
                // The check of last resort: a change Weir could not see (a function's
                // set_config) put the server in a lexing mode Weir does not analyze in.
                // Nothing more is forwarded on this session.
                if let Some(why) = reported_lexing_refusal(body) {
                    warn!(reason = %why, "the server left the lexing mode Weir analyzes in; session closed");
                    return Err(Fatal::new(
                        "22023",
                        format!(
                            "weir: denied by {}: the server reports {why}; the session is closed",
                            weir_analyze::lexing::RULE
                        ),
                    ));
                }
                if let Some(masked) = self.mask_parameter_status(body) {
                    replace = Some(masked);
                }
            }
            let collector = (mode == ModeKind::Capture)
                .then(|| self.tracker.collector())
                .flatten();
            let action = self.tracker.on_message(h.tag, body, due);
            if h.tag == b'Z' {
                self.inbox
                    .tx_status
                    .store(self.tracker.tx_status.byte(), Ordering::Release);
            }
            match action {
                Action::Forward => {}
                Action::Replace(b) => replace = Some(b),
                Action::Desync => {
                    return Err(Fatal::new(
                        "08P01",
                        format!(
                            "weir: the server sent '{}' in answer to nothing Weir forwarded; the session is closed",
                            if h.tag.is_ascii_graphic() { h.tag as char } else { '?' }
                        ),
                    ))
                }
            }
            // A bounded write's bracket: held answers, hidden bracket statements.
            let mut release = None;
            match mode {
                ModeKind::Client => {}
                ModeKind::Capture => {
                    // Weir's own rows: kept raw (before any masking), shown to nobody.
                    if let (b'D', Some(c)) = (h.tag, &collector) {
                        c.push(body);
                    }
                    replace = Some(Bytes::new());
                }
                ModeKind::Held => {
                    // Its ReadyForQuery is not the client's: the closing statement's is.
                    if h.tag != b'Z' {
                        match &replace {
                            Some(b) => self.held.extend_from_slice(b),
                            None => self.held.extend_from_slice(frame),
                        }
                    }
                    replace = Some(Bytes::new());
                }
                ModeKind::Hidden | ModeKind::Close { .. } => {
                    if !self.held.is_empty() {
                        let held = std::mem::take(&mut self.held);
                        if mode == (ModeKind::Close { release: true }) {
                            release = Some(held);
                        }
                    }
                    let shown = matches!(mode, ModeKind::Close { .. })
                        && matches!(h.tag, b'E' | b'N' | b'Z');
                    if !shown {
                        replace = Some(Bytes::new());
                    } else if release.is_some() && replace.is_none() {
                        // Through the staging path, so the released answers go first.
                        replace = Some(Bytes::copy_from_slice(frame));
                    }
                }
            }
            match replace {
                None => kept += h.frame_len(),
                Some(bytes) => {
                    // Staged, not written: a masked result rewrites most rows, and one
                    // write per row would cost more than the masking.
                    let prefix = self.buf.split_to(kept);
                    self.out.extend_from_slice(&prefix);
                    self.buf.advance(h.frame_len());
                    kept = 0;
                    if let Some(held) = release {
                        self.out.extend_from_slice(&held);
                    }
                    self.out.extend_from_slice(&bytes);
                }
            }
            if !due.is_empty() {
                self.flush_prefix(cw, kept).await?;
                kept = 0;
                self.handle_due(due);
            }
        }
        self.flush_prefix(cw, kept).await?;
        if need > 0 {
            self.buf.reserve(need);
        }
        if !due.is_empty() {
            self.handle_due(due);
        }
        Ok(())
    }

    /// A notification names its sender by upstream pid; clients know sessions by the pid
    /// Weir gave them (and compare it to skip their own notifications), so translate it.
    fn translate_notification(&self, body: &[u8]) -> Option<Bytes> {
        let Ok(Backend::NotificationResponse {
            process_id,
            channel,
            payload,
        }) = Backend::decode(b'A', Bytes::copy_from_slice(body))
        else {
            return None;
        };
        let pid = self
            .ctx
            .shared
            .front
            .cancels
            .weir_pid(&self.ctx.upstream_addr, process_id);
        // A backstop behind the analysis' state-sink rule: a payload holding what content
        // detection recognizes (another session's NOTIFY, a constant) is withheld.
        let sensitive =
            self.ctx.mask.is_some() && weir_mask::classify::by_content(&payload).is_some();
        if pid.is_none() && !sensitive {
            return None;
        }
        let mut out = BytesMut::new();
        Backend::NotificationResponse {
            process_id: pid.unwrap_or(process_id),
            channel,
            payload: if sensitive {
                Bytes::from_static(b"****")
            } else {
                payload
            },
        }
        .encode(&mut out);
        Some(out.freeze())
    }

    /// A ParameterStatus whose value content detection recognizes (`SET application_name`
    /// to an address), with the value withheld; `None` to pass it as it is.
    fn mask_parameter_status(&self, body: &[u8]) -> Option<Bytes> {
        self.ctx.mask.as_ref()?;
        let Ok(Backend::ParameterStatus { name, value }) =
            Backend::decode(b'S', Bytes::copy_from_slice(body))
        else {
            return None;
        };
        weir_mask::classify::by_content(&value)?;
        let mut out = BytesMut::new();
        Backend::ParameterStatus {
            name,
            value: Bytes::from_static(b"****"),
        }
        .encode(&mut out);
        Some(out.freeze())
    }

    /// Writes what is staged, then the first `n` bytes of the read buffer (unchanged
    /// messages, written from where they were read when nothing is staged).
    async fn flush_prefix<W: AsyncWrite + Unpin>(
        &mut self,
        cw: &mut W,
        n: usize,
    ) -> Result<(), Fatal> {
        if !self.out.is_empty() {
            let chunk = self.buf.split_to(n);
            self.out.extend_from_slice(&chunk);
            let result = write(cw, &self.out).await;
            self.out.clear();
            return result;
        }
        if n == 0 {
            return Ok(());
        }
        let chunk = self.buf.split_to(n);
        write(cw, &chunk).await
    }

    fn handle_due(&mut self, due: &mut Vec<Due>) {
        for d in due.drain(..) {
            match d {
                Due::Completed(p) => {
                    self.inbox.completed();
                    if let Mode::Held(probe) | Mode::Capture(probe, _) = &p.mode {
                        probe.send(crate::track::ProbeResult {
                            rows: p.rows,
                            tags: p.tags.clone(),
                            sqlstate: p.sqlstate.clone(),
                        });
                    }
                    let mut masked = Vec::new();
                    if let (Some(masker), Some(cache)) = (&mut self.masker, &self.ctx.mask) {
                        masked = masker.take_masked().iter().map(|c| c.to_string()).collect();
                        if masker.take_unknown_relation() || p.ddl {
                            cache.invalidate();
                        }
                    }
                    if p.audited {
                        pipeline::completed(
                            &self.ctx.info,
                            pipeline::Completion {
                                request: p.id,
                                tags: p.tags,
                                rows: p.rows,
                                started: p.started,
                                sqlstate: p.sqlstate,
                                masked,
                            },
                        );
                    }
                }
            }
        }
    }
}
