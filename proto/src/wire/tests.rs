use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};

fn net6(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

fn pv3(dest: &str, path: &[&str]) -> v3::PathVector {
    v3::PathVector {
        destination: net6(dest),
        path: path.iter().map(|s| s.to_string()).collect(),
    }
}

fn to3(
    prefix: &str,
    boundary: &str,
    vni: u32,
    metric: u64,
) -> v3::TunnelOrigin {
    v3::TunnelOrigin {
        overlay_prefix: prefix.parse().unwrap(),
        boundary_addr: boundary.parse().unwrap(),
        vni,
        metric,
    }
}

/// The v3 update of the golden tests.
fn update3() -> v3::Update {
    v3::Update {
        underlay: Some(v3::UnderlayUpdate {
            announce: [pv3("fd00:1::/64", &["sled-a", "switch-0"])].into(),
            withdraw: [pv3("fd00:2::/64", &["sled-b"])].into(),
        }),
        tunnel: Some(v3::TunnelUpdate {
            announce: [to3("203.0.113.0/24", "fd00:99::1", 77, 0)].into(),
            withdraw: [to3("fd10::/48", "fd00:99::2", 78, 5)].into(),
        }),
    }
}

/// The v3 pull response of the golden tests.
fn pull3() -> v3::PullResponse {
    v3::PullResponse {
        underlay: Some([pv3("fd00:1::/64", &["sled-a"])].into()),
        tunnel: Some([to3("198.51.100.0/24", "fd00:99::3", 9, 100)].into()),
    }
}

const UPDATE3: &str = concat!(
    r#"{"underlay":{"announce":[{"destination":"fd00:1::/64","path":["sled-a","switch-0"]}],"#,
    r#""withdraw":[{"destination":"fd00:2::/64","path":["sled-b"]}]},"#,
    r#""tunnel":{"announce":[{"overlay_prefix":"203.0.113.0/24","boundary_addr":"fd00:99::1","vni":77,"metric":0}],"#,
    r#""withdraw":[{"overlay_prefix":"fd10::/48","boundary_addr":"fd00:99::2","vni":78,"metric":5}]}}"#
);

const UPDATE2: &str = concat!(
    r#"{"underlay":{"announce":[{"destination":{"addr":"fd00:1::","len":64},"path":["sled-a","switch-0"]}],"#,
    r#""withdraw":[{"destination":{"addr":"fd00:2::","len":64},"path":["sled-b"]}]},"#,
    r#""tunnel":{"announce":[{"overlay_prefix":{"V4":{"addr":"203.0.113.0","len":24}},"boundary_addr":"fd00:99::1","vni":77,"metric":0}],"#,
    r#""withdraw":[{"overlay_prefix":{"V6":{"addr":"fd10::","len":48}},"boundary_addr":"fd00:99::2","vni":78,"metric":5}]}}"#
);

const PULL3: &str = concat!(
    r#"{"underlay":[{"destination":"fd00:1::/64","path":["sled-a"]}],"#,
    r#""tunnel":[{"overlay_prefix":"198.51.100.0/24","boundary_addr":"fd00:99::3","vni":9,"metric":100}]}"#
);

const PULL2: &str = concat!(
    r#"{"underlay":[{"destination":{"addr":"fd00:1::","len":64},"path":["sled-a"]}],"#,
    r#""tunnel":[{"overlay_prefix":{"V4":{"addr":"198.51.100.0","len":24}},"boundary_addr":"fd00:99::3","vni":9,"metric":100}]}"#
);

#[test]
fn golden_v3_update() {
    assert_eq!(serde_json::to_string(&update3()).unwrap(), UPDATE3);
    let back: v3::Update = serde_json::from_str(UPDATE3).unwrap();
    assert_eq!(back, update3());
}

#[test]
fn golden_v2_update() {
    let u2 = v2::Update::from(update3());
    assert_eq!(serde_json::to_string(&u2).unwrap(), UPDATE2);
    let back: v2::Update = serde_json::from_str(UPDATE2).unwrap();
    assert_eq!(v3::Update::try_from(back).unwrap(), update3());
}

#[test]
fn golden_v3_pull() {
    assert_eq!(serde_json::to_string(&pull3()).unwrap(), PULL3);
    let back: v3::PullResponse = serde_json::from_str(PULL3).unwrap();
    assert_eq!(back, pull3());
}

#[test]
fn golden_v2_pull() {
    let p2 = v2::PullResponse::from(pull3());
    assert_eq!(serde_json::to_string(&p2).unwrap(), PULL2);
    let view = v2_view::PullResponse(&pull3());
    assert_eq!(serde_json::to_string(&view).unwrap(), PULL2);
    let back: v2::PullResponse = serde_json::from_str(PULL2).unwrap();
    assert_eq!(v3::PullResponse::try_from(back).unwrap(), pull3());
}

#[test]
fn empty_halves_are_null_and_may_be_absent() {
    let empty = v3::Update::default();
    assert!(empty.is_empty());
    assert_eq!(
        serde_json::to_string(&empty).unwrap(),
        r#"{"underlay":null,"tunnel":null}"#
    );
    for text in ["{}", r#"{"underlay":null}"#] {
        let u: v3::Update = serde_json::from_str(text).unwrap();
        assert_eq!(u, empty);
        let p: v2::PullResponse = serde_json::from_str(text).unwrap();
        assert_eq!(p, v2::PullResponse::default());
    }
    assert!(!update3().is_empty());
}

#[test]
fn metric_defaults_to_zero() {
    let t: v2::TunnelOrigin = serde_json::from_value(json!({
        "overlay_prefix": {"V6": {"addr": "fd10::", "len": 48}},
        "boundary_addr": "fd00::1",
        "vni": 3
    }))
    .unwrap();
    assert_eq!(t.metric, 0);
    let t: v3::TunnelOrigin = serde_json::from_value(json!({
        "overlay_prefix": "fd10::/48", "boundary_addr": "fd00::1", "vni": 3
    }))
    .unwrap();
    assert_eq!(t.metric, 0);
}

#[test]
fn v2_prefix_length_is_validated() {
    let bad6 = v2::Ipv6Prefix { addr: "fd00::".parse().unwrap(), len: 129 };
    assert_eq!(
        Ipv6Net::try_from(bad6),
        Err(WireError::Ipv6PrefixLength { addr: bad6.addr, len: 129 })
    );
    let bad4 = v2::Ipv4Prefix { addr: "10.0.0.0".parse().unwrap(), len: 33 };
    assert!(Ipv4Net::try_from(bad4).is_err());
    assert!(IpNet::try_from(v2::IpPrefix::V4(bad4)).is_err());
    // One bad prefix rejects the whole message.
    let text = UPDATE2.replace(r#""len":48"#, r#""len":200"#);
    let u: v2::Update = serde_json::from_str(&text).unwrap();
    assert!(matches!(
        v3::Update::try_from(u),
        Err(WireError::Ipv6PrefixLength { len: 200, .. })
    ));
    // Lengths beyond a byte do not even parse.
    let text = UPDATE2.replace(r#""len":48"#, r#""len":300"#);
    assert!(serde_json::from_str::<v2::Update>(&text).is_err());
}

#[test]
fn host_bits_are_cleared() {
    let p = v2::Ipv6Prefix { addr: "fd00:1::5".parse().unwrap(), len: 64 };
    assert_eq!(Ipv6Net::try_from(p).unwrap(), net6("fd00:1::/64"));
    let p = v2::Ipv4Prefix { addr: "10.1.2.3".parse().unwrap(), len: 8 };
    assert_eq!(Ipv4Net::try_from(p).unwrap().to_string(), "10.0.0.0/8");
    let u = v3::Update {
        underlay: Some(v3::UnderlayUpdate {
            announce: [pv3("fd00:1::7/64", &["a"])].into(),
            withdraw: BTreeSet::new(),
        }),
        tunnel: Some(v3::TunnelUpdate {
            announce: [to3("10.9.9.9/16", "fd00::1", 1, 0)].into(),
            withdraw: BTreeSet::new(),
        }),
    }
    .normalised();
    let u = u.underlay.unwrap().announce.into_iter().next().unwrap();
    assert_eq!(u.destination, net6("fd00:1::/64"));
    assert_eq!(normalise_v6(net6("fd00::/0")), net6("::/0"));
    assert_eq!(normalise_v6(net6("fd00::1/128")), net6("fd00::1/128"));
}

#[test]
fn wrong_shapes_are_errors() {
    // A v2 body on the v3 endpoint and vice versa.
    assert!(serde_json::from_str::<v3::Update>(UPDATE2).is_err());
    assert!(serde_json::from_str::<v2::Update>(UPDATE3).is_err());
    assert!(serde_json::from_str::<v3::PullResponse>(
        r#"{"underlay":[{"destination":"fd00::/129","path":[]}]}"#
    )
    .is_err());
}

// ---- the published schemas ----

/// The published schema of exchange version `version`, from the
/// `shared/reference` directory beside the repository. Missing, it is a
/// loud skip on a developer's machine and a failure in CI (`CI=true`).
fn published_schema(version: u8) -> Option<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference")
        .join(format!("ddm-exchange-v{version}.schema.json"));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            Some(serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("{} is not JSON: {e}", path.display())
            }))
        }
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{}: {e} (CI must check the wire shapes)", path.display())
        }
        Err(e) => {
            eprintln!("SKIP: {} not available ({e})", path.display());
            None
        }
    }
}

