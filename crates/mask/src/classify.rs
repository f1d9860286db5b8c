//! What is sensitive: by a column's name ([`by_name`]) and by a value's content ([`by_content`]).
//!
//! [`by_name`] runs once per column, when a catalog or a RowDescription is first seen, so it may
//! allocate. [`by_content`] is the backstop on the data path: it runs for every text value of
//! every row, so it is a single forward scan that allocates nothing and only looks closer at
//! bytes that can start a match (`@`, `+`, a digit run, an upper-case word start, `eyJ`, `gh`,
//! `xox`, `sk_`/`rk_`, `-----`).
//!
//! Both lean towards precision on ordinary data: a masked id or price breaks a client as surely
//! as a leaked e-mail embarrasses an operator, and the operator can always tag a column
//! explicitly. Content rules therefore require checksums (Luhn, IBAN mod-97), real card brands,
//! fixed token prefixes, or unambiguous punctuation (`+` for phones, `ddd-dd-dddd` for SSNs).

/// What kind of sensitive value a column or a value holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// An e-mail address.
    Email,
    /// A telephone number.
    Phone,
    /// A US social security number or another government identifier (tax id, national id,
    /// passport or driver's licence number).
    Ssn,
    /// A payment card number or its security code.
    Card,
    /// A bank account: IBAN, account or routing number.
    Iban,
    /// A password or a password hash.
    Password,
    /// A credential other than a password: token, API key, private key, client secret.
    Secret,
    /// A postal address or part of one (street, postcode).
    Address,
    /// A date of birth.
    BirthDate,
}

impl Class {
    /// Lower-case label used in audit and config.
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
// By name
// ---------------------------------------------------------------------------------------------

/// Where a term may stand in a name for it to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Anywhere (`email`, `customer_email`, `email_lower`).
    Any,
    /// Only as the last word, the head noun (`customer_mobile` but not `mobile_app`,
    /// `zip` but not `zip_archive`): the word is ambiguous on its own.
    Head,
    /// Only as the whole name (`mail`, but not `mail_server`).
    Whole,
    /// As the whole name, or with `card` somewhere in the name (`pan`, `card_pan`; not
    /// `pan_zoom`).
    WithCard,
    /// Anywhere, unless the word before it makes it a network or memory address
    /// (`ip_address`, `client_addr`, `wallet_address`).
    Postal,
}

/// Sensitive terms, as the concatenation of one to [`MAX_WINDOW`] consecutive words of a name
/// (`date_of_birth` is `dateofbirth`, `apiKey` is `apikey`), singular (a trailing `s`/`es` is
/// also tried).
const TERMS: &[(&str, Class, Scope)] = &[
    // E-mail.
    ("email", Class::Email, Scope::Any),
    ("emailaddress", Class::Email, Scope::Any),
    ("emailaddr", Class::Email, Scope::Any),
    ("mail", Class::Email, Scope::Whole),
    ("mailaddress", Class::Email, Scope::Any),
    ("mailaddr", Class::Email, Scope::Any),
    // Phone.
    ("phone", Class::Phone, Scope::Any),
    ("phonenumber", Class::Phone, Scope::Any),
    ("phoneno", Class::Phone, Scope::Any),
    ("phonenum", Class::Phone, Scope::Any),
    ("telephone", Class::Phone, Scope::Any),
    ("telephonenumber", Class::Phone, Scope::Any),
    ("tel", Class::Phone, Scope::Head),
    ("telno", Class::Phone, Scope::Any),
    ("telnumber", Class::Phone, Scope::Any),
    ("mobile", Class::Phone, Scope::Head),
    ("mobilenumber", Class::Phone, Scope::Any),
    ("mobileno", Class::Phone, Scope::Any),
    ("mobilephone", Class::Phone, Scope::Any),
    ("cell", Class::Phone, Scope::Head),
    ("cellphone", Class::Phone, Scope::Any),
    ("cellnumber", Class::Phone, Scope::Any),
    ("msisdn", Class::Phone, Scope::Any),
    ("fax", Class::Phone, Scope::Head),
    ("faxnumber", Class::Phone, Scope::Any),
    ("faxno", Class::Phone, Scope::Any),
    // Government identifiers. `sin` and `tin` alone are too ambiguous.
    ("ssn", Class::Ssn, Scope::Any),
    ("socialsecurity", Class::Ssn, Scope::Any),
    ("socialsecuritynumber", Class::Ssn, Scope::Any),
    ("socialsecurityno", Class::Ssn, Scope::Any),
    ("socialinsurancenumber", Class::Ssn, Scope::Any),
    ("nationalid", Class::Ssn, Scope::Any),
    ("nationalidnumber", Class::Ssn, Scope::Any),
    ("nationalidentifier", Class::Ssn, Scope::Any),
    ("nationalinsurancenumber", Class::Ssn, Scope::Any),
    ("taxid", Class::Ssn, Scope::Any),
    ("taxidnumber", Class::Ssn, Scope::Any),
    ("taxpayerid", Class::Ssn, Scope::Any),
    ("taxidentificationnumber", Class::Ssn, Scope::Any),
    ("passportnumber", Class::Ssn, Scope::Any),
    ("passportno", Class::Ssn, Scope::Any),
    ("driverlicense", Class::Ssn, Scope::Any),
    ("driverslicense", Class::Ssn, Scope::Any),
    ("driverlicence", Class::Ssn, Scope::Any),
    ("driverslicence", Class::Ssn, Scope::Any),
    ("driverlicensenumber", Class::Ssn, Scope::Any),
    ("driverslicensenumber", Class::Ssn, Scope::Any),
    // Payment cards.
    ("card", Class::Card, Scope::Head),
    ("creditcard", Class::Card, Scope::Any),
    ("creditcardnumber", Class::Card, Scope::Any),
    ("debitcard", Class::Card, Scope::Any),
    ("cardnumber", Class::Card, Scope::Any),
    ("cardno", Class::Card, Scope::Any),
    ("cardnum", Class::Card, Scope::Any),
    ("cc", Class::Card, Scope::Head),
    ("ccnum", Class::Card, Scope::Any),
    ("ccnumber", Class::Card, Scope::Any),
    ("ccno", Class::Card, Scope::Any),
    ("pan", Class::Card, Scope::WithCard),
    ("cardpan", Class::Card, Scope::Any),
    ("cvv", Class::Card, Scope::Any),
    ("cvc", Class::Card, Scope::Any),
    ("cardsecuritycode", Class::Card, Scope::Any),
    // Bank accounts. `bic`/`swift` identify a bank, not a person.
    ("iban", Class::Iban, Scope::Any),
    ("bankaccount", Class::Iban, Scope::Any),
    ("bankaccountnumber", Class::Iban, Scope::Any),
    ("bankaccountno", Class::Iban, Scope::Any),
    ("accountnumber", Class::Iban, Scope::Any),
    ("accountno", Class::Iban, Scope::Any),
    ("accountnum", Class::Iban, Scope::Any),
    ("acctnumber", Class::Iban, Scope::Any),
    ("acctno", Class::Iban, Scope::Any),
    ("routingnumber", Class::Iban, Scope::Any),
    ("routingno", Class::Iban, Scope::Any),
    ("sortcode", Class::Iban, Scope::Any),
    // Passwords. `pass` alone is a boarding pass or a pass/fail; only qualified forms count.
    ("password", Class::Password, Scope::Any),
    ("passwd", Class::Password, Scope::Any),
    ("pwd", Class::Password, Scope::Any),
    ("passphrase", Class::Password, Scope::Any),
    ("passhash", Class::Password, Scope::Any),
    ("pwhash", Class::Password, Scope::Any),
    ("pwdhash", Class::Password, Scope::Any),
    ("userpass", Class::Password, Scope::Any),
    ("dbpass", Class::Password, Scope::Any),
    ("adminpass", Class::Password, Scope::Any),
    ("rootpass", Class::Password, Scope::Any),
    ("smtppass", Class::Password, Scope::Any),
    ("loginpass", Class::Password, Scope::Any),
    // Other credentials. `key` alone is a key-value store's key.
    ("token", Class::Secret, Scope::Any),
    ("secret", Class::Secret, Scope::Any),
    ("apikey", Class::Secret, Scope::Any),
    ("apisecret", Class::Secret, Scope::Any),
    ("privatekey", Class::Secret, Scope::Any),
    ("secretkey", Class::Secret, Scope::Any),
    ("accesskey", Class::Secret, Scope::Any),
    ("signingkey", Class::Secret, Scope::Any),
    ("encryptionkey", Class::Secret, Scope::Any),
    ("masterkey", Class::Secret, Scope::Any),
    ("authkey", Class::Secret, Scope::Any),
    ("credential", Class::Secret, Scope::Any),
    ("recoverycode", Class::Secret, Scope::Any),
    ("backupcode", Class::Secret, Scope::Any),
    // Postal addresses. Postcodes count: with a birth date they identify most people.
    ("address", Class::Address, Scope::Postal),
    ("addr", Class::Address, Scope::Postal),
    ("street", Class::Address, Scope::Any),
    ("streetaddress", Class::Address, Scope::Any),
    ("addressline", Class::Address, Scope::Any),
    ("postaladdress", Class::Address, Scope::Any),
    ("homeaddress", Class::Address, Scope::Any),
    ("postcode", Class::Address, Scope::Any),
    ("postalcode", Class::Address, Scope::Any),
    ("zip", Class::Address, Scope::Head),
    ("zipcode", Class::Address, Scope::Any),
    // Birth dates.
    ("birthdate", Class::BirthDate, Scope::Any),
    ("birthdt", Class::BirthDate, Scope::Any),
    ("dateofbirth", Class::BirthDate, Scope::Any),
    ("dob", Class::BirthDate, Scope::Any),
    ("birthday", Class::BirthDate, Scope::Any),
    ("bday", Class::BirthDate, Scope::Any),
    ("birthyear", Class::BirthDate, Scope::Any),
];

