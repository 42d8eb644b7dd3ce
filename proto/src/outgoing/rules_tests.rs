//! The rules of a pending update ([`merge`], [`take_chunk`]) on wire
//! updates, through the compact form.

use super::*;

/// [`merge`](super::merge) on wire updates, through the compact form
/// (every announcement fresh).
fn merge_wire(pending: &mut v3::Update, later: v3::Update) {
    let mut p = OutUpdate::from(&*pending);
    super::merge(&mut p, later.into());
    *pending = p.to_wire();
}

/// [`take_chunk`](super::take_chunk) on wire updates, through the compact form,
/// with at most `max` items and no byte bound to speak of.
fn take_chunk(pending: &mut v3::Update, max: usize) -> v3::Update {
    let bounds =
        PushBounds { items: max, bytes: usize::MAX, version: Version::V3 };
    let (part, oversize) = take_bounded(pending, bounds);
    assert!(oversize.is_empty());
    part
}

/// [`take_chunk`](super::take_chunk) on wire updates: the part and the oversize
/// items.
fn take_bounded(
    pending: &mut v3::Update,
    bounds: PushBounds,
) -> (v3::Update, v3::Update) {
    let mut p = OutUpdate::from(&*pending);
    let chunk = super::take_chunk(&mut p, bounds);
    *pending = p.to_wire();
    (chunk.part.to_wire(), chunk.oversize.to_wire())
}

/// The body a push of `u` in `version` sends.
fn body(u: &v3::Update, version: Version) -> Vec<u8> {
    let out = OutUpdate::from(u);
    match version {
        Version::V3 => serde_json::to_vec(&out).unwrap(),
        Version::V2 => serde_json::to_vec(&V2Update(&out)).unwrap(),
    }
}

fn pv(dest: &str, path: &str) -> v3::PathVector {
    v3::PathVector {
        destination: dest.parse().unwrap(),
        path: vec![path.to_string()],
    }
}

fn to(prefix: &str, vni: u32) -> v3::TunnelOrigin {
    v3::TunnelOrigin {
        overlay_prefix: prefix.parse().unwrap(),
        boundary_addr: "fd00::99".parse().unwrap(),
        vni,
        metric: 0,
    }
}

fn announce(dests: &[&str]) -> v3::Update {
    let mut u = v3::Update::default();
    for d in dests {
        u.underlay_mut().announce.insert(pv(d, "x"));
    }
    u
}

fn withdraw(dests: &[&str]) -> v3::Update {
    let mut u = v3::Update::default();
    for d in dests {
        u.underlay_mut().withdraw.insert(pv(d, "x"));
    }
    u
}

/// The compact form of `u`, as the RIB hands it over: every path it
/// announces is fresh (the peer does not hold it).
fn out(u: v3::Update) -> OutUpdate {
    u.into()
}

