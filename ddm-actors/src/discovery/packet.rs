//! The discovery packet: encoding and decoding, nothing else.
//!
//! FROZEN wire format; deployed routers depend on it byte for
//! byte:
//!
//! ```text
//!  0         1         2         3         4 ..
//! +---------+---------+---------+---------+----------------------+
//! | version |  flags  |  kind   | namelen |  hostname (namelen)  |
//! +---------+---------+---------+---------+----------------------+
//! flags: 0x01 solicitation, 0x02 advertisement, other bits reserved
//! kind:  0 server, 1 transit
//! ```
//!
//! Decoding is total: any byte string yields a packet or a [`DecodeError`],
//! never a panic. Reserved flag bits are ignored, and so are bytes after the
//! hostname (a future version may append fields; today's routers must still
//! understand the part they know). The version byte is decoded whatever it
//! is: a solicitation of any version is answered, as the original daemon
//! does, and only an advertisement must carry a version we speak
//! ([`DiscoveryPacket::version_supported`]), since exchange uses it.

use ddm_admin_api::latest::RouterKind;

/// Flag bit of a solicitation.
pub const FLAG_SOLICIT: u8 = 0x01;
/// Flag bit of an advertisement.
pub const FLAG_ADVERTISE: u8 = 0x02;

/// The exchange protocol version this router announces (what deployed
/// routers send).
pub const VERSION_SENT: u8 = 2;
/// The lowest exchange protocol version a peer may announce.
pub const VERSION_MIN: u8 = 2;
/// The highest exchange protocol version a peer may announce.
pub const VERSION_MAX: u8 = 3;

/// Length of the fixed header before the hostname.
pub const HEADER_LEN: usize = 4;

/// One discovery packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryPacket {
    /// Exchange protocol version the sender speaks; the exchange with this
    /// peer uses it.
    pub version: u8,
    /// The sender asks neighbours to advertise themselves.
    pub solicit: bool,
    /// The sender announces itself as a neighbour.
    pub advertise: bool,
    /// Server or transit: decides whether the peer redistributes.
    pub kind: RouterKind,
    /// The sender's name, as it appears in paths.
    pub hostname: String,
}

/// Why a datagram is not a discovery packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the header, or than the hostname length it declares.
    #[error("truncated packet")]
    Truncated,
    /// A router kind other than 0 (server) or 1 (transit).
    #[error("unknown router kind {0}")]
    UnknownKind(u8),
    /// The hostname is not UTF-8.
    #[error("hostname is not valid UTF-8")]
    BadHostname,
    /// Neither the solicitation nor the advertisement bit is set.
    #[error("neither solicitation nor advertisement")]
    NoKindFlags,
}

/// Why a packet cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The hostname does not fit the one-byte length field.
    #[error("hostname is {0} bytes, at most 255 fit")]
    HostnameTooLong(usize),
}

impl DiscoveryPacket {
    /// A solicitation from this router.
    pub fn solicitation(kind: RouterKind, hostname: &str) -> Self {
        DiscoveryPacket {
            version: VERSION_SENT,
            solicit: true,
            advertise: false,
            kind,
            hostname: hostname.to_string(),
        }
    }

    /// An advertisement from this router.
    pub fn advertisement(kind: RouterKind, hostname: &str) -> Self {
        DiscoveryPacket {
            version: VERSION_SENT,
            solicit: false,
            advertise: true,
            kind,
            hostname: hostname.to_string(),
        }
    }

    /// Whether the sender speaks an exchange version we speak (2 or 3):
    /// required of an advertisement, whose sender becomes our peer.
    pub fn version_supported(&self) -> bool {
        (VERSION_MIN..=VERSION_MAX).contains(&self.version)
    }

    /// The flags byte of this packet.
    pub fn flags(&self) -> u8 {
        let mut f = 0;
        if self.solicit {
            f |= FLAG_SOLICIT;
        }
        if self.advertise {
            f |= FLAG_ADVERTISE;
        }
        f
    }

    /// The packet's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let name = self.hostname.as_bytes();
        let len = u8::try_from(name.len())
            .map_err(|_| EncodeError::HostnameTooLong(name.len()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + name.len());
        out.push(self.version);
        out.push(self.flags());
        out.push(self.kind.as_u8());
        out.push(len);
        out.extend_from_slice(name);
        Ok(out)
    }

