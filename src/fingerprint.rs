//! FNV-1a, the one stable 64-bit hash of the project: for hashed features
//! and for fingerprints of the data a saved file was built from (a search
//! index, an intent model), so a change of that data is noticed on load.

/// FNV-1a's starting value.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, continuing from `hash`: the same on every run and
/// platform, unlike the standard library's hasher.
pub fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The fingerprint of `version` (raised when the code that uses the data
/// changes) and of each part of the data.
pub fn of(version: u64, parts: &[&str]) -> u64 {
    parts
        .iter()
        .fold(fnv(FNV_OFFSET, &version.to_le_bytes()), |hash, part| {
            fnv(fnv(hash, part.as_bytes()), &[0xff])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_published_test_vector() {
        // FNV-1a of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(fnv(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_fingerprint_changes_with_the_version_and_with_the_data() {
        let base = of(1, &["x", "y"]);
        assert_eq!(base, of(1, &["x", "y"]));
        assert_ne!(base, of(2, &["x", "y"]));
        assert_ne!(base, of(1, &["x", "z"]));
        assert_ne!(base, of(1, &["xy", ""]));
    }
}
