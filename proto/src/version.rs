//! The exchange protocol version spoken with a peer.

/// Exchange protocol version spoken with a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// Prefixes as `{addr, len}` objects, under `/v2/`.
    V2,
    /// Prefixes as strings, under `/v3/`.
    V3,
}

impl Version {
    /// The version a peer's discovery packets announce, if we speak it.
    pub fn from_advertised(v: u8) -> Option<Version> {
        match v {
            2 => Some(Version::V2),
            3 => Some(Version::V3),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_versions_2_and_3_are_spoken() {
        assert_eq!(Version::from_advertised(2), Some(Version::V2));
        assert_eq!(Version::from_advertised(3), Some(Version::V3));
        for v in [0, 1, 4, u8::MAX] {
            assert_eq!(Version::from_advertised(v), None, "version {v}");
        }
    }
}
