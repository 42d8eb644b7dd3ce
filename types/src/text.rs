//! IPv6 addresses and prefixes to and from their text, in the forms the
//! standard library and `oxnet` read and write, without their cost.
//!
//! Every hop of a 100,000-prefix change reads each prefix from text (the
//! admin request, a peer's push, the store's keys) and writes it again (a
//! push onwards, the store). The standard library's parser tries each
//! spelling in turn and its formatter goes through `core::fmt`: on the
//! development VM, 100,000 addresses like the benchmark's took 7.0 ms to
//! parse and 8.5–9.3 ms to write that way, against 2.6 and 4.1 ms here
//! (a scratch program, release build, three rounds each).
//!
//! Both halves defer to the standard library outside the common case, so
//! what they take and write is the standard library's by construction:
//! [`parse_addr`] reads only hex groups with at most one `::` and leaves
//! anything else (an embedded IPv4 address, a malformed string) to
//! `Ipv6Addr::from_str`, which also gives the error; [`addr_text`] leaves
//! IPv4-mapped addresses, the one case the standard library writes in a
//! form of its own, to `Display`. The tests compare both with the
//! standard library over every shape of zero groups and over random text.

use std::fmt;
use std::net::Ipv6Addr;

use oxnet::{IpNetParseError, Ipv6Net};

/// `s` as an IPv6 address, exactly as `Ipv6Addr::from_str` reads it.
pub fn parse_addr(s: &str) -> Result<Ipv6Addr, std::net::AddrParseError> {
    match groups(s.as_bytes()) {
        Some(a) => Ok(a),
        None => s.parse(),
    }
}

/// `s` as an IPv6 prefix (`addr/len`), exactly as `oxnet`'s
/// `Ipv6Net::from_str` reads it.
pub fn parse_net(s: &str) -> Result<Ipv6Net, IpNetParseError> {
    if let Some((addr, len)) = s.split_once('/') {
        if let (Some(a), Some(l)) = (groups(addr.as_bytes()), width(len)) {
            return Ok(Ipv6Net::new_unchecked(a, l));
        }
    }
    s.parse()
}

/// A prefix length of one to three decimal digits, at most 128; `None`
/// for anything else (left to `oxnet`).
fn width(s: &str) -> Option<u8> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 3 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = b.iter().fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
    (v <= 128).then_some(v as u8)
}

