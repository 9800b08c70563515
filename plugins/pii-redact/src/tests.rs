use super::*;
use serde_json::json;
use weir_plugin_sdk::run_native;

fn redact(s: &str) -> String {
    let mut r = Redactor::from_config(Config::default()).unwrap();
    r.redact_str(s).unwrap_or_else(|| s.to_owned())
}

fn kinds(s: &str) -> Vec<&'static str> {
    let mut d = Detector::new(&Kind::ALL, &[]).unwrap();
    d.find(s).iter().map(|sp| sp.kind.name()).collect()
}

#[test]
fn each_builtin_kind() {
    let cases = [
        ("mail me at jane.doe+x@example.co.uk now", "email"),
        ("card 4111 1111 1111 1111 ok", "card"),
        ("card 4111-1111-1111-1111", "card"),
        ("card 4111111111111111", "card"),
        ("amex 378282246310005", "card"),
        ("ssn 123-45-6789", "ssn"),
        ("call (555) 123-4567", "phone"),
        ("call 555-123-4567", "phone"),
        ("call +1 555 123 4567", "phone"),
        ("call +44 20 7946 0958", "phone"),
        ("from 192.168.10.254:443", "ipv4"),
        ("from 2001:db8::8a2e:370:7334 ok", "ipv6"),
        ("from ::1", "ipv6"),
        ("from fe80::1ff:fe23:4567:890a.", "ipv6"),
        ("pay DE89 3704 0044 0532 0130 00 today", "iban"),
        ("pay GB82WEST12345698765432", "iban"),
        (
            "auth eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "jwt",
        ),
        ("key AKIAIOSFODNN7EXAMPLE", "aws_key"),
    ];
    for (text, kind) in cases {
        assert_eq!(kinds(text), vec![kind], "{text}");
        let red = redact(text);
        assert!(
            red.contains(&format!("[REDACTED:{kind}]")),
            "{text} -> {red}"
        );
    }
}

#[test]
fn non_pii_is_left_alone() {
    for text in [
        "GET /api/v1/users/12345 200 in 35ms",
        "card 4111 1111 1111 1112", // fails Luhn
        "ssn 000-12-3456",          // invalid area
        "at 12:34:56 on 2024-01-02",
        "mac aa:bb:cc:dd:ee:ff",
        "version 1.2.3",
        "iban-like DE00 3704 0044 0532 0130 00", // fails mod 97
        "plain words only",
        "",
    ] {
        assert_eq!(kinds(text), Vec::<&str>::new(), "{text}");
        assert_eq!(redact(text), text);
    }
}

#[test]
fn card_followed_by_other_digits() {
    assert_eq!(
        redact("4111 1111 1111 1111 12 items"),
        "[REDACTED:card] 12 items"
    );
}

#[test]
fn several_in_one_string() {
    let out = redact("a@b.io paid with 5500-0000-0000-0004 from 10.0.0.1");
    assert_eq!(
        out,
        "[REDACTED:email] paid with [REDACTED:card] from [REDACTED:ipv4]"
    );
}

#[test]
fn nested_fields_and_arrays() {
    let mut p = PiiRedact::new(&json!({})).unwrap();
    let input =
        br#"{"msg":"user a@b.io","cc":4111111111111111,"user":{"ips":["10.1.2.3","x"],"name":"Ann"}}
"#;
    let out = run_native(&mut p, input).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        json!({"msg":"user [REDACTED:email]","cc":"[REDACTED:card]","user":{"ips":["[REDACTED:ipv4]","x"],"name":"Ann"}})
    );
}

#[test]
fn listed_fields_only() {
    let mut p = PiiRedact::new(&json!({"fields": ["user.email"]})).unwrap();
    let out = run_native(&mut p, br#"{"user":{"email":"a@b.io"},"other":"c@d.io"}"#).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        json!({"user":{"email":"[REDACTED:email]"},"other":"c@d.io"})
    );
}

#[test]
fn hash_is_keyed_and_stable() {
    let cfg = |key: &str| json!({"action":"hash","hash_key":key});
    let mut a = PiiRedact::new(&cfg("k1")).unwrap();
    let mut b = PiiRedact::new(&cfg("k2")).unwrap();
    let x1 = a.0.redact_str("a@b.io").unwrap();
    let x2 = a.0.redact_str("a@b.io").unwrap();
    let y = b.0.redact_str("a@b.io").unwrap();
    assert_eq!(x1, x2);
    assert_ne!(x1, y);
    assert!(
        x1.starts_with("[email:") && x1.len() == "[email:]".len() + 16,
        "{x1}"
    );
    assert!(PiiRedact::new(&json!({"action":"hash"})).is_err());
}

