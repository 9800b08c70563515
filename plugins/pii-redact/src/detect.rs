//! Finding PII in a string.
//!
//! All built-in kinds but IPv6 are patterns of one multi-pattern regex
//! (`regex_automata::meta`), so a string is scanned once and each match says which
//! kind it is without running a capture engine; each candidate is then validated (Luhn, mod-97, SSN rules, digit counts) and, when the
//! check fails, the scan resumes one character later so a shorter match of another kind
//! at the same place is not missed. IPv6 candidates (hex, colons, dots) are validated by
//! `std::net::Ipv6Addr`. Custom rules are separate regexes. Overlapping matches resolve
//! to the earliest, then longest.
//!
//! JSON numbers are checked by [`Detector::number_kind`], with stricter rules than
//! digits inside text (a bare number is far more often an id, a count or a timestamp):
//! only non-negative integers of 11 to 19 digits are candidates; a card when it has 13–19
//! digits, a card network's leading digit (2221–2720, 3, 4, 5 or 6) and a valid Luhn
//! checksum; a phone when its digits are an E.164 number without the `+` for one of the
//! countries of [`PHONE_COUNTRIES`], with that country's length (so millisecond
//! timestamps, 13 digits starting with 1, are never phones). A 9-digit number is never
//! taken for an SSN.

use regex::Regex;
use regex_automata::meta::Regex as MultiRegex;
use regex_automata::Input;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Email,
    Card,
    Ssn,
    Phone,
    Ipv4,
    Ipv6,
    Iban,
    Jwt,
    AwsKey,
    /// A custom rule, by index in the config.
    Custom(usize),
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Email,
        Kind::Card,
        Kind::Ssn,
        Kind::Phone,
        Kind::Ipv4,
        Kind::Ipv6,
        Kind::Iban,
        Kind::Jwt,
        Kind::AwsKey,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Card => "card",
            Kind::Ssn => "ssn",
            Kind::Phone => "phone",
            Kind::Ipv4 => "ipv4",
            Kind::Ipv6 => "ipv6",
            Kind::Iban => "iban",
            Kind::Jwt => "jwt",
            Kind::AwsKey => "aws_key",
            Kind::Custom(_) => "custom",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The regex alternative of a built-in kind (IPv6 has none: see module docs).
    fn pattern(self) -> Option<&'static str> {
        Some(match self {
            // JWT and AWS first: their alphabets overlap with nothing else's prefix.
            Kind::Jwt => r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}",
            Kind::AwsKey => {
                r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16}\b"
            }
            Kind::Email => {
                r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}\b"
            }
            Kind::Iban => r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b",
            Kind::Card => r"\b[0-9](?:[ -]?[0-9]){12,18}\b",
            Kind::Ssn => r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b",
            Kind::Phone => {
                r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{3}\) ?|\b[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}\b|\+[0-9]{1,3}(?:[ .-]?[0-9]{1,4}){2,5}\b"
            }
            Kind::Ipv4 => {
                r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\b"
            }
            Kind::Ipv6 | Kind::Custom(_) => return None,
        })
    }
}

/// A PII match: byte range and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub kind: Kind,
}

/// Finds PII spans for a chosen set of kinds and custom rules.
pub struct Detector {
    combined: Option<MultiRegex>,
    /// Kind of each pattern of `combined`.
    group_kinds: Vec<Kind>,
    ipv6: Option<Regex>,
    custom: Vec<(String, Regex)>,
    /// Scratch list reused across calls.
    found: Vec<Span>,
    /// Whether JSON numbers are checked for cards and for phones.
    number_cards: bool,
    number_phones: bool,
}