/// What another update names (by destination for paths, exactly for
/// tunnel origins) is taken out, marks too; the rest stays.
#[test]
fn take_named_by_takes_exactly_what_the_other_names() {
    let mut other = out(announce(&["fd00:1::/64", "fd00:9::/64"]));
    super::merge(&mut other, out(withdraw(&["fd00:2::/64"])));
    other.tunnel_mut().announce.insert(to("10.0.0.0/8", 1));
    let path = |d: &str| OutPath::from(&pv(d, "x"));
    // With 20 more items, which `other` does not name: they stay.
    for more in [0, 20] {
        let mut later = out(announce(&["fd00:2::/64", "fd00:3::/64"]));
        for i in 0..more {
            let d = format!("fd01:{i:x}::/64");
            super::merge(&mut later, out(announce(&[&d])));
        }
        later.underlay_mut().mark_held();
        let w = withdraw(&["fd00:1::/64", "fd00:4::/64"]);
        super::merge(&mut later, out(w));
        later.tunnel_mut().withdraw.insert(to("10.0.0.0/8", 1));
        later.tunnel_mut().withdraw.insert(to("10.1.0.0/16", 2));
        let mut rest = later.clone();
        let taken = rest.take_named_by(&other);
        let u = taken.underlay.as_ref().unwrap();
        assert_eq!(u.announce, [path("fd00:2::/64")].into());
        assert_eq!(u.held, u.announce, "the mark goes with the path");
        assert_eq!(u.withdraw, [path("fd00:1::/64")].into());
        let t = taken.tunnel.as_ref().unwrap();
        assert_eq!(t.withdraw, [to("10.0.0.0/8", 1)].into());
        assert!(t.announce.is_empty());
        let r = rest.underlay.as_ref().unwrap();
        assert_eq!(r.announce.len(), 1 + more);
        assert!(r.announce.contains(&path("fd00:3::/64")));
        assert_eq!(r.held, r.announce);
        assert_eq!(r.withdraw, [path("fd00:4::/64")].into());
        let t = rest.tunnel.as_ref().unwrap();
        assert_eq!(t.withdraw, [to("10.1.0.0/16", 2)].into());
        assert_eq!(taken.len() + rest.len(), later.len());
        // A destination named by any path: a path and its replacement
        // are taken together.
        let mut replaced = out(withdraw(&["fd00:9::/64"]));
        let other_path = OutPath::from(&pv("fd00:9::/64", "y"));
        replaced.underlay_mut().announce_path(other_path.clone(), false);
        let taken = replaced.take_named_by(&other);
        let u = taken.underlay.as_ref().unwrap();
        assert_eq!(u.withdraw, [path("fd00:9::/64")].into());
        assert_eq!(u.announce, [other_path].into());
        assert!(replaced.is_empty());
        // Nothing named: nothing taken.
        let mut same = later.clone();
        let none = out(announce(&["fd00:7::/64"]));
        assert!(same.take_named_by(&none).is_empty());
        assert_eq!(same, later);
    }
}

