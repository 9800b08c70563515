//! Stable partitioning.
//!
//! The partition of a batch is `fnv1a64(tenant, 0xff, stream, 0xff, key) % partitions`.
//! FNV-1a is specified bit for bit, so the mapping never changes across restarts, Rust
//! versions or Weir versions (unlike `std`'s or ahash's hashers). Changing this function
//! would reorder existing data and is forbidden; a unit test pins known values.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a over several byte strings, each followed by a 0xff separator (a byte
/// that never occurs in UTF-8, so `("ab","c")` and `("a","bc")` hash differently).
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h = OFFSET;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
        h ^= 0xff;
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// The partition for `tenant`, `stream` and an optional partition key.
pub fn partition_for(tenant: &str, stream: &str, key: Option<&str>, partitions: u32) -> u32 {
    assert!(partitions > 0, "a log has at least one partition");
    let key = key.unwrap_or("");
    (fnv1a64(&[tenant.as_bytes(), stream.as_bytes(), key.as_bytes()]) % u64::from(partitions))
        as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        // Reference FNV-1a 64 values (no separators) checked against the published spec.
        fn plain(s: &[u8]) -> u64 {
            let mut h = OFFSET;
            for &b in s {
                h ^= u64::from(b);
                h = h.wrapping_mul(PRIME);
            }
            h
        }
        assert_eq!(plain(b""), 0xcbf29ce484222325);
        assert_eq!(plain(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(plain(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn partition_is_pinned() {
        // These values are part of the on-disk contract (and were checked against an
        // independent FNV-1a implementation): if this test fails, the change would move
        // existing streams to other partitions.
        let got: Vec<u32> = [
            ("acme", "app", None),
            ("acme", "app", Some("host-1")),
            ("default", "logs", None),
        ]
        .iter()
        .map(|(t, s, k)| partition_for(t, s, *k, 16))
        .collect();
        assert_eq!(got, vec![9, 5, 6]);
        assert_eq!(fnv1a64(&[b"acme", b"app", b""]), PINNED_ACME_APP);
    }

    const PINNED_ACME_APP: u64 = 11275858820416958953;

    #[test]
    fn separators_matter() {
        assert_ne!(fnv1a64(&[b"ab", b"c"]), fnv1a64(&[b"a", b"bc"]));
    }

    #[test]
    fn spreads_keys() {
        let mut seen = [0u32; 8];
        for i in 0..8000 {
            seen[partition_for("t", "s", Some(&format!("host-{i}")), 8) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 700 && n < 1300), "{seen:?}");
    }
}
