//! `weir audit verify | public-key | search | export | tail | replay`: reading the trail.
//!
//! Every verb opens the store read-side while `weir serve` may be writing (SQLite WAL), and
//! streams: nothing holds more than one event at a time, whatever the trail's size.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::Value;
use weir_audit::chain::{key_from_file_text, PublicKey, Record, Summary};
use weir_config::{Config, StoreUrl};
use weir_store::audit::{AuditStore, Exported, Filter, TrailReader};

/// Filters shared by `search`, `export` and `tail`.
#[derive(Debug, Default, clap::Args)]
pub struct FilterArgs {
    #[arg(long)]
    pub identity: Option<String>,
    #[arg(long)]
    pub target: Option<String>,
    /// allow | deny | approve | bound
    #[arg(long)]
    pub decision: Option<String>,
    #[arg(long)]
    pub session: Option<u64>,
    /// Event kind: statement, completed, connection_opened, connection_closed, auth_failed, admin
    #[arg(long)]
    pub event: Option<String>,
    /// A duration back from now (`1h`, `30m`) or a time (`2026-11-23T10:00:00Z`).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    /// Text the event contains (statement text, rule, …).
    #[arg(long)]
    pub text: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> anyhow::Result<Filter> {
        Ok(Filter {
            identity: self.identity.clone(),
            target: self.target.clone(),
            decision: self.decision.clone(),
            session: self.session,
            kind: self.event.clone(),
            since_us: self.since.as_deref().map(parse_time).transpose()?,
            until_us: self.until.as_deref().map(parse_time).transpose()?,
            text: self.text.clone(),
        })
    }
}

fn parse_time(s: &str) -> anyhow::Result<i64> {
    weir_proxy::audit::parse_time(s).map_err(|e| anyhow::anyhow!("--since/--until: {e}"))
}

fn time(ts_us: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(ts_us.max(0) as u64);
    humantime::format_rfc3339_micros(t).to_string()
}

pub(crate) fn open(config: &Path) -> anyhow::Result<(Config, Box<dyn TrailReader>)> {
    let config = Config::load(config)?;
    let path = match &config.gateway.store {
        StoreUrl::Sqlite(path) => path.clone(),
        StoreUrl::Postgres(url) => {
            let trail =
                weir_proxy::audit::open_reader(&config.gateway.store).with_context(|| {
                    format!("opening the audit trail in {}", weir_store::pg::redact(url))
                })?;
            return Ok((config, trail));
        }
    };
    let mut store = AuditStore::open(&path)
        .with_context(|| format!("opening the audit trail in {}", path.display()))?;
    // What is durable in the journal but not yet in the tables (a gateway indexes within
    // milliseconds; one that crashed, at its next start) is read too. Tables changed by
    // hand at their end are not filled from the journal: verify reports them as they are.
    let dir = weir_store::journal::dir_for(&path);
    match store.index_journal(&mut weir_store::journal::Reader::new(&dir)) {
        Ok(_) | Err(weir_store::StoreError::Refused(_)) => {}
        Err(e) => eprintln!(
            "weir: warning: the audit trail's journal {} could not be indexed into the store, so its newest events may be missing here: {e}",
            dir.display()
        ),
    }
    Ok((config, Box::new(store)))
}

/// The keys `--public-key` names (comma-separated), or none.
fn given_keys(given: Option<&str>) -> anyhow::Result<Vec<PublicKey>> {
    given
        .into_iter()
        .flat_map(|g| g.split(','))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| Ok(PublicKey::from_hex(k)?))
        .collect()
}

fn public_key(config: &Config, given: Option<&str>) -> anyhow::Result<PublicKey> {
    if let Some(hex) = given {
        return Ok(PublicKey::from_hex(hex)?);
    }
    let path = &config.audit.signing_key;
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "[audit] signing_key {}: cannot read it (pass --public-key to verify without it)",
            path.display()
        )
    })?;
    Ok(key_from_file_text(&text)?.public_key())
}

/// Prints a verification's verdict the way the contract states it: `ok <n> events` alone on
/// stdout (the checkpoint count goes to stderr), or `FAILED` and the first bad event.
fn report<E: std::fmt::Display>(verdict: Result<Summary, E>) -> bool {
    match verdict {
        Ok(s) => {
            println!("ok {} events", s.events);
            // Out before the next line, wherever the two streams end up together.
            let _ = std::io::Write::flush(&mut std::io::stdout());
            eprintln!("{} signed checkpoints verified", s.checkpoints);
            true
        }
        Err(e) => {
            println!("FAILED {e}");
            false
        }
    }
}

