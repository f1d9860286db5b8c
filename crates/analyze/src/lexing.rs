//! The lexing mode Weir's analysis assumes, and the settings that would change it.
//!
//! libpg_query reads a statement the way a server does with `standard_conforming_strings =
//! on` and UTF-8 text. Three settings make the server read the same bytes differently:
//! - `standard_conforming_strings = off`: a backslash escapes in every ordinary literal, so
//!   `'a\'; DROP TABLE t; --'` is one literal to the server and a literal, a DROP and a
//!   comment to libpg_query;
//! - `backslash_quote`: whether `\'` may end nothing in an escape string;
//! - a client-only multibyte `client_encoding` (SJIS, BIG5, GBK, UHC, GB18030, JOHAB): their
//!   second byte can be `0x5c` (`\`), and the server converts the text to UTF-8 *before* it
//!   lexes it, so a byte pair Weir reads as a character and a backslash is one character there.
//!
//! Weir does not model the other modes: it keeps the session in the one it reads, and refuses
//! every statement that would leave it (`weir.lexing-mode`). Encodings in which every byte of
//! a non-ASCII character has its high bit set (all that PostgreSQL allows as a server
//! encoding) lex exactly as UTF-8 does, so they stay allowed.

/// The rule that names a refusal for leaving the lexing mode.
pub const RULE: &str = "weir.lexing-mode";

/// Whether `name` is a setting that changes how the server lexes statement text.
pub fn is_lexing_setting(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "standard_conforming_strings" | "backslash_quote" | "client_encoding"
    )
}

/// Why setting `name` to `value` (as written; `None` when it is not a constant Weir can
/// read) would leave the lexing mode Weir analyzes in; `Ok` when it stays in it or `name`
/// does not affect lexing.
pub fn check_setting(name: &str, value: Option<&str>) -> Result<(), String> {
    let name = name.to_ascii_lowercase();
    if !is_lexing_setting(&name) {
        return Ok(());
    }
    let Some(value) = value else {
        return Err(format!(
            "{name} is set to a value Weir cannot read from the statement; it changes how the server reads statement text, so it is set only to a constant"
        ));
    };
    let v = value.trim().to_ascii_lowercase();
    let ok = match name.as_str() {
        "standard_conforming_strings" => matches!(v.as_str(), "on" | "true" | "yes" | "1"),
        // `on` accepts `\'` whatever the encoding; `safe_encoding` (the default) and `off`
        // do not widen what the lexer accepts in the encodings Weir allows.
        "backslash_quote" => matches!(v.as_str(), "safe_encoding" | "off" | "false" | "no" | "0"),
        _ => server_safe_encoding(&v),
    };
    if ok {
        return Ok(());
    }
    Err(match name.as_str() {
        "standard_conforming_strings" => format!(
            "standard_conforming_strings = {value} makes backslashes escape in every string literal, so the server would read statements differently from Weir's analysis; only on is allowed"
        ),
        "backslash_quote" => format!(
            "backslash_quote = {value} lets \\' appear in string literals; only safe_encoding or off is allowed"
        ),
        _ => format!(
            "client_encoding {value} is not an encoding Weir can read statements in (its multibyte characters can contain a backslash or quote byte); use UTF8 or another server encoding"
        ),
    })
}

/// Checks a value the server reports (ParameterStatus) against the mode Weir analyzes in:
/// the check of last resort, for a change Weir could not see (a function's `set_config`).
pub fn check_reported(name: &str, value: &str) -> Result<(), String> {
    check_setting(name, Some(value))
}

/// Whether a `client_encoding` name (any spelling PostgreSQL accepts) is an encoding in
/// which no byte of a multibyte character is below 0x80: PostgreSQL's server encodings.
/// Unknown names are not.
pub fn server_safe_encoding(name: &str) -> bool {
    // PostgreSQL compares encoding names with everything but letters and digits removed,
    // case-insensitively (`clean_encoding_name`).
    let clean: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    matches!(
        clean.as_str(),
        "utf8"
            | "unicode"
            | "sqlascii"
            | "eucjp"
            | "euccn"
            | "euckr"
            | "euctw"
            | "eucjis2004"
            | "muleinternal"
            | "latin1"
            | "latin2"
            | "latin3"
            | "latin4"
            | "latin5"
            | "latin6"
            | "latin7"
            | "latin8"
            | "latin9"
            | "latin10"
            | "iso88591"
            | "iso88592"
            | "iso88593"
            | "iso88594"
            | "iso88595"
            | "iso88596"
            | "iso88597"
            | "iso88598"
            | "iso88599"
            | "iso885910"
            | "iso885913"
            | "iso885914"
            | "iso885915"
            | "iso885916"
            | "koi8"
            | "koi8r"
            | "koi8u"
            | "win"
            | "alt"
            | "abc"
            | "tcvn"
            | "tcvn5712"
            | "vscii"
            | "win866"
            | "win874"
            | "win1250"
            | "win1251"
            | "win1252"
            | "win1253"
            | "win1254"
            | "win1255"
            | "win1256"
            | "win1257"
            | "win1258"
            | "cp866"
            | "cp874"
            | "cp1250"
            | "cp1251"
            | "cp1252"
            | "cp1253"
            | "cp1254"
            | "cp1255"
            | "cp1256"
            | "cp1257"
            | "cp1258"
            | "windows866"
            | "windows874"
            | "windows1250"
            | "windows1251"
            | "windows1252"
            | "windows1253"
            | "windows1254"
            | "windows1255"
            | "windows1256"
            | "windows1257"
            | "windows1258"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_only_encodings_are_refused_in_every_spelling() {
        for e in [
            "SJIS",
            "sjis",
            "Shift_JIS",
            "mskanji",
            "WIN932",
            "Windows-932",
            "SHIFT_JIS_2004",
            "BIG5",
            "win950",
            "GBK",
            "cp936",
            "WIN936",
            "UHC",
            "cp949",
            "GB18030",
            "JOHAB",
            "nonsense",
            "",
        ] {
            assert!(check_setting("client_encoding", Some(e)).is_err(), "{e}");
        }
        for e in [
            "UTF8",
            "utf-8",
            "Unicode",
            "LATIN1",
            "iso-8859-15",
            "EUC_JP",
            "WIN1252",
            "SQL_ASCII",
            "koi8-r",
        ] {
            assert!(check_setting("client_encoding", Some(e)).is_ok(), "{e}");
        }
    }

    #[test]
    fn standard_conforming_strings_stays_on() {
        for v in ["on", "ON", "true", "1", "yes"] {
            assert!(check_setting("standard_conforming_strings", Some(v)).is_ok());
        }
        for v in ["off", "false", "0", "no", "t"] {
            assert!(check_setting("Standard_Conforming_Strings", Some(v)).is_err());
        }
        assert!(check_setting("standard_conforming_strings", None).is_err());
        assert!(check_setting("backslash_quote", Some("on")).is_err());
        assert!(check_setting("backslash_quote", Some("safe_encoding")).is_ok());
        assert!(check_setting("search_path", Some("anything")).is_ok());
    }
}
