//! How the binary behaves at its edges: help, bad flags, unusable paths,
//! a port in use.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ddm_test_harness::ddmd_bin;
use ddm_test_harness::netns::{die_with_parent, wait_until};

/// Longest a run of `ddmd` that should end at once may take: past it, it
/// is killed and the test fails (rather than hanging until CI's limit).
const DEADLINE: Duration = Duration::from_secs(30);

/// Run `ddmd` with `args` to its end, within [`DEADLINE`].
fn ddmd(args: &[&str]) -> Output {
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(ddmd_bin());
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
    cmd.stderr(Stdio::piped());
    // SAFETY: the hook only makes async-signal-safe calls.
    unsafe { cmd.pre_exec(move || die_with_parent(parent)) };
    let mut child = cmd.spawn().expect("ddmd runs");
    let mut status = None;
    let ended = wait_until(DEADLINE, "ddmd to exit", || {
        status = child.try_wait().expect("waiting for ddmd");
        status.is_some()
    });
    if let Err(e) = ended {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{e}: killed (args {args:?})");
    }
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_end(&mut stderr).unwrap();
    Output { status: status.unwrap(), stdout, stderr }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A clear error: non-zero, one line, no panic trace.
fn assert_clear_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "should fail: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
    assert!(!err.contains("panicked"), "panic trace: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");
}

#[test]
fn help_exits_zero() {
    let o = ddmd(&["--help"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("--no-state-machine"));
}

#[test]
fn api_only_with_addr_is_a_usage_error() {
    let o = ddmd(&["--api-only", "--addr", "eth0"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("--no-state-machine") && err.contains("--addr"));
}

#[test]
fn unparsable_flag_exits_two() {
    let o = ddmd(&["--admin-port", "seventy"]);
    assert_eq!(o.status.code(), Some(2));
}

/// Admin-only on a free port with this port file, data in `dir`.
fn api_only_with_port_file(dir: &std::path::Path, port_file: &str) -> Output {
    ddmd(&[
        "--api-only",
        "--admin-port",
        "0",
        "--admin-port-file",
        port_file,
        "--data-dir",
        dir.to_str().unwrap(),
    ])
}

#[test]
fn existing_port_file_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("ddmd_port");
    std::fs::write(&port_file, "old").unwrap();
    let o = api_only_with_port_file(dir.path(), port_file.to_str().unwrap());
    assert_clear_failure(&o, "already exists");
    assert_eq!(std::fs::read_to_string(&port_file).unwrap(), "old");
}

#[test]
fn missing_port_file_directory_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("missing/ddmd_port");
    let o = api_only_with_port_file(dir.path(), port_file.to_str().unwrap());
    assert_clear_failure(&o, "missing");
}

#[test]
fn unusable_data_dir_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    for data_dir in [dir.path().join("nope"), file] {
        let o = ddmd(&[
            "--api-only",
            "--admin-port",
            "0",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ]);
        assert_clear_failure(&o, "data directory");
    }
}

#[test]
fn port_in_use_fails_clearly() {
    let taken = std::net::TcpListener::bind("[::1]:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let o = ddmd(&[
        "--api-only",
        "--admin-port",
        &port,
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_clear_failure(&o, &port);
}

#[test]
fn metrics_address_in_use_fails_clearly() {
    let taken = std::net::TcpListener::bind("[::1]:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let o = ddmd(&[
        "--api-only",
        "--admin-port",
        "0",
        "--metrics-addr",
        &addr,
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_clear_failure(&o, &format!("metrics listener on {addr}"));
}
