//! A stable 64-bit hash: FNV-1a over the bytes, then the MurmurHash3 finaliser so that
//! every input bit affects every output bit (HyperLogLog reads the top bits for the
//! register and the leading zeros of the rest). Fixed forever: persisted sketches
//! depend on it.

pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    #[test]
    fn pinned_values() {
        // Computed by an independent implementation (Python); changing the function
        // breaks every persisted sketch.
        assert_eq!(super::hash64(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(super::hash64(b"user-1"), 0x41a2_fca5_c684_01c5);
        assert_eq!(super::hash64(b"weir"), 0x928e_bc5f_622c_ac17);
    }
}
