//! The Cedar engine: schema, built-in and operator policies, and per-statement evaluation.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity,
    EntityUid, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode,
    Validator,
};
use weir_analyze::{CopyEndpoint, StatementFacts};

use crate::{Identity, TargetInfo, Verdict};

/// The schema Weir ships; policies are validated against it at load.
pub const SCHEMA: &str = include_str!("weir.cedarschema");
/// The built-in default policy (`[policy] defaults = true`).
pub const DEFAULTS: &str = include_str!("defaults.cedar");

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Load(String),
}

#[derive(Debug, Clone)]
struct Meta {
    /// `@id`, or `file:line` when the policy has none.
    rule: String,
    reason: String,
    approve: bool,
    bound: Option<u64>,
    /// Position in the policy set (built-ins first, then files in order): when several
    /// rules of the same outcome apply, the first one names the decision, every time.
    order: usize,
}

/// A validated policy set, ready to decide.
pub struct Engine {
    policies: PolicySet,
    /// What decides `unmask`: every forbid, and only the permits that name `unmask` in
    /// their action scope — a blanket permit must not show clear text.
    unmask_policies: PolicySet,
    /// What decides `approve` and `auto_approve`: only the policies, permits and forbids,
    /// that name the action in their scope. A rule about statements (`forbid(principal,
    /// action, resource) when { … }`) is not a rule about who approves them.
    approve_policies: PolicySet,
    auto_approve_policies: PolicySet,
    /// What decides the operators' actions ([`crate::Operation`]): only the policies that
    /// name one of them, as for `approve`.
    operate_policies: PolicySet,
    meta: HashMap<PolicyId, Meta>,
    schema: Schema,
    authorizer: Authorizer,
}

/// `text` with the lines between `// weir:NAME begin` and `// weir:NAME end` kept (markers
/// and all) or blanked (so line numbers in errors stay those of the file).
fn optional_block(text: &str, name: &str, keep: bool) -> String {
    let (begin, end) = (
        format!("// weir:{name} begin"),
        format!("// weir:{name} end"),
    );
    let mut inside = false;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim() == begin {
            inside = true;
        }
        if !inside || keep {
            out.push_str(line);
        }
        out.push('\n');
        if line.trim() == end {
            inside = false;
        }
    }
    out
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map(|t| t.matches('\n').count() + 1)
        .unwrap_or(1)
}

/// The first labelled location of a diagnostic, as a line in `text`.
fn diag_line(d: &dyn miette::Diagnostic, text: &str) -> usize {
    d.labels()
        .and_then(|mut l| l.next())
        .map(|l| line_of(text, l.offset()))
        .unwrap_or(1)
}

