//! The first-party plugins, compiled from `plugins/` to Wasm components by `build.rs` and
//! carried inside the binary, so `weir serve` needs no other files. Pipelines name them
//! `builtin:NAME`.
//!
//! With the `fixtures` feature the hostile test plugin of `tests/fixtures/hostile` is
//! built too and reachable through [`fixture`] (never through [`get`]).

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));

/// Names of the first-party plugins, as in `builtin:NAME`.
pub const NAMES: &[&str] = &["pii-redact", "logfmt", "schema-migrate", "top-errors"];

/// The component bytes of a first-party plugin.
pub fn get(name: &str) -> Option<&'static [u8]> {
    if !NAMES.contains(&name) {
        return None;
    }
    ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// The component bytes of a test fixture (`weir-fixture-hostile`), when built with the
/// `fixtures` feature.
pub fn fixture(name: &str) -> Option<&'static [u8]> {
    if NAMES.contains(&name) {
        return None;
    }
    ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtins_are_components() {
        for name in super::NAMES {
            let wasm = super::get(name).expect("built");
            // A component's preamble: magic, then version 0x0d and layer 0x01.
            assert_eq!(&wasm[..4], b"\0asm", "{name}");
            assert_eq!(
                &wasm[4..8],
                &[0x0d, 0x00, 0x01, 0x00],
                "{name} is not a component"
            );
        }
        assert!(super::get("nope").is_none());
    }
}
