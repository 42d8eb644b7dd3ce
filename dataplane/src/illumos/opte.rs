//! Requests to OPTE, the illumos encapsulation driver (`/dev/xde`): the
//! ioctl header and the virtual-to-boundary (tunnel endpoint) request
//! encoding. Pure and tested on every platform; only issuing the ioctl is
//! illumos-specific.
//!
//! One ioctl (`XDE_IOC_OPTE_CMD`) carries every command in an
//! [`OpteCmdIoctl`] header, 72 bytes `repr(C)`, pointing at a request and a
//! response buffer. The request is serialized with postcard (wire v1):
//! an `IpCidr` (variant varint: 0 IPv4, 1 IPv6; the raw address bytes; the
//! prefix length as one byte), then the tunnel endpoints (a varint count,
//! then per endpoint the 16 address bytes and the 3-byte big-endian VNI).
//! `api_version` must equal the running driver's exactly; it moves with
//! OPTE's releases, so it is configurable.

use std::net::{IpAddr, Ipv6Addr};

/// The driver's ioctl number (`0xde777701` as a C `int`).
pub const XDE_IOC_OPTE_CMD: i32 = 0xde77_7701_u32 as i32;

/// Add tunnel endpoints to an overlay prefix.
pub const CMD_SET_V2B: i32 = 52;
/// Remove tunnel endpoints from an overlay prefix.
pub const CMD_CLEAR_V2B: i32 = 53;
/// List the mapping.
pub const CMD_DUMP_V2B: i32 = 54;

/// `flags` bit set by the driver when the response buffer holds an error.
pub const FLAG_ERROR: u64 = 0x1;

/// The driver API version this build was written against (OPTE 21df7210).
pub const DEFAULT_API_VERSION: u64 = 41;

/// Size of the response buffer offered to the driver.
pub const RESPONSE_LEN: usize = 16 * 1024;

/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The ioctl header, as the driver reads it.
#[repr(C)]
#[derive(Debug)]
pub struct OpteCmdIoctl {
    /// Must equal the driver's API version.
    pub api_version: u64,
    /// Which command.
    pub cmd: i32,
    /// Set by the driver ([`FLAG_ERROR`]).
    pub flags: u64,
    /// Zero.
    pub reserved: u64,
    /// The serialized request.
    pub req_bytes: *const u8,
    /// Its length.
    pub req_len: usize,
    /// The response buffer.
    pub resp_bytes: *mut u8,
    /// Its capacity.
    pub resp_len: usize,
    /// How much the driver wrote (or needs, on `ENOBUFS`).
    pub resp_len_actual: usize,
}

/// A tunnel endpoint of an overlay prefix: the boundary address and VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tep {
    /// The boundary (underlay) address.
    pub ip: Ipv6Addr,
    /// The virtual network.
    pub vni: u32,
}

/// A request that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A VNI over 24 bits.
    #[error("VNI {0} does not fit in 24 bits")]
    Vni(u32),
    /// A prefix length longer than its address.
    #[error("prefix length {0} too long for the address")]
    PrefixLen(u8),
}

/// Appends `v` as a postcard varint (LEB128).
fn varint(buf: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf.push(b);
            return;
        }
        buf.push(b | 0x80);
    }
}

/// Encodes the set/clear request for `prefix` (host bits cleared) and its
/// tunnel endpoints.
pub fn encode_v2b(
    prefix: IpAddr,
    len: u8,
    teps: &[Tep],
) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::with_capacity(24 + teps.len() * 19);
    match prefix {
        IpAddr::V4(a) => {
            if len > 32 {
                return Err(EncodeError::PrefixLen(len));
            }
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            varint(&mut buf, 0);
            buf.extend_from_slice(&(u32::from(a) & mask).to_be_bytes());
        }
        IpAddr::V6(a) => {
            if len > 128 {
                return Err(EncodeError::PrefixLen(len));
            }
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            varint(&mut buf, 1);
            buf.extend_from_slice(&(u128::from(a) & mask).to_be_bytes());
        }
    }
    buf.push(len);
    varint(&mut buf, teps.len() as u64);
    for t in teps {
        if t.vni > MAX_VNI {
            return Err(EncodeError::Vni(t.vni));
        }
        buf.extend_from_slice(&t.ip.octets());
        buf.extend_from_slice(&t.vni.to_be_bytes()[1..]);
    }
    Ok(buf)
}