/// The value of one hex digit.
fn hex(c: u8) -> Option<u16> {
    match c {
        b'0'..=b'9' => Some(u16::from(c - b'0')),
        b'a'..=b'f' => Some(u16::from(c - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(c - b'A' + 10)),
        _ => None,
    }
}

/// `s` read as groups of one to four hex digits separated by `:`, with at
/// most one `::` standing for at least one zero group; `None` for any
/// other text, which the standard library then reads or refuses.
fn groups(s: &[u8]) -> Option<Ipv6Addr> {
    if s.len() < 2 || s.len() > 39 {
        return None;
    }
    // Groups before the `::` (all of them without one), and after it.
    let mut head = [0u16; 8];
    let mut tail = [0u16; 8];
    let (mut heads, mut tails) = (0, 0);
    let mut gap = false;
    let mut i = 0;
    if s.starts_with(b"::") {
        gap = true;
        i = 2;
        if i == s.len() {
            return Some(Ipv6Addr::UNSPECIFIED);
        }
    }
    loop {
        let start = i;
        let mut v = 0u16;
        while i < s.len() && i - start < 4 {
            let Some(d) = hex(s[i]) else { break };
            v = v << 4 | d;
            i += 1;
        }
        if i == start {
            return None;
        }
        let (set, n) =
            if gap { (&mut tail, &mut tails) } else { (&mut head, &mut heads) };
        *set.get_mut(*n)? = v;
        *n += 1;
        if i == s.len() {
            break;
        }
        if s[i] != b':' {
            return None;
        }
        i += 1;
        if i == s.len() {
            // A lone `:` at the end.
            return None;
        }
        if s[i] == b':' {
            if gap {
                return None;
            }
            gap = true;
            i += 1;
            if i == s.len() {
                break;
            }
        }
    }
    let mut segments = [0u16; 8];
    if gap {
        if heads + tails > 7 {
            return None;
        }
        segments[..heads].copy_from_slice(&head[..heads]);
        segments[8 - tails..].copy_from_slice(&tail[..tails]);
    } else if heads == 8 {
        segments = head;
    } else {
        return None;
    }
    Some(Ipv6Addr::from(segments))
}

/// A string read from `d` through `take`, which may refuse it (the error's
/// text is `take`'s) without its own copy of it; `what` is what was
/// expected instead of something else. `oxnet`'s `Deserialize` for a
/// prefix reads each into a new `String` first.
pub fn read_str<'de, D: serde::Deserializer<'de>, T, R: fmt::Display>(
    d: D,
    what: &'static str,
    take: impl FnOnce(&str) -> Result<T, R>,
) -> Result<T, D::Error> {
    struct Take<F>(&'static str, F);
    impl<T, R: fmt::Display, F: FnOnce(&str) -> Result<T, R>>
        serde::de::Visitor<'_> for Take<F>
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            (self.1)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(Take(what, take))
}

/// A prefix read as `oxnet`'s `Deserialize` reads it (the same strings
/// taken, the same error text, its position given just past the string
/// rather than past what follows it), but from the text as it is, not a
/// new `String` of it, and parsed by [`parse_net`].
pub struct NetText(pub Ipv6Net);

impl<'de> serde::Deserialize<'de> for NetText {
    fn deserialize<D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Self, D::Error> {
        read_str(d, "a string", |v| parse_net(v).map(NetText))
    }
}

/// A JSON error's text without the position `serde_json` appends (" at
/// line L column C"): what reading through [`NetText`] and through
/// `Ipv6Net`'s own `Deserialize` have alike. For the tests that compare
/// the two (in the admin API's crate and in the exchange's decoder).
#[doc(hidden)]
pub fn without_position(error: &str) -> &str {
    &error[..error.rfind(" at line").unwrap_or(error.len())]
}

/// An address or prefix written out, as its `Display` writes it.
pub struct Text {
    buf: [u8; 43],
    len: usize,
}

impl Text {
    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len])
            .expect("only ASCII is written")
    }

    fn push(&mut self, b: &[u8]) {
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    /// One group in lower-case hex without leading zeros.
    fn group(&mut self, g: u16) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let digits = (16 - g.leading_zeros()).div_ceil(4).max(1);
        for k in (0..digits).rev() {
            self.buf[self.len] = DIGITS[usize::from(g >> (4 * k) & 0xf)];
            self.len += 1;
        }
    }

    /// Groups joined by `:`.
    fn groups(&mut self, gs: &[u16]) {
        for (k, g) in gs.iter().enumerate() {
            if k > 0 {
                self.push(b":");
            }
            self.group(*g);
        }
    }
}

/// `a` as `Ipv6Addr`'s `Display` writes it (RFC 5952: lower-case hex,
/// the first longest run of two or more zero groups as `::`).
pub fn addr_text(a: &Ipv6Addr) -> Text {
    let mut t = Text { buf: [0; 43], len: 0 };
    if a.to_ipv4_mapped().is_some() {
        // `::ffff:a.b.c.d`: the standard library's own form.
        t.push(a.to_string().as_bytes());
        return t;
    }
    let s = a.segments();
    // The first longest run of zero groups.
    let (mut best, mut best_len, mut run) = (0, 0, 0);
    for (k, g) in s.iter().enumerate() {
        run = if *g == 0 { run + 1 } else { 0 };
        if run > best_len {
            best_len = run;
            best = k + 1 - run;
        }
    }
    if best_len > 1 {
        t.groups(&s[..best]);
        t.push(b"::");
        t.groups(&s[best + best_len..]);
    } else {
        t.groups(&s);
    }
    t
}

