use super::*;
use crate::time::TimeValue;
use proptest::prelude::*;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

fn rule(rec: &str) -> Option<Rule> {
    check_record(rec.as_bytes()).err().map(|e| e.rule)
}

fn ok(rec: &str) {
    if let Err(e) = check_record(rec.as_bytes()) {
        panic!("{rec:?} refused: {e}");
    }
}

fn nested(depth: usize) -> String {
    // The record's object, then depth-1 arrays alternating with objects.
    let mut open = String::from("{\"a\":");
    let mut close = String::from("}");
    for k in 1..depth {
        if k % 2 == 1 {
            open.push('[');
            close.insert(0, ']');
        } else {
            open.push_str("{\"b\":");
            close.insert(0, '}');
        }
    }
    format!("{open}1{close}")
}

#[test]
fn the_load_generators_records_pass() {
    let mut c = Checker::default();
    for i in 0..200 {
        let r = crate::sample::record(i);
        let t = c.check(r.as_bytes()).unwrap();
        assert!(matches!(&t.0[0], Some(TimeValue::Text(_))), "{r}");
        assert!(t.event_time().ms.is_some());
    }
    ok(r#"{}"#);
    ok(" {\"a\" : [ 1 , { } , [ ] , \"x\" , true , false , null ] } \t\r\n".trim_start());
}

#[test]
fn utf8() {
    for bad in [
        &b"{\"a\":\"\xff\"}"[..],
        b"{\"a\":\"\xc0\xaf\"}",         // overlong '/'
        b"{\"a\":\"\xed\xa0\x80\"}",     // an encoded surrogate
        b"{\"a\":\"\xf4\x90\x80\x80\"}", // beyond U+10FFFF
        b"{\"a\":\"\xe2\x82\"}",         // truncated
        b"{\"\xe2\x82\":1}",
        b"{\"a\":1}\xff",
        b"\xff{}",
    ] {
        let e = check_record(bad).unwrap_err();
        assert_eq!(e.rule, Rule::Utf8, "{bad:?}: {e}");
    }
    ok("{\"é\":\"ü€😀\",\"k\":\"\u{7f}\"}");
}

#[test]
fn syntax() {
    for bad in [
        "{",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\":1,}",
        "{\"a\":[1,]}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":.5}",
        "{\"a\":1e}",
        "{\"a\":+1}",
        "{\"a\":tru}",
        "{\"a\":nul}",
        "{\"a\":\"x}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\\u12g4\"}",
        "{\"a\":\"tab\there\"}",
        "{\"a\":1}{}",
        "{\"a\":1} x",
        "{'a':1}",
        "{\"a\":1 \"b\":2}",
        "{\"a\":[1}",
        "{\"a\":{]}",
        "{a:1}",
    ] {
        let e = check_record(bad.as_bytes()).unwrap_err();
        assert_eq!(e.rule, Rule::Syntax, "{bad:?}: {e}");
        assert!(e.to_string().starts_with("invalid JSON: "), "{e}");
    }
    ok("{\"a\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\"}");
}

#[test]
fn top_level_object() {
    for bad in ["", "[1]", "1", "\"x\"", "null", " {}"] {
        assert_eq!(rule(bad), Some(Rule::NotObject), "{bad:?}");
    }
}

#[test]
fn numbers() {
    for good in [
        "1e308",
        "-1e308",
        "1.7976931348623157e308",
        "-1.7976931348623157e308",
        "0.1e309",
        "1e-400",
        "-1e-400",
        "0e999999999999999999999",
        "0.000e400",
        "-0",
        "-0.0",
        "0",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "1e19",
        "2.5E+10",
    ] {
        ok(&format!("{{\"n\":{good}}}"));
    }
    let big_int = "9".repeat(308);
    ok(&format!("{{\"n\":{big_int}}}"));
    for bad in [
        "1e400",
        "-1e400",
        "1e309",
        "1.8e308",
        "10e308",
        "1e99999999999999999999",
        "0.0001e313",
    ] {
        let e = check_record(format!("{{\"n\":{bad}}}").as_bytes()).unwrap_err();
        assert_eq!(e.rule, Rule::NumberRange, "{bad}: {e}");
        assert!(e.to_string().contains(bad), "{e}");
    }
    let too_big = "9".repeat(309);
    assert_eq!(
        rule(&format!("{{\"n\":[{too_big}]}}")),
        Some(Rule::NumberRange)
    );
    // Whatever is accepted, serde_json reads as a finite number.
    for n in ["1e308", "18446744073709551616", "1e-400", "-0"] {
        let v: serde_json::Value = serde_json::from_str(n).unwrap();
        assert!(v.as_f64().unwrap().is_finite());
    }
}

