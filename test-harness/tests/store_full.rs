//! A data directory that fills up and then grows again, as root: a tmpfs
//! mounted as the admin-only daemon's data directory.
//!
//! While the tmpfs is full, `PUT /prefix` answers 507 with a message naming
//! the directory and the cause; once it is remounted larger, the next write
//! succeeds without a restart, and `GET /originated` holds exactly the
//! acknowledged prefixes, before and after a restart. In a fabric, the
//! refused retries never reach the peer's routing table.

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
    /// Unmounts it, then removes the mount point and, if that leaves it
    /// empty, its directory: after a panic, the daemon that owned that
    /// directory was dropped first (declared later) and could not remove
    /// a mount point still mounted. (A directory with anything left in it
    /// is its owner's to remove.)
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
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
async fn full_data_dir_answers_507_then_recovers() {
    if !require_netns("full_data_dir_answers_507_then_recovers") {
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

    // A restart (after a kill) while the disk is still full starts,
    // originating what was acknowledged.
    let dir = d.kill_keep_dir();
    let d = DdmdInstance::start_with_data_dir(dir, &data).await.unwrap();
    assert_eq!(originated(&d).await, acked);

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

/// The same in a fabric: while `s1`'s data directory is full, its refused
/// changes never reach its peer. `ip -6 monitor route` in `s2` records
/// every route `s2` installs or removes, however briefly; the prefixes of
/// the refused batch appear there at most once (the first failure is found
/// out after `s1`'s router heard of the change, and undone), however often
/// the client retries.
#[test]
fn retries_against_a_full_store_do_not_flap_at_the_peer() {
    use ddm_test_harness::fabric::Fabric;
    use ddm_test_harness::netns::wait_until;
    use std::time::Duration;

    if !require_netns("retries_against_a_full_store_do_not_flap_at_the_peer") {
        return;
    }
    const DEADLINE: Duration = Duration::from_secs(20);
    const RETRIES: usize = 5;
    let mut f = Fabric::new("store_flap").unwrap();
    f.topo_mut().node("s1").unwrap();
    f.topo_mut().node("s2").unwrap();
    let link = f.topo_mut().link("s1", "s2").unwrap();
    f.topo().wait_link_local("s1", &link.a_if, DEADLINE).unwrap();
    f.topo().wait_link_local("s2", &link.b_if, DEADLINE).unwrap();

    // s2 records every route change.
    let monitor_log = f.dir().join("s2-routes.log");
    let mut monitor = Command::new("ip");
    monitor
        .args(["-6", "monitor", "route"])
        .stdout(std::fs::File::create(&monitor_log).unwrap());
    f.topo().spawn("s2", monitor).unwrap();
    let args = ["--solicit-interval", "1000"];
    f.start_router("s2", "server", &[&link.b_if], &args).unwrap();

    // s1 by hand, so that its data directory is a small tmpfs while its
    // log and port file stay outside it.
    let data = f.dir().join("s1-data");
    std::fs::create_dir(&data).unwrap();
    let tmpfs = Tmpfs::mount(&data, "256k");
    let port_file = f.dir().join("s1.port");
    let mut s1 = Command::new(ddm_test_harness::ddmd_bin());
    s1.args(["-a", &link.a_if, "--kind", "server", "--hostname", "s1"])
        .args(["--admin-addr", "::1", "--admin-port", "0"])
        .arg("--admin-port-file")
        .arg(&port_file)
        .arg("--data-dir")
        .arg(&data)
        .args(args)
        .stdout(std::fs::File::create(f.dir().join("s1.log")).unwrap())
        .stderr(std::fs::File::create(f.dir().join("s1.stderr")).unwrap());
    let s1_id = f.topo().spawn("s1", s1).unwrap();
    let mut addr = None;
    wait_until(DEADLINE, "s1's port file", || {
        addr = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|t| t.trim().parse::<std::net::SocketAddr>().ok());
        addr.is_some()
    })
    .unwrap();
    let addr = addr.unwrap();
    // s1's admin API listens on s1's loopback: talk to it from a thread
    // inside s1's namespace.
    let s1_put = |f: &Fabric, prefixes: &BTreeSet<Ipv6Net>| {
        f.topo().in_node("s1", || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let resp = http()
                    .put(format!("http://{addr}/prefix"))
                    .json(prefixes)
                    .send()
                    .await
                    .unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap())
            })
        })
    };
    f.wait_peer_state("s2", 1, "Exchange", DEADLINE).unwrap();

    // Fill s1's store.
    let mut refused = None;
    for n in 0..1000 {
        let prefixes = batch(n, 200);
        let (status, body) = s1_put(&f, &prefixes);
        if status != 204 {
            assert_eq!(status, 507, "{body}");
            refused = Some((n, prefixes));
            break;
        }
    }
    let (n, pending) = refused.expect("the tmpfs never filled");
    for _ in 0..RETRIES {
        let (status, body) = s1_put(&f, &pending);
        assert_eq!(status, 507, "{body}");
    }

    // Fence: a marker written once space returns reaches s2 after anything
    // s1 told it before (one session, in order).
    tmpfs.resize("64m");
    let marker = batch(n + 1, 1);
    let (status, body) = s1_put(&f, &marker);
    assert_eq!(status, 204, "{body}");
    let marker_text = marker.iter().next().unwrap().to_string();
    let marker_route = format!("{marker_text} ");
    wait_until(DEADLINE, "the marker's route at s2", || {
        std::fs::read_to_string(&monitor_log)
            .is_ok_and(|t| t.lines().any(|l| l.starts_with(&marker_route)))
    })
    .unwrap_or_else(|e| panic!("{e}\ns2 log:\n{}", f.log("s2")));

    let routes = std::fs::read_to_string(&monitor_log).unwrap();
    let probe = format!("{} ", pending.iter().next().unwrap());
    let added = routes.lines().filter(|l| l.starts_with(&probe)).count();
    let deleted = routes
        .lines()
        .filter(|l| {
            l.strip_prefix("Deleted ").is_some_and(|r| r.starts_with(&probe))
        })
        .count();
    assert!(
        added <= 1 && deleted <= 1,
        "{probe}was installed {added} and removed {deleted} times at s2 over \
         {RETRIES} refused retries\n{routes}"
    );
    // And it is not there now.
    let now = f.kernel_routes("s2").unwrap();
    assert!(!now.iter().any(|r| r.starts_with(&probe)), "{now:?}");
    // Stop s1, then unmount, then let the fabric remove its directory.
    f.topo().kill(s1_id).unwrap();
    drop(tmpfs);
    drop(f);
}
