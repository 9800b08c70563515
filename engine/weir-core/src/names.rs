//! Names of tenants, streams and plugins: 1–64 characters of `[A-Za-z0-9_.-]`.
//! Stream names starting with `_` are Weir's own ([`METRICS_STREAM`]).

/// The stream metric samples travel on (per tenant), from ingest to the `metrics` table.
pub const METRICS_STREAM: &str = "_metrics";

/// Whether a stream name is reserved for Weir (starts with `_`).
pub fn is_reserved_stream(s: &str) -> bool {
    s.starts_with('_')
}

/// Whether `s` is a valid tenant, stream or plugin name.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("app-1.prod_x"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(&"x".repeat(65)));
    }
}
