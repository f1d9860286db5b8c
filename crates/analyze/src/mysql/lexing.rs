//! Where MySQL's server and sqlparser could read the same bytes differently, and what Weir
//! refuses for it: character sets that can hide a quote, session modes that change how
//! quotes and `||` are read, executable comments, a space between a built-in's name and its
//! parenthesis, and statements that change the lexing mode itself.

use super::*;

/// MySQL character sets in which a multibyte character can contain `\` (0x5c) or a quote:
/// the server and a byte-level reader of the text would disagree on where a literal ends.
pub fn unsafe_charset(name: &str) -> bool {
    let n = name
        .trim()
        .trim_matches(|c| c == '\'' || c == '"' || c == '`');
    let n = n.to_ascii_lowercase();
    let charset = n.split('_').next().unwrap_or("");
    matches!(charset, "sjis" | "cp932" | "big5" | "gbk" | "gb18030")
}

/// Character sets (or their collations) a session may switch to: ones in which every byte
/// of a multibyte character has its high bit set, or single-byte ones. A number, DEFAULT
/// or anything else is refused: the server would pick a character set Weir cannot see.
pub(super) fn safe_charset(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    let charset = n.split('_').next().unwrap_or("");
    n != "default"
        && matches!(
            charset,
            "utf8"
                | "utf8mb3"
                | "utf8mb4"
                | "latin1"
                | "latin2"
                | "latin5"
                | "latin7"
                | "ascii"
                | "binary"
                | "cp1250"
                | "cp1251"
                | "cp1256"
                | "cp1257"
                | "koi8r"
                | "koi8u"
                | "greek"
                | "hebrew"
                | "armscii8"
                | "geostd8"
                | "keybcs2"
                | "cp850"
                | "cp852"
                | "cp866"
                | "dec8"
                | "hp8"
                | "swe7"
                | "macce"
                | "macroman"
                | "ujis"
                | "eucjpms"
                | "euckr"
        )
}

/// Why a text must not be analyzed by sqlparser in this mode, if it must not.
pub(super) fn lexing_refusal(text: &str, mode: &Mode) -> Option<String> {
    if text.contains("/*!") || text.contains("/*M!") {
        return Some("weir: executable comments (/*! … */) run on the server only from a version on, which Weir's parser cannot follow; write the statement without them".into());
    }
    if text.contains("||") {
        return Some(format!(
            "weir: `||` means {} to this session's server and something else to Weir's parser; write OR or CONCAT()",
            if mode.pipes_as_concat { "concatenation" } else { "OR" }
        ));
    }
    if mode.ansi_quotes && text.contains('"') {
        return Some("weir: the session's sql_mode has ANSI_QUOTES, under which double quotes name identifiers; use backticks".into());
    }
    if mode.no_backslash_escapes && text.contains('\\') {
        return Some("weir: the session's sql_mode has NO_BACKSLASH_ESCAPES, under which a backslash does not escape; Weir does not read text in that mode".into());
    }
    None
}

/// Settings that change how the server reads the rest of a text.
pub(super) fn changes_lexing(s: &Statement) -> bool {
    let Statement::Set(set) = s else {
        return false;
    };
    let name = |n: &ObjectName| name_of(n).to_lowercase();
    let lexing = |n: &str| {
        let n = n.trim_start_matches("@@session.").trim_start_matches("@@");
        matches!(
            n,
            "sql_mode"
                | "character_set_client"
                | "character_set_connection"
                | "collation_connection"
        )
    };
    match set {
        ast::Set::SingleAssignment { variable, .. } => lexing(&name(variable)),
        ast::Set::MultipleAssignments { assignments } => {
            assignments.iter().any(|a| lexing(&name(&a.name)))
        }
        _ => true,
    }
}

/// Longest run of operators Weir lets the parser see between two commas or parentheses:
/// sqlparser recurses per operator in a chain, and a long enough chain overflows the
/// stack (which no `catch_unwind` can catch).
const MAX_OPERATOR_RUN: usize = 512;

