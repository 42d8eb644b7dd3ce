//! Finding an interface and its usable link-local address.
//!
//! An address is usable once duplicate address detection is over: a
//! tentative address cannot be bound, and one whose detection failed never
//! will be. On Linux this reads `/proc/net/if_inet6` (per network
//! namespace), whose flags column says so; elsewhere it asks `getifaddrs`,
//! which does not, so the first link-local address is taken.

use std::ffi::CString;
use std::io;
use std::net::Ipv6Addr;

/// Why an interface cannot be used yet. Both are retried: interfaces and
/// addresses come and go while the router runs.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// No interface of that name (yet).
    #[error("no interface named {0:?}")]
    NoInterface(String),
    /// The interface exists but has no usable link-local address (yet).
    #[error("interface {ifname:?} (index {ifindex}) has no usable link-local address")]
    NoLinkLocal {
        /// The interface.
        ifname: String,
        /// Its index.
        ifindex: u32,
    },
    /// Listing addresses or opening sockets failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The index of the interface named `ifname`, if it exists.
pub fn ifindex(ifname: &str) -> Option<u32> {
    let name = CString::new(ifname).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// `IFA_F_DADFAILED` of the Linux kernel: detection found a duplicate.
pub const IFA_F_DADFAILED: u32 = 0x08;
/// `IFA_F_TENTATIVE` of the Linux kernel: detection still running.
pub const IFA_F_TENTATIVE: u32 = 0x40;

/// The lowest usable link-local address of interface `ifindex` in the text
/// of `/proc/net/if_inet6`. Lines are
/// `ADDR(32 hex) IFINDEX(hex) PREFIXLEN SCOPE FLAGS IFNAME`; lines that do
/// not parse are skipped.
pub fn parse_if_inet6(text: &str, ifindex: u32) -> Option<Ipv6Addr> {
    text.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let addr = u128::from_str_radix(cols.next()?, 16).ok()?;
            let idx = u32::from_str_radix(cols.next()?, 16).ok()?;
            let _prefix_len = cols.next()?;
            let _scope = cols.next()?;
            let flags = u32::from_str_radix(cols.next()?, 16).ok()?;
            let addr = Ipv6Addr::from(addr);
            (idx == ifindex
                && addr.is_unicast_link_local()
                && flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) == 0)
                .then_some(addr)
        })
        .min()
}

/// The usable link-local address of interface `ifindex`, if it has one.
#[cfg(target_os = "linux")]
pub fn link_local(_ifname: &str, ifindex: u32) -> io::Result<Option<Ipv6Addr>> {
    let text = std::fs::read_to_string("/proc/net/if_inet6")?;
    Ok(parse_if_inet6(&text, ifindex))
}

/// The link-local address of interface `ifname`, if it has one.
#[cfg(not(target_os = "linux"))]
pub fn link_local(ifname: &str, _ifindex: u32) -> io::Result<Option<Ipv6Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut best: Option<Ipv6Addr> = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet
        // freed; its name is a NUL-terminated string and its address, when
        // the family says AF_INET6, a sockaddr_in6.
        unsafe {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            if std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes()
                != ifname.as_bytes()
            {
                continue;
            }
            if i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET6 {
                continue;
            }
            let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
            let addr = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            if addr.is_unicast_link_local() && best.is_none_or(|b| addr < b) {
                best = Some(addr);
            }
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(best)
}

/// The index and usable link-local address of `ifname`, or why not yet.
pub fn resolve(ifname: &str) -> Result<(u32, Ipv6Addr), NotReady> {
    let idx = ifindex(ifname)
        .ok_or_else(|| NotReady::NoInterface(ifname.to_string()))?;
    match link_local(ifname, idx)? {
        Some(addr) => Ok((idx, addr)),
        None => Err(NotReady::NoLinkLocal {
            ifname: ifname.to_string(),
            ifindex: idx,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
fe8000000000000000fc00fffe000009 04 40 20 40     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
fe8000000000000000fc00fffe000000 04 40 20 08     eth0
fe800000000000000000000000000005 10a 40 20 80     veth9
garbage line
";

    #[test]
    fn picks_non_tentative_link_local_of_the_interface() {
        assert_eq!(
            parse_if_inet6(SAMPLE, 4),
            Some("fe80::fc:ff:fe00:1".parse().unwrap())
        );
        assert_eq!(
            parse_if_inet6(SAMPLE, 0x10a),
            Some("fe80::5".parse().unwrap())
        );
        // lo has only ::1; index 9 does not exist.
        assert_eq!(parse_if_inet6(SAMPLE, 1), None);
        assert_eq!(parse_if_inet6(SAMPLE, 9), None);
    }

    #[test]
    fn only_tentative_means_none() {
        let text = "fe800000000000000000000000000001 02 40 20 c0 eth1\n";
        assert_eq!(parse_if_inet6(text, 2), None);
    }

    #[test]
    fn missing_interface_is_not_ready() {
        assert!(matches!(
            resolve("ddm-no-such0"),
            Err(NotReady::NoInterface(_))
        ));
        assert_eq!(ifindex("bad\0name"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn loopback_has_no_link_local() {
        // `lo` exists in every network namespace and never has fe80::/10.
        match resolve("lo") {
            Err(NotReady::NoLinkLocal { ifindex, .. }) => assert!(ifindex > 0),
            other => panic!("unexpected {other:?}"),
        }
    }
}
