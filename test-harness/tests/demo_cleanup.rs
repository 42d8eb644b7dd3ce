//! The README's main job, `scripts/fabric-demo.sh`, leaves nothing behind:
//! after it exits, normally or on Ctrl-C (SIGINT), none of the daemons it
//! started is running and none of its namespaces exists.
//!
//! The demo runs with the debug binaries (`DDM_BIN`), a tag of this test's
//! own for its namespaces (`DDM_DEMO_TAG`) and a private `TMPDIR`, so its
//! daemons are recognised by their command lines (their data directories
//! lie under that `TMPDIR`) even after their namespaces are gone.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ddm_test_harness::ddmd_bin;
use ddm_test_harness::netns::{require_netns, wait_until};

/// How long one demo run may take (it builds nothing: binaries are given).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

struct Demo {
    child: Child,
    tag: String,
    tmp: tempfile::TempDir,
    lines: mpsc::Receiver<String>,
}

impl Demo {
    fn start(name: &str, hold: bool) -> Demo {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let bin_dir: PathBuf =
            ddmd_bin().parent().expect("ddmd lives in a directory").into();
        let tmp = tempfile::tempdir().expect("temporary directory");
        let tag = format!("ddmdt{}{name}", std::process::id() % 100_000);
        let mut cmd = Command::new("bash");
        // A job started from a terminal takes Ctrl-C. Whoever started this
        // test may have left SIGINT ignored (a non-interactive shell does
        // that to a background command), and a shell started with SIGINT
        // ignored cannot trap it: give the demo the default disposition.
        // SAFETY: signal(2) is async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = cmd
            .arg(root.join("scripts/fabric-demo.sh"))
            .env("DDM_BIN", &bin_dir)
            .env("DDM_DEMO_TAG", &tag)
            .env("TMPDIR", tmp.path())
            .env("DDM_DEMO_HOLD", if hold { "1" } else { "" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group, like a job in a terminal: Ctrl-C
            // signals the whole group.
            .process_group(0)
            .spawn()
            .expect("the demo starts");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("demo: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo { child, tag, tmp, lines }
    }

    /// Wait for a line of output containing `what`.
    fn wait_line(&self, what: &str) {
        let deadline = std::time::Instant::now() + RUN_TIMEOUT;
        while let Some(left) =
            deadline.checked_duration_since(std::time::Instant::now())
        {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("the demo never printed {what:?}");
    }

    /// Wait for the demo to exit; its exit code (None: killed by a signal).
    fn wait_exit(&mut self) -> Option<i32> {
        let mut status = None;
        let waited = wait_until(RUN_TIMEOUT, "the demo exits", || {
            status = self.child.try_wait().expect("wait on the demo");
            status.is_some()
        });
        if waited.is_err() {
            // Dropping the demo kills its group and removes what it
            // started: a failing test leaves nothing behind either.
            panic!("the demo did not exit within {RUN_TIMEOUT:?}");
        }
        status.and_then(|s| s.code())
    }

    /// What the demo left: its namespaces, and processes whose command
    /// line names its temporary directory.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&self.tag) {
                    left.push(format!("namespace {name}"));
                }
            }
        }
        let marker = self.tmp.path().to_string_lossy().into_owned();
        for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("ddmd") && cmd.contains(&marker) {
                left.push(format!(
                    "process {}: {cmd}",
                    e.file_name().to_string_lossy()
                ));
            }
        }
        left
    }

    /// Kill whatever is left (so a failing test leaves nothing either),
    /// then fail if anything was.
    fn assert_clean(&self) {
        let left = self.remove_leftovers();
        assert!(left.is_empty(), "the demo left behind: {left:#?}");
    }

    /// Kill the processes and delete the namespaces the demo left; what
    /// they were.
    fn remove_leftovers(&self) -> Vec<String> {
        let left = self.leftovers();
        for l in &left {
            if let Some(pid) = l
                .strip_prefix("process ")
                .and_then(|r| r.split(':').next())
                .and_then(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a pid we just found; no memory involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if let Some(ns) = l.strip_prefix("namespace ") {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
        left
    }
}

/// A test that fails before its demo ended (a line never printed) leaves
/// nothing behind either: the demo's group is killed and what it started
/// removed.
impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = i32::try_from(self.child.id()).expect("pid fits");
            // SAFETY: kill(2) on our own child's group; no memory involved.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = self.child.wait();
        }
        self.remove_leftovers();
    }
}

#[test]
fn the_demo_leaves_nothing_behind_when_it_finishes() {
    if !require_netns("the_demo_leaves_nothing_behind_when_it_finishes") {
        return;
    }
    let mut demo = Demo::start("a", false);
    let code = demo.wait_exit();
    demo.assert_clean();
    assert_eq!(code, Some(0), "the demo failed");
}

#[test]
fn the_demo_leaves_nothing_behind_on_ctrl_c() {
    if !require_netns("the_demo_leaves_nothing_behind_on_ctrl_c") {
        return;
    }
    let mut demo = Demo::start("b", true);
    // The whole fabric is up and held until Ctrl-C.
    demo.wait_line("Ctrl-C tears it down");
    let pid = i32::try_from(demo.child.id()).expect("pid fits");
    // Ctrl-C: SIGINT to the demo's process group (the script and whatever
    // it runs in the foreground), as a terminal sends it.
    // SAFETY: kill(2) on our own child's group; no memory involved.
    unsafe { libc::kill(-pid, libc::SIGINT) };
    let code = demo.wait_exit();
    demo.assert_clean();
    assert_eq!(code, Some(130), "Ctrl-C ends the demo with 130");
}