#[test]
fn surrogates() {
    ok(r#"{"a":"\ud83d\ude00"}"#);
    ok(r#"{"\ud83d\ude00":"\uD83D\uDE00 and \u00e9"}"#);
    for bad in [
        r#"{"a":"\ud800"}"#,
        r#"{"a":"\ud800x"}"#,
        r#"{"a":"\ud800\u0041"}"#,
        r#"{"a":"\ud800\ud800"}"#,
        r#"{"a":"\ude00"}"#,
        r#"{"a":"x\udfff"}"#,
        r#"{"\ud800":1}"#,
        r#"{"a":{"b":["\udbff"]}}"#,
    ] {
        let e = check_record(bad.as_bytes()).unwrap_err();
        assert_eq!(e.rule, Rule::LoneSurrogate, "{bad}: {e}");
    }
}

#[test]
fn depth_at_and_over_the_bound() {
    ok(&nested(MAX_DEPTH));
    let e = check_record(nested(MAX_DEPTH + 1).as_bytes()).unwrap_err();
    assert_eq!(e.rule, Rule::Depth, "{e}");
    assert!(e.to_string().contains("more than 64 levels"), "{e}");
    assert_eq!(rule(&nested(200)), Some(Rule::Depth));
    // Deep but wide: siblings do not add up.
    let wide = format!(
        "{{\"a\":{},\"b\":{}}}",
        "[".repeat(63) + &"]".repeat(63),
        "{}"
    );
    ok(&wide);
    let mut c = Checker::new(2);
    assert!(c.check(b"{\"a\":[1]}").is_ok());
    assert_eq!(c.check(b"{\"a\":[[1]]}").unwrap_err().rule, Rule::Depth);
    // serde_json reads the deepest record accepted.
    let v: serde_json::Value = serde_json::from_str(&nested(MAX_DEPTH)).unwrap();
    assert!(v.is_object());
}

#[test]
fn duplicate_keys_at_any_depth_after_decoding() {
    for bad in [
        r#"{"level":"a","level":"b"}"#,
        r#"{"a":1,"\u0061":2}"#,
        r#"{"\u0061":1,"a":2}"#,
        r#"{"x":{"a":1,"b":2,"a":3}}"#,
        r#"{"x":[{"q":1},{"q":1,"q":2}]}"#,
        r#"{"é":1,"\u00e9":2}"#,
        r#"{"😀":1,"\ud83d\ude00":2}"#,
        r#"{"a\nb":1,"a\u000ab":2}"#,
        r#"{"\/":1,"/":2}"#,
    ] {
        let e = check_record(bad.as_bytes()).unwrap_err();
        assert_eq!(e.rule, Rule::DuplicateKey, "{bad}: {e}");
    }
    // The same key in different objects, or as a value, is fine.
    ok(r#"{"a":{"a":{"a":"a"}},"b":[{"a":1},{"a":2}],"c":"a"}"#);
    ok(r#"{"a":1,"A":2,"a ":3,"\u0062":4}"#);
    // Large objects use a hash set: still exact.
    let keys: Vec<String> = (0..1000).map(|k| format!("\"k{k}\":{k}")).collect();
    ok(&format!("{{{}}}", keys.join(",")));
    let dup = format!("{{{},\"k\\u0037\":0}}", keys.join(","));
    let e = check_record(dup.as_bytes()).unwrap_err();
    assert_eq!(e.rule, Rule::DuplicateKey);
    assert!(e.to_string().contains("\"k7\""), "{e}");
    // Nested large objects, closed and reopened, do not share their keys.
    let inner = format!("{{{}}}", keys[..40].join(","));
    ok(&format!(
        "{{\"x\":{inner},\"y\":{inner},{},\"z\":{inner}}}",
        keys[..40].join(",")
    ));
}

#[test]
fn a_checker_is_reusable_after_a_refusal() {
    let mut c = Checker::default();
    assert!(c.check(br#"{"a":{"b":[1,{"c":1,"c":2}]}}"#).is_err());
    assert!(c.check(br#"{"a":{"b":"#).is_err());
    assert!(c.check(br#"{"c":1,"b":{"c":2}}"#).is_ok());
}

#[test]
fn time_fields_are_read_at_the_top_level_only() {
    let r = br#"{"x":{"ts":5},"time":[1],"@timestamp":"2026-11-28T01:02:03Z","ts":1e300,"timestamp":"\u0032026-11-28"}"#;
    let t = check_record(r).unwrap();
    assert_eq!(
        t.0,
        [
            Some(TimeValue::Text("2026-11-28".into())),
            Some(TimeValue::Text("2026-11-28T01:02:03Z".into())),
            Some(TimeValue::Num(1e300)),
            Some(TimeValue::Other),
        ]
    );
    let e = t.event_time();
    assert_eq!(e.ms, Some(1_795_824_000_000));
    assert_eq!(e.out_of_range.unwrap().field, "ts");
    assert_eq!(check_record(b"{\"y\":1}").unwrap(), TimeFields::default());
}

#[test]
fn compacting_drops_whitespace_outside_strings() {
    let mut out = Vec::new();
    compact_into(b"{ \"a b\" :\n [ 1 ,\t\"x \\\" y\" ] }", &mut out);
    assert_eq!(out, b"{\"a b\":[1,\"x \\\" y\"]}");
}

// ---- properties ----

/// serde_json's reading plus the rules serde_json does not check: duplicate keys and
/// depth (a reference the checker must agree with).
struct Strict {
    depth: usize,
}

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Strict;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
                Ok(Strict { depth: 0 })
            }
            fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
                Ok(Strict { depth: 0 })
            }
            fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
                Ok(Strict { depth: 0 })
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Strict, E> {
                if !v.is_finite() {
                    return Err(E::custom("not finite"));
                }
                Ok(Strict { depth: 0 })
            }
            fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
                Ok(Strict { depth: 0 })
            }
            fn visit_unit<E>(self) -> Result<Strict, E> {
                Ok(Strict { depth: 0 })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Strict, A::Error> {
                let mut depth = 0;
                while let Some(s) = a.next_element::<Strict>()? {
                    depth = depth.max(s.depth);
                }
                Ok(Strict { depth: depth + 1 })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Strict, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut depth = 0;
                while let Some(k) = a.next_key::<String>()? {
                    if !seen.insert(k) {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                    depth = depth.max(a.next_value::<Strict>()?.depth);
                }
                Ok(Strict { depth: depth + 1 })
            }
        }
        d.deserialize_any(V)
    }
}

fn reference_accepts(doc: &[u8]) -> bool {
    doc.first() == Some(&b'{')
        && serde_json::from_slice::<Strict>(doc).is_ok_and(|s| s.depth <= MAX_DEPTH)
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop_oneof![
        "[a-z]{0,3}",
        Just("ts".to_owned()),
        Just("timestamp".to_owned()),
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z0-9:.TZ-]{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::btree_map("[a-z@]{0,9}", json_value(), 0..8),
        any::<bool>(),
    )
        .prop_map(|(m, pretty)| {
            let v = serde_json::Value::Object(m.into_iter().collect());
            if pretty {
                serde_json::to_vec_pretty(&v).unwrap()
            } else {
                serde_json::to_vec(&v).unwrap()
            }
        })
}

/// Render `s` with each character either as itself (escaped where JSON needs it) or
/// as a `\u` escape (a surrogate pair beyond the BMP).
fn render(s: &[char], escape: &[bool]) -> String {
    let mut out = String::new();
    for (i, c) in s.iter().enumerate() {
        if escape.get(i).copied().unwrap_or(false) || (*c as u32) < 0x20 || *c == '"' || *c == '\\'
        {
            let mut buf = [0u16; 2];
            for u in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(*c);
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"{}[]\",:\\u0123456789eE.-+ \ntfn".to_vec()),
    ];
    prop::collection::vec(
        prop_oneof![
            (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Set(i, b)),
            (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<usize>().prop_map(Mutation::Delete),
        ],
        1..4,
    )
}

fn mutate(mut doc: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        match *m {
            Mutation::Set(i, b) if !doc.is_empty() => {
                let n = doc.len();
                doc[i % n] = b;
            }
            Mutation::Insert(i, b) => doc.insert(i % (doc.len() + 1), b),
            Mutation::Delete(i) if !doc.is_empty() => {
                let n = doc.len();
                doc.remove(i % n);
            }
            _ => {}
        }
    }
    doc
}

#[derive(serde::Deserialize)]
struct Times<'a> {
    #[serde(default, borrow)]
    timestamp: Option<TimeValue<'a>>,
    #[serde(default, borrow, rename = "@timestamp")]
    at_timestamp: Option<TimeValue<'a>>,
    #[serde(default, borrow)]
    ts: Option<TimeValue<'a>>,
    #[serde(default, borrow)]
    time: Option<TimeValue<'a>>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Generated documents: accepted exactly when serde_json reads them (they are
    /// shallow and have no duplicates), and the time fields are the ones serde reads.
    #[test]
    fn valid_documents_are_accepted(doc in json_object()) {
        let t = check_record(&doc);
        prop_assert!(t.is_ok(), "{}: {:?}", String::from_utf8_lossy(&doc), t);
        prop_assert!(reference_accepts(&doc));
        let serde: Times = serde_json::from_slice(&doc).unwrap();
        let want = [serde.timestamp, serde.at_timestamp, serde.ts, serde.time];
        prop_assert_eq!(t.unwrap().0, want);
    }

    /// Mutated documents: never a panic, and the checker accepts exactly what serde_json
    /// reads as an object without duplicate keys, within the depth bound.
    #[test]
    fn mutated_documents_agree_with_serde_json(doc in json_object(), ms in mutations()) {
        let doc = mutate(doc, &ms);
        let ours = check_record(&doc);
        let theirs = reference_accepts(&doc);
        prop_assert_eq!(ours.is_ok(), theirs, "{:?}: {:?}", String::from_utf8_lossy(&doc), ours);
        if ours.is_ok() {
            let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
            prop_assert!(v.is_object());
        }
    }

    /// Arbitrary bytes: never a panic; whatever passes, serde_json reads.
    #[test]
    fn arbitrary_bytes_never_panic(doc in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut d = doc.clone();
        d.insert(0, b'{');
        for b in [&doc, &d] {
            if check_record(b).is_ok() {
                prop_assert!(reference_accepts(b));
            }
        }
    }

    /// Escapes: any spelling of a key is the same key; escaped text decodes as serde_json
    /// decodes it.
    #[test]
    fn escaped_spellings(s in prop::collection::vec(any::<char>(), 0..8),
                         e1 in prop::collection::vec(any::<bool>(), 8),
                         e2 in prop::collection::vec(any::<bool>(), 8)) {
        let (a, b) = (render(&s, &e1), render(&s, &e2));
        let dup = format!("{{\"{a}\":1,\"{b}\":2}}");
        prop_assert_eq!(check_record(dup.as_bytes()).unwrap_err().rule, Rule::DuplicateKey);
        let rec = format!("{{\"ts\":\"{a}\",\"{b}x\":1}}");
        let t = check_record(rec.as_bytes()).unwrap();
        let text: String = s.iter().collect();
        prop_assert_eq!(&t.0[2], &Some(TimeValue::Text(text.into())));
    }
}