/// Check our JSON against the published schema with a JSON Schema
/// validator, and that we write every property each object of the
/// schema lists (the schema does not forbid omitting the optional ones,
/// but the original's decoder expects them).
fn check_against_schema(version: u8, update: Value, pull: Value) {
    let Some(schema) = published_schema(version) else {
        return;
    };
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("v{version} schema: {e}"));
    let doc = json!({ "update": update, "pull_response": pull });
    let errors: Vec<String> =
        validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "v{version} example: {errors:#?}");
    for (name, value) in [("Update", &update), ("PullResponse", &pull)] {
        let listed: BTreeSet<&str> = schema["definitions"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("v{version} schema lacks {name}"))
            .keys()
            .map(String::as_str)
            .collect();
        let written: BTreeSet<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(written, listed, "v{version} {name} properties");
    }
    // Empty halves, as we and the original write them, are valid too.
    let empty = json!({ "update": {"underlay": null, "tunnel": null},
                        "pull_response": {"underlay": null, "tunnel": null} });
    assert!(validator.is_valid(&empty), "v{version}: empty halves");
    // And the validator does refuse what the schema forbids.
    let bad = json!({ "update": {"underlay": {"announce": "x"}},
                      "pull_response": {} });
    assert!(!validator.is_valid(&bad), "v{version}: a string for a list");
}

