//! A fast, conservative stand-in for `pg_query::normalize` on the cache's lookup path.
//!
//! [`fast_key`] replaces numeric and simple string constants with `$1, $2, …` the way
//! libpg_query's normalizer does, in a single pass over the bytes, and gives up (`None`) on
//! anything it is not sure about: comments, dollar quotes, parameters, backslashes, string
//! prefixes (`E''`, `B''`, `U&''`), adjacent strings. Its output is only ever trusted for a
//! text *shape* that was first checked against the real normalizer (see `Analyzer`): two texts
//! with the same key have byte-identical text outside the constants it replaced, and simple
//! constants cannot change how the rest of a statement is tokenized, so they parse to the same
//! tree up to constant values — which the analyzer never looks at.

fn ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Operators and punctuation after which `-` is a sign rather than a subtraction.
fn sign_context(b: u8) -> bool {
    b"+-*/<>=~!@#%^&|`?,(".contains(&b)
}

pub fn fast_key(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len() + 8);
    let mut n = 0u32;
    let mut i = 0usize;
    while let Some(&c) = b.get(i) {
        match c {
            b'\'' => {
                if out
                    .last()
                    .is_some_and(|&p| ident(p) || p == b'&' || p == b'\'')
                {
                    return None; // E'', B'', X'', N'', U&'' or adjacent strings
                }
                let mut j = i + 1;
                loop {
                    match b.get(j)? {
                        b'\\' => return None,
                        b'\'' if b.get(j + 1) == Some(&b'\'') => j += 2,
                        b'\'' => break,
                        _ => j += 1,
                    }
                }
                // 'a' 'b' across a newline is one string in SQL: give up on any string that
                // is followed by another.
                let mut k = j + 1;
                while b.get(k).is_some_and(|x| x.is_ascii_whitespace()) {
                    k += 1;
                }
                if b.get(k) == Some(&b'\'') {
                    return None;
                }
                n += 1;
                out.extend_from_slice(format!("${n}").as_bytes());
                i = j + 1;
            }
            b'"' => {
                let mut j = i + 1;
                loop {
                    match b.get(j)? {
                        b'"' if b.get(j + 1) == Some(&b'"') => j += 2,
                        b'"' => break,
                        _ => j += 1,
                    }
                }
                out.extend_from_slice(b.get(i..=j)?);
                i = j + 1;
            }
            b'$' | b'\\' => return None,
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'0'..=b'9' if !out.last().is_some_and(|&p| ident(p) || p == b'.') => {
                let mut j = i;
                while b.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                if b.get(j) == Some(&b'.') {
                    j += 1;
                    while b.get(j).is_some_and(u8::is_ascii_digit) {
                        j += 1;
                    }
                }
                if matches!(b.get(j), Some(b'e' | b'E')) {
                    j += 1;
                    if matches!(b.get(j), Some(b'+' | b'-')) {
                        j += 1;
                    }
                    if !b.get(j).is_some_and(u8::is_ascii_digit) {
                        return None;
                    }
                    while b.get(j).is_some_and(u8::is_ascii_digit) {
                        j += 1;
                    }
                }
                if b.get(j).is_some_and(|&x| ident(x) || x == b'.') {
                    return None;
                }
                // A sign in front of a constant belongs to it, as the normalizer sees it.
                if out.last() == Some(&b'-') {
                    let before = out.iter().rev().skip(1).find(|x| !x.is_ascii_whitespace());
                    if before.is_none_or(|&p| sign_context(p)) {
                        out.pop();
                    }
                }
                n += 1;
                out.extend_from_slice(format!("${n}").as_bytes());
                i = j;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::fast_key;

    /// Where the fast key answers, it must equal libpg_query's normalization.
    #[test]
    fn agrees_with_libpg_query_where_it_answers() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "UPDATE pgbench_accounts SET abalance = abalance + -3911 WHERE aid = 48213;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 48213, -3911, CURRENT_TIMESTAMP);",
            "SELECT 'a''b', 1.5e3, x1 FROM t2 WHERE d > interval '1 day'",
            "SELECT \"Quoted\"\"Id\", 'x' FROM t WHERE a = 'it''s' AND b IN (1, 2, 3)",
            "select * from customers where email = 'ada@example.com' limit 10",
            "SELECT x - 1, x -1, (-1), f(-2.5)",
            "DELETE FROM t WHERE id = 1 OR 1 = 1",
        ] {
            let fast = fast_key(sql).unwrap_or_else(|| panic!("no key for {sql}"));
            assert_eq!(Some(fast), pg_query::normalize(sql).ok(), "{sql}");
        }
    }

    #[test]
    fn gives_up_on_what_it_cannot_be_sure_of() {
        for sql in [
            "SELECT $$ 1 $$",
            "SELECT 1 -- comment",
            "SELECT /* c */ 1",
            "SELECT E'a\\'b'",
            "SELECT 'a\\'",
            "SELECT B'101'",
            "SELECT 'a'\n'b'",
            "SELECT $1, 2",
            "SELECT 'unterminated",
            "SELECT 0x1F",
            "SELECT 1e",
        ] {
            assert_eq!(fast_key(sql), None, "{sql}");
        }
    }
}