/// Token-level refusals: comments the server and sqlparser end differently, calls of
/// built-in names that the server resolves as stored functions, operator chains too long
/// to parse safely.
pub(super) fn token_refusal(text: &str) -> Result<(), AnalyzeError> {
    use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
    // `--` is a comment to the server only when followed by whitespace or a control
    // character, by ASCII rules; sqlparser decides by Unicode whitespace.
    let mut rest = text;
    while let Some(i) = rest.find("--") {
        let after = rest.get(i + 2..).unwrap_or("");
        if let Some(c) = after.chars().next() {
            let server = c == ' ' || c.is_ascii_control();
            let parser = c.is_whitespace();
            if server != parser || (c.is_ascii_control() && !matches!(c, '\t' | '\n' | '\r')) {
                return Err(AnalyzeError::LexingMode(
                    "weir: `--` followed by this character is read differently by the server and Weir's parser".into(),
                ));
            }
        }
        rest = after;
    }
    let tokens = Tokenizer::new(&MySqlDialect {}, text)
        .tokenize()
        .map_err(|e| AnalyzeError::Parse(e.to_string()))?;
    let mut run = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Comma | Token::LParen | Token::RParen | Token::SemiColon => run = 0,
            Token::Word(_) | Token::Number(..) | Token::Whitespace(_) => {}
            Token::SingleQuotedString(_) | Token::DoubleQuotedString(_) => {}
            _ => run += 1,
        }
        if run > MAX_OPERATOR_RUN {
            return Err(AnalyzeError::Parse(
                "an expression with too many operators in a row".into(),
            ));
        }
        // `count (x)`: a space between a built-in's name and its parenthesis makes the
        // server call a stored function of that name.
        if let Token::Word(w) = t {
            let spaced = matches!(
                tokens.get(i + 1),
                Some(Token::Whitespace(
                    Whitespace::Space | Whitespace::Tab | Whitespace::Newline
                ))
            );
            let paren = tokens
                .iter()
                .skip(i + 1)
                .find(|t| !matches!(t, Token::Whitespace(_)))
                .is_some_and(|t| *t == Token::LParen);
            let name = w.value.to_lowercase();
            // After TABLE, INTO, FROM, … the word is a table's name (`CREATE TABLE x (n
            // int)`, `INSERT INTO user (a)`), never a call, to the server as to the parser.
            let names_a_table = tokens
                .get(..i)
                .unwrap_or_default()
                .iter()
                .rev()
                .find(|t| !matches!(t, Token::Whitespace(_)))
                .is_some_and(|t| {
                    matches!(t, Token::Word(p) if p.quote_style.is_none()
                        && TABLE_NAME_AFTER.contains(&p.value.to_lowercase().as_str()))
                });
            if spaced
                && paren
                && w.quote_style.is_none()
                && !names_a_table
                && builtins().contains(name.as_str())
                && !KEYWORD_CALLS.contains(&name.as_str())
            {
                return Err(AnalyzeError::LexingMode(format!(
                    "weir: `{} (` with a space is a stored function to the server, the built-in to Weir's parser; write `{}(`",
                    w.value, w.value
                )));
            }
        }
    }
    Ok(())
}

/// Keywords after which a word is a table's name, where `name (` is not a call.
/// Not FROM: inside `EXTRACT(… FROM x)`, `TRIM(… FROM x)` and `SUBSTRING(… FROM x)` an
/// expression follows it, where `count (` is the differential this check is for.
const TABLE_NAME_AFTER: &[&str] = &[
    "table",
    "into",
    "update",
    "references",
    "exists",
    "view",
    "replace",
];

/// Built-in names that are also keywords followed by a parenthesis in ordinary syntax
/// (`IN (`, `VALUES (`, `EXISTS (`, `IF (`, …): a space before their parenthesis is normal.
const KEYWORD_CALLS: &[&str] = &[
    "in",
    "values",
    "value",
    "exists",
    "if",
    "row",
    "using",
    "on",
    "char",
    "default",
    "interval",
    "match",
    "left",
    "right",
    "insert",
    "replace",
    "mod",
    "database",
    "schema",
    "user",
    "repeat",
    "format",
    "position",
    "key",
    "index",
    "table",
    "set",
    "any",
    "all",
    "some",
    "year",
    "date",
    "time",
    "timestamp",
    "cast",
    "convert",
    "and",
    "or",
    "not",
];
