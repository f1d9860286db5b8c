//! What is sensitive: by a column's name, and by a value's content.
//!
//! [`by_name`] runs once per column (when the catalog is built), so it may allocate.
//! [`by_content`] runs for every text value of every row that lineage did not already mask:
//! it starts with a cheap pre-filter and allocates nothing.

/// What kind of sensitive value a column or a value holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Email,
    Phone,
    Ssn,
    Card,
    Iban,
    Password,
    Secret,
    Address,
    BirthDate,
}

impl Class {
    /// The label used in audit events and policy (`context.column_tags`).
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Email => "email",
            Class::Phone => "phone",
            Class::Ssn => "ssn",
            Class::Card => "card",
            Class::Iban => "iban",
            Class::Password => "password",
            Class::Secret => "secret",
            Class::Address => "address",
            Class::BirthDate => "birth_date",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// Last words that describe a value rather than hold it: `email_verified`, `token_type`,
/// `password_changed_at`, `address_id` are not sensitive. (`hint`, `hash`, `salt` are not
/// here: a password hint or hash is sensitive.)
const METADATA: &[&str] = &[
    "id",
    "ids",
    "uuid",
    "count",
    "counts",
    "type",
    "types",
    "kind",
    "status",
    "state",
    "verified",
    "confirmed",
    "at",
    "on",
    "date",
    "time",
    "ts",
    "timestamp",
    "expires",
    "expiry",
    "expired",
    "expiration",
    "length",
    "len",
    "size",
    "enabled",
    "disabled",
    "format",
    "valid",
    "validated",
    "sent",
    "set",
    "changed",
    "updated",
    "created",
    "version",
    "required",
    "policy",
    "count",
    "num_attempts",
    "attempts",
    "flag",
    "opt",
    "optin",
    "optout",
    "bounced",
    "domain",
    "provider",
    "prefix",
    "suffix",
    "scope",
    "scopes",
    "ttl",
    "index",
    "idx",
    "fk",
    "ref",
    "key_id",
    "template",
    "label",
    "visibility",
    "visible",
    "public",
    "is",
    "has",
];

/// First words that make the rest a yes/no or a count: `is_email`, `has_phone`, `num_cards`.
const METADATA_PREFIX: &[&str] = &["is", "has", "num", "n", "count", "total", "max", "min"];

/// Splits a column name into lower-case words: separators, case changes and letter/digit
/// boundaries (`billingEmail` → billing, email; `CCNumber` → cc, number; `address_line1` →
/// address, line, 1).
fn words(name: &str) -> Vec<String> {
    let chars: Vec<char> = name.chars().collect();
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some(&prev) = i.checked_sub(1).and_then(|p| chars.get(p)) {
            let next = chars.get(i + 1).copied();
            let boundary = (prev.is_lowercase() && c.is_uppercase())
                || (prev.is_uppercase()
                    && c.is_uppercase()
                    && next.is_some_and(|n| n.is_lowercase()))
                || (prev.is_alphabetic() && c.is_ascii_digit())
                || (prev.is_ascii_digit() && c.is_alphabetic());
            if boundary && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        }
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Classification of a column by its (source) column name.
pub fn by_name(column: &str) -> Option<Class> {
    let mut w = words(column);
    // Digits carry no meaning here (`address_line1`, `phone2`).
    w.retain(|x| !x.chars().all(|c| c.is_ascii_digit()));
    let has = |word: &str| w.iter().any(|x| x == word);
    let pair = |a: &str, b: &str| {
        w.windows(2)
            .any(|p| matches!(p, [x, y] if x == a && y == b))
    };
    let last = w.last()?.as_str();
    let birth = pair("birth", "date") || (has("date") && has("of") && has("birth"));
    if birth {
        return Some(Class::BirthDate);
    }
    if w.len() > 1 && METADATA.contains(&last) {
        return None;
    }
    if w.len() > 1
        && w.first()
            .is_some_and(|f| METADATA_PREFIX.contains(&f.as_str()))
    {
        return None;
    }
    let joined = w.concat();

    // Whole-name spellings first (they would not split into words).
    let whole = match joined.as_str() {
        "email" | "emailaddress" | "emailaddr" | "mail" | "mailaddress" => Some(Class::Email),
        "ccnum" | "ccnumber" | "cardnum" | "cardno" | "pan" | "creditcard" | "cardnumber" => {
            Some(Class::Card)
        }
        "ssn" | "socialsecuritynumber" | "socialsecurity" => Some(Class::Ssn),
        "dob" | "birthdate" | "dateofbirth" | "birthday" => Some(Class::BirthDate),
        "passwd" | "pwd" | "password" | "passphrase" => Some(Class::Password),
        "apikey" | "secretkey" | "privatekey" | "accesskey" | "clientsecret" => Some(Class::Secret),
        "phonenumber" | "telephone" | "cellphone" | "msisdn" | "mobile" | "phone" => {
            Some(Class::Phone)
        }
        _ => None,
    };
    if whole.is_some() {
        return whole;
    }
    if has("email") || has("emailaddress") || pair("e", "mail") || pair("mail", "address") {
        return Some(Class::Email);
    }
    if has("password") || has("passwd") || has("pwd") || has("passphrase") || pair("pass", "hash") {
        return Some(Class::Password);
    }
    if has("ssn") || pair("social", "security") || pair("national", "id") || pair("tax", "id") {
        return Some(Class::Ssn);
    }
    if has("iban")
        || pair("bank", "account")
        || pair("account", "number")
        || pair("routing", "number")
    {
        return Some(Class::Iban);
    }
    if (has("card")
        && (has("credit")
            || has("debit")
            || has("number")
            || has("num")
            || has("no")
            || has("pan")))
        || has("cvv")
        || has("cvc")
        || pair("cc", "number")
        || pair("cc", "num")
        || has("ccnum")
        || (has("pan") && has("card"))
    {
        return Some(Class::Card);
    }
    if has("token")
        || has("secret")
        || has("apikey")
        || pair("api", "key")
        || pair("private", "key")
        || pair("secret", "key")
        || pair("access", "key")
    {
        return Some(Class::Secret);
    }
    if has("phone")
        || has("telephone")
        || has("mobile")
        || has("cellphone")
        || has("msisdn")
        || has("fax")
        || (has("tel") && w.len() <= 2)
    {
        return Some(Class::Phone);
    }
    if has("birthdate") || has("birthday") || has("dob") {
        return Some(Class::BirthDate);
    }
    if has("address")
        || has("street")
        || has("addr")
        || has("postcode")
        || has("zipcode")
        || (has("zip") && w.len() <= 2)
        || pair("postal", "code")
    {
        return Some(Class::Address);
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------------

/// Classification of one value by its content, anywhere inside it.
pub fn by_content(value: &[u8]) -> Option<Class> {
    if value.len() < 8 {
        return None;
    }
    // Pre-filter: one branch-free pass over the bytes, OR-ing what each could start and
    // counting digits. Most values stop here.
    let mut flags = 0u8;
    let mut digits = 0usize;
    for &b in value {
        // A u8 always indexes a 256-entry table; `get` compiles to the same load.
        flags |= BYTE_FLAGS.get(usize::from(b)).copied().unwrap_or(0);
        digits += usize::from(b.wrapping_sub(b'0') < 10);
    }
    let has = |f: u8| flags & f != 0;
    if has(AT) && has_email(value) {
        return Some(Class::Email);
    }
    if has(J) && has_jwt(value) {
        return Some(Class::Secret);
    }
    if has(DASH) && find(value, b"-----BEGIN") && find(value, b"PRIVATE KEY-----") {
        return Some(Class::Secret);
    }
    if has(TOKEN) && has_token_prefix(value) {
        return Some(Class::Secret);
    }
    if digits >= 12 && has_card(value) {
        return Some(Class::Card);
    }
    if digits >= 9 && has(DASH) && has_ssn(value) {
        return Some(Class::Ssn);
    }
    if digits >= 8 && has(PLUS) && has_phone(value) {
        return Some(Class::Phone);
    }
    if digits >= 2 && has(UPPER) && value.len() >= 15 && has_iban(value) {
        return Some(Class::Iban);
    }
    None
}

const AT: u8 = 1;
const J: u8 = 2;
const DASH: u8 = 4;
/// `A` (AKIA…, AIza…), `_` (gh?_…, github_pat_…, sk_live_…), `x` (xox?-…).
const TOKEN: u8 = 8;
const PLUS: u8 = 16;
const UPPER: u8 = 32;

/// What each byte value could be the start or part of, for the pre-filter. Built at compile
/// time: an index out of bounds here would fail the build, not a session.
#[allow(clippy::indexing_slicing)]
static BYTE_FLAGS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let mut f = 0u8;
        if c == b'@' {
            f |= AT;
        }
        if c == b'J' {
            f |= J;
        }
        if c == b'-' {
            f |= DASH;
        }
        if c == b'A' || c == b'_' || c == b'x' {
            f |= TOKEN;
        }
        if c == b'+' {
            f |= PLUS;
        }
        if c.is_ascii_uppercase() {
            f |= UPPER;
        }
        t[b] = f;
        b += 1;
    }
    t
};

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn domain_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

fn has_email(v: &[u8]) -> bool {
    for (i, _) in v.iter().enumerate().filter(|(_, &b)| b == b'@') {
        let local = v
            .get(..i)
            .map(|l| l.iter().rev().take_while(|&&b| local_char(b)).count())
            .unwrap_or(0);
        if local == 0 {
            continue;
        }
        let domain = v.get(i + 1..).unwrap_or(&[]);
        let dlen = domain.iter().take_while(|&&b| domain_char(b)).count();
        let d = domain.get(..dlen).unwrap_or(&[]);
        // Trailing dots (end of a sentence) are not part of the domain.
        let d = d.strip_suffix(b".").unwrap_or(d);
        let Some(dot) = d.iter().rposition(|&b| b == b'.') else {
            continue;
        };
        let tld = d.get(dot + 1..).unwrap_or(&[]);
        let first = d.get(..dot).unwrap_or(&[]);
        if tld.len() >= 2
            && tld.iter().all(u8::is_ascii_alphabetic)
            && !first.is_empty()
            && first.first().is_some_and(u8::is_ascii_alphanumeric)
        {
            return true;
        }
    }
    false
}

fn b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=')
}

fn has_jwt(v: &[u8]) -> bool {
    let mut i = 0;
    while let Some(off) = v
        .get(i..)
        .and_then(|s| s.windows(3).position(|w| w == b"eyJ"))
    {
        let start = i + off;
        let rest = v.get(start..).unwrap_or(&[]);
        let mut parts = 0;
        let mut pos = 0;
        loop {
            let len = rest
                .get(pos..)
                .unwrap_or(&[])
                .iter()
                .take_while(|&&b| b64url(b))
                .count();
            if len < 10 {
                break;
            }
            parts += 1;
            pos += len;
            if parts == 3 || rest.get(pos) != Some(&b'.') {
                break;
            }
            pos += 1;
        }
        if parts == 3 && rest.get(pos).is_none_or(|b| !b64url(*b)) {
            // The second part is a JSON object too.
            return true;
        }
        i = start + 3;
    }
    false
}

/// Cloud and SaaS credentials recognisable by their prefix.
fn has_token_prefix(v: &[u8]) -> bool {
    const AWS: &[&[u8]] = &[b"AKIA", b"ASIA", b"AGPA", b"AIDA", b"AROA"];
    let word_start = |i: usize| {
        i.checked_sub(1)
            .and_then(|p| v.get(p))
            .is_none_or(|b| !b.is_ascii_alphanumeric())
    };
    for i in 0..v.len() {
        let rest = v.get(i..).unwrap_or(&[]);
        if !word_start(i) {
            continue;
        }
        if AWS.iter().any(|p| rest.starts_with(p)) {
            let body = rest.get(4..20).unwrap_or(&[]);
            if body.len() == 16
                && body
                    .iter()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                && rest.get(20).is_none_or(|b| !b.is_ascii_alphanumeric())
            {
                return true;
            }
        }
        let run = |from: usize, ok: &dyn Fn(u8) -> bool| {
            rest.get(from..)
                .unwrap_or(&[])
                .iter()
                .take_while(|&&b| ok(b))
                .count()
        };
        let alnum_ = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        if rest.starts_with(b"AIza") && run(4, &|b| alnum_(b) || b == b'-') >= 35 {
            return true;
        }
        for p in [&b"ghp_"[..], b"gho_", b"ghs_", b"ghu_", b"github_pat_"] {
            if rest.starts_with(p) && run(p.len(), &alnum_) >= 30 {
                return true;
            }
        }
        if rest.starts_with(b"xox")
            && rest.get(3).is_some_and(|b| b"abprs".contains(b))
            && rest.get(4) == Some(&b'-')
            && run(5, &|b| b.is_ascii_alphanumeric() || b == b'-') >= 10
        {
            return true;
        }
        for p in [&b"sk_live_"[..], b"rk_live_"] {
            if rest.starts_with(p) && run(p.len(), &|b| b.is_ascii_alphanumeric()) >= 16 {
                return true;
            }
        }
    }
    false
}

/// A run of digits starting at `start`, allowing single spaces or dashes between digit
/// groups.
struct DigitRun {
    /// The first 19 digits.
    digits: [u8; 19],
    /// How many digits the run has (may exceed 19).
    count: usize,
    /// Index just past the run.
    end: usize,
    /// Whether the groups are laid out as card numbers are written: no separator, groups of
    /// four (the last may be shorter), or Amex's 4-6-5.
    card_grouping: bool,
}

fn digit_run(v: &[u8], start: usize) -> DigitRun {
    let mut digits = [0u8; 19];
    let mut count = 0usize;
    let mut i = start;
    let mut groups = [0usize; 8];
    let mut g = 0usize;
    let mut too_many_groups = false;
    while let Some(&b) = v.get(i) {
        if b.is_ascii_digit() {
            if let Some(slot) = digits.get_mut(count) {
                *slot = b - b'0';
            }
            count += 1;
            if let Some(slot) = groups.get_mut(g) {
                *slot += 1;
            } else {
                too_many_groups = true;
            }
            i += 1;
        } else if (b == b' ' || b == b'-')
            && v.get(i + 1).is_some_and(u8::is_ascii_digit)
            && i > start
        {
            g += 1;
            i += 1;
        } else {
            break;
        }
    }
    let used = groups.get(..=g.min(7)).unwrap_or(&[]);
    let card_grouping = !too_many_groups
        && (g == 0
            || matches!(used, [4, 6, 5])
            || used.split_last().is_some_and(|(last, rest)| {
                rest.iter().all(|&x| x == 4) && (1..=4).contains(last)
            }));
    DigitRun {
        digits,
        count,
        end: i,
        card_grouping,
    }
}

fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn brand_ok(d: &[u8]) -> bool {
    let n = d.len();
    let prefix = |k: usize| -> u32 {
        d.iter()
            .take(k)
            .fold(0u32, |acc, &x| acc * 10 + u32::from(x))
    };
    let p1 = prefix(1);
    let p2 = prefix(2);
    let p3 = prefix(3);
    let p4 = prefix(4);
    (p1 == 4 && matches!(n, 13 | 16 | 19))
        || (((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && n == 16)
        || ((p2 == 34 || p2 == 37) && n == 15)
        || ((p4 == 6011 || (644..=649).contains(&p3) || p2 == 65) && (16..=19).contains(&n))
        || ((3528..=3589).contains(&p4) && (16..=19).contains(&n))
        || (((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39)
            && (14..=19).contains(&n))
        || (p2 == 62 && (16..=19).contains(&n))
}

fn has_card(v: &[u8]) -> bool {
    let mut i = 0;
    while i < v.len() {
        let starts = v.get(i).is_some_and(u8::is_ascii_digit)
            && i.checked_sub(1)
                .and_then(|p| v.get(p))
                .is_none_or(|b| !b.is_ascii_digit());
        if !starts {
            i += 1;
            continue;
        }
        let run = digit_run(v, i);
        let bounded = i
            .checked_sub(1)
            .and_then(|p| v.get(p))
            .is_none_or(|b| !b.is_ascii_alphanumeric())
            && v.get(run.end).is_none_or(|b| !b.is_ascii_alphanumeric());
        if bounded && run.card_grouping && (13..=19).contains(&run.count) {
            let d = run.digits.get(..run.count).unwrap_or(&[]);
            if brand_ok(d) && luhn(d) {
                return true;
            }
        }
        i = run.end.max(i + 1);
    }
    false
}

fn has_ssn(v: &[u8]) -> bool {
    for (i, w) in v.windows(11).enumerate() {
        let digit = |k: usize| w.get(k).is_some_and(u8::is_ascii_digit);
        let shape = (0..3).all(digit)
            && w.get(3) == Some(&b'-')
            && (4..6).all(digit)
            && w.get(6) == Some(&b'-')
            && (7..11).all(digit);
        if !shape {
            continue;
        }
        let before = i.checked_sub(1).and_then(|p| v.get(p));
        let after = v.get(i + 11);
        if before.is_some_and(|b| b.is_ascii_digit() || *b == b'-')
            || after.is_some_and(|b| b.is_ascii_digit() || *b == b'-')
        {
            continue;
        }
        let num = |a: usize, b: usize| {
            w.get(a..b)
                .unwrap_or(&[])
                .iter()
                .fold(0u32, |acc, &x| acc * 10 + u32::from(x - b'0'))
        };
        let (area, group, serial) = (num(0, 3), num(4, 6), num(7, 11));
        if area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 {
            return true;
        }
    }
    false
}

fn has_phone(v: &[u8]) -> bool {
    for (i, _) in v.iter().enumerate().filter(|(_, &b)| b == b'+') {
        if i.checked_sub(1)
            .and_then(|p| v.get(p))
            .is_some_and(u8::is_ascii_alphanumeric)
        {
            continue;
        }
        let mut digits = 0;
        let mut j = i + 1;
        let mut last_sep = true;
        while let Some(&b) = v.get(j) {
            if b.is_ascii_digit() {
                digits += 1;
                last_sep = false;
            } else if matches!(b, b' ' | b'-' | b'(' | b')') && !last_sep {
                last_sep = true;
            } else {
                break;
            }
            j += 1;
        }
        if v.get(i + 1).is_some_and(u8::is_ascii_digit) && (8..=15).contains(&digits) {
            return true;
        }
    }
    false
}

/// IBAN lengths of common countries.
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"DE", 22),
    (b"GB", 22),
    (b"FR", 27),
    (b"ES", 24),
    (b"IT", 27),
    (b"NL", 18),
    (b"BE", 16),
    (b"CH", 21),
    (b"AT", 20),
    (b"PL", 28),
    (b"SE", 24),
    (b"NO", 15),
    (b"DK", 18),
    (b"FI", 18),
    (b"IE", 22),
    (b"PT", 25),
    (b"LU", 20),
    (b"CZ", 24),
    (b"GR", 27),
    (b"HU", 28),
    (b"RO", 24),
    (b"SK", 24),
    (b"SI", 19),
    (b"HR", 21),
    (b"BG", 22),
    (b"LT", 20),
    (b"LV", 21),
    (b"EE", 20),
    (b"IS", 26),
    (b"LI", 21),
    (b"MT", 31),
    (b"CY", 28),
    (b"MC", 27),
    (b"SM", 27),
    (b"TR", 26),
    (b"AE", 23),
    (b"SA", 24),
    (b"IL", 23),
];

fn has_iban(v: &[u8]) -> bool {
    for i in 0..v.len().saturating_sub(14) {
        let Some(cc) = v.get(i..i + 2) else { break };
        let Some(&(_, len)) = IBAN_LENGTHS.iter().find(|(c, _)| c.as_slice() == cc) else {
            continue;
        };
        if i.checked_sub(1)
            .and_then(|p| v.get(p))
            .is_some_and(u8::is_ascii_alphanumeric)
        {
            continue;
        }
        // Collect up to `len` alphanumerics, allowing single spaces between groups.
        let mut chars = [0u8; 34];
        let mut n = 0;
        let mut j = i;
        while let Some(&b) = v.get(j) {
            if b.is_ascii_alphanumeric() {
                if n == len {
                    n += 1; // too long
                    break;
                }
                if let Some(s) = chars.get_mut(n) {
                    *s = b.to_ascii_uppercase();
                }
                n += 1;
            } else if !(b == b' ' && n > 0 && n % 4 == 0) {
                break;
            }
            j += 1;
        }
        if n != len {
            continue;
        }
        let iban = chars.get(..len).unwrap_or(&[]);
        if !iban
            .get(2..4)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
        {
            continue;
        }
        // mod 97 over the rearranged string, letters as 10..35.
        let rearranged = iban.iter().skip(4).chain(iban.iter().take(4));
        let mut rem: u32 = 0;
        for &c in rearranged {
            let val = if c.is_ascii_digit() {
                u32::from(c - b'0')
            } else {
                u32::from(c - b'A') + 10
            };
            rem = if val >= 10 {
                (rem * 100 + val) % 97
            } else {
                (rem * 10 + val) % 97
            };
        }
        if rem == 1 {
            return true;
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let yes = [
            ("email", Class::Email),
            ("Email", Class::Email),
            ("customer_email", Class::Email),
            ("billingEmail", Class::Email),
            ("e_mail", Class::Email),
            ("phone_number", Class::Phone),
            ("mobile", Class::Phone),
            ("ssn", Class::Ssn),
            ("card_number", Class::Card),
            ("ccnum", Class::Card),
            ("CCNumber", Class::Card),
            ("pan", Class::Card),
            ("iban", Class::Iban),
            ("password_hash", Class::Password),
            ("api_key", Class::Secret),
            ("apiKey", Class::Secret),
            ("access_token", Class::Secret),
            ("client_secret", Class::Secret),
            ("private_key", Class::Secret),
            ("street_address", Class::Address),
            ("address_line1", Class::Address),
            ("date_of_birth", Class::BirthDate),
            ("dob", Class::BirthDate),
            ("birthday", Class::BirthDate),
            ("birth_date", Class::BirthDate),
        ];
        for (n, c) in yes {
            assert_eq!(by_name(n), Some(c), "{n}");
        }
        for n in [
            "id",
            "email_verified",
            "email_count",
            "token_type",
            "password_changed_at",
            "name",
            "created_at",
            "amount",
            "company",
            "panel",
            "expansion",
            "cellar",
            "telemetry",
            "address_id",
            "hotel",
            "passenger",
            "compass",
            "spanish",
            "is_email",
            "has_phone",
        ] {
            assert_eq!(by_name(n), None, "{n}");
        }
    }

    #[test]
    fn content_positive() {
        let yes: &[(&str, Class)] = &[
            ("jane.doe@example.com", Class::Email),
            ("please write to omar@corp.example.", Class::Email),
            ("4111 1111 1111 1111", Class::Card),
            ("4111-1111-1111-1111", Class::Card),
            ("paid with 5500000000000004 yesterday", Class::Card),
            ("378282246310005", Class::Card),
            ("078-05-1120", Class::Ssn),
            ("+1 415-555-0132", Class::Phone),
            ("+44 20 7946 0958", Class::Phone),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJqYW5lIn0.c2lnbmF0dXJlLXRoYXQtaXMtbG9uZw",
                Class::Secret,
            ),
            ("key=AKIAIOSFODNN7EXAMPLE", Class::Secret),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE...\n-----END RSA PRIVATE KEY-----",
                Class::Secret,
            ),
            ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", Class::Secret),
            ("GB82WEST12345698765432", Class::Iban),
            ("GB82 WEST 1234 5698 7654 32", Class::Iban),
            ("DE89370400440532013000", Class::Iban),
        ];
        for (v, c) in yes {
            assert_eq!(by_content(v.as_bytes()), Some(*c), "{v}");
        }
        for v in [
            "GB82WEST12345698765433",    // bad checksum
            "4111111111111112",          // not Luhn
            "1234567890123456789012345", // too long for a card
            "000-12-3456",
            "a@b",
            "user@localhost",
        ] {
            assert_eq!(by_content(v.as_bytes()), None, "{v}");
        }
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn digits(&mut self, n: usize) -> String {
            let mut s = String::new();
            s.push(char::from(b'1' + self.below(9) as u8));
            for _ in 1..n {
                s.push(char::from(b'0' + self.below(10) as u8));
            }
            s
        }
        fn hex(&mut self, n: usize) -> String {
            (0..n)
                .map(|_| char::from(b"0123456789abcdef"[self.below(16) as usize]))
                .collect()
        }
    }

    #[test]
    fn false_positive_rate_on_ordinary_values() {
        const WORDS: &[&str] = &[
            "order",
            "shipped",
            "the",
            "customer",
            "asked",
            "about",
            "delivery",
            "warehouse",
            "blue",
            "large",
            "invoice",
            "pending",
            "refund",
            "approved",
            "note",
            "call",
            "back",
            "monday",
            "price",
            "discount",
            "total",
            "item",
            "stock",
            "returned",
            "quality",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        type Gen = Box<dyn FnMut(&mut Rng, u64) -> String>;
        let categories: Vec<(&str, Gen)> = vec![
            ("sequential ids", Box::new(|_, i| (i + 1).to_string())),
            (
                "random 1-12 digit integers",
                Box::new(|r, _| {
                    let n = 1 + r.below(12) as usize;
                    r.digits(n)
                }),
            ),
            (
                "uuids",
                Box::new(|r, _| {
                    format!(
                        "{}-{}-4{}-a{}-{}",
                        r.hex(8),
                        r.hex(4),
                        r.hex(3),
                        r.hex(3),
                        r.hex(12)
                    )
                }),
            ),
            (
                "prices",
                Box::new(|r, _| format!("{}.{:02}", r.below(100_000), r.below(100))),
            ),
            (
                "timestamps",
                Box::new(|r, _| {
                    format!(
                        "20{:02}-{:02}-{:02} {:02}:{:02}:{:02}+00",
                        r.below(30),
                        1 + r.below(12),
                        1 + r.below(28),
                        r.below(24),
                        r.below(60),
                        r.below(60)
                    )
                }),
            ),
            (
                "dates",
                Box::new(|r, _| {
                    format!(
                        "19{:02}-{:02}-{:02}",
                        r.below(100),
                        1 + r.below(12),
                        1 + r.below(28)
                    )
                }),
            ),
            ("sha256 digests", Box::new(|r, _| r.hex(64))),
            ("sha1 digests", Box::new(|r, _| r.hex(40))),
            (
                "versions",
                Box::new(|r, _| format!("{}.{}.{}", r.below(20), r.below(50), r.below(200))),
            ),
            (
                "sentences",
                Box::new(|r, _| {
                    (0..(3 + r.below(12)))
                        .map(|_| WORDS[r.below(WORDS.len() as u64) as usize])
                        .collect::<Vec<_>>()
                        .join(" ")
                }),
            ),
            (
                "product codes",
                Box::new(|r, _| {
                    format!(
                        "SKU-{}-{}",
                        r.digits(5),
                        ["XL", "M", "S"][r.below(3) as usize]
                    )
                }),
            ),
            (
                "urls",
                Box::new(|r, _| {
                    format!(
                        "https://example.com/{}/{}?page={}",
                        WORDS[r.below(25) as usize],
                        r.hex(6),
                        r.below(100)
                    )
                }),
            ),
            (
                "ipv4",
                Box::new(|r, _| {
                    format!(
                        "{}.{}.{}.{}",
                        r.below(256),
                        r.below(256),
                        r.below(256),
                        r.below(256)
                    )
                }),
            ),
            (
                "order numbers",
                Box::new(|r, _| format!("ORD-{}-{}", r.digits(4), r.digits(6))),
            ),
        ];
        let mut total = 0u64;
        for (name, mut gen) in categories {
            let n = 20_000u64;
            let hits = (0..n)
                .filter(|&i| by_content(gen(&mut rng, i).as_bytes()).is_some())
                .count();
            println!(
                "{name:32} {n:>7} values {hits:>5} hits  {:.4}%",
                hits as f64 * 100.0 / n as f64
            );
            assert_eq!(hits, 0, "{name}");
            total += n;
        }
        // Snowflake-style ids (64-bit, time-ordered: 18-19 digits starting with 1): no card
        // brand starts with 1.
        let n = 50_000u64;
        let hits = (0..n)
            .filter(|_| by_content(format!("1{}", rng.digits(18)).as_bytes()).is_some())
            .count();
        println!("{:32} {n:>7} values {hits:>5} hits", "snowflake ids");
        assert_eq!(hits, 0);
        total += n;
        // The hard case: uniformly random 16- and 19-digit numbers as text. A bare digit
        // string with a card brand's prefix and a valid Luhn digit is indistinguishable from
        // a card number: about 3% of them are, and they are masked. Reported, not hidden.
        for len in [16usize, 19] {
            let n = 50_000u64;
            let hits = (0..n)
                .filter(|_| by_content(rng.digits(len).as_bytes()).is_some())
                .count();
            let rate = hits as f64 * 100.0 / n as f64;
            println!(
                "{:32} {n:>7} values {hits:>5} hits  {rate:.4}%",
                format!("random {len}-digit integers")
            );
            assert!(rate < 5.0, "{len}: {rate}%");
            total += n;
        }
        println!("{total} ordinary values checked");
    }
}
