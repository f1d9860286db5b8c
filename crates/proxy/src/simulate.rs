//! How policy would decide an identity's SQL on a target, statement by statement, as the
//! gateway decides it: `weir policy check`, `weir policy test` and the console's simulator.

use weir_analyze::{Analyzer, Scope};
use weir_policy::{Identity, Policy, PolicyError, TargetInfo, Verdict};

/// One statement's simulated decision.
#[derive(Debug, Clone)]
pub struct Simulated {
    /// The statement's kind (`select`, `update`, …); `unparsed` when the SQL did not parse.
    pub kind: String,
    pub verdict: Verdict,
}

/// One line per verdict: `allow`, `deny <rule>`, `approve <rule>` or `bound <n> <rule>`.
pub fn verdict_line(v: &Verdict) -> String {
    match v {
        Verdict::Allow => "allow".into(),
        Verdict::Deny { rule, .. } => format!("deny {rule}"),
        Verdict::RequireApproval { rule, .. } => format!("approve {rule}"),
        Verdict::AllowBounded { rows, rule } => format!("bound {rows} {rule}"),
    }
}

/// The decision for each statement of `sql`. An agent acting for `person` is decided for
/// both, the stricter verdict per statement. `mysql`: the target is MySQL with this
/// database (its statements are read by the MySQL analyzer, and another database is denied).
/// SQL that does not analyze is one denial, as at the gateway.
pub fn simulate(
    policy: &Policy,
    analyzer: &Analyzer,
    who: &Identity,
    person: Option<&Identity>,
    target: &TargetInfo,
    mysql: Option<&str>,
    sql: &str,
) -> Result<Vec<Simulated>, PolicyError> {
    let session = policy.session(who, target)?;
    let theirs = person.map(|p| policy.session(p, target)).transpose()?;
    let analyzed = match mysql {
        Some(db) => {
            weir_analyze::mysql::analyze(sql.as_bytes(), &weir_analyze::mysql::Mode::new(db))
        }
        None => analyzer.analyze(sql.as_bytes()),
    };
    let refused = |rule: &str, reason: String| {
        vec![Simulated {
            kind: "unparsed".into(),
            verdict: Verdict::Deny {
                rule: rule.into(),
                reason,
            },
        }]
    };
    let analysis = match analyzed {
        Ok(a) => a,
        Err(weir_analyze::AnalyzeError::Parse(e)) => {
            return Ok(refused("weir.parse", e.to_string()))
        }
        Err(weir_analyze::AnalyzeError::LexingMode(e)) => {
            return Ok(refused(weir_analyze::lexing::RULE, e.to_string()))
        }
        Err(e) => return Ok(refused("weir.analyze", e.to_string())),
    };
    let resolution = Scope::default()
        .after(&analysis)
        .unwrap_or_default()
        .resolve_analysis(&analysis);
    let mut verdicts = policy.decide(&session, &resolution);
    if let Some(theirs) = &theirs {
        verdicts = verdicts
            .into_iter()
            .zip(policy.decide(theirs, &resolution))
            .map(|(a, b)| a.stricter(b))
            .collect();
    }
    if let Some(db) = mysql {
        for (f, v) in resolution.statements.iter().zip(verdicts.iter_mut()) {
            if let Some(name) = weir_analyze::mysql::foreign_name(f, db) {
                *v = Verdict::Deny {
                    rule: weir_analyze::mysql::OTHER_DATABASE.into(),
                    reason: format!("names {name}"),
                };
            }
        }
    }
    Ok(resolution
        .statements
        .iter()
        .zip(verdicts)
        .map(|(f, verdict)| Simulated {
            kind: f.kind.as_str().to_owned(),
            verdict,
        })
        .collect())
}
