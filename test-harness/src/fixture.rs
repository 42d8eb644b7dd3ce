//! The real `ddmd`, spawned in admin-only mode in a fresh directory.
//!
//! This is the shape downstream test suites use: spawn the binary with
//!
//! ```text
//! ddmd --admin-addr ::1 --admin-port 0 --admin-port-file <tmp>/ddmd_port \
//!      --api-only --data-dir <tmp>
//! ```
//!
//! wait for the port file, talk to the daemon through the generated client,
//! then stop it with SIGKILL and delete the directory. Call
//! [`DdmdInstance::cleanup`] when done; an instance dropped without it
//! still kills the process and removes the directory, but warns, because a
//! test that forgets cleanup usually forgot something else too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ddm_admin_client::Client;

/// Name of the port file inside the instance directory.
pub const PORT_FILE: &str = "ddmd_port";

/// How long to wait for the port file before giving up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running admin-only `ddmd`.
pub struct DdmdInstance {
    /// The process, until it is stopped.
    child: Option<Child>,
    /// The data directory (also holds the port file and the logs).
    dir: Option<tempfile::TempDir>,
    /// Where the admin API listens, from the port file.
    addr: SocketAddr,
    /// A client for the admin API.
    client: Client,
}

fn spawn_in(bin: &Path, dir: &Path, data_dir: &Path) -> Result<Child, String> {
    let stdout = std::fs::File::create(dir.join("ddmd.log"))
        .map_err(|e| format!("creating log file: {e}"))?;
    let stderr = std::fs::File::create(dir.join("ddmd.stderr"))
        .map_err(|e| format!("creating stderr file: {e}"))?;
    let mut cmd = Command::new(bin);
    crate::netns::die_with_test(&mut cmd);
    cmd.arg("--admin-addr")
        .arg("::1")
        .arg("--admin-port")
        .arg("0")
        .arg("--admin-port-file")
        .arg(dir.join(PORT_FILE))
        .arg("--api-only")
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", bin.display()))
}

/// Wait for `<dir>/ddmd_port` to appear, failing early if the process
/// exits. Returns the address it names.
pub async fn wait_for_port_file(
    child: &mut Child,
    dir: &Path,
    timeout: Duration,
) -> Result<SocketAddr, String> {
    let path = dir.join(PORT_FILE);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let line = text.strip_suffix('\n').ok_or_else(|| {
                format!("port file {text:?} lacks its newline")
            })?;
            return line
                .parse()
                .map_err(|e| format!("port file {line:?}: {e}"));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let stderr = std::fs::read_to_string(dir.join("ddmd.stderr"))
                .unwrap_or_default();
            return Err(format!(
                "ddmd exited ({status}) before writing its port file: {}",
                stderr.trim()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no port file after {timeout:?} at {}",
                path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn quiet_logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl DdmdInstance {
    /// Spawn `ddmd` in a fresh temporary directory and wait until it serves.
    pub async fn start() -> Result<DdmdInstance, String> {
        let dir = tempfile::Builder::new()
            .prefix("ddmd-fixture-")
            .tempdir()
            .map_err(|e| format!("creating temporary directory: {e}"))?;
        Self::start_in(dir).await
    }

    /// Spawn `ddmd` with an existing data directory (for restarts).
    pub async fn start_in(
        dir: tempfile::TempDir,
    ) -> Result<DdmdInstance, String> {
        let data_dir = dir.path().to_path_buf();
        Self::start_with_data_dir(dir, &data_dir).await
    }

    /// Spawn `ddmd` with its port file and logs in `dir` but its store in
    /// `data_dir` (for tests that fill or break the data directory while
    /// the logs keep being written).
    pub async fn start_with_data_dir(
        dir: tempfile::TempDir,
        data_dir: &Path,
    ) -> Result<DdmdInstance, String> {
        let bin = crate::ddmd_bin();
        let mut child = spawn_in(&bin, dir.path(), data_dir)?;
        let addr =
            match wait_for_port_file(&mut child, dir.path(), START_TIMEOUT)
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            };
        let client = ddm_admin_client::new_client(addr, quiet_logger());
        Ok(DdmdInstance { child: Some(child), dir: Some(dir), addr, client })
    }

    /// The admin API address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The generated admin client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The instance directory: port file, logs and (unless started with
    /// [`DdmdInstance::start_with_data_dir`]) the data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.as_ref().expect("directory kept until cleanup").path()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The daemon's log so far (bunyan JSON lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("ddmd.log"))
            .unwrap_or_default()
    }

    /// SIGKILL the daemon, as the control plane's fixture does, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send `signal` and wait (up to `timeout`) for the process to exit.
    pub async fn signal_and_wait(
        &mut self,
        signal: i32,
        timeout: Duration,
    ) -> Result<(ExitStatus, Duration), String> {
        let mut child = self.child.take().ok_or("not running")?;
        let start = Instant::now();
        // SAFETY: kill(2) on the pid of a child we have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok((status, start.elapsed())),
                Ok(None) if start.elapsed() > timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("still running after {timeout:?}"));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Kill the daemon and keep its directory, for a restart with
    /// [`DdmdInstance::start_in`] (the stale port file is removed).
    pub fn kill_keep_dir(mut self) -> tempfile::TempDir {
        self.kill();
        let dir = self.dir.take().expect("directory kept until cleanup");
        let _ = std::fs::remove_file(dir.path().join(PORT_FILE));
        dir
    }

    /// Kill the daemon and delete its directory.
    pub fn cleanup(mut self) {
        self.kill();
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }

    /// The path of the directory, for messages.
    fn dir_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().to_path_buf())
    }
}

impl Drop for DdmdInstance {
    fn drop(&mut self) {
        if self.child.is_some() || self.dir.is_some() {
            eprintln!(
                "WARNING: ddmd fixture (pid {:?}, dir {:?}) dropped without \
                 cleanup(); killing it and removing the directory",
                self.pid(),
                self.dir_path()
            );
            self.kill();
        }
    }
}