/// Terms also recognised at the end of a single unsplit word (`useremail`, `rolpassword`,
/// `customerphone`, `homeaddress`). Only terms that no common English word ends with, or
/// whose exceptions are listed ([`NOT_PHONE`], [`NET_QUALIFIERS`]).
const SUFFIXES: &[(&str, Class)] = &[
    ("email", Class::Email),
    ("password", Class::Password),
    ("passwd", Class::Password),
    ("passphrase", Class::Password),
    ("phone", Class::Phone),
    ("phonenumber", Class::Phone),
    ("birthdate", Class::BirthDate),
    ("birthday", Class::BirthDate),
    ("dateofbirth", Class::BirthDate),
    ("secret", Class::Secret),
    ("token", Class::Secret),
    ("apikey", Class::Secret),
    ("privatekey", Class::Secret),
    ("secretkey", Class::Secret),
    ("creditcard", Class::Card),
    ("cardnumber", Class::Card),
    ("address", Class::Address),
];

/// Words ending in `phone` that are not telephones.
const NOT_PHONE: &[&str] = &[
    "ophone",
    "aphone",
    "headphone",
    "earphone",
    "iphone",
    "smartphone",
];

/// Words that, just before `address`/`addr`, make it a network, memory or ledger address.
const NET_QUALIFIERS: &[&str] = &[
    "ip",
    "ipv4",
    "ipv6",
    "inet",
    "mac",
    "hardware",
    "hw",
    "remote",
    "local",
    "bind",
    "listen",
    "server",
    "client",
    "host",
    "peer",
    "socket",
    "network",
    "net",
    "node",
    "gateway",
    "proxy",
    "dns",
    "multicast",
    "broadcast",
    "bluetooth",
    "wallet",
    "contract",
    "memory",
    "mem",
    "base",
    "return",
    "web",
    "url",
];

/// Last words that describe a value rather than hold it: `email_verified_at`, `token_type`,
/// `password_changed_at`, `address_id`, `card_expiry`. They only apply when the sensitive
/// term is not itself the last word(s): `tax_id` and `national_id` stay sensitive.
///
/// `date` is safe here because a term ending the name wins first (`birth_date`), so only
/// `email_date`-like names fall to it. Deliberately absent: `hint` and `hash`/`digest` (a
/// password hint or hash is sensitive), `num`/`no`/`number` (`cc_num`), `name`
/// (`street_name`), `state` (`address_state`), `salt`.
#[rustfmt::skip]
const METADATA: &[&str] = &[
    // Identity of a row, not the value.
    "id", "ids", "uuid", "guid", "pk", "fk", "ref", "idx", "index", "seq",
    // Counts and sizes.
    "count", "counts", "cnt", "total", "length", "len", "size", "attempts", "attempt",
    "failures", "limit", "quota", "usage",
    // Kinds and states.
    "type", "types", "kind", "status", "mode", "method", "scheme", "algorithm", "algo",
    "format", "version", "policy", "strength", "provider", "template", "label", "source",
    "flag", "flags", "scope", "scopes", "prefix", "suffix", "visibility", "visible", "public",
    "preference", "preferences", "consent", "opt", "optin", "optout",
    // Yes/no facts.
    "verified", "verification", "confirmed", "confirmation", "valid", "validated", "validity",
    "enabled", "disabled", "active", "required", "present", "missing", "exists", "masked",
    "bounced", "bounce", "locked", "revoked", "rotated", "issued", "used",
    // Events and when they happened.
    "at", "on", "by", "in", "ts", "date", "time", "timestamp", "sent", "set", "changed", "change",
    "updated", "created", "modified", "reset", "expires", "expiry", "expired", "expiration",
    "exp", "ttl",
];

/// First words that turn the rest into a yes/no or a number: `is_mobile`, `has_email`,
/// `num_cards`, `max_password_length`.
#[rustfmt::skip]
const FLAG_PREFIXES: &[&str] = &[
    "is", "has", "can", "should", "allow", "use", "needs", "require", "show", "hide", "send",
    "no", "num", "count", "total", "max", "min",
];

/// The longest run of words a term spans (`driver_s_license_number`).
const MAX_WINDOW: usize = 4;