impl Engine {
    /// Builds the engine from the built-in defaults (when `defaults`) and the operator's
    /// policy files. Any parse or validation error names the file and line and stops load.
    pub fn load(
        defaults: bool,
        admin_group: &str,
        approvers: &[String],
        limits: crate::Limits,
        files: &[PathBuf],
    ) -> Result<Engine, PolicyError> {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA)
            .map_err(|e| PolicyError::Load(format!("built-in schema: {e}")))?;
        let mut sources: Vec<(String, String)> = Vec::new();
        if defaults {
            let admin = admin_group.replace('\\', "\\\\").replace('"', "\\\"");
            let quote = |g: &str| g.replace('\\', "\\\\").replace('"', "\\\"");
            let approvers = if approvers.is_empty() {
                format!("principal in Weir::Group::\"{admin}\"")
            } else {
                approvers
                    .iter()
                    .map(|g| format!("principal in Weir::Group::\"{}\"", quote(g)))
                    .collect::<Vec<_>>()
                    .join(" || ")
            };
            let text = optional_block(DEFAULTS, "bulk-write", limits.bulk_write_rows > 0);
            let text = optional_block(&text, "agent-writes", limits.agent_write_rows > 0);
            sources.push((
                "<built-in defaults>".into(),
                text.replace("__ADMIN_GROUP__", &admin)
                    .replace("__APPROVERS__", &approvers)
                    .replace("__AUDITOR_GROUP__", &quote(&limits.auditor_group))
                    .replace("__BULK_WRITE_ROWS__", &limits.bulk_write_rows.to_string())
                    .replace("__AGENT_WRITE_ROWS__", &limits.agent_write_rows.to_string())
                    .replace(
                        "__AGENT_WRITES_ALLOWED__",
                        if limits.agent_write_rows > 0 {
                            "true"
                        } else {
                            "false"
                        },
                    ),
            ));
        }
        for f in files {
            let text = std::fs::read_to_string(f)
                .map_err(|e| PolicyError::Load(format!("{}: {e}", f.display())))?;
            sources.push((f.display().to_string(), text));
        }
        let validator = Validator::new(schema.clone());
        let mut policies = PolicySet::new();
        let mut meta = HashMap::new();
        for (k, (file, text)) in sources.iter().enumerate() {
            let set = PolicySet::from_str(text).map_err(|e| PolicyError::Invalid {
                file: file.clone(),
                line: diag_line(&e, text),
                message: e.to_string(),
            })?;
            let result = validator.validate(&set, ValidationMode::Strict);
            if let Some(err) = result.validation_errors().next() {
                return Err(PolicyError::Invalid {
                    file: file.clone(),
                    line: diag_line(err, text),
                    message: err.to_string(),
                });
            }
            for (n, p) in set.policies().enumerate() {
                let id = PolicyId::new(format!("f{k}p{n}"));
                let rule = p
                    .annotation("id")
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{file}#{}", n + 1));
                let bound = match p.annotation("bound") {
                    None => None,
                    Some(b) => Some(b.parse::<u64>().map_err(|_| PolicyError::Invalid {
                        file: file.clone(),
                        line: 1,
                        message: format!("policy {rule}: @bound(\"{b}\") is not a row count"),
                    })?),
                };
                let approve = match p.annotation("outcome") {
                    None | Some("deny") => false,
                    Some("approve") => true,
                    Some(o) => {
                        return Err(PolicyError::Invalid {
                            file: file.clone(),
                            line: 1,
                            message: format!(
                                "policy {rule}: @outcome(\"{o}\") must be \"deny\" or \"approve\""
                            ),
                        })
                    }
                };
                meta.insert(
                    id.clone(),
                    Meta {
                        reason: p
                            .annotation("reason")
                            .unwrap_or("denied by policy")
                            .to_owned(),
                        rule,
                        approve,
                        bound,
                        order: meta.len(),
                    },
                );
                policies
                    .add(p.new_id(id))
                    .map_err(|e| PolicyError::Load(e.to_string()))?;
            }
        }
        let unmask = uid("Action", "unmask").map_err(|e| PolicyError::Load(e.to_string()))?;
        let mut unmask_policies = PolicySet::new();
        for p in policies.policies() {
            let names_unmask = match p.action_constraint() {
                ActionConstraint::Any => false,
                ActionConstraint::Eq(a) => a == unmask,
                ActionConstraint::In(list) => list.contains(&unmask),
            };
            if p.effect() == Effect::Forbid || names_unmask {
                unmask_policies
                    .add(p.clone())
                    .map_err(|e| PolicyError::Load(e.to_string()))?;
            }
        }
        let naming_any = |actions: &[&str]| -> Result<PolicySet, PolicyError> {
            let uids = actions
                .iter()
                .map(|a| uid("Action", a))
                .collect::<Result<Vec<_>, _>>()?;
            let mut set = PolicySet::new();
            for p in policies.policies() {
                let names = match p.action_constraint() {
                    ActionConstraint::Any => false,
                    ActionConstraint::Eq(a) => uids.contains(&a),
                    ActionConstraint::In(list) => list.iter().any(|a| uids.contains(a)),
                };
                if names {
                    set.add(p.clone())
                        .map_err(|e| PolicyError::Load(e.to_string()))?;
                }
            }
            Ok(set)
        };
        let approve_policies = naming_any(&["approve"])?;
        let auto_approve_policies = naming_any(&["auto_approve"])?;
        let operations: Vec<&str> = crate::Operation::ALL.iter().map(|o| o.as_str()).collect();
        let operate_policies = naming_any(&operations)?;
        Ok(Engine {
            policies,
            unmask_policies,
            approve_policies,
            auto_approve_policies,
            operate_policies,
            meta,
            schema,
            authorizer: Authorizer::new(),
        })
    }

    /// The entities of one session: the identity with its groups, and the target.
    pub fn session(
        &self,
        who: &Identity,
        target: &TargetInfo,
    ) -> Result<SessionEntities, PolicyError> {
        let principal = uid("Identity", &who.name)?;
        let resource = uid("Target", &target.name)?;
        let groups: HashSet<EntityUid> = who
            .groups
            .iter()
            .map(|g| uid("Group", g))
            .collect::<Result<_, _>>()?;
        let mut attrs = vec![
            (
                "name".to_owned(),
                RestrictedExpression::new_string(who.name.clone()),
            ),
            (
                "kind".to_owned(),
                RestrictedExpression::new_string(who.kind.as_str().to_owned()),
            ),
            (
                "auth".to_owned(),
                RestrictedExpression::new_string(who.source.to_owned()),
            ),
        ];
        if let Some(person) = &who.on_behalf_of {
            attrs.push((
                "on_behalf_of".to_owned(),
                RestrictedExpression::new_string(person.clone()),
            ));
        }
        let mut entities = vec![
            Entity::new_with_tags(
                principal.clone(),
                attrs,
                groups.iter().cloned(),
                // Attributes (from config, a token, or the IdP's chosen claims) are tags:
                // `principal.hasTag("team") && principal.getTag("team") == "payments"`.
                who.attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone()))),
            )
            .map_err(|e| PolicyError::Load(e.to_string()))?,
            Entity::new(
                resource.clone(),
                HashMap::from([
                    (
                        "name".to_owned(),
                        RestrictedExpression::new_string(target.name.clone()),
                    ),
                    (
                        "environment".to_owned(),
                        RestrictedExpression::new_string(target.environment.clone()),
                    ),
                ]),
                HashSet::new(),
            )
            .map_err(|e| PolicyError::Load(e.to_string()))?,
        ];
        entities.extend(
            groups
                .into_iter()
                .map(|g| Entity::new_no_attrs(g, HashSet::new())),
        );
        let entities = Entities::from_entities(entities, Some(&self.schema))
            .map_err(|e| PolicyError::Load(e.to_string()))?;
        Ok(SessionEntities {
            principal,
            resource,
            entities,
        })
    }

    /// Decides one statement. Every failure on the way is a deny.
    pub fn decide(
        &self,
        s: &SessionEntities,
        facts: &StatementFacts,
        untrusted_calls: bool,
        sensitivity: &[String],
        state: crate::SessionState,
        copied: Option<&crate::Copied>,
    ) -> Verdict {
        self.decide_as(
            s,
            facts.kind.as_str(),
            facts,
            untrusted_calls,
            sensitivity,
            state,
            copied,
        )
    }

    /// [`Engine::decide`] with another action than the statement's kind (`undo`: the
    /// restoring statements of `weir undo`, with their own facts as context).
    #[allow(clippy::too_many_arguments)]
    pub fn decide_as(
        &self,
        s: &SessionEntities,
        action: &str,
        facts: &StatementFacts,
        untrusted_calls: bool,
        sensitivity: &[String],
        state: crate::SessionState,
        copied: Option<&crate::Copied>,
    ) -> Verdict {
        match self.try_decide(
            s,
            action,
            facts,
            untrusted_calls,
            sensitivity,
            state,
            copied,
        ) {
            Ok(v) => v,
            Err(e) => Verdict::Deny {
                rule: "weir.policy-error".into(),
                reason: e,
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn try_decide(
        &self,
        s: &SessionEntities,
        action: &str,
        facts: &StatementFacts,
        untrusted_calls: bool,
        sensitivity: &[String],
        state: crate::SessionState,
        copied: Option<&crate::Copied>,
    ) -> Result<Verdict, String> {
        let action = uid("Action", action).map_err(|e| e.to_string())?;
        let mut pairs = context_pairs(facts, untrusted_calls, sensitivity);
        for (k, v) in pairs.iter_mut() {
            match k.as_str() {
                "granted" if state.granted => *v = RestrictedExpression::new_bool(true),
                "tainted" if state.tainted => *v = RestrictedExpression::new_bool(true),
                "anomalies" if !state.anomalies.is_empty() => {
                    *v = strings(state.anomalies.iter().cloned())
                }
                "reads_untrusted" if state.reads_untrusted => {
                    *v = RestrictedExpression::new_bool(true)
                }
                "undoable" if state.undoable => *v = RestrictedExpression::new_bool(true),
                "copies_sensitive" => {
                    if let Some(c) = copied {
                        *v = strings(c.labels.iter().cloned());
                    }
                }
                "may_unmask_copies" => {
                    if let Some(c) = copied {
                        *v = RestrictedExpression::new_bool(c.may_unmask);
                    }
                }
                _ => {}
            }
        }
        let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
        let request = Request::new(
            s.principal.clone(),
            action,
            s.resource.clone(),
            context,
            None,
        )
        .map_err(|e| e.to_string())?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &s.entities);
        if let Some(err) = response.diagnostics().errors().next() {
            return Err(format!("policy evaluation failed: {err}"));
        }
        let mut reasons: Vec<&Meta> = response
            .diagnostics()
            .reason()
            .filter_map(|id| self.meta.get(id))
            .collect();
        reasons.sort_by_key(|m| m.order);
        Ok(match response.decision() {
            CedarDecision::Allow => match reasons
                .iter()
                .filter_map(|m| m.bound.map(|b| (b, m)))
                // The smallest bound; at equal bounds the rule loaded last (an operator's
                // file over the built-in one) names it.
                .min_by_key(|(b, m)| (*b, std::cmp::Reverse(m.order)))
            {
                Some((rows, m)) => Verdict::AllowBounded {
                    rows,
                    rule: m.rule.clone(),
                },
                None => Verdict::Allow,
            },
            CedarDecision::Deny => {
                if let Some(m) = reasons.iter().find(|m| !m.approve) {
                    Verdict::Deny {
                        rule: m.rule.clone(),
                        reason: m.reason.clone(),
                    }
                } else if let Some(m) = reasons.first() {
                    Verdict::RequireApproval {
                        rule: m.rule.clone(),
                        reason: m.reason.clone(),
                    }
                } else {
                    Verdict::Deny {
                        rule: "weir.no-permit".into(),
                        reason: "no policy permits this statement".into(),
                    }
                }
            }
        })
    }
}

impl Engine {
    /// Whether the session's identity may see `column` (`schema.table.column`) in clear,
    /// given what makes it sensitive (`tags`). Any failure is a no.
    pub fn may_unmask(&self, s: &SessionEntities, column: &str, tags: &[&str]) -> bool {
        let Ok(action) = uid("Action", "unmask") else {
            return false;
        };
        let mut facts = StatementFacts::new(weir_analyze::StatementKind::Select);
        facts.node = "unmask".into();
        let mut pairs = context_pairs(&facts, false, &[]);
        for (k, v) in pairs.iter_mut() {
            match k.as_str() {
                "kind" => *v = RestrictedExpression::new_string("unmask".into()),
                "column" => *v = RestrictedExpression::new_string(column.to_owned()),
                "column_tags" => *v = strings(tags.iter().map(|t| (*t).to_owned())),
                _ => {}
            }
        }
        let Ok(context) = Context::from_pairs(pairs) else {
            return false;
        };
        let Ok(request) = Request::new(
            s.principal.clone(),
            action,
            s.resource.clone(),
            context,
            None,
        ) else {
            return false;
        };
        let response = self
            .authorizer
            .is_authorized(&request, &self.unmask_policies, &s.entities);
        response.diagnostics().errors().next().is_none()
            && response.decision() == CedarDecision::Allow
    }
}

impl Engine {
    /// Whether an approval is given: `approver` approving `request` (action `approve`), or
    /// policy approving it on its own for the requester (action `auto_approve`, with the
    /// requester's entities as `approver`). Only policies naming the action count; any
    /// failure is a no.
    pub fn may_approve(
        &self,
        approver: &SessionEntities,
        request: &ApprovalFacts<'_>,
        auto: bool,
    ) -> bool {
        let (name, set) = if auto {
            ("auto_approve", &self.auto_approve_policies)
        } else {
            ("approve", &self.approve_policies)
        };
        let Ok(action) = uid("Action", name) else {
            return false;
        };
        let mut pairs = context_pairs(request.facts, false, request.sensitivity);
        for (k, v) in pairs.iter_mut() {
            match k.as_str() {
                "requester" => *v = RestrictedExpression::new_string(request.requester.into()),
                "requester_kind" => {
                    *v = RestrictedExpression::new_string(request.requester_kind.into())
                }
                "rule" => *v = RestrictedExpression::new_string(request.rule.into()),
                "self_approval" => *v = RestrictedExpression::new_bool(request.self_approval),
                _ => {}
            }
        }
        let Ok(context) = Context::from_pairs(pairs) else {
            return false;
        };
        self.allowed(approver, action, context, set)
    }

    /// Whether `set` allows the session's principal `action` on its resource, with no error
    /// while evaluating (an error is a no).
    fn allowed(
        &self,
        s: &SessionEntities,
        action: EntityUid,
        context: Context,
        set: &PolicySet,
    ) -> bool {
        let Ok(req) = Request::new(
            s.principal.clone(),
            action,
            s.resource.clone(),
            context,
            None,
        ) else {
            return false;
        };
        let response = self.authorizer.is_authorized(&req, set, &s.entities);
        response.diagnostics().errors().next().is_none()
            && response.decision() == CedarDecision::Allow
    }
}

impl Engine {
    /// Whether the session's identity may do `op` on its resource. Only policies naming an
    /// operation count; the context is that of no statement. Any failure is a no.
    pub fn may_operate(&self, s: &SessionEntities, op: crate::Operation) -> bool {
        let Ok(action) = uid("Action", op.as_str()) else {
            return false;
        };
        let none = StatementFacts::new(weir_analyze::StatementKind::Empty);
        let Ok(context) = Context::from_pairs(context_pairs(&none, false, &[])) else {
            return false;
        };
        self.allowed(s, action, context, &self.operate_policies)
    }
}

/// What an approver's decision is about: the request's statement and who asked.
pub struct ApprovalFacts<'a> {
    pub facts: &'a StatementFacts,
    pub sensitivity: &'a [String],
    pub requester: &'a str,
    pub requester_kind: &'a str,
    /// The rule that asked for approval.
    pub rule: &'a str,
    /// The approver is the requester.
    pub self_approval: bool,
}