#[test]
fn merge_has_set_semantics() {
    let mut p = out(announce(&["fd00:1::/64", "fd00:2::/64"]));
    super::merge(&mut p, out(withdraw(&["fd00:1::/64", "fd00:3::/64"])));
    // fd00:1 was never sent: neither its announcement nor its withdrawal
    // is.
    let u = p.to_wire().underlay.unwrap();
    assert_eq!(u.announce, [pv("fd00:2::/64", "x")].into());
    assert_eq!(u.withdraw, [pv("fd00:3::/64", "x")].into());
    // Announced again before its withdrawal was sent: the peer may hold
    // it, so withdrawing it once more is sent.
    super::merge(&mut p, out(announce(&["fd00:3::/64"])));
    let u = p.to_wire().underlay.unwrap();
    assert_eq!(
        u.announce,
        [pv("fd00:2::/64", "x"), pv("fd00:3::/64", "x")].into()
    );
    assert!(u.withdraw.is_empty());
    super::merge(&mut p, out(withdraw(&["fd00:3::/64"])));
    assert_eq!(
        p.to_wire().underlay.unwrap().withdraw,
        [pv("fd00:3::/64", "x")].into()
    );
    // Marked held (a failed push put back): withdrawn.
    let mut p = out(announce(&["fd00:4::/64"]));
    p.underlay_mut().mark_held();
    super::merge(&mut p, out(withdraw(&["fd00:4::/64"])));
    assert_eq!(
        p.to_wire().underlay.unwrap().withdraw,
        [pv("fd00:4::/64", "x")].into()
    );

    // Tunnel origins carry no mark: a withdrawal is always sent.
    let mut p = v3::Update::default();
    let mut later = v3::Update::default();
    later.tunnel_mut().announce.insert(to("10.0.0.0/8", 1));
    merge_wire(&mut p, later);
    let mut later = v3::Update::default();
    later.tunnel_mut().withdraw.insert(to("10.0.0.0/8", 1));
    later.tunnel_mut().announce.insert(to("10.1.0.0/16", 2));
    merge_wire(&mut p, later);
    let t = p.tunnel.as_ref().unwrap();
    assert_eq!(t.announce, [to("10.1.0.0/16", 2)].into());
    assert_eq!(t.withdraw, [to("10.0.0.0/8", 1)].into());
    assert!(p.underlay.is_none());

    // Within one update, withdraws come first (as a receiver applies
    // them): a path in both ends up announced.
    let mut p = v3::Update::default();
    let mut both = announce(&["fd00:9::/64"]);
    both.underlay_mut().withdraw.insert(pv("fd00:9::/64", "x"));
    merge_wire(&mut p, both);
    let u = p.underlay.unwrap();
    assert_eq!(u.announce.len(), 1);
    assert!(u.withdraw.is_empty());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    /// Whatever the peer held before, sending the merged update leaves it
    /// holding exactly what sending every update in order would, whichever
    /// of the two ways `merge` takes (folding the later update into the
    /// pending one, or the pending one into the later). Each update is
    /// built as the RIB builds its pushes, item by item; an announcement
    /// is fresh only when the peer does not hold the path after all that
    /// came before it, as the RIB's are, and otherwise marked held.
    #[test]
    fn merge_leaves_the_peer_as_every_update_would(
        start in proptest::collection::btree_set(0u8..5, 0..5),
        updates in proptest::collection::vec(
            proptest::collection::vec((0u8..5, 0u8..3), 0..8),
            1..8,
        )
    ) {
        let path = |item: u8| OutPath::from(&pv(&format!("fd00:{item}::/64"), "x"));
        let mut truth = start.clone();
        let mut merged = OutUpdate::default();
        for ops in &updates {
            let mut u = OutUnderlay::default();
            for &(item, op) in ops {
                // 0: withdraw; 1: announce, fresh if the peer does not
                // hold it; 2: announce, marked held.
                if op == 0 {
                    u.withdraw_path(path(item));
                    truth.remove(&item);
                } else {
                    let fresh = op == 1 && !truth.contains(&item);
                    u.announce_path(path(item), !fresh);
                    truth.insert(item);
                }
            }
            merge(&mut merged, OutUpdate { underlay: Some(u), tunnel: None });
        }
        let under = merged.underlay.unwrap_or_default();
        proptest::prop_assert!(under.held.is_subset(&under.announce));
        let mut peer = start;
        for item in 0u8..5 {
            let (a, w) = (under.announce.contains(&path(item)), under.withdraw.contains(&path(item)));
            proptest::prop_assert!(!(a && w), "item {} both announced and withdrawn", item);
            if w {
                peer.remove(&item);
            }
            if a {
                peer.insert(item);
            }
        }
        proptest::prop_assert_eq!(peer, truth);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    /// The whole life of a pending update against a model peer: updates
    /// merged in as the RIB builds them, parts sent, parts that fail
    /// (applied by the peer or not) and are put back marked held, and pull
    /// answers (the peer takes our whole view, the pending update is
    /// marked held). Once all is sent, the peer holds exactly our view.
    #[test]
    fn a_pending_update_leaves_the_peer_with_our_view(
        start in proptest::collection::btree_set(0u8..5, 0..5),
        ops in proptest::collection::vec((0u8..6, 0u8..5, proptest::bool::ANY), 0..40),
    ) {
        let path = |item: u8| OutPath::from(&pv(&format!("fd00:{item}::/64"), "x"));
        let item_of = |p: &OutPath| -> u8 {
            let seg = p.destination().addr().segments()[1];
            u8::try_from(seg).unwrap()
        };
        let apply = |peer: &mut BTreeSet<u8>, u: &OutUpdate| {
            if let Some(u) = &u.underlay {
                assert!(u.announce.is_disjoint(&u.withdraw));
                for p in &u.withdraw {
                    peer.remove(&item_of(p));
                }
                for p in &u.announce {
                    peer.insert(item_of(p));
                }
            }
        };
        let bounds = |items| PushBounds { items, bytes: usize::MAX, version: Version::V3 };
        // What the peer holds, and our view: what it holds once all is sent.
        let (mut peer, mut view) = (start.clone(), start);
        let mut pending = OutUpdate::default();
        for (op, item, flag) in ops {
            let mut u = OutUnderlay::default();
            match op {
                0 => {
                    u.withdraw_path(path(item));
                    view.remove(&item);
                }
                1 | 2 => {
                    let fresh = op == 1 && !view.contains(&item);
                    u.announce_path(path(item), !fresh);
                    view.insert(item);
                }
                3 => {
                    peer = view.clone();
                    if let Some(u) = pending.underlay.as_mut() {
                        u.mark_held();
                    }
                }
                _ => {
                    let part = super::take_chunk(&mut pending, bounds(usize::from(item) + 1)).part;
                    // 4: delivered; 5: failed, applied by the peer or not.
                    if op == 4 || flag {
                        apply(&mut peer, &part);
                    }
                    if op == 5 {
                        let mut again = part;
                        if let Some(u) = again.underlay.as_mut() {
                            u.mark_held();
                        }
                        merge(&mut again, std::mem::take(&mut pending));
                        pending = again;
                    }
                }
            }
            if !u.is_empty() {
                merge(&mut pending, OutUpdate { underlay: Some(u), tunnel: None });
            }
        }
        while !pending.is_empty() {
            let part = super::take_chunk(&mut pending, bounds(2)).part;
            apply(&mut peer, &part);
        }
        proptest::prop_assert_eq!(peer, view);
    }
}

/// An update announcing `n` paths under `fd00::/16` and withdrawing
/// `w` under `fd01::/16`.
fn big(n: usize, w: usize) -> v3::Update {
    let mut u = v3::Update::default();
    for i in 0..n {
        u.underlay_mut().announce.insert(pv(&format!("fd00:{i:x}::/64"), "x"));
    }
    for i in 0..w {
        u.underlay_mut().withdraw.insert(pv(&format!("fd01:{i:x}::/64"), "x"));
    }
    u
}

/// A key of an item: its destination, or its overlay prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Dest(Ipv6Net),
    Overlay(IpNet),
}