/// Classification of a column by its (source) column name. `None` = nothing sensitive in the
/// name.
///
/// The name is split into lower-case words (see [`words`]); digit-only words are dropped
/// (`address_line1`, `cvv2`). The term that ends last wins (English puts the head noun last:
/// `email_address` is an e-mail, `billing_address` an address), the longest at equal ends.
/// When no term ends the name and the last word is metadata ([`METADATA`]), the name is not
/// sensitive: `email_verified_at` holds a time.
pub fn by_name(column: &str) -> Option<Class> {
    let words = words(column);
    let n = words.len();
    let first = words.first()?;
    let last = words.last()?;
    if n > 1 && FLAG_PREFIXES.contains(&first.as_str()) {
        return None;
    }
    for end in (1..=n).rev() {
        for start in end.saturating_sub(MAX_WINDOW)..end {
            let Some(window) = words.get(start..end) else {
                continue;
            };
            if let Some(class) = match_window(&window.concat(), &words, start, end) {
                return Some(class);
            }
        }
        if end == n && METADATA.contains(&last.as_str()) {
            return None;
        }
    }
    None
}

/// Whether `joined` (the words `start..end` of `words`, concatenated) is a sensitive term
/// allowed at that place.
fn match_window(joined: &str, words: &[String], start: usize, end: usize) -> Option<Class> {
    let n = words.len();
    let prev = start.checked_sub(1).and_then(|p| words.get(p));
    let after_net = prev.is_some_and(|p| NET_QUALIFIERS.contains(&p.as_str()));
    for form in singulars(joined) {
        let Some(&(_, class, scope)) = TERMS.iter().find(|(t, _, _)| *t == form) else {
            continue;
        };
        let whole = start == 0 && end == n;
        let allowed = match scope {
            Scope::Any => true,
            Scope::Head => end == n,
            Scope::Whole => whole,
            Scope::WithCard => whole || words.iter().any(|w| w.ends_with("card")),
            Scope::Postal => !after_net,
        };
        if allowed {
            return Some(class);
        }
    }
    // A single unsplit word may end with a term: `useremail`, `rolpassword`.
    if end - start != 1 {
        return None;
    }
    for form in singulars(joined) {
        for &(suffix, class) in SUFFIXES {
            let Some(qualifier) = form.strip_suffix(suffix) else {
                continue;
            };
            if qualifier.is_empty() {
                continue;
            }
            let excluded = match class {
                Class::Phone => NOT_PHONE.iter().any(|x| form.ends_with(x)),
                Class::Address => NET_QUALIFIERS.contains(&qualifier) || after_net,
                _ => false,
            };
            if !excluded {
                return Some(class);
            }
        }
    }
    None
}

/// `word`, then the word without a plural `s` or `es` (`emails`, `addresses`).
fn singulars(word: &str) -> impl Iterator<Item = &str> {
    [Some(word), word.strip_suffix('s'), word.strip_suffix("es")]
        .into_iter()
        .flatten()
        .filter(|w| !w.is_empty())
}

/// Splits a name into lower-case words on non-alphanumerics, letter/digit boundaries and case
/// changes (`billingEmail` → billing, email; `CCNumber` → cc, number), dropping digit-only
/// words (`address_line1` → address, line).
fn words(name: &str) -> Vec<String> {
    let chars: Vec<char> = name.chars().collect();
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut prev: Option<char> = None;
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            push_word(&mut out, &mut cur);
            prev = None;
            continue;
        }
        if let Some(p) = prev {
            let next = chars.get(i + 1).copied();
            let boundary = p.is_numeric() != c.is_numeric()
                || (p.is_lowercase() && c.is_uppercase())
                || (p.is_uppercase() && c.is_uppercase() && next.is_some_and(char::is_lowercase));
            if boundary {
                push_word(&mut out, &mut cur);
            }
        }
        cur.extend(c.to_lowercase());
        prev = Some(c);
    }
    push_word(&mut out, &mut cur);
    out
}

fn push_word(out: &mut Vec<String>, cur: &mut String) {
    let word = std::mem::take(cur);
    if !word.is_empty() && !word.chars().all(char::is_numeric) {
        out.push(word);
    }
}

// ---------------------------------------------------------------------------------------------
// By content
// ---------------------------------------------------------------------------------------------

/// The shortest value any content rule can match (`a@b.co`).
const MIN_CONTENT_LEN: usize = 6;

/// Classification of one value by its content (the value's text bytes, as a PostgreSQL
/// text-format value). A match anywhere inside the value counts (an e-mail inside a sentence);
/// the first match in the value decides the class.
///
/// Two passes. The first is branch-free: it ORs together what each byte could start and
/// counts digits, which rules out most values at once and switches off the rules that cannot
/// match. The second dispatches each byte on its value, and only bytes that can start a
/// match are looked at further, with fixed-size buffers. Digit sequences are consumed whole,
/// so the scan stays linear. Allocates nothing.
pub fn by_content(value: &[u8]) -> Option<Class> {
    if value.len() < MIN_CONTENT_LEN {
        return None;
    }
    let mut flags = 0u8;
    let mut digits = 0usize;
    let mut dashes = 0usize;
    for &b in value {
        flags |= BYTE_FLAGS.get(usize::from(b)).copied().unwrap_or(0);
        digits += usize::from(b.is_ascii_digit());
        dashes += usize::from(b == b'-');
    }
    let on = |f: u8| flags & f != 0;
    // What can match at all: an SSN has 9 digits and a card more, a phone 8 after its `+`;
    // IBANs and cloud keys are 15 characters or longer; a PEM block has two runs of 5 dashes.
    let email = on(AT);
    let phone = on(PLUS) && digits >= 8;
    let numeric = digits >= 9;
    let upper = on(UPPER) && value.len() >= 15;
    let jwt = on(J);
    let underscore = on(UNDERSCORE);
    let slack = on(X) && dashes > 0;
    let pem = dashes >= 10;
    if !(email || phone || numeric || upper || jwt || underscore || slack || pem) {
        return None;
    }
    let mut i = 0;
    while let Some(&b) = value.get(i) {
        let mut next = i + 1;
        let hit = match b {
            b'@' if email => email_at(value, i).then_some(Class::Email),
            b'+' if phone => phone_at(value, i).then_some(Class::Phone),
            b'0'..=b'9' if numeric => {
                let (hit, end) = numeric_at(value, i);
                next = next.max(end);
                hit
            }
            b'A'..=b'Z' if upper => upper_at(value, i),
            b'e' if jwt => jwt_at(value, i).then_some(Class::Secret),
            b'g' if underscore => github_at(value, i).then_some(Class::Secret),
            b's' | b'r' if underscore => stripe_at(value, i).then_some(Class::Secret),
            b'x' if slack => slack_at(value, i).then_some(Class::Secret),
            b'-' if pem => pem_at(value, i).then_some(Class::Secret),
            _ => None,
        };
        if hit.is_some() {
            return hit;
        }
        i = next;
    }
    None
}

const AT: u8 = 1;
const PLUS: u8 = 2;
const UPPER: u8 = 4;
/// `J`, as in `eyJ` that starts a JWT's parts.
const J: u8 = 8;
/// GitHub and Stripe tokens.
const UNDERSCORE: u8 = 16;
/// `x`, as in `xoxb-` that starts a Slack token.
const X: u8 = 32;

/// What each byte value could be part of, for the first pass. Built at compile time: an
/// index out of bounds here would fail the build, not a session.
#[allow(clippy::indexing_slicing)]
static BYTE_FLAGS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'@' => AT,
            b'+' => PLUS,
            b'J' => UPPER | J,
            b'A'..=b'Z' => UPPER,
            b'_' => UNDERSCORE,
            b'x' => X,
            _ => 0,
        };
        b += 1;
    }
    t
};