/// `weir audit verify`: `ok <n> events` and true, or the first bad event and false.
///
/// A trail of several chains (the PostgreSQL store: one per gateway) is verified chain by
/// chain, a line each on stderr. With `--public-key K1,K2,…` the keys are the whole set: a
/// chain signed by another key, or a key with no chain, fails. Without it, each chain is
/// verified against the key it registered in the store (which trusts the store's role not
/// to have added a chain of its own), and this config's key must have verified its chain
/// if it has one.
pub fn verify(config: &Path, key: Option<&str>) -> anyhow::Result<bool> {
    let (config, store) = open(config)?;
    let pinned = key.is_some();
    let keys = match key {
        Some(_) => given_keys(key)?,
        None => match (&config.gateway.store, public_key(&config, None)) {
            (_, Ok(k)) => vec![k],
            // A shared store's reader may not hold a gateway's signing key.
            (StoreUrl::Postgres(_), Err(_)) => Vec::new(),
            (StoreUrl::Sqlite(_), Err(e)) => return Err(e),
        },
    };
    let chains = store.verify_chains(&keys, pinned)?;
    if chains.len() > 1 || chains.iter().any(|c| c.chain.is_some()) {
        for c in &chains {
            let id = c.chain.as_deref().unwrap_or("");
            match &c.verdict {
                Ok(s) => eprintln!(
                    "chain {id}: ok {} events, {} signed checkpoints",
                    s.events, s.checkpoints
                ),
                Err(e) => eprintln!("chain {id}: FAILED {e}"),
            }
        }
    }
    Ok(report(weir_store::audit::ChainVerdict::overall(&chains)))
}

pub fn print_public_key(config: &Path) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    println!("{}", public_key(&config, None)?.to_hex());
    Ok(())
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// One line for a person: time, event, who, where, what, and what came of it.
fn line(seq: u64, ts_us: i64, body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let event = str_of(&v, "event");
    let session = v
        .get("session")
        .map(|s| format!(" s{s}"))
        .unwrap_or_default();
    let detail = match event {
        "statement" => format!(
            "{} {} {} {}{} {}",
            str_of(&v, "identity"),
            str_of(&v, "target"),
            str_of(&v, "via"),
            str_of(&v, "decision"),
            v.get("rule")
                .and_then(Value::as_str)
                .map(|r| format!(" {r}"))
                .unwrap_or_default(),
            str_of(&v, "sql"),
        ),
        "completed" => format!(
            "{} rows={} {}us{}{}",
            v.get("tags").map(|t| t.to_string()).unwrap_or_default(),
            v.get("rows").map(|r| r.to_string()).unwrap_or_default(),
            v.get("duration_us")
                .map(|r| r.to_string())
                .unwrap_or_default(),
            v.get("sqlstate")
                .and_then(Value::as_str)
                .map(|s| format!(" sqlstate={s}"))
                .unwrap_or_default(),
            v.get("masked")
                .and_then(Value::as_array)
                .map(|m| {
                    let names: Vec<&str> = m.iter().filter_map(Value::as_str).collect();
                    format!(" masked={}", names.join(","))
                })
                .unwrap_or_default(),
        ),
        "connection_opened" => format!(
            "{} ({}{}) {} from {} tls={}{}",
            str_of(&v, "identity"),
            str_of(&v, "identity_kind"),
            v.get("auth")
                .and_then(Value::as_str)
                .map(|a| format!(" via {a}"))
                .unwrap_or_default(),
            str_of(&v, "target"),
            str_of(&v, "client_addr"),
            v.get("tls").map(|t| t.to_string()).unwrap_or_default(),
            groups_and_attributes(&v),
        ),
        "connection_closed" => format!(
            "{} {} requests={} {}",
            str_of(&v, "identity"),
            str_of(&v, "target"),
            v.get("requests").map(|t| t.to_string()).unwrap_or_default(),
            str_of(&v, "reason")
        ),
        "auth_failed" => format!(
            "{} {} from {}: {}",
            str_of(&v, "claimed"),
            str_of(&v, "target"),
            str_of(&v, "client_addr"),
            str_of(&v, "reason")
        ),
        "auth_throttled" => throttled(&v),
        _ => body.to_owned(),
    };
    format!("{seq} {} {event}{session} {detail}", time(ts_us))
}