    /// Parse a datagram. Checks run in wire order, so a datagram with several
    /// faults reports the first.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let [version, flags, kind, len, rest @ ..] = buf else {
            return Err(DecodeError::Truncated);
        };
        let solicit = flags & FLAG_SOLICIT != 0;
        let advertise = flags & FLAG_ADVERTISE != 0;
        if !solicit && !advertise {
            return Err(DecodeError::NoKindFlags);
        }
        let kind = RouterKind::from_u8(*kind)
            .ok_or(DecodeError::UnknownKind(*kind))?;
        let name =
            rest.get(..usize::from(*len)).ok_or(DecodeError::Truncated)?;
        let hostname = std::str::from_utf8(name)
            .map_err(|_| DecodeError::BadHostname)?
            .to_string();
        Ok(DiscoveryPacket {
            version: *version,
            solicit,
            advertise,
            kind,
            hostname,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_solicitation() {
        let p = DiscoveryPacket::solicitation(RouterKind::Server, "sled0");
        let bytes = p.encode().unwrap();
        assert_eq!(bytes, [2, 0x01, 0, 5, b's', b'l', b'e', b'd', b'0']);
        assert_eq!(DiscoveryPacket::decode(&bytes).unwrap(), p);
    }

    #[test]
    fn golden_advertisement() {
        let p = DiscoveryPacket::advertisement(RouterKind::Transit, "sw1");
        let bytes = p.encode().unwrap();
        assert_eq!(bytes, [2, 0x02, 1, 3, b's', b'w', b'1']);
        assert_eq!(DiscoveryPacket::decode(&bytes).unwrap(), p);
    }

    #[test]
    fn version_3_and_both_flags_accepted() {
        let p = DiscoveryPacket::decode(&[3, 0x03, 1, 1, b'x']).unwrap();
        assert_eq!(p.version, 3);
        assert!(p.solicit && p.advertise);
        assert_eq!(p.kind, RouterKind::Transit);
    }

    /// Any version decodes; only 2 and 3 are spoken.
    #[test]
    fn every_version_decodes() {
        for v in [0, 1, 2, 3, 4, 7, 0xff] {
            let p = DiscoveryPacket::decode(&[v, 0x01, 0, 1, b'x']).unwrap();
            assert_eq!(p.version, v);
            assert!(p.solicit);
            assert_eq!(p.version_supported(), v == 2 || v == 3, "{v}");
        }
    }

    #[test]
    fn reserved_flags_and_trailing_bytes_ignored() {
        let p = DiscoveryPacket::decode(&[2, 0xfe, 0, 2, b'a', b'b', 9, 9])
            .unwrap();
        assert!(!p.solicit && p.advertise);
        assert_eq!(p.hostname, "ab");
    }

    #[test]
    fn empty_hostname_is_fine() {
        let p = DiscoveryPacket::decode(&[2, 1, 0, 0]).unwrap();
        assert_eq!(p.hostname, "");
    }

    #[test]
    fn errors() {
        use DecodeError::*;
        let cases: &[(&[u8], DecodeError)] = &[
            (&[], Truncated),
            (&[2, 1, 0], Truncated),
            (&[2, 1, 0, 3, b'a', b'b'], Truncated),
            (&[2, 0, 0, 0], NoKindFlags),
            (&[2, 0xfc, 0, 0], NoKindFlags),
            (&[2, 1, 2, 0], UnknownKind(2)),
            (&[2, 1, 0, 2, 0xff, 0xfe], BadHostname),
        ];
        for (bytes, err) in cases {
            assert_eq!(DiscoveryPacket::decode(bytes), Err(*err), "{bytes:?}");
        }
    }

    #[test]
    fn too_long_hostname_is_an_encode_error() {
        let p =
            DiscoveryPacket::solicitation(RouterKind::Server, &"a".repeat(256));
        assert_eq!(p.encode(), Err(EncodeError::HostnameTooLong(256)));
        let p =
            DiscoveryPacket::solicitation(RouterKind::Server, &"a".repeat(255));
        assert_eq!(p.encode().unwrap().len(), 259);
    }

    fn arb_packet() -> impl Strategy<Value = DiscoveryPacket> {
        (
            VERSION_MIN..=VERSION_MAX,
            1u8..=3,
            any::<bool>(),
            "\\PC{0,60}".prop_filter("fits", |s: &String| s.len() <= 255),
        )
            .prop_map(|(version, flags, transit, hostname)| {
                DiscoveryPacket {
                    version,
                    solicit: flags & 1 != 0,
                    advertise: flags & 2 != 0,
                    kind: if transit {
                        RouterKind::Transit
                    } else {
                        RouterKind::Server
                    },
                    hostname,
                }
            })
    }

    proptest! {
        #[test]
        fn roundtrip(p in arb_packet()) {
            let bytes = p.encode().unwrap();
            prop_assert_eq!(DiscoveryPacket::decode(&bytes).unwrap(), p);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(p) = DiscoveryPacket::decode(&bytes) {
                // Whatever decodes re-encodes to a prefix of the input (up to
                // reserved flag bits).
                let again = p.encode().unwrap();
                prop_assert_eq!(&again[..1], &bytes[..1]);
                prop_assert_eq!(&again[2..], &bytes[2..again.len()]);
            }
        }
    }
}
