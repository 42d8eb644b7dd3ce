//! A data directory that fills up and then grows again, as root: a tmpfs
//! mounted as the admin-only daemon's data directory.
//!
//! While the tmpfs is full, `PUT /prefix` answers 507 with a message naming
//! the directory and the cause; once it is remounted larger, the next write
//! succeeds without a restart, and `GET /originated` holds exactly the
//! acknowledged prefixes, before and after a restart.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ddm_test_harness::fixture::DdmdInstance;
use ddm_test_harness::netns::require_netns;
use oxnet::Ipv6Net;

/// A tmpfs mounted for the test; unmounted (lazily, so that a daemon still
/// holding the file cannot keep it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            at,
        );
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        run("mount", &["-o", &format!("remount,size={size}")], &self.0);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(cmd: &str, args: &[&str], path: &Path) {
    let out = Command::new(cmd).args(args).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A batch of distinct /64s.
fn batch(n: usize, size: usize) -> BTreeSet<Ipv6Net> {
    (0..size)
        .map(|i| {
            let k = n * size + i;
            format!("fd00:{:x}:{:x}::/64", k >> 16, k & 0xffff).parse().unwrap()
        })
        .collect()
}

async fn put(d: &DdmdInstance, prefixes: &BTreeSet<Ipv6Net>) -> (u16, String) {
    let resp = http()
        .put(format!("http://{}/prefix", d.addr()))
        .json(prefixes)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn originated(d: &DdmdInstance) -> BTreeSet<Ipv6Net> {
    d.client()
        .get_originated()
        .await
        .unwrap()
        .into_inner()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn a_full_data_directory_answers_507_and_recovers_without_restart() {
    if !require_netns(
        "a_full_data_directory_answers_507_and_recovers_without_restart",
    ) {
        return;
    }
    let dir = tempfile::Builder::new().prefix("ddmd-full-").tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let tmpfs = Tmpfs::mount(&data, "256k");
    let d = DdmdInstance::start_with_data_dir(dir, &data).await.unwrap();

    // Fill it: batches of 200 until one is refused.
    let mut acked = BTreeSet::new();
    let mut refused = None;
    for n in 0..1000 {
        let prefixes = batch(n, 200);
        let (status, body) = put(&d, &prefixes).await;
        match status {
            204 => acked.extend(prefixes),
            _ => {
                refused = Some((n, prefixes, status, body));
                break;
            }
        }
    }
    let (n, pending, status, body) = refused.expect("the tmpfs never filled");
    assert_eq!(status, 507, "{body}");
    assert!(body.contains(&data.display().to_string()), "{body}");
    assert!(body.contains("No space left on device"), "{body}");
    assert!(!acked.is_empty(), "nothing fitted before the disk was full");
    // Retries keep the clear answer (not redb's "previous I/O error").
    for _ in 0..3 {
        let (status, body) = put(&d, &pending).await;
        assert_eq!(status, 507, "{body}");
    }
    assert_eq!(originated(&d).await, acked, "a refused change was applied");

    // Space returns: the next write succeeds on the running daemon.
    tmpfs.resize("64m");
    let (status, body) = put(&d, &pending).await;
    assert_eq!(status, 204, "{body}");
    acked.extend(pending);
    let more = batch(n + 1, 200);
    let (status, body) = put(&d, &more).await;
    assert_eq!(status, 204, "{body}");
    acked.extend(more);
    assert_eq!(originated(&d).await, acked);

    // And after a restart.
    let dir = d.kill_keep_dir();
    let d = DdmdInstance::start_with_data_dir(dir, &data).await.unwrap();
    assert_eq!(originated(&d).await, acked);
    let dir = d.kill_keep_dir();
    drop(tmpfs);
    dir.close().unwrap();
}