/// The keys `u` withdraws and the keys it announces.
fn keys(u: &v3::Update) -> (BTreeSet<Key>, BTreeSet<Key>) {
    let mut w = BTreeSet::new();
    let mut a = BTreeSet::new();
    if let Some(u) = &u.underlay {
        w.extend(u.withdraw.iter().map(|p| Key::Dest(p.destination)));
        a.extend(u.announce.iter().map(|p| Key::Dest(p.destination)));
    }
    if let Some(t) = &u.tunnel {
        w.extend(t.withdraw.iter().map(|t| Key::Overlay(t.overlay_prefix)));
        a.extend(t.announce.iter().map(|t| Key::Overlay(t.overlay_prefix)));
    }
    (w, a)
}

/// Check that `parts`, sent in order, are `whole` in bounded requests:
/// no part over the bound, their union is `whole`, the parts go in key
/// order (destinations, then overlay prefixes), and each key `whole` both
/// withdraws and announces is in one part, withdrawal and announcement
/// (every key here fits one).
fn check_parts(parts: &[v3::Update], whole: &v3::Update) {
    let (w, a) = keys(whole);
    let both: BTreeSet<Key> = w.intersection(&a).copied().collect();
    let mut union = v3::Update::default();
    let mut seen_both = BTreeSet::new();
    let mut last: Option<Key> = None;
    for p in parts {
        assert!(p.len() <= MAX_PUSH_ITEMS, "part of {}", p.len());
        assert!(!p.is_empty(), "empty part");
        let (pw, pa) = keys(p);
        let all: BTreeSet<Key> = pw.union(&pa).copied().collect();
        let first = *all.first().unwrap();
        assert!(last.is_none_or(|l| l <= first), "{last:?} then {first:?}");
        last = all.last().copied();
        for k in all.iter().filter(|k| both.contains(k)) {
            assert!(seen_both.insert(*k), "{k:?} split over parts");
            assert!(pw.contains(k) && pa.contains(k), "{k:?} split");
        }
        union_into(&mut union, p);
    }
    assert_eq!(union.len(), parts.iter().map(v3::Update::len).sum::<usize>());
    assert_eq!(&union, whole);
}