/// The byte before `i`.
fn before(v: &[u8], i: usize) -> Option<u8> {
    i.checked_sub(1).and_then(|p| v.get(p)).copied()
}

fn is_alnum(b: Option<u8>) -> bool {
    b.is_some_and(|b| b.is_ascii_alphanumeric())
}

fn is_digit(b: Option<u8>) -> bool {
    b.is_some_and(|b| b.is_ascii_digit())
}

/// How many bytes from `from` on satisfy `ok`.
fn run(v: &[u8], from: usize, ok: impl Fn(u8) -> bool) -> usize {
    v.get(from..)
        .map_or(0, |s| s.iter().take_while(|&&b| ok(b)).count())
}

fn starts_with_at(v: &[u8], i: usize, prefix: &[u8]) -> bool {
    v.get(i..).is_some_and(|s| s.starts_with(prefix))
}

/// Whether the number starting at `start` continues a word or a larger number before it
/// (`x4111…`, `0.4111…`, `12/4111…`).
fn attached_before(v: &[u8], start: usize) -> bool {
    match before(v, start) {
        Some(b) if b.is_ascii_alphanumeric() => true,
        Some(b'.' | b'-' | b'/' | b':') => is_digit(before(v, start.saturating_sub(1))),
        _ => false,
    }
}

/// Whether the number ending before `end` continues into a word or a larger number
/// (`…1111abc`, `…1111.5`).
fn attached_after(v: &[u8], end: usize) -> bool {
    match v.get(end).copied() {
        Some(b) if b.is_ascii_alphanumeric() => true,
        Some(b'.' | b'-' | b'/' | b':') => is_digit(v.get(end + 1).copied()),
        _ => false,
    }
}

// --- E-mail -----------------------------------------------------------------------------------

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// `local@domain.tld` around the `@` at `at`: a local part with a letter or digit, at least
/// two non-empty domain labels not starting or ending with `-`, a TLD of two or more
/// letters. A sentence's final `.` is not part of the domain.
fn email_at(v: &[u8], at: usize) -> bool {
    let mut start = at;
    while let Some(b) = before(v, start) {
        if !is_local(b) {
            break;
        }
        start -= 1;
    }
    let local_ok = v
        .get(start..at)
        .is_some_and(|l| l.iter().any(u8::is_ascii_alphanumeric));
    if !local_ok {
        return false;
    }
    let dstart = at + 1;
    let dlen = run(v, dstart, |b| {
        b.is_ascii_alphanumeric() || b == b'-' || b == b'.'
    });
    let Some(mut domain) = v.get(dstart..dstart + dlen) else {
        return false;
    };
    while let [rest @ .., b'.' | b'-'] = domain {
        domain = rest;
    }
    let mut labels = 0;
    let mut tld_ok = false;
    for label in domain.split(|&b| b == b'.') {
        let bad_edge = label.first() == Some(&b'-') || label.last() == Some(&b'-');
        if label.is_empty() || label.len() > 63 || bad_edge {
            return false;
        }
        labels += 1;
        tld_ok = label.len() >= 2 && label.iter().all(u8::is_ascii_alphabetic);
    }
    labels >= 2 && tld_ok
}

// --- Phone ------------------------------------------------------------------------------------

/// The international form only: `+`, a non-zero digit, 8–15 digits in all with at most two
/// consecutive separators (space, `-`, `(`, `)`) between them, not glued to a word or a
/// larger number on either side. Bare digit strings are ids far more often than phones.
fn phone_at(v: &[u8], plus: usize) -> bool {
    if is_alnum(before(v, plus)) || !matches!(v.get(plus + 1), Some(b'1'..=b'9')) {
        return false;
    }
    let mut pos = plus + 1;
    let mut digits = 0usize;
    let mut seps = 0usize;
    let mut end = pos;
    while let Some(&b) = v.get(pos) {
        match b {
            b'0'..=b'9' => {
                digits += 1;
                if digits > 15 {
                    return false;
                }
                seps = 0;
                end = pos + 1;
            }
            b' ' | b'-' | b'(' | b')' if seps < 2 => seps += 1,
            _ => break,
        }
        pos += 1;
    }
    (8..=15).contains(&digits) && !attached_after(v, end)
}

// --- Digit sequences: cards and SSNs ----------------------------------------------------------

/// The digit groups of a sequence `pos..end` whose groups are separated by single bytes.
#[derive(Clone)]
struct Groups<'a> {
    v: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Iterator for Groups<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.pos >= self.end {
            return None;
        }
        let len = run(self.v, self.pos, |b| b.is_ascii_digit());
        let group = self.v.get(self.pos..self.pos + len)?;
        self.pos += len + 1;
        Some(group)
    }
}

/// Up to 19 digits (values 0–9), without allocating.
struct Digits {
    buf: [u8; 19],
    len: usize,
}

impl Digits {
    fn new() -> Digits {
        Digits {
            buf: [0; 19],
            len: 0,
        }
    }

    /// Appends a group of ASCII digits; false when it does not fit.
    fn push(&mut self, group: &[u8]) -> bool {
        for &b in group {
            let Some(slot) = self.buf.get_mut(self.len) else {
                return false;
            };
            *slot = b.wrapping_sub(b'0');
            self.len += 1;
        }
        true
    }

    fn as_slice(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// Looks at the digit sequence starting at `start`: digit groups joined by single spaces or
/// single dashes (one kind per sequence, so `123-45-6789 1234` is an SSN followed by a
/// number). Returns what it holds and the index just past it, where the scan resumes.
fn numeric_at(v: &[u8], start: usize) -> (Option<Class>, usize) {
    let mut pos = start;
    let mut sep: Option<u8> = None;
    let mut groups = 0usize;
    let end = loop {
        pos += run(v, pos, |b| b.is_ascii_digit());
        groups += 1;
        match (v.get(pos).copied(), v.get(pos + 1).copied()) {
            (Some(s @ (b' ' | b'-')), Some(d))
                if d.is_ascii_digit() && sep.is_none_or(|x| x == s) =>
            {
                sep = Some(s);
                pos += 1;
            }
            _ => break pos,
        }
    };
    // Most numbers stop here: an SSN has 9 digits, a card at least 13.
    let digits = (end - start).saturating_sub(groups - 1);
    if digits < 9 || attached_before(v, start) || attached_after(v, end) {
        return (None, end);
    }
    let seq = Groups { v, pos: start, end };
    if groups == 3 && sep == Some(b'-') && ssn(seq.clone()) {
        return (Some(Class::Ssn), end);
    }
    if digits >= 13 && card_in(seq) {
        return (Some(Class::Card), end);
    }
    (None, end)
}

/// `ddd-dd-dddd` with a valid area (not 000, 666, 900–999), group (not 00) and serial
/// (not 0000).
fn ssn(mut groups: Groups<'_>) -> bool {
    let (Some(a), Some(g), Some(s)) = (groups.next(), groups.next(), groups.next()) else {
        return false;
    };
    if a.len() != 3 || g.len() != 2 || s.len() != 4 {
        return false;
    }
    let (area, group, serial) = (number(a), number(g), number(s));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn number(digits: &[u8]) -> u32 {
    digits.iter().fold(0u32, |n, &b| {
        n.wrapping_mul(10)
            .wrapping_add(u32::from(b.wrapping_sub(b'0')))
    })
}

/// Whether some window of whole groups is a card number: one group of 13–19 digits, or
/// groups as cards are printed (a first group of 4, then groups of 3–6: 4-4-4-4, 4-6-5,
/// 4-4-4-4-3) totalling 13–19 digits. A group longer than 19 digits is part of a longer number
/// and never a card.
fn card_in(seq: Groups<'_>) -> bool {
    let mut starts = seq;
    loop {
        let rest = starts.clone();
        let Some(first) = starts.next() else {
            return false;
        };
        if (13..=19).contains(&first.len()) {
            let mut d = Digits::new();
            if d.push(first) && is_card(d.as_slice()) {
                return true;
            }
        }
        if first.len() == 4 {
            let mut d = Digits::new();
            d.push(first);
            for group in rest.skip(1) {
                if !(3..=6).contains(&group.len()) || !d.push(group) {
                    break;
                }
                if d.len >= 13 && is_card(d.as_slice()) {
                    return true;
                }
            }
        }
    }
}

/// Luhn-valid with a real brand's prefix and length (Maestro's wide ranges are left out).
fn is_card(d: &[u8]) -> bool {
    (13..=19).contains(&d.len()) && brand_ok(d) && luhn(d)
}

fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &x)| {
            let x = u32::from(x);
            match (k % 2 == 1, x * 2) {
                (false, _) => x,
                (true, y) if y > 9 => y - 9,
                (true, y) => y,
            }
        })
        .sum();
    // `u32::is_multiple_of` would need Rust 1.87; the workspace declares 1.85.
    let rem = sum % 10;
    rem == 0
}