/// Per-session entities, built once at connect.
pub struct SessionEntities {
    principal: EntityUid,
    resource: EntityUid,
    entities: Entities,
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let escaped = id.replace('\\', "\\\\").replace('"', "\\\"");
    EntityUid::from_str(&format!("Weir::{kind}::\"{escaped}\""))
        .map_err(|e| PolicyError::Load(e.to_string()))
}

fn strings(items: impl IntoIterator<Item = String>) -> RestrictedExpression {
    RestrictedExpression::new_set(items.into_iter().map(RestrictedExpression::new_string))
}

/// The facts as Cedar's context. `untrusted_calls`: the statement calls a function that is
/// neither built-in nor trusted by the operator, which makes its effect unknown.
fn context_pairs(
    f: &StatementFacts,
    untrusted_calls: bool,
    sensitivity: &[String],
) -> Vec<(String, RestrictedExpression)> {
    let b = |k: &str, v: bool| (k.to_owned(), RestrictedExpression::new_bool(v));
    let (endpoint, from) = match &f.copy {
        None => ("none", false),
        Some(c) => (
            match c.endpoint {
                CopyEndpoint::Client => "client",
                CopyEndpoint::ServerFile(_) => "file",
                CopyEndpoint::Program(_) => "program",
            },
            c.from,
        ),
    };
    // Function names without their schema: `pg_catalog.pg_read_file` is `pg_read_file`.
    let functions = f
        .functions
        .iter()
        .map(|n| n.rsplit('.').next().unwrap_or(n).to_owned());
    vec![
        (
            "kind".to_owned(),
            RestrictedExpression::new_string(f.kind.as_str().to_owned()),
        ),
        (
            "tables_read".to_owned(),
            strings(f.tables_read.iter().cloned()),
        ),
        (
            "tables_written".to_owned(),
            strings(f.tables_written.iter().cloned()),
        ),
        ("functions".to_owned(), strings(functions)),
        (
            "user_functions".to_owned(),
            strings(f.user_functions.iter().cloned()),
        ),
        (
            "columns".to_owned(),
            strings(f.columns.iter().map(|c| c.to_string())),
        ),
        b("has_where", f.has_where),
        b("where_effective", f.where_effective),
        b("unrestricted_write", f.unrestricted_write),
        b("has_limit", f.has_limit),
        b("writes", f.writes),
        b("nested_write", f.nested_write),
        b("unknown_nested", f.unknown_nested),
        b("unknown_effect", f.unknown_effect || untrusted_calls),
        b("explain_analyze", f.explain_analyze),
        (
            "copy_endpoint".to_owned(),
            RestrictedExpression::new_string(endpoint.to_owned()),
        ),
        b("copy_from", from),
        (
            "setting".to_owned(),
            RestrictedExpression::new_string(f.setting.clone().unwrap_or_default().to_lowercase()),
        ),
        b("untrusted_language", f.untrusted_language),
        (
            "hazards".to_owned(),
            strings(f.hazards.iter().map(|h| (*h).to_owned())),
        ),
        ("copies_sensitive".to_owned(), strings(std::iter::empty())),
        b("may_unmask_copies", false),
        (
            "sensitivity".to_owned(),
            strings(sensitivity.iter().cloned()),
        ),
        (
            "column".to_owned(),
            RestrictedExpression::new_string(String::new()),
        ),
        ("column_tags".to_owned(), strings(std::iter::empty())),
        (
            "requester".to_owned(),
            RestrictedExpression::new_string(String::new()),
        ),
        (
            "requester_kind".to_owned(),
            RestrictedExpression::new_string(String::new()),
        ),
        (
            "rule".to_owned(),
            RestrictedExpression::new_string(String::new()),
        ),
        b("self_approval", false),
        b("granted", false),
        b("tainted", false),
        b("reads_untrusted", false),
        ("anomalies".to_owned(), strings(std::iter::empty())),
        b("undoable", false),
    ]
}