/// Add `p`'s items to `union`.
fn union_into(union: &mut v3::Update, p: &v3::Update) {
    if let Some(u) = &p.underlay {
        let w = &mut union.underlay_mut().withdraw;
        w.extend(u.withdraw.iter().cloned());
        let a = &mut union.underlay_mut().announce;
        a.extend(u.announce.iter().cloned());
    }
    if let Some(t) = &p.tunnel {
        union.tunnel_mut().withdraw.extend(t.withdraw.iter().copied());
        union.tunnel_mut().announce.extend(t.announce.iter().copied());
    }
}

/// A path change of many destinations (each withdrawn along one path and
/// announced along another), beside plain withdrawals and plain
/// announcements, cut at the original's byte limit: each changed
/// destination's withdrawal and announcement go in the same part. Before,
/// every withdrawal went first, and an original peer removed the changed
/// routes between parts.
#[test]
fn a_path_and_its_replacement_go_in_one_part() {
    let changed = |i: u32| format!("fd00:{i:x}::/64");
    let mut whole = v3::Update::default();
    for i in 0..40u32 {
        whole.underlay_mut().withdraw.insert(pv(&changed(i), "old"));
        whole.underlay_mut().announce.insert(pv(&changed(i), "new"));
    }
    for i in 0..30u32 {
        let gone = format!("fd01:{i:x}::/64");
        whole.underlay_mut().withdraw.insert(pv(&gone, "x"));
        let came = format!("fc00:{i:x}::/64");
        whole.underlay_mut().announce.insert(pv(&came, "x"));
    }
    for i in 0..3u32 {
        whole.tunnel_mut().withdraw.insert(to("10.0.0.0/8", i));
        whole.tunnel_mut().announce.insert(to("10.0.0.0/8", i + 100));
        whole.tunnel_mut().withdraw.insert(to("10.9.0.0/16", i));
    }
    for version in [Version::V2, Version::V3] {
        let bounds = PushBounds::new(DEFAULT_PUSH_LIMIT, version);
        let (parts, oversize) = all_parts(&whole, bounds);
        assert!(oversize.is_empty());
        assert!(parts.len() > 5, "{version:?}: {} parts", parts.len());
        check_parts(&parts, &whole);
    }
    // One item per part: a key in both halves is cut after all (it
    // cannot fit): its withdrawal first, its announcement next.
    let bounds =
        PushBounds { items: 1, ..PushBounds::new(1 << 20, Version::V3) };
    let (parts, _) = all_parts(&whole, bounds);
    assert_eq!(parts.len(), whole.len());
    let mut cut = 0;
    for pair in parts.windows(2) {
        let (w, _) = keys(&pair[0]);
        let Some(k @ Key::Dest(d)) = w.first() else {
            continue;
        };
        if (0..40).any(|i| changed(i).parse::<Ipv6Net>().unwrap() == *d) {
            assert_eq!(keys(&pair[1]).1, [*k].into(), "{pair:?}");
            cut += 1;
        }
    }
    assert_eq!(cut, 40);
}