impl Detector {
    pub fn new(kinds: &[Kind], custom: &[(String, String)]) -> Result<Detector, String> {
        let order = [
            Kind::Jwt,
            Kind::AwsKey,
            Kind::Email,
            Kind::Iban,
            Kind::Card,
            Kind::Ssn,
            Kind::Phone,
            Kind::Ipv4,
        ];
        let mut alts = Vec::new();
        let mut group_kinds = Vec::new();
        for k in order {
            if kinds.contains(&k) {
                alts.push(k.pattern().expect("built-in pattern"));
                group_kinds.push(k);
            }
        }
        let combined = if alts.is_empty() {
            None
        } else {
            Some(MultiRegex::new_many(&alts).map_err(|e| e.to_string())?)
        };
        let ipv6 = if kinds.contains(&Kind::Ipv6) {
            Some(Regex::new(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.%]*").expect("valid"))
        } else {
            None
        };
        let custom = custom
            .iter()
            .map(|(name, pat)| {
                Regex::new(pat)
                    .map(|r| (name.clone(), r))
                    .map_err(|e| format!("custom rule {name:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Detector {
            combined,
            group_kinds,
            ipv6,
            custom,
            found: Vec::new(),
            number_cards: kinds.contains(&Kind::Card),
            number_phones: kinds.contains(&Kind::Phone),
        })
    }

    /// The name shown in redacted output for a kind.
    pub fn kind_name(&self, k: Kind) -> &str {
        match k {
            Kind::Custom(i) => &self.custom[i].0,
            k => k.name(),
        }
    }

    /// Whether any kind applies to JSON numbers (cards or phones are enabled).
    pub fn checks_numbers(&self) -> bool {
        self.number_cards || self.number_phones
    }

    /// The kind of PII the JSON number `text` is, if any (see the module docs): `text`
    /// is the number exactly as written; only plain non-negative integers can match.
    pub fn number_kind(&self, text: &[u8]) -> Option<Kind> {
        if !(11..=19).contains(&text.len()) || !text.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let s = std::str::from_utf8(text).ok()?;
        if self.number_cards && numeric_card(s) {
            return Some(Kind::Card);
        }
        if self.number_phones && numeric_phone(s) {
            return Some(Kind::Phone);
        }
        None
    }

    /// All PII spans in `s`, sorted and non-overlapping.
    pub fn find(&mut self, s: &str) -> Vec<Span> {
        let mut out = Vec::new();
        self.find_into(s, &mut out);
        out
    }

    /// Like [`Detector::find`], appending to `out` (which the caller clears).
    pub fn find_into(&mut self, s: &str, out: &mut Vec<Span>) {
        self.found.clear();
        let bytes = s.as_bytes();
        // One pass for the cheap facts that decide which scans can match at all.
        let (mut has_digit, mut has_at, mut has_colon, mut has_upper_a, mut has_jwt) =
            (false, false, false, false, false);
        for (i, &c) in bytes.iter().enumerate() {
            match c {
                b'0'..=b'9' => has_digit = true,
                b'@' => has_at = true,
                b':' => has_colon = true,
                b'A' => has_upper_a = true,
                b'e' if bytes[i..].starts_with(b"eyJ") => has_jwt = true,
                _ => {}
            }
        }
        // Every built-in pattern needs a digit, an '@', or (JWT, AWS) "eyJ" / 'A'.
        let maybe = has_digit || has_at || has_jwt || has_upper_a;
        if let (Some(re), true) = (&self.combined, maybe) {
            let mut pos = 0;
            while pos < s.len() {
                let Some(m) = re.find(Input::new(s).span(pos..s.len())) else {
                    break;
                };
                let kind = self.group_kinds[m.pattern().as_usize()];
                let text = &s[m.start()..m.end()];
                if let Some(len) = valid_prefix(kind, text) {
                    let end = m.start() + len;
                    self.found.push(Span {
                        start: m.start(),
                        end,
                        kind,
                    });
                    pos = end;
                } else {
                    pos = m.start() + s[m.start()..].chars().next().map_or(1, char::len_utf8);
                }
            }
        }
        if let (Some(re), true) = (&self.ipv6, has_colon) {
            for m in re.find_iter(s) {
                if let Some((a, b)) = ipv6_in(s, m.start(), m.end()) {
                    self.found.push(Span {
                        start: a,
                        end: b,
                        kind: Kind::Ipv6,
                    });
                }
            }
        }
        for (i, (_, re)) in self.custom.iter().enumerate() {
            for m in re.find_iter(s) {
                if m.start() < m.end() {
                    self.found.push(Span {
                        start: m.start(),
                        end: m.end(),
                        kind: Kind::Custom(i),
                    });
                }
            }
        }
        if self.found.is_empty() {
            return;
        }
        self.found
            .sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        let mut last_end = 0;
        for sp in &self.found {
            if sp.start >= last_end {
                out.push(*sp);
                last_end = sp.end;
            }
        }
    }
}

fn digits(s: &str) -> impl Iterator<Item = u32> + '_ {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
}

/// The length of the longest valid match at the start of `text`: the whole text, or for
/// cards and IBANs (whose greedy patterns may run into a following number) a prefix
/// ending before a separator.
fn valid_prefix(kind: Kind, text: &str) -> Option<usize> {
    if valid(kind, text) {
        return Some(text.len());
    }
    if matches!(kind, Kind::Card | Kind::Iban) {
        let b = text.as_bytes();
        return (1..b.len())
            .rev()
            .filter(|&i| matches!(b[i], b' ' | b'-'))
            .find(|&i| valid(kind, &text[..i]));
    }
    None
}

fn valid(kind: Kind, text: &str) -> bool {
    match kind {
        Kind::Card => {
            let n = digits(text).count();
            (13..=19).contains(&n) && luhn(text)
        }
        Kind::Ssn => {
            let d: Vec<u32> = digits(text).collect();
            let area = d[0] * 100 + d[1] * 10 + d[2];
            let group = d[3] * 10 + d[4];
            let serial = d[5..].iter().fold(0, |a, x| a * 10 + x);
            area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
        }
        Kind::Iban => iban_ok(text),
        Kind::Phone => {
            let n = digits(text).count();
            (10..=15).contains(&n)
        }
        _ => true,
    }
}

/// Country codes and the total digit counts (code included) of their phone numbers, for
/// numbers written as JSON numbers (E.164 without the `+`).
pub const PHONE_COUNTRIES: &[(&str, &[usize])] = &[
    ("1", &[11]),      // North America: 1 + area code + 7 digits
    ("44", &[12]),     // United Kingdom
    ("33", &[11]),     // France
    ("49", &[12, 13]), // Germany
    ("34", &[11]),     // Spain
    ("39", &[11, 12]), // Italy
    ("31", &[11]),     // Netherlands
    ("61", &[11]),     // Australia
    ("81", &[11, 12]), // Japan
    ("86", &[13]),     // China
    ("91", &[12]),     // India
    ("52", &[12]),     // Mexico
    ("55", &[12, 13]), // Brazil
];

/// A card number written as plain digits: length, network prefix, Luhn.
fn numeric_card(d: &str) -> bool {
    let prefix_ok = match d.as_bytes()[0] {
        b'3' | b'4' | b'5' | b'6' => true,
        b'2' => d[..4]
            .parse::<u32>()
            .is_ok_and(|p| (2221..=2720).contains(&p)),
        _ => false,
    };
    (13..=19).contains(&d.len()) && prefix_ok && luhn(d)
}

/// A phone number written as plain digits with its country code.
fn numeric_phone(d: &str) -> bool {
    PHONE_COUNTRIES.iter().any(|(cc, lens)| {
        d.starts_with(cc)
            && lens.contains(&d.len())
            && match *cc {
                // The area code of a North American number starts with 2-9.
                "1" => matches!(d.as_bytes()[1], b'2'..=b'9'),
                _ => d.as_bytes()[cc.len()] != b'0',
            }
    })
}

/// The Luhn checksum over the digits of `s`.
pub fn luhn(s: &str) -> bool {
    let d: Vec<u32> = digits(s).collect();
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
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
    !d.is_empty() && sum.is_multiple_of(10)
}

/// ISO 13616 check: move the first four characters to the end, letters to numbers,
/// the result mod 97 must be 1.
pub fn iban_ok(text: &str) -> bool {
    let compact: Vec<u8> = text.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rotated = compact[4..].iter().chain(&compact[..4]);
    let mut rem: u32 = 0;
    for &b in rotated {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// The longest valid IPv6 address inside the candidate `s[a..b]`, bounded by non-word
/// characters.
fn ipv6_in(s: &str, a: usize, b: usize) -> Option<(usize, usize)> {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let bytes = s.as_bytes();
    if a > 0 && word(bytes[a - 1]) {
        return None;
    }
    let mut end = b;
    // Trim trailing separators that belong to the sentence, not the address.
    while end > a && matches!(bytes[end - 1], b'.' | b':') && !s[a..end].ends_with("::") {
        end -= 1;
    }
    if end < bytes.len() && word(bytes[end]) {
        return None;
    }
    let cand = &s[a..end];
    let addr = cand.split('%').next().unwrap_or(cand);
    addr.parse::<std::net::Ipv6Addr>().ok().map(|_| (a, end))
}