pub fn search(config: &Path, args: &FilterArgs, limit: Option<u64>) -> anyhow::Result<()> {
    let (_, store) = open(config)?;
    let mut out = std::io::stdout().lock();
    let mut n = 0u64;
    let mut failed = None;
    store.for_each_event(1, &args.filter()?, &mut |r: &Record| {
        if let Err(e) = writeln!(out, "{}", line(r.seq, r.ts_us, &r.body)) {
            failed = Some(e);
            return ControlFlow::Break(());
        }
        n += 1;
        if limit.is_some_and(|l| n >= l) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    match failed {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.identity.is_none()
            && self.target.is_none()
            && self.decision.is_none()
            && self.session.is_none()
            && self.event.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.text.is_none()
    }
}

/// The whole trail as JSON lines, one per event; an event a signed checkpoint covers carries
/// it (`"checkpoint":{head, ts_us, signature}`). What an auditor verifies with
/// `weir audit verify --file F --public-key HEX`, without the store.
fn export_verifiable(store: &dyn TrailReader, out: &mut impl Write) -> anyhow::Result<()> {
    store.for_each_with_checkpoints(&mut |e| {
        writeln!(out, "{}", export_line(e)).map_err(weir_store::StoreError::Io)
    })?;
    Ok(())
}

/// One event as an export's JSON line, with the checkpoint that ends at it, if any. In a
/// trail of several chains, `seq` is the event's place in the whole trail, and `chain` and
/// `chain_seq` where it sits in its chain (what its hash and checkpoint cover).
fn export_line(e: &Exported<'_>) -> String {
    let checkpoint = match e.checkpoint {
        Some(c) => format!(
            ",\"checkpoint\":{{\"head\":\"{}\",\"ts_us\":{},\"signature\":\"{}\"}}",
            hex::encode(c.head),
            c.ts_us,
            hex::encode(c.signature),
        ),
        None => String::new(),
    };
    let chain = match e.chain {
        Some(chain) => format!(",\"chain\":\"{chain}\",\"chain_seq\":{}", e.record.seq),
        None => String::new(),
    };
    let r = e.record;
    format!(
        "{{\"seq\":{}{chain},\"ts_us\":{},\"time\":\"{}\",\"prev\":\"{}\",\"hash\":\"{}\"{checkpoint},\"event\":{}}}",
        e.seq,
        r.ts_us,
        time(r.ts_us),
        hex::encode(r.prev),
        hex::encode(r.hash),
        r.body,
    )
}

/// A record read back from the trail, as an export line without a checkpoint.
fn plain_line(r: &Record) -> String {
    export_line(&Exported {
        seq: r.seq,
        chain: None,
        record: r,
        checkpoint: None,
    })
}

/// One line of an export, back to what was stored: the record, and the checkpoint that
/// covers it, if any. The event's JSON is taken byte for byte (its hash covers the exact
/// text): it is the rest of the line after `,"event":`, less the closing brace; the fields
/// before it hold no such text.
fn parse_export_line(
    line: &str,
) -> anyhow::Result<(
    Option<String>,
    weir_audit::chain::Record,
    Option<weir_audit::chain::Checkpoint>,
)> {
    fn hex_n<const N: usize>(v: &Value, key: &str) -> anyhow::Result<[u8; N]> {
        let bytes = hex::decode(v.get(key).and_then(Value::as_str).unwrap_or(""))?;
        bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("{key}: not {N} bytes"))
    }
    fn int(v: &Value, key: &str) -> anyhow::Result<i64> {
        v.get(key)
            .and_then(Value::as_i64)
            .with_context(|| format!("{key} missing"))
    }
    let at = line.find(",\"event\":").context("not an exported event")?;
    let body = line
        .get(at + 9..line.len().saturating_sub(1))
        .context("truncated line")?;
    let head: Value = serde_json::from_str(&format!("{}}}", line.get(..at).unwrap_or("{")))?;
    // In a trail of several chains the hash covers the event's place in its chain.
    let chain = head.get("chain").and_then(Value::as_str).map(str::to_owned);
    let seq = match chain {
        Some(_) => int(&head, "chain_seq")?,
        None => int(&head, "seq")?,
    };
    let record = weir_audit::chain::Record {
        seq: u64::try_from(seq).context("seq")?,
        ts_us: int(&head, "ts_us")?,
        prev: hex_n(&head, "prev")?,
        hash: hex_n(&head, "hash")?,
        body: body.to_owned(),
    };
    let checkpoint = match head.get("checkpoint") {
        Some(c) => Some(weir_audit::chain::Checkpoint {
            seq: record.seq,
            head: hex_n(c, "head")?,
            ts_us: int(c, "ts_us")?,
            signature: hex_n(c, "signature")?,
        }),
        None => None,
    };
    Ok((chain, record, checkpoint))
}

/// `weir audit verify --file EXPORT --public-key HEX`: an export checked without the store.
///
/// `key` is one key, or several comma-separated: an export of a trail with several chains
/// (one per gateway) verifies each chain against the key it is named by, and fails on a
/// chain whose key is not given.
pub fn verify_export(file: &Path, key: &str) -> anyhow::Result<bool> {
    let keys = given_keys(Some(key))?;
    let Some(first) = keys.first().cloned() else {
        bail!("--public-key: no key given");
    };
    let text = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("{}", file.display()))?,
    );
    // One verifier per chain, in the order chains first appear.
    let mut chains: Vec<(Option<String>, weir_audit::chain::Verifier)> = Vec::new();
    let mut verdict: Result<(), String> = Ok(());
    for (n, line) in std::io::BufRead::lines(text).enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let (chain, record, checkpoint) =
            parse_export_line(&line).with_context(|| format!("{}:{}", file.display(), n + 1))?;
        let at = match chains.iter().position(|(c, _)| *c == chain) {
            Some(i) => i,
            None => {
                let key = match &chain {
                    None => first.clone(),
                    Some(id) => match keys.iter().find(|k| k.to_hex() == *id) {
                        Some(k) => k.clone(),
                        None => {
                            verdict = Err(format!(
                                "chain {id}: its key is not one of those given (--public-key)"
                            ));
                            break;
                        }
                    },
                };
                chains.push((chain.clone(), weir_audit::chain::Verifier::new(key)));
                chains.len() - 1
            }
        };
        let Some((_, v)) = chains.get_mut(at) else {
            bail!("internal: verifier {at} missing");
        };
        let step = v
            .event(&record)
            .and_then(|()| checkpoint.map_or(Ok(()), |c| v.checkpoint(&c)));
        if let Err(e) = step {
            verdict = Err(match &chain {
                Some(id) => format!("chain {}: {e}", id.get(..16).unwrap_or(id)),
                None => e.to_string(),
            });
            break;
        }
    }
    let several = chains.iter().any(|(c, _)| c.is_some());
    let mut total = Summary {
        events: 0,
        checkpoints: 0,
    };
    if verdict.is_ok() {
        for (chain, v) in chains {
            match v.finish() {
                Ok(sum) => {
                    if let Some(id) = &chain {
                        eprintln!(
                            "chain {id}: ok {} events, {} signed checkpoints",
                            sum.events, sum.checkpoints
                        );
                    }
                    total.events += sum.events;
                    total.checkpoints += sum.checkpoints;
                }
                Err(e) => {
                    verdict = Err(match &chain {
                        Some(id) if several => format!("chain {}: {e}", id.get(..16).unwrap_or(id)),
                        _ => e.to_string(),
                    });
                    break;
                }
            }
        }
    }
    Ok(report(verdict.map(|()| total)))
}