#[test]
fn drop_removes_fields_with_pii() {
    let mut p = PiiRedact::new(&json!({"action":"drop"})).unwrap();
    let out = run_native(
        &mut p,
        br#"{"a":"x@y.io","b":"fine","c":["10.0.0.1","ok"]}"#,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v, json!({"b":"fine","c":["ok"]}));
}

#[test]
fn custom_rules_and_kind_selection() {
    let mut p = PiiRedact::new(&json!({
        "kinds": ["email"],
        "custom": [{"name":"order","pattern":"ORD-[0-9]{6}"}]
    }))
    .unwrap();
    let s =
        p.0.redact_str("ORD-123456 by a@b.io from 10.0.0.1")
            .unwrap();
    assert_eq!(s, "[REDACTED:order] by [REDACTED:email] from 10.0.0.1");
    assert!(PiiRedact::new(&json!({"kinds":["nope"]})).is_err());
    assert!(PiiRedact::new(&json!({"custom":[{"name":"x","pattern":"("}]})).is_err());
    assert!(PiiRedact::new(&json!({"unknown":1})).is_err());
}

#[test]
fn luhn_and_iban_checks() {
    assert!(detect::luhn("4111111111111111"));
    assert!(!detect::luhn("4111111111111112"));
    assert!(detect::iban_ok("GB82WEST12345698765432"));
    assert!(!detect::iban_ok("GB82WEST12345698765433"));
}

#[test]
fn bad_line_fails_the_batch_with_its_number() {
    let mut p = PiiRedact::new(&json!({})).unwrap();
    let err = run_native(&mut p, b"{\"a\":1}\nnot json\n").unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn streaming_path_equals_tree_path() {
    let lines = [
        r#"{"msg":"user a@b.io","n":4111111111111111,"user":{"ips":["10.1.2.3","x"],"name":"Ann"}}"#,
        r#"{"esc":"quote \" and a@b.io\n","key \"a@b.io\"":"v","arr":[{"k":"555-123-4567"}],"e":""}"#,
        r#"{ "spaced" : "10.0.0.1" , "t" : true , "z" : null }"#,
        r#"{"unicode":"caf\u00e9 ann@example.com \ud83d\ude00","plain":"no pii"}"#,
        r#"{"card":4111111111111111,"phone":15551234567,"ts":1732871234567,"f":4111111111111111.0,"neg":-15551234567,"a":[5500000000000004, 2, 447911123456]}"#,
        r#"{ "n" : 15551234567 }"#,
        r#"{ "mobile" : 15551234567, "id": 4111111111111111 }"#,
    ];
    for action in [json!({}), json!({"action":"hash","hash_key":"k"})] {
        for line in lines {
            let mut fast = PiiRedact::new(&action).unwrap();
            assert!(fast.0.streams());
            let mut a = Vec::new();
            fast.0.redact_json_line(line.as_bytes(), &mut a).unwrap();
            let mut slow = PiiRedact::new(&action).unwrap();
            let mut rec = weir_plugin_sdk::Record::parse(line.as_bytes()).unwrap();
            slow.0.apply(&mut rec);
            let va: serde_json::Value = serde_json::from_slice(&a).unwrap();
            assert_eq!(va, serde_json::Value::Object(rec.0), "{line}");
        }
    }
}

#[test]
fn streaming_keeps_order_and_layout() {
    let mut p = PiiRedact::new(&json!({})).unwrap();
    let out = run_native(&mut p, b"{\"z\":1, \"a\":\"x@y.io\"}\n").unwrap();
    assert_eq!(out, b"{\"z\":1, \"a\":\"[REDACTED:email]\"}\n");
    assert!(run_native(&mut p, b"[1]\n").is_err());
    assert!(run_native(&mut p, b"{\"a\":\n").is_err());
}

/// Labelled JSON numbers: what each must become (None: left as it is).
const NUMBERS: &[(&str, Option<&str>)] = &[
    // Cards: 13-19 digits, a network's leading digits, Luhn-valid.
    ("4111111111111111", Some("card")),
    ("5500000000000004", Some("card")),
    ("378282246310005", Some("card")),
    ("6011111111111117", Some("card")),
    ("2223003122003222", Some("card")),
    ("4222222222222", Some("card")),
    ("4111111111111112", None), // fails Luhn
    ("1234567812345670", None), // Luhn-valid, no card network starts with 1
    ("9111111111111111", None),
    // Phones: E.164 digits of a listed country, with its length.
    ("15551234567", Some("phone")),
    ("447911123456", Some("phone")),
    ("33612345678", Some("phone")),
    ("8613800138000", Some("phone")),
    ("11551234567", None),  // North American area codes do not start with 1
    ("440791112345", None), // a national 0 after the country code
    ("15551234", None),     // too short
    // Common numbers that are not PII.
    ("1732871234567", None),       // a timestamp in milliseconds
    ("1732871234", None),          // in seconds
    ("1732871234567890", None),    // in microseconds
    ("1732871234567890123", None), // in nanoseconds
    ("123456789", None),           // 9 digits: never an SSN
    ("2147483647", None),
    ("18446744073709551615", None),
    ("0", None),
    ("200", None),
];

#[test]
fn labelled_numbers() {
    let mut r = Redactor::from_config(Config::default()).unwrap();
    for &(n, want) in NUMBERS {
        let got = r.redact_number(n.as_bytes());
        let want = want.map(|k| format!("[REDACTED:{k}]"));
        assert_eq!(got, want, "{n}");
        // The same through a whole record, on both paths.
        let line = format!("{{\"card\":{n},\"s\":\"x\"}}");
        let expect = match &want {
            Some(m) => json!({"card": m, "s": "x"}),
            None => serde_json::from_str(&line).unwrap(),
        };
        let mut fast = Vec::new();
        r.redact_json_line(line.as_bytes(), &mut fast).unwrap();
        let fast: serde_json::Value = serde_json::from_slice(&fast).unwrap();
        assert_eq!(fast, expect, "{n}");
        let mut rec = weir_plugin_sdk::Record::parse(line.as_bytes()).unwrap();
        r.apply(&mut rec);
        assert_eq!(serde_json::Value::Object(rec.0), expect, "{n}");
    }
}

#[test]
fn numbers_in_the_issue_are_masked_and_fractions_signs_exponents_are_not() {
    let mut p = PiiRedact::new(&json!({})).unwrap();
    let out = run_native(
        &mut p,
        b"{\"card\":4111111111111111,\"phone\":15551234567}\n{\"card_a\":4111111111111111.5,\"phone_b\":-15551234567,\"phone_c\":15551234567e0,\"phones\":[15551234567]}\n",
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"card\":\"[REDACTED:card]\",\"phone\":\"[REDACTED:phone]\"}\n{\"card_a\":4111111111111111.5,\"phone_b\":-15551234567,\"phone_c\":15551234567e0,\"phones\":[\"[REDACTED:phone]\"]}\n"
    );
}

#[test]
fn numbers_follow_kinds_fields_and_actions() {
    // Only the kinds chosen.
    let mut p = PiiRedact::new(&json!({"kinds": ["email"]})).unwrap();
    let out = run_native(&mut p, b"{\"card\":4111111111111111}\n").unwrap();
    assert_eq!(out, b"{\"card\":4111111111111111}\n");
    // Listed fields only (the tree path).
    let mut p = PiiRedact::new(&json!({"fields": ["user.card"]})).unwrap();
    let out = run_native(
        &mut p,
        br#"{"user":{"card":4111111111111111},"other":4111111111111111}"#,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        json!({"user":{"card":"[REDACTED:card]"},"other":4111111111111111u64})
    );
    // Drop removes the field.
    let mut p = PiiRedact::new(&json!({"action":"drop"})).unwrap();
    let out = run_native(&mut p, br#"{"card":4111111111111111,"n":7}"#).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v, json!({"n":7}));
    // Hash: the same as the digits written as a string.
    let cfg = json!({"action":"hash","hash_key":"k"});
    let mut p = PiiRedact::new(&cfg).unwrap();
    let n = run_native(&mut p, br#"{"card":4111111111111111}"#).unwrap();
    let s = run_native(&mut p, br#"{"card":"4111111111111111"}"#).unwrap();
    assert_eq!(n, s);
    let v: serde_json::Value = serde_json::from_slice(&n).unwrap();
    assert!(v["card"].as_str().unwrap().starts_with("[card:"), "{v}");
}

/// Numbers are PII only under a key that names PII: ids, counters and timestamps whose
/// digits happen to look like a card or a phone number are left alone, on both paths.
#[test]
fn numbers_under_other_keys_are_never_redacted() {
    let line = br#"{"id":4111111111111111,"order_id":5500000000000004,"user_id":15551234567,"company":4111111111111111,"nested":{"card_no":4111111111111111,"seq":5500000000000004}}"#;
    let want = json!({"id":4111111111111111u64,"order_id":5500000000000004u64,"user_id":15551234567u64,"company":4111111111111111u64,"nested":{"card_no":"[REDACTED:card]","seq":5500000000000004u64}});
    for cfg in [json!({}), json!({"action":"drop"})] {
        let mut p = PiiRedact::new(&cfg).unwrap();
        let out = run_native(&mut p, line).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let mut want = want.clone();
        if cfg["action"] == "drop" {
            want["nested"].as_object_mut().unwrap().remove("card_no");
        }
        assert_eq!(v, want, "{cfg}");
    }
    for (key, pii) in [
        ("cc", true),
        ("credit_card", true),
        ("cardNumber", true),
        ("tel", true),
        ("msisdn", true),
        ("pan", true),
        ("company", false),
        ("id", false),
        ("panel_id", false),
        ("ts", false),
    ] {
        assert_eq!(crate::pii_key(key), pii, "{key}");
    }
}
