//! Guards that decide a request again against the target's catalog, before it is recorded:
//! values of sensitive columns kept in session or server state, and copies of them into
//! other columns (derived sensitivity). Protocol-neutral: they change verdicts and say what
//! to record; each adapter turns a denial into its own error.

use std::sync::Arc;

use weir_analyze::{Scope, StatementFacts};
use weir_policy::{Decision, Verdict};

use super::{Item, SessionInfo};

/// No side door through session state: a statement that would keep a value derived from
/// a sensitive column in a setting, a notification, a sequence or an advisory-lock key
/// (where a later statement, another session or another identity reads it back unmasked)
/// is denied, unless policy lets this identity see that column in clear. Without a
/// catalog to tell (it cannot be loaded), such a statement is denied too.
pub(crate) async fn guard_state_sinks(session: &SessionInfo, items: &mut [Item]) {
    const RULE: &str = "weir.sensitive-value-into-session-state";
    let Some(cache) = &session.mask else {
        return;
    };
    if !items.iter().any(|i| {
        i.decision
            .analysis
            .statements
            .iter()
            .any(|f| !f.state_sinks.is_empty())
    }) {
        return;
    }
    let loaded = cache.ensure(&session.shared, &session.target).await;
    let catalog = cache.snapshot();
    for item in items.iter_mut() {
        let d = &item.decision;
        let mut verdicts = d.verdicts.clone();
        let mut changed = false;
        for (f, v) in d.analysis.statements.iter().zip(verdicts.iter_mut()) {
            if f.state_sinks.is_empty() || matches!(v, Verdict::Deny { .. }) {
                continue;
            }
            let found = match &loaded {
                Ok(()) => weir_mask::sensitive_state_sink(f, &catalog),
                Err(_) => Some((
                    "a column (the masking catalog cannot be loaded)".into(),
                    weir_mask::Sensitive {
                        label: Arc::from("unknown"),
                        strategy: weir_mask::Strategy::Redact,
                    },
                )),
            };
            let Some((column, s)) = found else { continue };
            if session.may_unmask(&column, &s.label) {
                continue;
            }
            *v = Verdict::Deny {
                rule: RULE.into(),
                reason: format!(
                    "this statement would keep a value of {column} ({}) in session or server state (a setting, a notification, a sequence, an advisory lock), where it can be read back unmasked",
                    s.label
                ),
            };
            changed = true;
        }
        if changed {
            item.decision = Arc::new(Decision {
                verdicts,
                ..Decision::clone(d)
            });
        }
    }
}

/// Sensitivity flows with the data: a write whose values derive, by lineage, from a
/// sensitive column (`StatementFacts::flows` against the target's catalog) marks the
/// columns it writes sensitive (`Item::derived`, recorded before it runs), and policy
/// decides it again knowing what it copies (`context.copies_sensitive`; the built-in
/// policy asks for approval in production unless the identity may see those columns in
/// clear). Without a catalog to tell (it cannot be loaded), such a write is denied.
pub(crate) async fn guard_copies(session: &SessionInfo, scope: &Scope, items: &mut [Item]) {
    let Some(cache) = &session.mask else {
        return;
    };
    let copies = |f: &StatementFacts| {
        !f.flows.is_empty()
            && !matches!(
                f.kind,
                weir_analyze::StatementKind::Prepare | weir_analyze::StatementKind::Cursor
            )
    };
    if !items
        .iter()
        .any(|i| i.decision.analysis.statements.iter().any(copies))
    {
        return;
    }
    let shared = &session.shared;
    let loaded = cache.ensure(shared, &session.target).await;
    let catalog = cache.snapshot();
    for item in items.iter_mut() {
        let d = &item.decision;
        let mut verdicts = d.verdicts.clone();
        let mut changed = false;
        for (f, v) in d.analysis.statements.iter().zip(verdicts.iter_mut()) {
            if !copies(f) || matches!(v, Verdict::Deny { .. }) {
                continue;
            }
            if let Err(e) = &loaded {
                *v = Verdict::Deny {
                    rule: "weir.sensitive-copy".into(),
                    reason: format!("this write copies columns, and Weir cannot tell whether they are sensitive: the masking catalog cannot be loaded ({e})"),
                };
                changed = true;
                continue;
            }
            let tags = weir_mask::derived_tags(f, &catalog);
            if tags.is_empty() {
                continue;
            }
            let copied = weir_policy::Copied {
                labels: tags.iter().map(|t| t.label.to_string()).collect(),
                may_unmask: tags.iter().all(|t| session.may_unmask(&t.source, &t.label)),
            };
            let again = session.decide_copying(f, &scope.touched(f), &copied, &d.anomalies);
            if again.severity() > v.severity() {
                *v = again;
                changed = true;
            }
            item.derived.extend(tags);
        }
        if changed {
            item.decision = Arc::new(Decision {
                verdicts,
                ..Decision::clone(d)
            });
        }
    }
}

/// Records the request's derived tags in the store, and makes the target's catalog
/// stale so that it is rebuilt with them before the next request is forwarded.
pub(crate) async fn record_derived(
    session: &SessionInfo,
    items: &[Item],
) -> Result<(), weir_store::StoreError> {
    let statement = |i: &Item| {
        if session.full_text {
            i.decision.analysis.sql.to_string()
        } else {
            i.decision.analysis.normalized.to_string()
        }
    };
    let tags: Vec<weir_store::NewDerivedTag> = items
        .iter()
        .flat_map(|i| {
            i.derived.iter().map(move |t| weir_store::NewDerivedTag {
                target: session.target_name.to_string(),
                column: t.column.clone(),
                label: t.label.to_string(),
                strategy: t.strategy.as_str().to_owned(),
                source: t.source.clone(),
                identity: session.identity_name.to_string(),
                statement: statement(i),
            })
        })
        .collect();
    let now = session.shared.approvals.clock().now_ms();
    session
        .shared
        .approvals
        .with_store(move |s| s.add_derived_tags(&tags, now))
        .await?;
    if let Some(cache) = &session.mask {
        cache.invalidate();
    }
    Ok(())
}