/// Visa 4 (13/16/19); Mastercard 51–55, 2221–2720 (16); Amex 34, 37 (15); Discover 6011,
/// 644–649, 65 (16–19); JCB 3528–3589 (16–19); Diners 300–305, 36, 38, 39 (14–19);
/// UnionPay 62 (16–19).
fn brand_ok(d: &[u8]) -> bool {
    let len = d.len();
    let prefix = |k: usize| number_of(d.iter().take(k));
    let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
    let between = |lo: usize, hi: usize| (lo..=hi).contains(&len);
    (p1 == 4 && matches!(len, 13 | 16 | 19))
        || (((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16)
        || (matches!(p2, 34 | 37) && len == 15)
        || ((p4 == 6011 || (644..=649).contains(&p3) || p2 == 65) && between(16, 19))
        || ((3528..=3589).contains(&p4) && between(16, 19))
        || (((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39)) && between(14, 19))
        || (p2 == 62 && between(16, 19))
}

/// The number formed by digit values (0–9).
fn number_of<'a>(digits: impl Iterator<Item = &'a u8>) -> u32 {
    digits.fold(0u32, |n, &x| n.wrapping_mul(10).wrapping_add(u32::from(x)))
}

// --- Upper-case starts: AWS, Google, IBAN -----------------------------------------------------

/// A match starting at the upper-case letter at `i`, which must begin a word.
fn upper_at(v: &[u8], i: usize) -> Option<Class> {
    if is_alnum(before(v, i)) {
        return None;
    }
    if aws_key_at(v, i) || google_key_at(v, i) {
        return Some(Class::Secret);
    }
    iban_at(v, i).then_some(Class::Iban)
}

/// AWS access key id: `AKIA`/`ASIA`/`AGPA`/`AIDA`/`AROA` and 16 of `[A-Z0-9]`, a whole word.
fn aws_key_at(v: &[u8], i: usize) -> bool {
    const PREFIXES: [&[u8]; 5] = [b"AKIA", b"ASIA", b"AGPA", b"AIDA", b"AROA"];
    PREFIXES.iter().any(|p| starts_with_at(v, i, p))
        && run(v, i + 4, |b| b.is_ascii_uppercase() || b.is_ascii_digit()) == 16
        && !is_alnum(v.get(i + 20).copied())
}

/// Google API key: `AIza` and exactly 35 of `[A-Za-z0-9_-]`.
fn google_key_at(v: &[u8], i: usize) -> bool {
    starts_with_at(v, i, b"AIza") && run(v, i + 4, is_b64url) == 35
}

/// Countries' IBAN lengths (SWIFT IBAN registry).
#[rustfmt::skip]
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24), (b"AE", 23), (b"AL", 28), (b"AT", 20), (b"AZ", 28), (b"BA", 20), (b"BE", 16),
    (b"BG", 22), (b"BH", 22), (b"BI", 27), (b"BR", 29), (b"BY", 28), (b"CH", 21), (b"CR", 22),
    (b"CY", 28), (b"CZ", 24), (b"DE", 22), (b"DJ", 27), (b"DK", 18), (b"DO", 28), (b"EE", 20),
    (b"EG", 29), (b"ES", 24), (b"FI", 18), (b"FK", 18), (b"FO", 18), (b"FR", 27), (b"GB", 22),
    (b"GE", 22), (b"GI", 23), (b"GL", 18), (b"GR", 27), (b"GT", 28), (b"HR", 21), (b"HU", 28),
    (b"IE", 22), (b"IL", 23), (b"IQ", 23), (b"IS", 26), (b"IT", 27), (b"JO", 30), (b"KW", 30),
    (b"KZ", 20), (b"LB", 28), (b"LC", 32), (b"LI", 21), (b"LT", 20), (b"LU", 20), (b"LV", 21),
    (b"LY", 25), (b"MC", 27), (b"MD", 24), (b"ME", 22), (b"MK", 19), (b"MN", 20), (b"MR", 27),
    (b"MT", 31), (b"MU", 30), (b"NI", 28), (b"NL", 18), (b"NO", 15), (b"OM", 23), (b"PK", 24),
    (b"PL", 28), (b"PS", 29), (b"PT", 25), (b"QA", 29), (b"RO", 24), (b"RS", 22), (b"RU", 33),
    (b"SA", 24), (b"SC", 31), (b"SD", 18), (b"SE", 24), (b"SI", 19), (b"SK", 24), (b"SM", 27),
    (b"SO", 23), (b"ST", 25), (b"SV", 28), (b"TL", 23), (b"TN", 24), (b"TR", 26), (b"UA", 29),
    (b"VA", 22), (b"VG", 24), (b"XK", 20), (b"YE", 30),
];

