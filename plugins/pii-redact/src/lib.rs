//! `pii-redact`: a first-party Weir plugin that removes personal data from records.
//!
//! Built-in detectors (all on by default): `email`, `card` (13–19 digits, spaces or dashes
//! allowed, Luhn-checked), `ssn` (US, with area/group/serial rules), `phone` (North
//! American formats and international `+CC ...` numbers), `ipv4`, `ipv6` (validated by a
//! real parser), `iban` (mod-97 checked), `jwt`, `aws_key` (access key ids), plus custom
//! regexes from the config.
//!
//! Config (all keys optional):
//! ```json
//! { "kinds": ["email", "card"],          // default: every built-in kind
//!   "action": "mask" | "hash" | "drop",  // default: mask
//!   "hash_key": "secret",                // required for hash: HMAC-SHA256 keeps equal values joinable
//!   "fields": ["user.email", "message"], // default: every string field, nested ones too
//!   "custom": [{ "name": "order", "pattern": "ORD-[0-9]{8}" }] }
//! ```
//! `mask` replaces a match with `[REDACTED:KIND]`; `hash` with `[KIND:HEX16]` where HEX16
//! is the first 16 hex digits of HMAC-SHA256(hash_key, value); `drop` removes the field
//! (or array element) that contains PII.
//!
//! JSON numbers are checked too, for cards and phones only, by stricter rules than text
//! ([`Detector::number_kind`]), and only under a key that names such PII ([`pii_key`]:
//! `card`, `phone`, `mobile`, `cc`, `tel`, `ssn`, ...; ids and counters never match): `{"card":4111111111111111}` becomes
//! `{"card":"[REDACTED:card]"}` — a masked or hashed number becomes a JSON string (the
//! hash is over the number's digits, so it equals the hash of the same digits written
//! as a string without separators).
//!
//! Layout: [`detect`] finds PII spans in a string; [`Redactor`] applies the action to
//! records; the crate root exports the plugin when built for `wasm32`.

pub mod detect;
mod hmac;

use serde::Deserialize;
use serde_json::Value;
use weir_plugin_sdk::{Error, Record, Transform};

pub use detect::{Detector, Kind, Span};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Mask,
    Hash,
    Drop,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub kinds: Option<Vec<String>>,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub hash_key: Option<String>,
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    #[serde(default)]
    pub custom: Vec<CustomRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    pub name: String,
    pub pattern: String,
}

/// Applies a [`Detector`] and an [`Action`] to records.
pub struct Redactor {
    detector: Detector,
    action: Action,
    hash_key: Vec<u8>,
    fields: Option<Vec<String>>,
    spans: Vec<Span>,
}

impl Redactor {
    pub fn from_config(cfg: Config) -> Result<Self, String> {
        let kinds = match &cfg.kinds {
            None => Kind::ALL.to_vec(),
            Some(names) => names
                .iter()
                .map(|n| Kind::from_name(n).ok_or_else(|| format!("unknown kind {n:?}")))
                .collect::<Result<_, _>>()?,
        };
        let custom: Vec<(String, String)> = cfg
            .custom
            .into_iter()
            .map(|c| (c.name, c.pattern))
            .collect();
        let detector = Detector::new(&kinds, &custom)?;
        let hash_key = match (cfg.action, cfg.hash_key) {
            (Action::Hash, None) => return Err("action \"hash\" needs a hash_key".into()),
            (_, key) => key.unwrap_or_default().into_bytes(),
        };
        Ok(Redactor {
            detector,
            action: cfg.action,
            hash_key,
            fields: cfg.fields,
            spans: Vec::new(),
        })
    }

    /// Redact one string. Returns `None` when it holds no PII.
    pub fn redact_str(&mut self, s: &str) -> Option<String> {
        self.spans.clear();
        self.detector.find_into(s, &mut self.spans);
        if self.spans.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(s.len() + 16);
        let mut at = 0;
        for i in 0..self.spans.len() {
            let sp = self.spans[i];
            out.push_str(&s[at..sp.start]);
            self.replacement(sp.kind, &s.as_bytes()[sp.start..sp.end], &mut out);
            at = sp.end;
        }
        out.push_str(&s[at..]);
        Some(out)
    }