/// `weir audit export`: every matching event, streamed. JSON lines carry the chain fields
/// (seq, prev, hash) and the event as recorded — and, when nothing is filtered out, the
/// signed checkpoints inside the lines of the events they cover, so the file verifies on its
/// own; CSV has one column per common field.
pub fn export(config: &Path, args: &FilterArgs, format: Format) -> anyhow::Result<()> {
    let (_, store) = open(config)?;
    if matches!(format, Format::Jsonl) && args.is_empty() {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        return match export_verifiable(store.as_ref(), &mut out).and_then(|()| Ok(out.flush()?)) {
            Err(e)
                if e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
            {
                Ok(())
            }
            other => other,
        };
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if matches!(format, Format::Csv) {
        writeln!(
            out,
            "seq,time,event,session,identity,target,via,decision,rule,sql,rows,sqlstate"
        )?;
    }
    let mut failed = None;
    store.for_each_event(1, &args.filter()?, &mut |r: &Record| {
        let written = match format {
            Format::Jsonl => writeln!(out, "{}", plain_line(r)),
            Format::Csv => {
                let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
                let num = |k: &str| v.get(k).map(|x| x.to_string()).unwrap_or_default();
                let identity = match str_of(&v, "identity") {
                    "" => str_of(&v, "claimed"),
                    i => i,
                };
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{},{}",
                    r.seq,
                    time(r.ts_us),
                    str_of(&v, "event"),
                    num("session"),
                    csv_field(identity),
                    csv_field(str_of(&v, "target")),
                    str_of(&v, "via"),
                    str_of(&v, "decision"),
                    csv_field(str_of(&v, "rule")),
                    csv_field(str_of(&v, "sql")),
                    num("rows"),
                    str_of(&v, "sqlstate"),
                )
            }
        };
        match written {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = failed {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        return Err(e.into());
    }
    out.flush().or_else(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    Ok(())
}

/// `weir audit tail`: the last `lines` matching events, then (with `follow`) new ones as they
/// are written, until interrupted.
pub fn tail(config: &Path, args: &FilterArgs, lines: u64, follow: bool) -> anyhow::Result<()> {
    let (_, store) = open(config)?;
    let filter = args.filter()?;
    let last = store.last_seq()?;
    // The last `lines` events of the trail, then those of them that match.
    let mut from = last.saturating_sub(lines) + 1;
    let mut out = std::io::stdout().lock();
    loop {
        // Everything up to `end` is read by this pass, matching or not.
        let end = store.last_seq()?;
        let mut seen = 0;
        store.for_each_event(from, &filter, &mut |r: &Record| {
            seen = r.seq;
            match writeln!(out, "{}", line(r.seq, r.ts_us, &r.body)) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            }
        })?;
        out.flush()?;
        if !follow {
            return Ok(());
        }
        from = from.max(end + 1).max(seen + 1);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `weir audit replay SESSION`: what one session did, in order. Without a number, the most
/// recent session (of `identity`, when given).
pub fn replay(config: &Path, session: Option<u64>, identity: Option<&str>) -> anyhow::Result<()> {
    let session = match session {
        Some(s) => s,
        None => last_session(config, identity)?,
    };
    let args = FilterArgs {
        session: Some(session),
        ..FilterArgs::default()
    };
    search(config, &args, None)
}

/// The session of the most recent `connection_opened` event (of `identity`, when given).
fn last_session(config: &Path, identity: Option<&str>) -> anyhow::Result<u64> {
    let (_, store) = open(config)?;
    let filter = FilterArgs {
        identity: identity.map(str::to_owned),
        event: Some("connection_opened".into()),
        ..FilterArgs::default()
    }
    .filter()?;
    let mut last = None;
    store.for_each_event(1, &filter, &mut |r: &Record| {
        if let Some(s) = serde_json::from_str::<Value>(&r.body)
            .ok()
            .and_then(|v| v.get("session").and_then(Value::as_u64))
        {
            last = Some(s);
        }
        ControlFlow::Continue(())
    })?;
    last.with_context(|| match identity {
        Some(who) => format!("no session of {who} in the trail"),
        None => "no session in the trail".to_owned(),
    })
}

/// Appends one event to the trail from the CLI (administrative actions), through the same
/// writer as the gateway's, with the same signing key. A running gateway may be appending at
/// the same moment: the store refuses a batch that does not continue its head, and the writer
/// then seals again after what is there.
pub fn record(config: &Config, event: weir_audit::Event) -> anyhow::Result<()> {
    use weir_proxy::audit::AuditSink;
    let sink = crate::serve::open_audit(config)?;
    let recorded = sink.append(event).wait_blocking();
    sink.close();
    recorded.context("recording in the audit trail")
}

/// The detail of an `auth_throttled` event.
fn throttled(v: &Value) -> String {
    let mut line = format!(
        "from {}: {} more failed logins within {} s, counted, not recorded one by one",
        str_of(v, "client_addr"),
        v.get("failures").map(|t| t.to_string()).unwrap_or_default(),
        v.get("window_secs")
            .map(|t| t.to_string())
            .unwrap_or_default(),
    );
    let tried: Vec<&str> = v
        .get("claimed")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !tried.is_empty() {
        line.push_str(&format!(" (as {})", tried.join(", ")));
    }
    line
}

/// ` groups=a,b attrs=k=v,…` for a `connection_opened` event, empty parts left out.
fn groups_and_attributes(v: &Value) -> String {
    let mut out = String::new();
    if let Some(groups) = v.get("groups").and_then(Value::as_array) {
        let names: Vec<&str> = groups.iter().filter_map(Value::as_str).collect();
        if !names.is_empty() {
            out.push_str(" groups=");
            out.push_str(&names.join(","));
        }
    }
    if let Some(attrs) = v.get("attributes").and_then(Value::as_object) {
        let pairs: Vec<String> = attrs
            .iter()
            .map(|(k, val)| format!("{k}={}", val.as_str().unwrap_or_default()))
            .collect();
        if !pairs.is_empty() {
            out.push_str(" attrs=");
            out.push_str(&pairs.join(","));
        }
    }
    out
}