/// A change of 20,000 destinations at once (a transit re-routing them),
/// cut at the original's byte limit: thousands of parts, each found by
/// walking only what it takes (an order that looked every item up made
/// this quadratic).
#[test]
fn a_large_change_is_cut_at_a_small_limit() {
    let mut whole = v3::Update::default();
    for i in 0..20_000u32 {
        let d = format!("fd00:{:x}:{:x}::/64", i >> 16, i & 0xffff);
        whole.underlay_mut().withdraw.insert(pv(&d, "old"));
        whole.underlay_mut().announce.insert(pv(&d, "new"));
    }
    let bounds = PushBounds::new(DEFAULT_PUSH_LIMIT, Version::V2);
    // On the compact form itself: converting the rest to the wire form
    // after each part would be quadratic here.
    let mut pending = OutUpdate::from(&whole);
    let mut parts = Vec::new();
    while !pending.is_empty() {
        let chunk = super::take_chunk(&mut pending, bounds);
        assert!(chunk.oversize.is_empty());
        parts.push(chunk.part.to_wire());
    }
    assert!(parts.len() > 2_000, "{} parts", parts.len());
    check_parts(&parts, &whole);
}

#[test]
fn large_updates_are_taken_in_parts_in_key_order() {
    // Small: all at once, unchanged.
    let mut p = announce(&["fd00:1::/64"]);
    assert_eq!(take_chunk(&mut p, MAX_PUSH_ITEMS), announce(&["fd00:1::/64"]));
    assert!(p.is_empty());

    // Underlay by destination (fd00: announced, then fd01: withdrawn),
    // then tunnels by overlay prefix.
    let mut whole = big(3 * MAX_PUSH_ITEMS, MAX_PUSH_ITEMS + 5);
    for i in 0..10u32 {
        whole.tunnel_mut().announce.insert(to("10.0.0.0/8", i));
        whole.tunnel_mut().withdraw.insert(to("10.1.0.0/16", i));
    }
    let mut pending = whole.clone();
    let mut parts = Vec::new();
    while !pending.is_empty() {
        parts.push(take_chunk(&mut pending, MAX_PUSH_ITEMS));
    }
    assert_eq!(parts.len(), whole.len().div_ceil(MAX_PUSH_ITEMS));
    check_parts(&parts, &whole);
    let under = |i: usize| parts[i].underlay.as_ref().unwrap();
    assert!((0..3).all(|i| under(i).withdraw.is_empty()));
    assert!(under(3).announce.is_empty());
    let last = parts.last().unwrap();
    assert_eq!(last.tunnel.as_ref().unwrap().len(), 20);
    assert!(parts[..parts.len() - 1].iter().all(|p| p.tunnel.is_none()));
}

/// A path vector to `dest` along `hops` hostnames of `name_len` bytes.
fn long_pv(dest: &str, hops: usize, name_len: usize) -> v3::PathVector {
    v3::PathVector {
        destination: dest.parse().unwrap(),
        path: (0..hops)
            .map(|i| format!("{i:02}{}", "n".repeat(name_len - 2)))
            .collect(),
    }
}

/// Everything sent by taking parts of `whole` within `bounds` until
/// nothing is left: the parts and what was set aside.
fn all_parts(
    whole: &v3::Update,
    bounds: PushBounds,
) -> (Vec<v3::Update>, v3::Update) {
    let mut pending = whole.clone();
    let mut parts = Vec::new();
    let mut oversize = v3::Update::default();
    while !pending.is_empty() {
        let (part, over) = take_bounded(&mut pending, bounds);
        merge_wire(&mut oversize, over);
        if !part.is_empty() {
            parts.push(part);
        }
    }
    (parts, oversize)
}