    /// What replaces `value`, a match of `kind`: `[REDACTED:KIND]` or `[KIND:HEX16]`.
    fn replacement(&self, kind: Kind, value: &[u8], out: &mut String) {
        let name = self.detector.kind_name(kind);
        match self.action {
            Action::Hash => {
                let mac = hmac::hmac_sha256(&self.hash_key, value);
                out.push('[');
                out.push_str(name);
                out.push(':');
                for b in &mac[..8] {
                    out.push_str(&format!("{b:02x}"));
                }
                out.push(']');
            }
            Action::Mask | Action::Drop => {
                out.push_str("[REDACTED:");
                out.push_str(name);
                out.push(']');
            }
        }
    }

    /// The replacement of the JSON number `text` when it is PII (see
    /// [`Detector::number_kind`]).
    pub fn redact_number(&self, text: &[u8]) -> Option<String> {
        let kind = self.detector.number_kind(text)?;
        let mut out = String::with_capacity(24);
        self.replacement(kind, text, &mut out);
        Some(out)
    }

    /// Redact the PII numbers among the bytes `b[from..to]`, which hold no string:
    /// structure, whitespace, literals and numbers. Copies up to each replaced number.
    fn redact_numbers_between(
        &self,
        b: &[u8],
        from: usize,
        to: usize,
        copied: &mut usize,
        out: &mut Vec<u8>,
    ) {
        let mut i = from;
        while i < to {
            if !b[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            let start = i;
            while i < to && b[i].is_ascii_digit() {
                i += 1;
            }
            // A whole integer: not after a sign, a decimal point or an exponent, and
            // not followed by a fraction or an exponent.
            let before_ok = start == 0 || !matches!(b[start - 1], b'-' | b'+' | b'.' | b'e' | b'E');
            let after_ok = i >= b.len() || !matches!(b[i], b'.' | b'e' | b'E');
            if !(before_ok && after_ok) {
                continue;
            }
            if let Some(red) = self.redact_number(&b[start..i]) {
                out.extend_from_slice(&b[*copied..start]);
                out.push(b'"');
                out.extend_from_slice(red.as_bytes());
                out.push(b'"');
                *copied = i;
            }
        }
    }

    /// Whether [`Redactor::redact_json_line`] applies: every string field, and an
    /// action that rewrites strings in place (mask or hash).
    pub fn streams(&self) -> bool {
        self.fields.is_none() && self.action != Action::Drop
    }

    /// Redact every string value and PII number of one JSON text, copying everything
    /// else byte for byte (keys, other numbers, order, spacing). `line` must be valid
    /// JSON.
    pub fn redact_json_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let b = line;
        let mut i = 0;
        let mut copied = 0;
        let numbers = self.detector.checks_numbers();
        // Numbers are PII only under a key that names PII (see `pii_key`).
        let mut under_pii_key = false;
        while let Some(q) = memchr::memchr(b'"', &b[i..]) {
            let start = i + q;
            if numbers && under_pii_key {
                self.redact_numbers_between(b, i, start, &mut copied, out);
            }
            let mut j = start + 1;
            let mut escaped = false;
            loop {
                match memchr::memchr2(b'"', b'\\', &b[j..]) {
                    Some(k) if b[j + k] == b'"' => {
                        j += k;
                        break;
                    }
                    Some(k) => {
                        escaped = true;
                        j += k + 2;
                        if j >= b.len() {
                            return Err("unterminated string".into());
                        }
                    }
                    None => return Err("unterminated string".into()),
                }
            }
            let end = j + 1;
            i = end;
            let next = b[end..].iter().find(|c| !c.is_ascii_whitespace());
            if next == Some(&b':') {
                // A key: an escaped one is read as text only if it might name PII.
                under_pii_key = pii_key(&String::from_utf8_lossy(&b[start + 1..end - 1]));
                continue;
            }
            let content: std::borrow::Cow<str> = if escaped {
                serde_json::from_slice::<String>(&b[start..end])
                    .map_err(|e| e.to_string())?
                    .into()
            } else {
                std::str::from_utf8(&b[start + 1..end - 1])
                    .map_err(|e| e.to_string())?
                    .into()
            };
            if let Some(red) = self.redact_str(&content) {
                out.extend_from_slice(&b[copied..start]);
                serde_json::to_writer(&mut *out, &red).map_err(|e| e.to_string())?;
                copied = end;
            }
        }
        if numbers && under_pii_key {
            self.redact_numbers_between(b, i, b.len(), &mut copied, out);
        }
        out.extend_from_slice(&b[copied..]);
        Ok(())
    }

