//! Command line: `weir serve | demo | token …`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Every verb's `--config`.
const CONFIG_HELP: &str = "The configuration file [default: $WEIR_CONFIG, then ./weir.toml]";

/// The configuration file a verb uses: `--config`, else `$WEIR_CONFIG`, else `./weir.toml`
/// when it exists; `None` when there is none.
pub fn config_path(given: Option<PathBuf>) -> Option<PathBuf> {
    given
        .or_else(|| {
            std::env::var_os("WEIR_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| {
            let local = PathBuf::from("weir.toml");
            local.is_file().then_some(local)
        })
}

/// [`config_path`], or an error that says where Weir looked.
fn required_config(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    config_path(given).ok_or_else(|| {
        let cwd = std::env::current_dir()
            .map(|d| d.join("weir.toml").display().to_string())
            .unwrap_or_else(|_| "./weir.toml".into());
        anyhow::anyhow!(
            "no configuration file: --config was not given, WEIR_CONFIG is not set, and {cwd} does not exist; pass --config weir.toml or set WEIR_CONFIG"
        )
    })
}

/// Runs `f` with the verb's configuration file.
fn with_config(
    given: Option<PathBuf>,
    f: impl FnOnce(&std::path::Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    f(&required_config(given)?)
}

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Identity-aware gateway for PostgreSQL and MySQL"
)]
struct Cli {
    /// Log lines as plain text (the default) or as one JSON object per line, with the
    /// session's fields (session id, identity, target) on every line of a session. Also
    /// `WEIR_LOG_FORMAT`.
    #[arg(long = "log-format", global = true, value_name = "text|json")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground until SIGTERM or Ctrl-C.
    Serve {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Start a throwaway PostgreSQL with sample data and the gateway in front of it.
    Demo {
        /// Address for the gateway's PostgreSQL listener.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
        /// The store (default: a SQLite file in the demo's directory); `postgres://…` runs
        /// the demo on a shared PostgreSQL store.
        #[arg(long)]
        store: Option<String>,
    },
    /// Serve MCP (the tools list_targets, describe_target, query, request_access) over
    /// stdio, as the identity whose token is in WEIR_TOKEN.
    Mcp {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Issue, list and revoke Weir tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Simulate decisions and run policy unit tests.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Log in with the identity provider ([identity] issuer) by the device-code flow; the
    /// tokens are cached for weir connect.
    Login {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Start psql against a target through the gateway with the cached login.
    Connect {
        target: String,
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Print the connection string instead of starting psql.
        #[arg(long)]
        print: bool,
    },
    /// Pending approval requests, one per line, id first.
    Approvals {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Approve a waiting request: its statement runs and the client gets the result.
    Approve {
        id: String,
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// The approver; policy decides whether they may.
        #[arg(long = "as")]
        who: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print the SQL that reverses an UPDATE or DELETE (its statement event's `seq` in
    /// `weir audit export`) from its before-image, masked unless NAME may see the values;
    /// with --apply, run it through the gateway as NAME (policy and approval apply).
    Undo {
        seq: u64,
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Who undoes it: the printed values are masked as for them; --apply runs as them.
        #[arg(long = "as")]
        who: Option<String>,
        /// Run it (one transaction): rows that changed since are refused and reported, and
        /// the exit status is 0 only if every row was restored.
        #[arg(long)]
        apply: bool,
    },
    /// Deny a waiting request: the client gets SQLSTATE 42501 with the reason.
    Deny {
        id: String,
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        #[arg(long = "as")]
        who: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Ask for just-in-time access to a target; once approved, a grant exists until it
    /// expires or is revoked.
    Request {
        target: String,
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// How long the access lasts once approved, e.g. 2h.
        #[arg(long = "for")]
        duration: String,
        #[arg(long)]
        reason: String,
        /// Who asks.
        #[arg(long = "as")]
        who: String,
    },
    /// Active access grants, one per line, id first.
    Grants {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// End an access grant now; sessions that relied on it are closed.
    Revoke {
        id: String,
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Columns marked sensitive because a write copied sensitive values into them, and
    /// clearing such a mark after review.
    Tags {
        #[command(subcommand)]
        command: TagsCommand,
    },
    /// Read and verify the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum TagsCommand {
    /// Derived tags in force, one per line, id first.
    List {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        #[arg(long)]
        target: Option<String>,
        /// Cleared tags too.
        #[arg(long)]
        all: bool,
    },
    /// Clear a derived tag: its column is no longer masked on its account.
    Clear {
        id: String,
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain and every signed checkpoint; `ok <n> events`, or exit 1 naming
    /// the first bad event.
    Verify {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Verify with this public key (hex) instead of the one derived from the signing key.
        #[arg(long)]
        public_key: Option<String>,
        /// Verify an export (`weir audit export --format jsonl`, unfiltered) instead of the
        /// store; needs --public-key.
        #[arg(long, requires = "public_key")]
        file: Option<PathBuf>,
    },
    /// Print the public key that verifies the checkpoints (hex), for auditors.
    PublicKey {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Events matching every filter given, oldest first.
    Search {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        #[command(flatten)]
        filter: crate::audit_cmd::FilterArgs,
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Stream matching events as JSON lines (with their chain fields) or CSV.
    Export {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: crate::audit_cmd::Format,
        #[command(flatten)]
        filter: crate::audit_cmd::FilterArgs,
    },
    /// The last events, then new ones as they are written.
    Tail {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: u64,
        /// Print and exit instead of following.
        #[arg(long)]
        no_follow: bool,
        #[command(flatten)]
        filter: crate::audit_cmd::FilterArgs,
    },
    /// One session's statements, decisions and outcomes, in order.
    Replay {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// The session's number (`session` in the trail's events).
        #[arg(required_unless_present = "last", conflicts_with = "last")]
        session: Option<u64>,
        /// The most recent session (of `--identity`, when given) instead of a number.
        #[arg(long)]
        last: bool,
        /// With --last: the most recent session of this identity.
        #[arg(long, requires = "last")]
        identity: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the decision for each statement of SQL: allow, deny <rule>, approve <rule> or
    /// bound <n> <rule>.
    Check {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// The identity to decide for.
        #[arg(long = "as")]
        who: String,
        #[arg(long)]
        target: String,
        sql: String,
    },
    /// Run a policy unit-test file (TOML `[[case]]` entries); exits 1 if any case fails.
    Test {
        file: PathBuf,
        /// Use this config's policy, identities and targets [default: $WEIR_CONFIG, then
        /// ./weir.toml; without either, the built-in defaults].
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token; prints it alone on the last line.
    Create {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "service")]
        kind: String,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// An attribute policy sees as a tag of the identity, KEY=VALUE; repeatable.
        #[arg(long = "attr", value_name = "KEY=VALUE")]
        attrs: Vec<String>,
        /// Lifetime, e.g. 24h or 30d; none means no expiry.
        #[arg(long)]
        ttl: Option<String>,
        /// For an agent: the person it acts for. Each statement must be allowed for both,
        /// values are masked if either would see them masked, and the agent stops when the
        /// person's access does.
        #[arg(long = "on-behalf-of", value_name = "PERSON")]
        on_behalf_of: Option<String>,
    },
    /// List tokens (never the tokens themselves).
    List {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Revoke every token of an identity.
    Revoke {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        name: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // --log-format, else WEIR_LOG_FORMAT, else `[log] format` of the config file of a verb
    // that serves (tracing starts before the config is loaded, so the key is peeked at
    // here; a file that does not parse is reported by the verb itself).
    let format = cli
        .log_format
        .or_else(|| match std::env::var("WEIR_LOG_FORMAT").as_deref() {
            Ok("json") => Some(LogFormat::Json),
            Ok("text") => Some(LogFormat::Text),
            _ => None,
        })
        .or_else(|| match &cli.command {
            Command::Serve { config } | Command::Mcp { config } => {
                configured_log_format(config.clone())
            }
            _ => None,
        })
        .unwrap_or(LogFormat::Text);
    init_tracing(format);
    let result = match cli.command {
        Command::Serve { config } => with_config(config, crate::serve::run),
        Command::Demo { listen, store } => crate::demo::run(&listen, store.as_deref()),
        Command::Mcp { config } => with_config(config, crate::mcp_cmd::run),
        Command::Token { command } => match command {
            TokenCommand::Create {
                config,
                name,
                kind,
                groups,
                attrs,
                ttl,
                on_behalf_of,
            } => with_config(config, |c| {
                crate::token::create(
                    c,
                    crate::token::NewIdentity {
                        name: &name,
                        kind: &kind,
                        groups: &groups,
                        attrs: &attrs,
                        on_behalf_of: on_behalf_of.as_deref(),
                    },
                    ttl.as_deref(),
                )
            }),
            TokenCommand::List { config } => with_config(config, crate::token::list),
            TokenCommand::Revoke { config, name } => {
                with_config(config, |c| crate::token::revoke(c, &name))
            }
        },
        Command::Login { config } => with_config(config, crate::login::login),
        Command::Connect {
            target,
            config,
            print,
        } => with_config(config, |c| crate::login::connect(c, &target, print)),
        Command::Approvals { config } => with_config(config, crate::approvals_cmd::list),
        Command::Request {
            target,
            config,
            duration,
            reason,
            who,
        } => with_config(config, |c| {
            crate::approvals_cmd::request(c, &target, &duration, &reason, &who)
        }),
        Command::Grants { config } => with_config(config, crate::approvals_cmd::grants),
        Command::Revoke { id, config } => {
            with_config(config, |c| crate::approvals_cmd::revoke(c, &id))
        }
        Command::Undo {
            seq,
            config,
            who,
            apply,
        } => with_config(config, |c| {
            crate::undo_cmd::run(c, seq, who.as_deref(), apply)
        }),
        Command::Approve {
            id,
            config,
            who,
            reason,
        } => with_config(config, |c| {
            crate::approvals_cmd::decide(c, &id, who.as_deref(), reason.as_deref(), true)
        }),
        Command::Deny {
            id,
            config,
            who,
            reason,
        } => with_config(config, |c| {
            crate::approvals_cmd::decide(c, &id, who.as_deref(), reason.as_deref(), false)
        }),
        Command::Tags { command } => match command {
            TagsCommand::List {
                config,
                target,
                all,
            } => with_config(config, |c| crate::tags_cmd::list(c, target.as_deref(), all)),
            TagsCommand::Clear { id, config, reason } => with_config(config, |c| {
                crate::tags_cmd::clear(c, &id, reason.as_deref())
            }),
        },
        Command::Audit { command } => match command {
            AuditCommand::Verify {
                config,
                public_key,
                file,
            } => {
                let verdict = match file {
                    Some(file) => {
                        crate::audit_cmd::verify_export(&file, public_key.as_deref().unwrap_or(""))
                    }
                    None => required_config(config)
                        .map_err(|e| anyhow::anyhow!("{e} (or verify an export with --file)"))
                        .and_then(|c| crate::audit_cmd::verify(&c, public_key.as_deref())),
                };
                match verdict {
                    Ok(true) => Ok(()),
                    Ok(false) => return ExitCode::FAILURE,
                    Err(e) => Err(e),
                }
            }
            AuditCommand::PublicKey { config } => {
                with_config(config, crate::audit_cmd::print_public_key)
            }
            AuditCommand::Search {
                config,
                filter,
                limit,
            } => with_config(config, |c| crate::audit_cmd::search(c, &filter, limit)),
            AuditCommand::Export {
                config,
                format,
                filter,
            } => with_config(config, |c| crate::audit_cmd::export(c, &filter, format)),
            AuditCommand::Tail {
                config,
                lines,
                no_follow,
                filter,
            } => with_config(config, |c| {
                crate::audit_cmd::tail(c, &filter, lines, !no_follow)
            }),
            AuditCommand::Replay {
                config,
                session,
                last: _,
                identity,
            } => with_config(config, |c| {
                crate::audit_cmd::replay(c, session, identity.as_deref())
            }),
        },
        Command::Policy { command } => match command {
            PolicyCommand::Check {
                config,
                who,
                target,
                sql,
            } => with_config(config, |c| crate::policy_cmd::check(c, &who, &target, &sql)),
            PolicyCommand::Test { file, config } => {
                match crate::policy_cmd::test(&file, config_path(config).as_deref()) {
                    Ok(true) => Ok(()),
                    Ok(false) => return ExitCode::FAILURE,
                    Err(e) => Err(e),
                }
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: a cause whose text the message already holds
/// (`cannot read x: No such file…` caused by `No such file…`) is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

/// `[log] format` in the verb's configuration file, if it says `json` or `text`.
fn configured_log_format(given: Option<PathBuf>) -> Option<LogFormat> {
    let text = std::fs::read_to_string(config_path(given)?).ok()?;
    let value: toml::Value = toml::from_str(&text).ok()?;
    match value.get("log")?.get("format")?.as_str()? {
        "json" => Some(LogFormat::Json),
        "text" => Some(LogFormat::Text),
        _ => None,
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The innermost span's fields (a session's id, peer, channel, identity, target)
        // are flattened into every line it encloses.
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