/// `n` as `Ipv6Net`'s `Display` writes it (`addr/len`).
pub fn net_text(n: &Ipv6Net) -> Text {
    let mut t = addr_text(&n.addr());
    t.push(b"/");
    let w = n.width();
    if w >= 100 {
        t.push(&[b'0' + w / 100]);
    }
    if w >= 10 {
        t.push(&[b'0' + w / 10 % 10]);
    }
    t.push(&[b'0' + w % 10]);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `parse_net` and `oxnet`'s reading of `s`, errors as their text.
    fn both(s: &str) -> (Result<Ipv6Net, String>, Result<Ipv6Net, String>) {
        let text = |e: IpNetParseError| e.to_string();
        (parse_net(s).map_err(text), s.parse::<Ipv6Net>().map_err(text))
    }

    /// Every address whose groups are each 0, 1 or `ffff` (every shape of
    /// zero runs), and the special ones.
    fn shapes() -> Vec<Ipv6Addr> {
        let mut all = vec![
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::LOCALHOST,
            "::ffff:1.2.3.4".parse().unwrap(),
            "::1.2.3.4".parse().unwrap(),
            "64:ff9b::1.2.3.4".parse().unwrap(),
        ];
        for code in 0..3u32.pow(8) {
            let mut s = [0u16; 8];
            let mut c = code;
            for g in &mut s {
                *g = [0, 1, 0xffff][(c % 3) as usize];
                c /= 3;
            }
            all.push(Ipv6Addr::from(s));
        }
        all
    }

    #[test]
    fn written_as_the_standard_library_writes() {
        for a in shapes() {
            assert_eq!(addr_text(&a).as_str(), a.to_string(), "{a:?}");
            for w in [0, 7, 64, 99, 100, 128] {
                let n = Ipv6Net::new(a, w).unwrap();
                assert_eq!(net_text(&n).as_str(), n.to_string());
            }
        }
    }

    #[test]
    fn read_as_the_standard_library_reads() {
        for a in shapes() {
            let s = a.to_string();
            assert_eq!(parse_addr(&s), Ok(a));
            // Taken by the fast path, but for the forms with a dot.
            if !s.contains('.') {
                assert_eq!(groups(s.as_bytes()), Some(a), "{s}");
            }
            assert_eq!(parse_addr(&s.to_uppercase()), Ok(a));
            // The full form, with leading zeros.
            let full = a
                .segments()
                .iter()
                .map(|g| format!("{g:04x}"))
                .collect::<Vec<_>>()
                .join(":");
            assert_eq!(parse_addr(&full), Ok(a));
            let (fast, slow) = both(&format!("{s}/64"));
            assert_eq!(fast, slow);
        }
        for s in [
            "",
            ":",
            ":::",
            "::",
            "1::",
            "::1",
            "1:::2",
            "1::2::3",
            ":1::2",
            "1::2:",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4::5:6:7:8",
            "1:2:3:4:5:6:7:8::",
            "12345::",
            "01234::",
            "fd00::g",
            "fd00:: ",
            " fd00::",
            "+1::",
            "::ffff:1.2.3.4",
            "1:2:3:4:5:6:1.2.3.4",
            "[::1]",
            "fd00::%2",
            "FD00::ABCD",
        ] {
            assert_eq!(parse_addr(s), s.parse::<Ipv6Addr>(), "{s:?}");
            for len in ["64", "0", "128", "129", "256", "064", "+64", "", "6 4"]
            {
                let (fast, slow) = both(&format!("{s}/{len}"));
                assert_eq!(fast, slow, "{s}/{len}");
            }
        }
    }

    proptest! {
        #[test]
        fn any_text_is_read_as_the_standard_library_reads(
            s in prop_oneof![
                "[0-9a-fA-F:./]{0,44}",
                "([0-9a-fA-F]{0,5}:{1,3}){0,9}[0-9a-fA-F]{0,5}(/[0-9]{1,4})?",
            ]
        ) {
            prop_assert_eq!(parse_addr(&s), s.parse::<Ipv6Addr>());
            let (fast, slow) = both(&s);
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn any_address_round_trips(bits: u128, w in 0u8..=128) {
            let a = Ipv6Addr::from(bits);
            let t = addr_text(&a);
            prop_assert_eq!(t.as_str(), &a.to_string());
            prop_assert_eq!(parse_addr(addr_text(&a).as_str()), Ok(a));
            let n = Ipv6Net::new(a, w).unwrap();
            let t = net_text(&n);
            prop_assert_eq!(t.as_str(), &n.to_string());
            prop_assert_eq!(parse_net(net_text(&n).as_str()).ok(), Some(n));
        }
    }
}
