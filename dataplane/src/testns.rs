//! Network namespaces for tests that need a kernel of their own: the
//! Linux dataplane's and the link watcher's here, discovery's socket test
//! in `ddm-actors` (through the `testns` feature). Every run goes through
//! the one gate, `ddm_netns::require_netns`.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A namespace holding two veth pairs, `a0`–`a1` and `b0`–`b1`, all up.
pub struct Netns {
    /// The namespace's name (for `ip -n`).
    pub name: String,
}

impl Netns {
    /// Run `ip -n <ns> <args>`, panicking with its stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip -n {} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`Netns::ip`] with the arguments in one whitespace-split line.
    pub fn ip_line(&self, line: &str) -> String {
        self.ip(&line.split_whitespace().collect::<Vec<_>>())
    }

    /// Index of `ifname` in the namespace (call from inside it).
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let name = std::ffi::CString::new(ifname).expect("name");
        // SAFETY: name is a valid C string.
        let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(i != 0, "no interface {ifname} in {}", self.name);
        i
    }
}

/// Run `body` in a fresh namespace, on a thread that has entered it,
/// with a current-thread tokio runtime. Where namespaces are not
/// available it prints a loud SKIP and returns, unless
/// `DDM_REQUIRE_NETNS=1` or `CI=true` (then it fails).
pub fn run<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Netns) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    // The one gate of every namespace test: a loud SKIP on a developer's
    // machine, a failure in CI (DDM_REQUIRE_NETNS=1 or CI=true), and the name
    // recorded for CI's count of tests that ran.
    if !ddm_netns::require_netns(test) {
        return;
    }
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "ddm-dp-test-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    );
    // Deleted when dropped, also after a panic, and on an interrupt.
    let _held = ddm_netns::Namespace::add(&name)
        .unwrap_or_else(|e| panic!("ip netns add {name}: {e}"));
    let ns = Netns { name: name.clone() };
    ns.ip(&["link", "add", "a0", "type", "veth", "peer", "name", "a1"]);
    ns.ip(&["link", "add", "b0", "type", "veth", "peer", "name", "b1"]);
    for ifname in ["lo", "a0", "a1", "b0", "b1"] {
        ns.ip(&["link", "set", "dev", ifname, "up"]);
    }
    let thread = std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/var/run/netns/{name}"))
            .expect("open netns");
        // SAFETY: file is an open namespace descriptor; this thread
        // alone moves.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(body(ns));
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}