/// An IBAN at `i`: a country code with its registered length, two check digits, upper-case
/// letters and digits, either unbroken or in groups of four separated by single spaces (the
/// last group shorter), the exact length, not glued to a following word, and mod-97 = 1.
fn iban_at(v: &[u8], i: usize) -> bool {
    let (Some(&c0), Some(&c1)) = (v.get(i), v.get(i + 1)) else {
        return false;
    };
    if !c1.is_ascii_uppercase()
        || !is_digit(v.get(i + 2).copied())
        || !is_digit(v.get(i + 3).copied())
    {
        return false;
    }
    let Some(&(_, len)) = IBAN_LENGTHS.iter().find(|(cc, _)| **cc == [c0, c1]) else {
        return false;
    };
    let mut buf = [0u8; 34];
    let mut n = 0usize;
    let mut pos = i;
    let mut in_group = 0usize;
    // None until the layout is known: Some(true) in groups of four, Some(false) unbroken.
    let mut spaced: Option<bool> = None;
    while n < len {
        match v.get(pos).copied() {
            Some(b) if b.is_ascii_uppercase() || b.is_ascii_digit() => {
                if spaced == Some(true) && in_group == 4 {
                    return false;
                }
                let Some(slot) = buf.get_mut(n) else {
                    return false;
                };
                *slot = b;
                n += 1;
                in_group += 1;
                if in_group > 4 {
                    spaced = Some(false);
                }
            }
            Some(b' ')
                if spaced != Some(false) && in_group == 4 && is_alnum(v.get(pos + 1).copied()) =>
            {
                spaced = Some(true);
                in_group = 0;
            }
            _ => return false,
        }
        pos += 1;
    }
    if is_alnum(v.get(pos).copied()) {
        return false;
    }
    let Some(iban) = buf.get(..len) else {
        return false;
    };
    // Move the country code and check digits to the end; letters count as 10–35.
    let mut rem = 0u32;
    for &c in iban.iter().skip(4).chain(iban.iter().take(4)) {
        rem = if c.is_ascii_digit() {
            (rem * 10 + u32::from(c - b'0')) % 97
        } else {
            (rem * 100 + u32::from(c - b'A') + 10) % 97
        };
    }
    rem == 1
}

// --- Tokens -----------------------------------------------------------------------------------

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_word_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// A JWT: three base64url parts of at least 10 characters joined by `.`, the first two
/// starting `eyJ` (base64 of `{"`).
fn jwt_at(v: &[u8], i: usize) -> bool {
    if !starts_with_at(v, i, b"eyJ") || before(v, i).is_some_and(is_b64url) {
        return false;
    }
    let header = run(v, i, is_b64url);
    let payload_at = i + header + 1;
    if header < 10 || v.get(i + header) != Some(&b'.') || !starts_with_at(v, payload_at, b"eyJ") {
        return false;
    }
    let payload = run(v, payload_at, is_b64url);
    let signature_at = payload_at + payload + 1;
    payload >= 10
        && v.get(payload_at + payload) == Some(&b'.')
        && run(v, signature_at, is_b64url) >= 10
}

/// GitHub tokens: `ghp_`, `gho_`, `ghs_`, `ghu_`, `ghr_`, `github_pat_` and 30 or more of
/// `[A-Za-z0-9_]`.
fn github_at(v: &[u8], i: usize) -> bool {
    const PREFIXES: [&[u8]; 6] = [b"ghp_", b"gho_", b"ghs_", b"ghu_", b"ghr_", b"github_pat_"];
    if before(v, i).is_some_and(is_word_char) {
        return false;
    }
    PREFIXES
        .iter()
        .any(|p| starts_with_at(v, i, p) && run(v, i + p.len(), is_word_char) >= 30)
}

/// Slack tokens: `xox[abprs]-` and 10 or more of `[A-Za-z0-9-]`.
fn slack_at(v: &[u8], i: usize) -> bool {
    !is_alnum(before(v, i))
        && starts_with_at(v, i, b"xox")
        && matches!(v.get(i + 3), Some(b'a' | b'b' | b'p' | b'r' | b's'))
        && v.get(i + 4) == Some(&b'-')
        && run(v, i + 5, |b| b.is_ascii_alphanumeric() || b == b'-') >= 10
}

/// Stripe live secret and restricted keys: `sk_live_`/`rk_live_` and 16 or more
/// alphanumerics.
fn stripe_at(v: &[u8], i: usize) -> bool {
    !before(v, i).is_some_and(is_word_char)
        && v.get(i + 1..i + 8) == Some(&b"k_live_"[..])
        && run(v, i + 8, |b| b.is_ascii_alphanumeric()) >= 16
}

