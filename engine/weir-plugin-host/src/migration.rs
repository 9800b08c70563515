//! Schema versions of records, for migration stages: reading a record's top-level
//! `_schema` field (1 when absent) and setting it, without re-serialising the record
//! (key order, spacing and numbers stay as they were).

/// The byte span of the value of top-level `key` in the JSON object `line`.
fn find(line: &[u8], key: &str) -> Result<Option<(usize, usize)>, String> {
    let mut i = skip_ws(line, 0);
    if line.get(i) != Some(&b'{') {
        return Err("not a JSON object".into());
    }
    i = skip_ws(line, i + 1);
    if line.get(i) == Some(&b'}') {
        return Ok(None);
    }
    loop {
        let (ks, ke) = string_span(line, i)?;
        i = skip_ws(line, ke);
        if line.get(i) != Some(&b':') {
            return Err("expected ':'".into());
        }
        let vs = skip_ws(line, i + 1);
        let ve = value_end(line, vs)?;
        // Keys with escapes never equal the plain `_schema`.
        if &line[ks + 1..ke - 1] == key.as_bytes() {
            return Ok(Some((vs, ve)));
        }
        i = skip_ws(line, ve);
        match line.get(i) {
            Some(b',') => i = skip_ws(line, i + 1),
            Some(b'}') => return Ok(None),
            _ => return Err("expected ',' or '}'".into()),
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// `[start, end)` of the string starting at `i`, quotes included.
fn string_span(b: &[u8], i: usize) -> Result<(usize, usize), String> {
    if b.get(i) != Some(&b'"') {
        return Err("expected a string".into());
    }
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Ok((i, j + 1)),
            _ => j += 1,
        }
    }
    Err("unterminated string".into())
}

/// The end of the JSON value starting at `i`.
fn value_end(b: &[u8], i: usize) -> Result<usize, String> {
    match b.get(i) {
        Some(b'"') => string_span(b, i).map(|(_, e)| e),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_span(b, j)?.1;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            Err("unterminated value".into())
        }
        Some(_) => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            Ok(j)
        }
        None => Err("missing value".into()),
    }
}

/// A record's schema version: its top-level `_schema` (a positive integer), else 1.
pub fn schema_of(line: &[u8]) -> Result<u32, String> {
    match find(line, "_schema")? {
        None => Ok(1),
        Some((s, e)) => std::str::from_utf8(&line[s..e])
            .ok()
            .and_then(|t| t.parse::<u32>().ok())
            .filter(|v| *v >= 1)
            .ok_or_else(|| "_schema must be a positive integer".to_owned()),
    }
}

/// Append `line` to `out` with its top-level `_schema` set to `version`.
pub fn stamp(line: &[u8], version: u32, out: &mut Vec<u8>) -> Result<(), String> {
    match find(line, "_schema")? {
        Some((s, e)) => {
            out.extend_from_slice(&line[..s]);
            out.extend_from_slice(version.to_string().as_bytes());
            out.extend_from_slice(&line[e..]);
        }
        None => {
            let end = line
                .iter()
                .rposition(|c| *c == b'}')
                .ok_or("not a JSON object")?;
            let body = &line[..end];
            out.extend_from_slice(body);
            let empty = body.iter().rev().find(|c| !c.is_ascii_whitespace()) == Some(&b'{');
            if !empty {
                out.push(b',');
            }
            out.extend_from_slice(format!("\"_schema\":{version}").as_bytes());
            out.extend_from_slice(&line[end..]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_sets_the_top_level_schema_only() {
        assert_eq!(schema_of(br#"{"a":1}"#), Ok(1));
        assert_eq!(schema_of(br#"{"n":{"_schema":7},"_schema":3}"#), Ok(3));
        assert_eq!(
            schema_of(br#"{"s":"\"_schema\":9", "_schema" : 2 }"#),
            Ok(2)
        );
        assert!(schema_of(br#"{"_schema":"two"}"#).is_err());
        assert!(schema_of(br#"{"_schema":0}"#).is_err());
        assert!(schema_of(b"[1]").is_err());
        let set = |l: &[u8]| {
            let mut out = Vec::new();
            stamp(l, 4, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            set(br#"{"a":[1,{"b":"}"}]}"#),
            r#"{"a":[1,{"b":"}"}],"_schema":4}"#
        );
        assert_eq!(
            set(br#"{"_schema":3,"x":1.50}"#),
            r#"{"_schema":4,"x":1.50}"#
        );
        assert_eq!(set(b"{ }"), r#"{ "_schema":4}"#);
    }
}