#[test]
fn v3_examples_fit_published_schema() {
    check_against_schema(
        3,
        serde_json::to_value(update3()).unwrap(),
        serde_json::to_value(pull3()).unwrap(),
    );
}

#[test]
fn v2_examples_fit_published_schema() {
    check_against_schema(
        2,
        serde_json::to_value(v2::Update::from(update3())).unwrap(),
        serde_json::to_value(v2::PullResponse::from(pull3())).unwrap(),
    );
}

// ---- properties ----

fn arb_net6() -> impl Strategy<Value = Ipv6Net> {
    (any::<u128>(), 0u8..=128)
        .prop_map(|(a, l)| normalise_v6(Ipv6Net::new(a.into(), l).unwrap()))
}

fn arb_ipnet() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        arb_net6().prop_map(IpNet::V6),
        (any::<u32>(), 0u8..=32).prop_map(|(a, l)| IpNet::V4(normalise_v4(
            Ipv4Net::new(a.into(), l).unwrap()
        ))),
    ]
}

fn arb_pv() -> impl Strategy<Value = v3::PathVector> {
    (arb_net6(), prop::collection::vec("[a-z0-9-]{1,12}", 0..4))
        .prop_map(|(destination, path)| v3::PathVector { destination, path })
}

fn arb_to() -> impl Strategy<Value = v3::TunnelOrigin> {
    (arb_ipnet(), any::<u128>(), any::<u32>(), any::<u64>()).prop_map(
        |(overlay_prefix, b, vni, metric)| v3::TunnelOrigin {
            overlay_prefix,
            boundary_addr: b.into(),
            vni,
            metric,
        },
    )
}

fn arb_update() -> impl Strategy<Value = v3::Update> {
    let pvs = || prop::collection::btree_set(arb_pv(), 0..4);
    let tos = || prop::collection::btree_set(arb_to(), 0..4);
    (prop::option::of((pvs(), pvs())), prop::option::of((tos(), tos())))
        .prop_map(|(u, t)| v3::Update {
            underlay: u.map(|(announce, withdraw)| v3::UnderlayUpdate {
                announce,
                withdraw,
            }),
            tunnel: t.map(|(announce, withdraw)| v3::TunnelUpdate {
                announce,
                withdraw,
            }),
        })
}

proptest! {
    #[test]
    fn v3_v2_round_trip(u in arb_update()) {
        let json2 = serde_json::to_string(&v2::Update::from(u.clone())).unwrap();
        let back2: v2::Update = serde_json::from_str(&json2).unwrap();
        prop_assert_eq!(&v3::Update::try_from(back2).unwrap(), &u);
        let json3 = serde_json::to_string(&u).unwrap();
        let back3: v3::Update = serde_json::from_str(&json3).unwrap();
        prop_assert_eq!(&back3.normalised(), &u);
    }

    #[test]
    fn pull_round_trip(
        underlay in prop::option::of(prop::collection::btree_set(arb_pv(), 0..4)),
        tunnel in prop::option::of(prop::collection::btree_set(arb_to(), 0..4)),
    ) {
        let p = v3::PullResponse { underlay, tunnel };
        let json2 = serde_json::to_string(&v2::PullResponse::from(p.clone())).unwrap();
        let viewed = serde_json::to_string(&v2_view::PullResponse(&p)).unwrap();
        prop_assert_eq!(&viewed, &json2);
        let back2: v2::PullResponse = serde_json::from_str(&json2).unwrap();
        prop_assert_eq!(v3::PullResponse::try_from(back2).unwrap(), p);
    }

    #[test]
    fn v2_prefix_conversion_never_panics(addr in any::<u128>(), len in any::<u8>()) {
        let p = v2::Ipv6Prefix { addr: addr.into(), len };
        match Ipv6Net::try_from(p) {
            Ok(n) => {
                prop_assert!(len <= 128);
                prop_assert!(n.is_network_address());
                prop_assert_eq!(n.width(), len);
            }
            Err(_) => prop_assert!(len > 128),
        }
    }
}
