//! The binary protocol: COM_STMT_PREPARE analyzed and decided before the server sees it,
//! every COM_STMT_EXECUTE decided again and run like a text, a cursor's COM_STMT_FETCH rows
//! masked as its execution's columns were planned. Weir keeps each statement's text and
//! analysis by the server's id; an id Weir did not see prepared gets 1243.

use super::*;

/// A statement prepared through the binary protocol: analyzed once, when prepared (the
/// server parses it then, in that session mode), and decided at every execution.
pub(super) struct Prepared {
    pub(super) text: Arc<[u8]>,
    pub(super) analysis: Arc<weir_analyze::Analysis>,
    /// An execution opened a cursor: that execution's request (its fetches complete it
    /// further) and how its rows are masked when fetched.
    pub(super) cursor: Option<(u64, Arc<[results::Field]>)>,
}

/// Most statements one session may keep prepared through Weir.
const MAX_PREPARED: usize = 4096;

/// A COM_STMT_* packet with its statement id made explicit (MariaDB's "last prepared" id
/// resolved by Weir, so the server runs what Weir decided).
pub(super) fn with_id(packet: &[u8], id: u32) -> Vec<u8> {
    let mut p = packet.to_vec();
    let _ = weir_wire::mysql::set_statement_id(&mut p, id);
    p
}

/// The server's answer to a statement id it does not know (1243), for an id Weir has not
/// seen prepared.
pub(super) fn unknown_statement(packet: &[u8], command: &str) -> ErrPacket {
    let id = packet
        .get(1..)
        .and_then(|b| weir_wire::mysql::statement_id(b).ok())
        .map_or_else(|| "?".to_owned(), |id| id.to_string());
    ErrPacket::new(
        1243,
        "HY000",
        &format!("Unknown prepared statement handler ({id}) given to {command}"),
    )
}

impl Session {
    /// The prepared statement a COM_STMT_* packet names, resolving MariaDB's "last
    /// prepared" id; None when Weir has not seen it prepared.
    pub(super) fn statement(&self, packet: &[u8]) -> Option<(u32, &Prepared)> {
        let id = weir_wire::mysql::statement_id(packet.get(1..)?).ok()?;
        let id = if id == weir_wire::mysql::LAST_PREPARED {
            self.last_prepared?
        } else {
            id
        };
        self.prepared.get(&id).map(|p| (id, p))
    }

    /// COM_STMT_PREPARE: the text is analyzed and decided as it will run (a denial is on
    /// record and the server never sees it); then the server prepares it, and its answer
    /// (ids, parameter and column definitions: no values) is relayed. Every execution is
    /// decided again.
    pub(super) async fn prepare(
        &mut self,
        client: &mut Conn,
        body: &[u8],
        packet: &[u8],
    ) -> Result<(), Fatal> {
        self.last_prepared = None;
        self.refresh_mode().await?;
        let analyzed = self
            .info
            .shared
            .analyzer
            .analyze_mysql(body, &self.mode)
            .and_then(|a| {
                if a.statements.len() == 1 {
                    Ok(a)
                } else {
                    Err(weir_analyze::AnalyzeError::Parse(
                        "a prepared statement is exactly one statement".into(),
                    ))
                }
            });
        let analysis = analyzed.as_ref().ok().cloned();
        self.requests += 1;
        let id = self.requests;
        let items = self.decide(analyzed, body, "prepare").await;
        let verdict = pipeline::overall(&items);
        if let Err(refusal) = pipeline::admit(&self.info, id, &items, &verdict, None).await {
            client.send(&refusal_packet(&refusal)).await?;
            return Ok(());
        }
        let (Some(analysis), false) = (analysis, matches!(verdict, Verdict::Deny { .. })) else {
            let (rule, reason) = match &verdict {
                Verdict::Deny { rule, reason } => (rule.as_str(), reason.as_str()),
                _ => ("weir.analyze", "the statement could not be analyzed"),
            };
            client
                .send(&refusal_packet(&Refusal::denied(rule, reason)))
                .await?;
            return Ok(());
        };
        self.up.seq = 0;
        self.up.send(packet).await.map_err(upstream_failed)?;
        let first = self.up.read().await.map_err(upstream_failed)?;
        if first.first() == Some(&0xff) {
            let e = ErrPacket::decode(&first).map_err(Fatal::protocol)?;
            client
                .send(&ErrPacket::new(e.code, &e.sqlstate(), &withhold_quoted(&e.message)).encode())
                .await?;
            return Ok(());
        }
        let ok = weir_wire::mysql::PrepareOk::decode(&first).map_err(Fatal::protocol)?;
        client.queue(&first);
        for count in [ok.params, ok.columns] {
            if count == 0 {
                continue;
            }
            if usize::from(count) > MAX_COLUMNS {
                return Err(Fatal::protocol(
                    "a prepared statement with too many columns",
                ));
            }
            for _ in 0..count {
                let def = self.up.read().await.map_err(upstream_failed)?;
                weir_wire::mysql::ColumnDef::decode(&def).map_err(Fatal::protocol)?;
                client.queue(&def);
            }
            let eof = self.up.read().await.map_err(upstream_failed)?;
            if !weir_wire::mysql::EofPacket::is_eof(&eof) {
                return Err(Fatal::protocol(
                    "expected EOF after a prepared statement's definitions",
                ));
            }
            client.queue(&eof);
        }
        client.flush().await?;
        if self.prepared.len() >= MAX_PREPARED && !self.prepared.contains_key(&ok.statement) {
            // The server's own limit (max_prepared_stmt_count) is global; Weir's is per
            // session, so one client cannot grow Weir's memory without bound.
            self.up.seq = 0;
            let mut close = vec![com::STMT_CLOSE];
            close.extend_from_slice(&ok.statement.to_le_bytes());
            self.up.send(&close).await.map_err(upstream_failed)?;
            return Err(Fatal::new(
                1461,
                "42000",
                format!("weir: more than {MAX_PREPARED} prepared statements in one session"),
            ));
        }
        self.prepared.insert(
            ok.statement,
            Prepared {
                text: Arc::from(body),
                analysis,
                cursor: None,
            },
        );
        self.last_prepared = Some(ok.statement);
        Ok(())
    }