    /// Redact one record in place.
    pub fn apply(&mut self, rec: &mut Record) {
        match self.fields.take() {
            None => {
                let mut keys_to_drop = Vec::new();
                for (k, v) in rec.0.iter_mut() {
                    if self.value(v, pii_key(k)) {
                        keys_to_drop.push(k.clone());
                    }
                }
                for k in keys_to_drop {
                    rec.0.remove(&k);
                }
            }
            Some(fields) => {
                for f in &fields {
                    // A field named in the config: its numbers are checked too.
                    let drop = match rec.get_mut(f) {
                        Some(v) => self.value(v, true),
                        None => false,
                    };
                    if drop {
                        rec.remove(f);
                    }
                }
                self.fields = Some(fields);
            }
        }
    }

    /// Redact a value recursively; returns true when the value itself must be dropped.
    /// `numbers`: whether numbers here may be PII (under a key that names PII).
    fn value(&mut self, v: &mut Value, numbers: bool) -> bool {
        match v {
            Value::String(s) => match self.redact_str(s) {
                Some(_) if self.action == Action::Drop => true,
                Some(r) => {
                    *s = r;
                    false
                }
                None => false,
            },
            Value::Number(_) if !numbers => false,
            Value::Number(n) => {
                let Some(red) = n
                    .as_u64()
                    .and_then(|u| self.redact_number(u.to_string().as_bytes()))
                else {
                    return false;
                };
                if self.action == Action::Drop {
                    return true;
                }
                *v = Value::String(red);
                false
            }
            Value::Array(items) => {
                let mut i = 0;
                while i < items.len() {
                    if self.value(&mut items[i], numbers) {
                        items.remove(i);
                    } else {
                        i += 1;
                    }
                }
                false
            }
            Value::Object(map) => {
                let mut drop = Vec::new();
                for (k, v) in map.iter_mut() {
                    if self.value(v, pii_key(k)) {
                        drop.push(k.clone());
                    }
                }
                for k in drop {
                    map.remove(&k);
                }
                false
            }
            _ => false,
        }
    }
}

/// The plugin: a [`Redactor`] behind the SDK's [`Transform`] trait.
pub struct PiiRedact(pub Redactor);

impl Transform for PiiRedact {
    fn new(config: &Value) -> Result<Self, Error> {
        let cfg: Config =
            serde_json::from_value(config.clone()).map_err(|e| Error::config(e.to_string()))?;
        Redactor::from_config(cfg)
            .map(PiiRedact)
            .map_err(Error::config)
    }

    fn record(&mut self, rec: &mut Record) -> Result<bool, Error> {
        self.0.apply(rec);
        Ok(true)
    }

    /// Fast path for the common configuration: rewrite string values in the raw JSON
    /// text instead of building and re-serialising a tree per record.
    fn batch(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if !self.0.streams() {
            return weir_plugin_sdk::batch_by_record(self, input, out);
        }
        for (i, line) in weir_plugin_sdk::lines(input).enumerate() {
            if line.is_empty() {
                continue;
            }
            let fail = |e: String| Error::failed(format!("line {}: {e}", i + 1));
            match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                Ok(_) if line.first() == Some(&b'{') => {}
                Ok(_) => return Err(fail("record is not a JSON object".into())),
                Err(e) => return Err(fail(format!("invalid JSON: {e}"))),
            }
            self.0.redact_json_line(line, out).map_err(fail)?;
            out.push(b'\n');
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
weir_plugin_sdk::export_transform!(PiiRedact);

#[cfg(test)]
mod tests;

/// Whether a key names PII that may be written as a number (a card, a phone number, a
/// social security number). Numbers elsewhere — ids, counters, timestamps — are never
/// redacted, however card- or phone-like their digits: a 16-digit order id passes the
/// Luhn check one time in ten.
pub fn pii_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    const PARTS: &[&str] = &[
        "card",
        "phone",
        "mobile",
        "msisdn",
        "ssn",
        "iban",
        "creditcard",
        "telephone",
    ];
    const WORDS: &[&str] = &["cc", "pan", "tel", "cell", "fax", "sin", "nin"];
    PARTS.iter().any(|p| k.contains(p))
        || k.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| WORDS.contains(&w))
}
