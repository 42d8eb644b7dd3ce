//! The checked-in OpenAPI documents are generated from the API trait; this
//! test fails when they drift. Regenerate them with
//! `DDM_OPENAPI_WRITE=1 cargo test -p ddm-admin-api --test openapi`.

use std::path::PathBuf;

use ddm_admin_api::{openapi_document, API_VERSIONS};

fn openapi_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi")
}

#[test]
fn checked_in_documents_match_the_trait() {
    let write = std::env::var_os("DDM_OPENAPI_WRITE").is_some();
    let mut drifted = Vec::new();
    for version in API_VERSIONS {
        let path = openapi_dir().join(format!("ddm-admin-{version}.json"));
        let generated = openapi_document(version);
        if write {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != generated {
            drifted.push(path.display().to_string());
        }
    }
    assert!(
        drifted.is_empty(),
        "OpenAPI documents drifted from the API trait: {drifted:?}; \
         rerun with DDM_OPENAPI_WRITE=1 to regenerate and review the diff"
    );
}

/// Only `GET /peers` differs between versions: the operations are the same
/// and only the peer schemas (and the `Duration` they gained) differ.
#[test]
fn versions_differ_only_in_peers() {
    let parse = |v| -> serde_json::Value {
        serde_json::from_str(&openapi_document(v)).unwrap()
    };
    let v1 = parse(&API_VERSIONS[0]);
    let v2 = parse(&API_VERSIONS[1]);
    assert_eq!(v1["paths"], v2["paths"], "same operations in both");
    let paths = v1["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 11, "eleven paths carry the thirteen operations");
    let ops: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(ops, 13);
    let s1 = v1["components"]["schemas"].as_object().unwrap();
    let s2 = v2["components"]["schemas"].as_object().unwrap();
    let mut differ: Vec<&str> = s1
        .keys()
        .chain(s2.keys())
        .filter(|k| s1.get(*k) != s2.get(*k))
        .map(|k| k.as_str())
        .collect();
    differ.sort();
    differ.dedup();
    assert_eq!(differ, ["Duration", "PeerInfo", "PeerStatus"]);
    assert_eq!(s1["PeerStatus"]["enum"][0], "NoContact");
    assert_eq!(s2["PeerStatus"]["oneOf"].as_array().unwrap().len(), 4);
}