/// Whether a success response is the driver's empty answer (`NoResp`).
pub fn is_no_resp(resp: &[u8]) -> bool {
    resp == [0]
}

/// Reads one postcard varint from the front of `b`.
fn read_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The driver's API version from its error answer to an API version
/// mismatch (`BadApiVersion { user, kernel }`: after the variant, our
/// version then the driver's, as postcard varints). `None` when the answer
/// does not hold our version followed by another number.
pub fn mismatched_version(resp: &[u8], ours: u64) -> Option<u64> {
    let mut b = resp;
    let mut prev = read_varint(&mut b)?;
    while let Some(v) = read_varint(&mut b) {
        if prev == ours {
            return Some(v);
        }
        prev = v;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn ioctl_header_layout() {
        assert_eq!(size_of::<OpteCmdIoctl>(), 72);
        assert_eq!(offset_of!(OpteCmdIoctl, api_version), 0);
        assert_eq!(offset_of!(OpteCmdIoctl, cmd), 8);
        assert_eq!(offset_of!(OpteCmdIoctl, flags), 16);
        assert_eq!(offset_of!(OpteCmdIoctl, reserved), 24);
        assert_eq!(offset_of!(OpteCmdIoctl, req_bytes), 32);
        assert_eq!(offset_of!(OpteCmdIoctl, req_len), 40);
        assert_eq!(offset_of!(OpteCmdIoctl, resp_bytes), 48);
        assert_eq!(offset_of!(OpteCmdIoctl, resp_len), 56);
        assert_eq!(offset_of!(OpteCmdIoctl, resp_len_actual), 64);
        assert_eq!(XDE_IOC_OPTE_CMD, -562_596_095);
    }

    #[test]
    fn golden_default_route_request() {
        let b = encode_v2b(
            "0.0.0.0".parse().unwrap(),
            0,
            &[Tep { ip: "fd00:a::1".parse().unwrap(), vni: 99 }],
        )
        .unwrap();
        let want: Vec<u8> = [
            &[0x00][..],
            &[0, 0, 0, 0],
            &[0x00],
            &[0x01],
            &[0xfd, 0, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01],
            &[0x00, 0x00, 0x63],
        ]
        .concat();
        assert_eq!(b, want);
    }

    #[test]
    fn ipv6_prefixes_are_masked_and_counts_are_varints() {
        let teps: Vec<Tep> = (0..130u32)
            .map(|i| Tep { ip: Ipv6Addr::from(i as u128), vni: MAX_VNI })
            .collect();
        let b = encode_v2b("fd00:1::ff".parse().unwrap(), 64, &teps).unwrap();
        assert_eq!(b[0], 1);
        assert_eq!(&b[1..9], &[0xfd, 0, 0, 1, 0, 0, 0, 0]);
        assert!(b[9..17].iter().all(|&x| x == 0), "host bits cleared");
        assert_eq!(b[17], 64);
        assert_eq!(&b[18..20], &[0x82, 0x01], "130 as a varint");
        assert_eq!(b.len(), 20 + 130 * 19);
        assert_eq!(&b[b.len() - 3..], &[0xff, 0xff, 0xff]);
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        let tep = Tep { ip: Ipv6Addr::LOCALHOST, vni: 1 << 24 };
        assert_eq!(
            encode_v2b("fd00::".parse().unwrap(), 64, &[tep]),
            Err(EncodeError::Vni(1 << 24))
        );
        assert_eq!(
            encode_v2b("10.0.0.0".parse().unwrap(), 33, &[]),
            Err(EncodeError::PrefixLen(33))
        );
        assert!(is_no_resp(&[0]));
        // A mismatch answer: some variant, our version, the driver's.
        assert_eq!(mismatched_version(&[7, 41, 0xac, 0x02], 41), Some(300));
        assert_eq!(mismatched_version(&[7, 40, 42], 41), None);
        assert_eq!(mismatched_version(&[0xff; 20], 41), None);
        assert_eq!(mismatched_version(&[], 41), None);
        assert!(!is_no_resp(&[]));
    }
}
