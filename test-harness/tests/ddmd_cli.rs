//! How the binary behaves at its edges: help, bad flags, unusable paths,
//! a port in use.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ddm_test_harness::ddmd_bin;
use ddm_test_harness::netns::{die_with_test, wait_exit};

/// Longest a run of `ddmd` that should end at once may take: past it, it
/// is killed and the test fails (rather than hanging until CI's limit).
const DEADLINE: Duration = Duration::from_secs(30);

/// Run `ddmd` with `args` to its end, within [`DEADLINE`]. Its output
/// goes to files (a pipe left unread could hold it up).
fn ddmd(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = Command::new(ddmd_bin());
    cmd.args(args).stdin(Stdio::null());
    cmd.stdout(std::fs::File::create(&out).unwrap());
    cmd.stderr(std::fs::File::create(&err).unwrap());
    die_with_test(&mut cmd);
    let mut child = cmd.spawn().expect("ddmd runs");
    let status = match wait_exit(&mut child, DEADLINE, "ddmd to exit") {
        Ok(status) => status,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{e}: killed (args {args:?})");
        }
    };
    Output {
        status,
        stdout: std::fs::read(out).unwrap(),
        stderr: std::fs::read(err).unwrap(),
    }
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
