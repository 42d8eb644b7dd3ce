//! The golden wire files: one JSON document per exchange message shape,
//! in each version, under `tests/golden/v2` and `tests/golden/v3` (push
//! updates with both halves, with one half, empty; pull answers full and
//! empty). Each parses, serialises back to exactly its bytes, and our
//! encoders (the compact push encoder in both versions, the borrowed v2
//! pull view) produce exactly those bytes from the v3 value; the v2 and
//! v3 files of one name carry the same content.

use std::path::PathBuf;

use ddm_proto::outgoing::{OutUpdate, V2Update};
use ddm_proto::wire::{v2, v2_view, v3};

/// The push updates, by file name.
const PUSHES: &[&str] =
    &["push_update", "push_underlay_only", "push_tunnel_only", "push_empty"];

/// The pull answers, by file name.
const PULLS: &[&str] = &["pull_response", "pull_empty"];

/// The golden file `name` of `version`, without its final newline.
fn golden(version: &str, name: &str) -> String {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "golden",
        version,
        &format!("{name}.json"),
    ]
    .iter()
    .collect();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

#[test]
fn v3_pushes_round_trip_and_match_the_encoder() {
    for name in PUSHES {
        let text = golden("v3", name);
        let parsed: v3::Update = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), text, "{name}");
        let out = OutUpdate::from(&parsed);
        assert_eq!(serde_json::to_string(&out).unwrap(), text, "{name}");
        assert_eq!(out.to_wire(), parsed, "{name}");
    }
}

#[test]
fn v2_pushes_round_trip_and_match_the_encoder() {
    for name in PUSHES {
        let text = golden("v2", name);
        let parsed: v2::Update = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), text, "{name}");
        // The same update in v3, pushed to a v2 peer, is these bytes.
        let v3: v3::Update = serde_json::from_str(&golden("v3", name)).unwrap();
        assert_eq!(v3::Update::try_from(parsed).unwrap(), v3, "{name}");
        let out = OutUpdate::from(&v3);
        let encoded = serde_json::to_string(&V2Update(&out)).unwrap();
        assert_eq!(encoded, text, "{name}");
        let converted = v2::Update::from(v3);
        assert_eq!(serde_json::to_string(&converted).unwrap(), text, "{name}");
    }
}

#[test]
fn v3_pulls_round_trip() {
    for name in PULLS {
        let text = golden("v3", name);
        let parsed: v3::PullResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), text, "{name}");
    }
}

#[test]
fn v2_pulls_round_trip_and_match_the_view() {
    for name in PULLS {
        let text = golden("v2", name);
        let parsed: v2::PullResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), text, "{name}");
        let v3: v3::PullResponse =
            serde_json::from_str(&golden("v3", name)).unwrap();
        assert_eq!(v3::PullResponse::try_from(parsed).unwrap(), v3, "{name}");
        let view = v2_view::PullResponse(&v3);
        assert_eq!(serde_json::to_string(&view).unwrap(), text, "{name}");
    }
}

/// A known update, built in code, encodes to the golden bytes in both
/// versions.
#[test]
fn a_known_update_encodes_to_the_golden_bytes() {
    let path = |dst: &str, hops: &[&str]| v3::PathVector {
        destination: dst.parse().unwrap(),
        path: hops.iter().map(|h| h.to_string()).collect(),
    };
    let origin = |prefix: &str, boundary: &str, vni, metric| v3::TunnelOrigin {
        overlay_prefix: prefix.parse().unwrap(),
        boundary_addr: boundary.parse().unwrap(),
        vni,
        metric,
    };
    let update = v3::Update {
        underlay: Some(v3::UnderlayUpdate {
            announce: [
                path("fd00:b::/56", &["rack1-sled4", "rack1-sw1"]),
                path("fd00:a::/64", &["rack1-sled3"]),
            ]
            .into(),
            withdraw: [path(
                "fd00:c::/64",
                &["rack2-sled7", "rack2-sw0", "rack1-sw1"],
            )]
            .into(),
        }),
        tunnel: Some(v3::TunnelUpdate {
            announce: [origin("10.20.0.0/16", "fd00:1122::1", 4001, 10)].into(),
            withdraw: [origin("fd44::/64", "fd00:1122::2", 4002, 0)].into(),
        }),
    };
    let out = OutUpdate::from(&update);
    assert_eq!(
        serde_json::to_string(&out).unwrap(),
        golden("v3", "push_update")
    );
    assert_eq!(
        serde_json::to_string(&V2Update(&out)).unwrap(),
        golden("v2", "push_update")
    );
}