    /// COM_STMT_EXECUTE: the prepared statement decided again (policy, grants, approvals
    /// and the row bound as for a text), recorded, and run; binary rows masked.
    pub(super) async fn execute(
        &mut self,
        client: &mut Conn,
        packet: Vec<u8>,
    ) -> Result<(), Fatal> {
        let Some((id, p)) = self.statement(&packet) else {
            client
                .send(&unknown_statement(&packet, "mysqld_stmt_execute").encode())
                .await?;
            return Ok(());
        };
        let (text, analysis) = (Arc::clone(&p.text), Arc::clone(&p.analysis));
        let packet = with_id(&packet, id);
        self.opened_cursor = None;
        self.run(client, Ok(analysis), &text, &packet, "execute")
            .await?;
        let cursor = self.opened_cursor.take();
        if let Some(p) = self.prepared.get_mut(&id) {
            p.cursor = cursor;
        }
        Ok(())
    }

    /// COM_STMT_FETCH: rows of a cursor an execution opened, masked as that execution's
    /// columns were planned.
    pub(super) async fn fetch(&mut self, client: &mut Conn, packet: Vec<u8>) -> Result<(), Fatal> {
        let Some((id, p)) = self.statement(&packet) else {
            client
                .send(&unknown_statement(&packet, "mysqld_stmt_fetch").encode())
                .await?;
            return Ok(());
        };
        let Some((request, fields)) = p.cursor.clone() else {
            client
                .send(
                    &ErrPacket::new(1421, "HY000", "The statement (weir) has no open cursor")
                        .encode(),
                )
                .await?;
            return Ok(());
        };
        let statements = Arc::clone(&p.analysis.statements);
        let catalog = self.info.mask.as_ref().map(|c| c.snapshot());
        let shared = Arc::clone(&self.info.shared);
        let started = std::time::Instant::now();
        self.up.seq = 0;
        self.up
            .send(&with_id(&packet, id))
            .await
            .map_err(upstream_failed)?;
        let unmask = SessionUnmask(&self.info);
        let req = results::Request {
            statements: &statements,
            catalog: catalog.as_deref(),
            database: &self.info.target.database,
            key: &shared.upstreams.mask_key,
            unmask: &unmask,
            max_columns: MAX_COLUMNS,
            field_list: false,
            binary: true,
            diagnostics_sensitive: self.diagnostics_sensitive,
        };
        let mut outcome = results::Outcome::default();
        results::rows(
            &mut self.up,
            client,
            &req,
            &fields,
            statements.first(),
            &mut outcome,
        )
        .await
        .map_err(relay_failed)?;
        client.flush().await?;
        // The fetched rows complete the execution's request further: how many, and what
        // was masked in them, are on record like any other answer.
        pipeline::completed(
            &self.info,
            pipeline::Completion {
                request,
                tags: vec![format!("FETCH {}", outcome.rows)],
                rows: outcome.rows,
                started,
                sqlstate: outcome.error.clone().map(|(_, s)| s),
                masked: outcome.masked.iter().map(|m| m.to_string()).collect(),
            },
        );
        if outcome.status & status::LAST_ROW_SENT != 0 || outcome.error.is_some() {
            if let Some(p) = self.prepared.get_mut(&id) {
                p.cursor = None;
            }
        }
        self.status = outcome.status;
        Ok(())
    }
}
