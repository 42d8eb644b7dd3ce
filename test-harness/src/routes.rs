//! Reading the kernel's IPv6 routes as `ip -6 route show` prints them.
//!
//! A single-nexthop route is one line (`DEST via ADDR dev IF proto 221 …`,
//! or `DEST nhid ID via ADDR dev IF …` through a nexthop object);
//! a multipath route is a first line (`DEST proto 221 …`) followed by one
//! indented `nexthop via ADDR dev IF …` line per member. A host route is
//! printed without its `/128`.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

/// An IPv6 prefix: an address and a prefix length.
pub type Prefix = (Ipv6Addr, u8);

/// One nexthop of a kernel route: the neighbour's address and the local
/// interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hop {
    /// The `via` address (a neighbour's link-local address for our routes).
    pub via: Ipv6Addr,
    /// The `dev` interface name.
    pub dev: String,
}

/// A kernel route: its nexthops, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelRoute {
    /// Every nexthop, sorted; one for a plain route, one per member for a
    /// multipath route.
    pub hops: Vec<Hop>,
}

/// Parses `ADDR/LEN` (or a bare `ADDR`, meaning `/128`) into a prefix.
pub fn parse_prefix(text: &str) -> Option<Prefix> {
    match text.split_once('/') {
        Some((addr, len)) => {
            let len: u8 = len.parse().ok()?;
            (len <= 128).then_some((addr.parse().ok()?, len))
        }
        None => Some((text.parse().ok()?, 128)),
    }
}

/// The `via ADDR` and `dev NAME` of one line, if it has both.
fn parse_hop(line: &str) -> Option<Hop> {
    let mut via = None;
    let mut dev = None;
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        match word {
            "via" => via = words.next().and_then(|a| a.parse().ok()),
            "dev" => dev = words.next().map(str::to_string),
            _ => {}
        }
    }
    Some(Hop { via: via?, dev: dev? })
}

/// The destinations of the routes in `lines` (the first word of every line
/// that is not an indented multipath member), in order; lines whose first
/// word is no IPv6 prefix (such as `default`) are skipped.
pub fn destinations<S: AsRef<str>>(
    lines: &[S],
) -> impl Iterator<Item = Prefix> + '_ {
    lines.iter().filter_map(|line| {
        let line = line.as_ref();
        if line.starts_with(char::is_whitespace) {
            return None;
        }
        line.split_whitespace().next().and_then(parse_prefix)
    })
}

/// Groups the lines of `ip -6 route show` into routes by destination,
/// each with its sorted nexthops. Lines whose destination is no IPv6
/// prefix (such as `default`), and the members under them, are skipped.
pub fn parse_routes<S: AsRef<str>>(
    lines: &[S],
) -> BTreeMap<Prefix, KernelRoute> {
    let mut routes: BTreeMap<Prefix, KernelRoute> = BTreeMap::new();
    let mut current: Option<Prefix> = None;
    for line in lines {
        let line = line.as_ref();
        if line.starts_with(char::is_whitespace) {
            if let Some(route) = current.and_then(|d| routes.get_mut(&d)) {
                route.hops.extend(parse_hop(line));
            }
        } else {
            current = line.split_whitespace().next().and_then(parse_prefix);
            if let Some(dest) = current {
                routes.entry(dest).or_default().hops.extend(parse_hop(line));
            }
        }
    }
    for route in routes.values_mut() {
        route.hops.sort();
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn prefixes_parse_with_and_without_length() {
        let a: Ipv6Addr = "fd00:1::".parse().unwrap();
        assert_eq!(parse_prefix("fd00:1::/64"), Some((a, 64)));
        assert_eq!(parse_prefix("fd00:1::"), Some((a, 128)));
        assert_eq!(parse_prefix("fd00:1::/129"), None);
        assert_eq!(parse_prefix("default"), None);
        assert_eq!(parse_prefix("fd00::/x"), None);
    }

    #[test]
    fn single_and_multipath_routes_group_by_destination() {
        let text = lines(&[
            "fd00:1::/64 via fe80::1 dev a proto 221 metric 1024 pref medium",
            "fd00:2::/64 proto 221 metric 1024 pref medium",
            "\tnexthop via fe80::3 dev c weight 1 ",
            "\tnexthop via fe80::2 dev b weight 1 ",
            "default proto 221 metric 1024 pref medium",
            "\tnexthop via fe80::9 dev z weight 1 ",
            "fd00:3::1 via fe80::4 dev d proto 221 metric 1024 pref medium",
            "fd00:4::/64 nhid 3707764736 via fe80::5 dev e proto 221 metric \
             1024 pref medium",
        ]);
        let routes = parse_routes(&text);
        let p = |s: &str| parse_prefix(s).unwrap();
        let hop = |via: &str, dev: &str| Hop {
            via: via.parse().unwrap(),
            dev: dev.to_string(),
        };
        assert_eq!(routes.len(), 4, "{routes:?}");
        assert_eq!(routes[&p("fd00:4::/64")].hops, vec![hop("fe80::5", "e")]);
        assert_eq!(routes[&p("fd00:1::/64")].hops, vec![hop("fe80::1", "a")]);
        assert_eq!(
            routes[&p("fd00:2::/64")].hops,
            vec![hop("fe80::2", "b"), hop("fe80::3", "c")]
        );
        assert_eq!(routes[&p("fd00:3::1/128")].hops, vec![hop("fe80::4", "d")]);
        let dests: Vec<Prefix> = destinations(&text).collect();
        assert_eq!(
            dests,
            vec![
                p("fd00:1::/64"),
                p("fd00:2::/64"),
                p("fd00:3::1/128"),
                p("fd00:4::/64")
            ]
        );
    }
}
