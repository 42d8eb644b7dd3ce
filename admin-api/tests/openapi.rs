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

/// Only `GET /peers` differs between versions.
#[test]
fn versions_differ_only_in_peers() {
    let parse = |v| -> serde_json::Value {
        serde_json::from_str(&openapi_document(v)).unwrap()
    };
    let v1 = parse(&API_VERSIONS[0]);
    let v2 = parse(&API_VERSIONS[1]);
    let paths1 = v1["paths"].as_object().unwrap();
    let paths2 = v2["paths"].as_object().unwrap();
    assert_eq!(paths1.len(), 11, "eleven paths carry the thirteen operations");
    for (path, ops) in paths1 {
        if path == "/peers" {
            assert_ne!(ops, &paths2[path]);
        } else {
            assert_eq!(ops, &paths2[path], "{path} differs between versions");
        }
    }
    let v1_status = &v1["components"]["schemas"]["PeerStatus"];
    assert_eq!(v1_status["enum"][0], "NoContact");
    let v2_status = &v2["components"]["schemas"]["PeerStatus"];
    assert_eq!(v2_status["oneOf"].as_array().unwrap().len(), 4);
}