/// Within a small byte limit every part's body, in either version,
/// fits; the parts are the whole, in key order, and nearly full.
#[test]
fn parts_are_bounded_in_bytes_too() {
    let mut whole = big(300, 40);
    for i in 0..12u32 {
        whole.tunnel_mut().announce.insert(to("10.0.0.0/8", i));
        whole.tunnel_mut().withdraw.insert(to("fd00:77::/64", i));
    }
    whole.underlay_mut().announce.insert(long_pv("fd02::/64", 8, 60));
    for version in [Version::V3, Version::V2] {
        let bounds = PushBounds::new(DEFAULT_PUSH_LIMIT, version);
        let (parts, oversize) = all_parts(&whole, bounds);
        assert!(oversize.is_empty(), "{version:?}: {oversize:?}");
        check_parts(&parts, &whole);
        let sizes: Vec<usize> =
            parts.iter().map(|p| body(p, version).len()).collect();
        assert!(
            sizes.iter().all(|&n| n <= DEFAULT_PUSH_LIMIT),
            "{version:?}: {sizes:?}"
        );
        // Nearly full: no more parts than the items' bytes need, with
        // a part's fixed part and slack taken off its room.
        let items: usize =
            sizes.iter().sum::<usize>() - parts.len() * empty_body_len(version);
        let room = DEFAULT_PUSH_LIMIT - empty_body_len(version) - 140;
        assert!(
            parts.len() <= items.div_ceil(room),
            "{version:?}: {} parts for {items} bytes",
            parts.len()
        );
    }
    // The same in small item bounds: the smaller bound wins.
    let bounds =
        PushBounds { items: 3, ..PushBounds::new(1 << 20, Version::V2) };
    let (parts, _) = all_parts(&whole, bounds);
    assert!(parts.iter().all(|p| p.len() <= 3));
    check_parts(&parts, &whole);
}

/// With the limit our own peers announce, parts are cut by count
/// alone, exactly as before the byte bound existed: a fabric of our
/// own daemons sends the same requests.
#[test]
fn a_large_limit_cuts_by_count_alone() {
    // The limit our own exchange servers announce (their `MAX_BODY`).
    const OUR_LIMIT: usize = 64 << 20;
    let whole = big(3 * MAX_PUSH_ITEMS + 7, MAX_PUSH_ITEMS / 3);
    for version in [Version::V3, Version::V2] {
        let bounds = PushBounds::new(OUR_LIMIT, version);
        let (parts, oversize) = all_parts(&whole, bounds);
        assert!(oversize.is_empty());
        let mut pending = whole.clone();
        for part in &parts {
            assert_eq!(part, &take_chunk(&mut pending, MAX_PUSH_ITEMS));
        }
        assert!(pending.is_empty());
    }
}

/// An item that fits no push, even alone, is set aside once, wherever
/// it is; the rest goes out as usual.
#[test]
fn oversize_items_are_set_aside() {
    let mut whole = big(50, 10);
    let huge = long_pv("fd02:1::/64", 20, 60);
    let fits = long_pv("fd02:2::/64", 12, 60);
    let gone = long_pv("fd01:ffff::/64", 30, 60);
    whole.underlay_mut().announce.insert(huge.clone());
    whole.underlay_mut().announce.insert(fits.clone());
    whole.underlay_mut().withdraw.insert(gone.clone());
    let bounds = PushBounds::new(DEFAULT_PUSH_LIMIT, Version::V3);
    let (parts, oversize) = all_parts(&whole, bounds);
    let o = oversize.underlay.as_ref().unwrap();
    assert_eq!(o.announce, [huge.clone()].into());
    assert_eq!(o.withdraw, [gone.clone()].into());
    let mut rest = whole.clone();
    rest.underlay_mut().announce.remove(&huge);
    rest.underlay_mut().withdraw.remove(&gone);
    check_parts(&parts, &rest);
    assert!(parts.iter().any(|p| p
        .underlay
        .as_ref()
        .is_some_and(|u| u.announce.contains(&fits))));
    // A limit below any body sets everything aside, and ends.
    let tiny = PushBounds::new(10, Version::V3);
    let (parts, oversize) = all_parts(&whole, tiny);
    assert!(parts.is_empty());
    assert_eq!(oversize, whole);
}