/// A PEM private key: `-----BEGIN <label>-----` whose label ends with `PRIVATE KEY`
/// (`RSA PRIVATE KEY`, `OPENSSH PRIVATE KEY`, `ENCRYPTED PRIVATE KEY`, ...).
fn pem_at(v: &[u8], i: usize) -> bool {
    const BEGIN: &[u8] = b"-----BEGIN ";
    if !starts_with_at(v, i, BEGIN) {
        return false;
    }
    let label_at = i + BEGIN.len();
    let label_len = run(v, label_at, |b| b.is_ascii_uppercase() || b == b' ');
    v.get(label_at..label_at + label_len)
        .is_some_and(|label| label.ends_with(b"PRIVATE KEY"))
        && starts_with_at(v, label_at + label_len, b"-----")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(Class::Email.as_str(), "email");
        assert_eq!(Class::BirthDate.as_str(), "birth_date");
    }

    #[test]
    fn splits_words() {
        assert_eq!(words("billingEmail"), ["billing", "email"]);
        assert_eq!(words("CCNumber"), ["cc", "number"]);
        assert_eq!(words("address_line1"), ["address", "line"]);
        assert_eq!(words("Customer-E.mail 2"), ["customer", "e", "mail"]);
        assert_eq!(words("userID"), ["user", "id"]);
        assert!(words("__").is_empty());
    }

    #[test]
    fn sensitive_names() {
        let cases = [
            ("email", Class::Email),
            ("Email", Class::Email),
            ("customer_email", Class::Email),
            ("billingEmail", Class::Email),
            ("e_mail", Class::Email),
            ("email_address", Class::Email),
            ("emails", Class::Email),
            ("mail", Class::Email),
            ("useremail", Class::Email),
            ("phone_number", Class::Phone),
            ("mobile", Class::Phone),
            ("customer_mobile", Class::Phone),
            ("cell_phone", Class::Phone),
            ("tel", Class::Phone),
            ("msisdn", Class::Phone),
            ("homephone", Class::Phone),
            ("ssn", Class::Ssn),
            ("social_security_number", Class::Ssn),
            ("tax_id", Class::Ssn),
            ("national_id", Class::Ssn),
            ("card_number", Class::Card),
            ("ccnum", Class::Card),
            ("cc_num", Class::Card),
            ("CCNumber", Class::Card),
            ("pan", Class::Card),
            ("card_pan", Class::Card),
            ("cvv2", Class::Card),
            ("iban", Class::Iban),
            ("bank_account_number", Class::Iban),
            ("routing_number", Class::Iban),
            ("password", Class::Password),
            ("password_hash", Class::Password),
            ("password_hint", Class::Password),
            ("passwd", Class::Password),
            ("rolpassword", Class::Password),
            ("pass_hash", Class::Password),
            ("api_key", Class::Secret),
            ("apiKey", Class::Secret),
            ("APIKey", Class::Secret),
            ("access_token", Class::Secret),
            ("refreshToken", Class::Secret),
            ("client_secret", Class::Secret),
            ("private_key", Class::Secret),
            ("secret_access_key", Class::Secret),
            ("street_address", Class::Address),
            ("billing_address", Class::Address),
            ("address_line1", Class::Address),
            ("addresses", Class::Address),
            ("postal_code", Class::Address),
            ("zip", Class::Address),
            ("date_of_birth", Class::BirthDate),
            ("birth_date", Class::BirthDate),
            ("dob", Class::BirthDate),
            ("birthday", Class::BirthDate),
        ];
        for (name, class) in cases {
            assert_eq!(by_name(name), Some(class), "{name}");
        }
    }

    #[test]
    fn ordinary_names() {
        for name in [
            "id",
            "email_verified",
            "email_verified_at",
            "email_date",
            "birth_date_verified",
            "email_count",
            "token_type",
            "password_changed_at",
            "password_set",
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
            "num_cards",
            "mobile_app",
            "mail_server",
            "ip_address",
            "client_addr",
            "macAddress",
            "wallet_address",
            "microphone",
            "headphones",
            "zip_archive",
            "card_expiry",
            "pan_zoom",
            "key",
            "pass",
            "sin",
            "tin",
            "bic",
            "",
            "___",
            "42",
        ] {
            assert_eq!(by_name(name), None, "{name}");
        }
    }

    fn class(v: &str) -> Option<Class> {
        by_content(v.as_bytes())
    }

    #[test]
    fn emails() {
        for v in [
            "alice@example.com",
            "a@b.co",
            "Contact bob.smith+tag@mail.example.co.uk for details.",
            "write to omar@corp.example.",
            "<jane_doe-1@sub.example.org>",
        ] {
            assert_eq!(class(v), Some(Class::Email), "{v}");
        }
        for v in [
            "@handle says hi",
            "user@localhost",
            "pkg@1.2.3",
            "a@b",
            "x @ example.com",
            "foo@-bar.com",
            "foo@bar..com",
            "a@b.c",
        ] {
            assert_eq!(class(v), None, "{v}");
        }
    }

    #[test]
    fn cards() {
        for v in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "paid with 5555555555554444 yesterday",
            "5555 5555 5555 4444.",
            "2223003122003222",
            "378282246310005",
            "3782 822463 10005",
            "6011111111111117",
            "3530111333300000",
            "30569309025904",
            "6200000000000005",
            "ref 12 4111 1111 1111 1111",
            "{4012888888881881,42}",
        ] {
            assert_eq!(class(v), Some(Class::Card), "{v}");
        }
        for v in [
            "4111111111111112",            // fails Luhn
            "1234567812345670",            // Luhn-valid, no brand
            "123454111111111111111116789", // inside a longer run
            "x4111111111111111",
            "4111111111111111abc",
            "0.4111111111111111",  // a decimal fraction
            "4111111111111111.25", // a decimal
            "4111 1111 1111 1112",
            "41 11 11 11 11 11 11 11", // not printed like a card
            "4111--1111--1111--1111",
        ] {
            assert_eq!(class(v), None, "{v}");
        }
    }

    #[test]
    fn ssns() {
        for v in ["123-45-6789", "SSN: 078-05-1120.", "ssn 123-45-6789 1234"] {
            assert_eq!(class(v), Some(Class::Ssn), "{v}");
        }
        for v in [
            "123456789",
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "1123-45-6789",
            "123-45-67890",
            "9-123-45-6789",
            "123-45-6789-1",
            "415-555-0132",
            "2024-03-05",
        ] {
            assert_eq!(class(v), None, "{v}");
        }
    }

    #[test]
    fn phones() {
        for v in [
            "+1 415-555-0132",
            "+44 20 7946 0958",
            "+1 (415) 555-0132",
            "+4915112345678",
            "call +33 1 23 45 67 89 today",
        ] {
            assert_eq!(class(v), Some(Class::Phone), "{v}");
        }
        for v in [
            "415-555-0132",
            "4155550132",
            "+12",
            "+0 123 456 789",
            "2024-03-05 12:34:56+00",
            "2024-03-05T12:34:56+05:30",
            "3+12345678",
            "+1234567",
            "+12345678901234567",
            "+12345678abc",
            "+1234.5678",
        ] {
            assert_eq!(class(v), None, "{v}");
        }
    }

    #[test]
    fn ibans() {
        for v in [
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
            "GB82 WEST 1234 5698 7654 32",
            "NL91ABNA0417164300",
            "FR1420041010050500013M02606",
            "pay to BE68539007547034 please",
            "ES91 2100 0418 4502 0005 1332 is my account",
            "NO9386011117947",
        ] {
            assert_eq!(class(v), Some(Class::Iban), "{v}");
        }
        for v in [
            "GB82WEST12345698765433",      // checksum
            "DE89 3704 0044 0532 0130 01", // checksum
            "DE8937040044053201300",       // too short
            "DE893704004405320130000",     // too long
            "DE89 37040044 0532 0130 00",  // mixed layout
            "XX89370400440532013000",      // no such country
            "de89370400440532013000",      // lower case
            "ADE89370400440532013000",     // glued to a word
        ] {
            assert_eq!(class(v), None, "{v}");
        }
    }

    /// Token literals are assembled at run time so that secret scanners (and push
    /// protection) do not flag this file.
    fn token(parts: &[&str]) -> String {
        parts.concat()
    }

    #[test]
    fn secrets() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        let pem = token(&[
            "-----BEGIN ",
            "RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END ",
            "RSA PRIVATE KEY-----",
        ]);
        let openssh = token(&["-----BEGIN OPENSSH ", "PRIVATE KEY-----\nb3BlbnNzaA=="]);
        let cases = [
            jwt.to_string(),
            format!("Authorization: Bearer {jwt}"),
            token(&["AKIA", "IOSFODNN7EXAMPLE"]),
            token(&["key=", "ASIA", "ABCDEFGHIJKLMNOP"]),
            token(&["AIza", "SyA1234567890abcdefghijklmnopqrstuv"]),
            token(&["gh", "p_", "abcdefghijklmnopqrstuvwxyz0123456789"]),
            token(&["github", "_pat_", "11ABCDEFG0123456789_abcdefghijklmnop"]),
            token(&["xo", "xb-", "1234567890-abcdefghij"]),
            token(&["sk", "_live_", "abcdefghijklmnop1234"]),
            token(&["rk", "_live_", "ABCDEFGHIJKLMNOP5678"]),
            pem,
            openssh,
        ];
        for v in &cases {
            assert_eq!(class(v), Some(Class::Secret), "{v}");
        }
        for v in [
            "eyJhbGciOiJIUzI1NiJ9",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0",
            "AKIAIOSFODNN7EXAMPL",
            "XAKIAIOSFODNN7EXAMPLE",
            "ghp_short",
            "xoxb-short",
            "sk_test_abcdefghijklmnop1234",
            "-----BEGIN CERTIFICATE-----",
            "-----BEGIN PUBLIC KEY-----",
            "ASIA is a continent",
        ] {
            assert_eq!(class(v), None, "{v}");
        }
    }

    #[test]
    fn short_and_odd_input() {
        for v in [
            &b""[..],
            b"@",
            b"+1",
            b"4111",
            b"\xff\xfe@\x00.com",
            b"-----",
            b"eyJ",
        ] {
            assert_eq!(by_content(v), None);
        }
        // Non-UTF-8 around a match does not matter.
        assert_eq!(
            by_content(b"\xff alice@example.com \xfe"),
            Some(Class::Email)
        );
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

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }

        /// A uniformly random `n`-digit number (no leading zero).
        fn digits(&mut self, n: usize) -> String {
            let mut s = String::with_capacity(n);
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

    #[rustfmt::skip]
    const WORDS: &[&str] = &[
        "the", "order", "was", "shipped", "to", "our", "warehouse", "customer", "asked",
        "about", "delivery", "blue", "large", "invoice", "pending", "refund", "approved",
        "note", "call", "back", "on", "Monday", "price", "discount", "total", "item", "stock",
        "returned", "quality", "panel", "hotel", "passenger", "compass", "Spanish", "cellar",
        "telemetry", "expansion", "token", "secret", "password", "email", "phone", "card",
        "Asia", "ASIA", "NASA", "USA", "EU", "DE", "GB", "OK", "API", "JSON", "HTTP", "SQL",
        "eye", "eyes", "ghost", "xox", "sky", "risk", "ghoul", "begin", "key", "keys", "private",
        "public", "-", "--", "&", "+", "(", ")", "is", "a", "of", "and", "for", "with", "not",
    ];

    type Gen = Box<dyn FnMut(&mut Rng, u64) -> String>;

    /// Runs `n` generated values through [`by_content`]; prints and returns the hits.
    fn measure(rng: &mut Rng, name: &str, n: u64, mut gen: Gen) -> u64 {
        let mut hits = 0u64;
        let mut example = None;
        for i in 0..n {
            let v = gen(rng, i);
            if by_content(v.as_bytes()).is_some() {
                hits += 1;
                example.get_or_insert(v);
            }
        }
        let rate = hits as f64 * 100.0 / n as f64;
        println!(
            "{name:34} {n:>7} values {hits:>6} hits {rate:>8.4}%{}",
            example.map_or(String::new(), |e| format!("   e.g. {e}"))
        );
        hits
    }

    #[test]
    fn false_positive_rate_on_ordinary_values() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let zero: Vec<(&str, u64, Gen)> = vec![
            (
                "sequential ids",
                30_000,
                Box::new(|_, i| (i + 1).to_string()),
            ),
            (
                "random 1-12 digit integers",
                30_000,
                Box::new(|r, _| {
                    let n = 1 + r.below(12) as usize;
                    r.digits(n)
                }),
            ),
            (
                "uuids",
                20_000,
                Box::new(|r, _| {
                    let (a, b, c, d, e) = (r.hex(8), r.hex(4), r.hex(3), r.hex(3), r.hex(12));
                    format!("{a}-{b}-4{c}-a{d}-{e}")
                }),
            ),
            (
                "prices",
                20_000,
                Box::new(|r, _| format!("{}.{:02}", r.below(10_000_000), r.below(100))),
            ),
            (
                "floats (shortest round-trip)",
                20_000,
                Box::new(|r, _| {
                    let x = (r.next() >> 11) as f64 / (1u64 << 53) as f64;
                    let scale = [1.0, 100.0, 1e6, 1e-3][r.below(4) as usize];
                    format!("{}", x * scale)
                }),
            ),
            (
                "timestamps",
                20_000,
                Box::new(|r, _| {
                    let (y, mo, d) = (1970 + r.below(80), 1 + r.below(12), 1 + r.below(28));
                    let (h, mi, s) = (r.below(24), r.below(60), r.below(60));
                    match r.below(3) {
                        0 => format!("{y}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}+00"),
                        1 => format!(
                            "{y}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{:06}+05:30",
                            r.below(1_000_000)
                        ),
                        _ => format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
                    }
                }),
            ),
            (
                "dates",
                10_000,
                Box::new(|r, _| {
                    let (y, mo, d) = (1900 + r.below(150), 1 + r.below(12), 1 + r.below(28));
                    format!("{y}-{mo:02}-{d:02}")
                }),
            ),
            ("sha1 digests", 10_000, Box::new(|r, _| r.hex(40))),
            ("sha256 digests", 10_000, Box::new(|r, _| r.hex(64))),
            (
                "semantic versions",
                10_000,
                Box::new(|r, _| format!("{}.{}.{}", r.below(30), r.below(100), r.below(1000))),
            ),
            (
                "words and sentences",
                20_000,
                Box::new(|r, _| {
                    let n = 1 + r.below(14);
                    let mut s = (0..n).map(|_| r.pick(WORDS)).collect::<Vec<_>>().join(" ");
                    if r.below(2) == 0 {
                        s.push_str(&format!(
                            " #{} on {}-03-05.",
                            r.below(100_000),
                            2000 + r.below(30)
                        ));
                    }
                    s
                }),
            ),
            (
                "product codes",
                10_000,
                Box::new(|r, i| match i % 3 {
                    0 => format!(
                        "SKU-{}-{}",
                        r.digits(5),
                        r.pick(&["XS", "S", "M", "L", "XL"])
                    ),
                    1 => format!("ORD-{}-{}", 2000 + r.below(30), r.digits(6)),
                    _ => format!("PRD{}", r.digits(8)),
                }),
            ),
            (
                "paths and urls",
                10_000,
                Box::new(|r, _| match r.below(3) {
                    0 => format!(
                        "https://example.com/{}/{}?x={}&page={}",
                        r.pick(WORDS),
                        r.hex(8),
                        r.below(1000),
                        r.below(100)
                    ),
                    1 => format!(
                        "/var/lib/postgresql/16/main/base/{}/{}",
                        r.below(100_000),
                        r.below(100_000)
                    ),
                    _ => format!("s3://bucket/{}/{}.csv", r.pick(WORDS), r.digits(10)),
                }),
            ),
            (
                "ipv4 addresses",
                10_000,
                Box::new(|r, _| {
                    let (a, b, c, d) = (r.below(256), r.below(256), r.below(256), r.below(256));
                    format!("{a}.{b}.{c}.{d}")
                }),
            ),
            (
                "json documents",
                10_000,
                Box::new(|r, i| {
                    format!(
                        r#"{{"id": {i}, "qty": {}, "price": {}.{:02}, "tags": ["{}", "{}"], "at": "2024-03-05T12:00:00Z"}}"#,
                        r.below(100),
                        r.below(10_000),
                        r.below(100),
                        r.pick(WORDS),
                        r.pick(WORDS)
                    )
                }),
            ),
        ];
        let mut total = 0u64;
        let mut failed = Vec::new();
        for (name, n, gen) in zero {
            if measure(&mut rng, name, n, gen) != 0 {
                failed.push(name);
            }
            total += n;
        }
        // The hard case: uniformly random 16- and 19-digit numbers (snowflake-like ids). A bare
        // digit string with a brand's prefix and a valid Luhn digit is indistinguishable from a
        // card number by content. Expected rate: the share of numbers of that length whose
        // prefix is a brand's (16 digits: ~29.8%; 19 digits: ~18.7%) times 1/10 for Luhn.
        let n = 50_000u64;
        let hits16 = measure(
            &mut rng,
            "random 16-digit integers",
            n,
            Box::new(|r, _| r.digits(16)),
        );
        let hits19 = measure(
            &mut rng,
            "random 19-digit integers",
            n,
            Box::new(|r, _| r.digits(19)),
        );
        let both = (hits16 + hits19) as f64 * 100.0 / (2 * n) as f64;
        println!(
            "{:34} {:>7} values {:>6} hits {both:>8.4}%",
            "random 16/19-digit, together",
            2 * n,
            hits16 + hits19
        );
        total += 2 * n;
        println!("{total} ordinary values checked");
        assert!(failed.is_empty(), "false positives in {failed:?}");
        let rate = |hits: u64| hits as f64 * 100.0 / n as f64;
        assert!(rate(hits16) < 3.3, "16 digits: {}%", rate(hits16));
        assert!(rate(hits19) < 2.1, "19 digits: {}%", rate(hits19));
    }
}