/// Expands `dir/*.cedar`-style patterns (a `*` or `?` in the file name only) relative to `base`.
pub fn expand(base: &Path, patterns: &[String]) -> Result<Vec<PathBuf>, PolicyError> {
    let mut out = Vec::new();
    for pat in patterns {
        let full = if Path::new(pat).is_absolute() {
            PathBuf::from(pat)
        } else {
            base.join(pat)
        };
        let name = full
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        if !name.contains(['*', '?']) {
            out.push(full);
            continue;
        }
        let dir = full
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| base.to_path_buf());
        let mut matched: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| PolicyError::Load(format!("[policy] files: {}: {e}", dir.display())))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| wildcard(&name, n))
            })
            .collect();
        matched.sort();
        out.extend(matched);
    }
    Ok(out)
}

fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with backtracking on the last '*'.
    let (mut i, mut j, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while j < n.len() {
        match p.get(i) {
            Some('?') => {
                i += 1;
                j += 1;
            }
            Some('*') => {
                star = Some(i);
                mark = j;
                i += 1;
            }
            Some(c) if Some(c) == n.get(j) => {
                i += 1;
                j += 1;
            }
            _ => match star {
                Some(s) => {
                    i = s + 1;
                    mark += 1;
                    j = mark;
                }
                None => return false,
            },
        }
    }
    while p.get(i) == Some(&'*') {
        i += 1;
    }
    i == p.len()
}
