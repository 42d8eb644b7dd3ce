//! How fast the Linux dataplane installs routes, next to `ip -6 -batch`.
//!
//! Needs root. Each measurement gets a fresh network namespace holding one
//! veth pair; both sides install the same N single-path /64 routes through
//! a link-local gateway, tagged with the router's protocol number.
//!
//! ```text
//! cargo run --release -p ddm-actors --example netlink_bench -- [ROUTES] [ROUNDS]
//! ```

#[cfg(all(target_os = "linux", feature = "netlink"))]
fn main() -> std::process::ExitCode {
    bench::main()
}

#[cfg(not(all(target_os = "linux", feature = "netlink")))]
fn main() {
    eprintln!("netlink_bench needs Linux and the `netlink` feature");
}

#[cfg(all(target_os = "linux", feature = "netlink"))]
mod bench {
    use std::io::Write;
    use std::net::Ipv6Addr;
    use std::os::fd::AsRawFd;
    use std::process::{Command, ExitCode};
    use std::time::{Duration, Instant};

    use ddm_actors::dataplane::linux::{LinuxDataplane, RTPROT_DDM};
    use ddm_actors::dataplane::{Dataplane, Nexthop, Nexthops, RouteUpdate};
    use oxnet::Ipv6Net;

    const GATEWAY: &str = "fe80::1";

    /// A namespace with `a0`–`a1` up, deleted on drop.
    struct Netns(String);

    impl Netns {
        fn new(tag: &str) -> Result<Self, String> {
            let ns = Netns(format!("ddm-bench-{}-{tag}", std::process::id()));
            run("ip", &["netns", "add", &ns.0])?;
            ns.ip(&[
                "link", "add", "a0", "type", "veth", "peer", "name", "a1",
            ])?;
            for ifname in ["lo", "a0", "a1"] {
                ns.ip(&["link", "set", "dev", ifname, "up"])?;
            }
            Ok(ns)
        }

        fn ip(&self, args: &[&str]) -> Result<String, String> {
            let mut all = vec!["-n", &self.0];
            all.extend_from_slice(args);
            run("ip", &all)
        }

        /// Our routes in the namespace.
        fn count(&self) -> Result<usize, String> {
            let p = RTPROT_DDM.to_string();
            Ok(self.ip(&["-6", "route", "show", "proto", &p])?.lines().count())
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            // Flush first: the kernel dismantles a deleted namespace in the
            // background, which would slow the next measurement down.
            let p = RTPROT_DDM.to_string();
            let _ = self.ip(&["-6", "route", "flush", "proto", &p]);
            let _ = run("ip", &["netns", "delete", &self.0]);
        }
    }

    fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(cmd)
            .args(args)
            .output()
            .map_err(|e| format!("{cmd}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{cmd} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The i-th /64: fd00:HHHH:LLLL::/64.
    fn prefix(i: u32) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, (i >> 16) as u16, i as u16, 0, 0, 0, 0, 0)
    }

    fn time_ip_batch(routes: u32) -> Result<Duration, String> {
        let ns = Netns::new("ip")?;
        let path = std::env::temp_dir()
            .join(format!("ddm-bench-{}.batch", std::process::id()));
        let mut text = String::with_capacity(routes as usize * 64);
        for i in 0..routes {
            text.push_str(&format!(
                "route add {}/64 via {GATEWAY} dev a0 proto {RTPROT_DDM}\n",
                prefix(i)
            ));
        }
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let file = path.to_string_lossy().into_owned();
        let started = Instant::now();
        let result = ns.ip(&["-6", "-batch", &file]);
        let took = started.elapsed();
        let _ = std::fs::remove_file(&path);
        result?;
        check(&ns, routes)?;
        Ok(took)
    }

    fn time_dataplane(routes: u32) -> Result<Duration, String> {
        let ns = Netns::new("dp")?;
        let name = ns.0.clone();
        // Enter the namespace on a thread of its own; its runtime's
        // threads inherit it.
        let took = std::thread::spawn(move || -> Result<Duration, String> {
            let file = std::fs::File::open(format!("/var/run/netns/{name}"))
                .map_err(|e| format!("open netns: {e}"))?;
            // SAFETY: a valid namespace descriptor; affects this thread.
            let r =
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if r != 0 {
                return Err(format!(
                    "setns: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let rt = tokio::runtime::Runtime::new()
                .map_err(|e| format!("runtime: {e}"))?;
            rt.block_on(async {
                let log = slog::Logger::root(slog::Discard, slog::o!());
                let mut dp =
                    LinuxDataplane::new(log).map_err(|e| e.to_string())?;
                let name = std::ffi::CString::new("a0").expect("name");
                // SAFETY: a valid C string.
                let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                let gateway: Ipv6Addr = GATEWAY.parse().expect("gateway");
                let updates: Vec<RouteUpdate> = (0..routes)
                    .map(|i| RouteUpdate {
                        destination: Ipv6Net::new(prefix(i), 64)
                            .expect("prefix"),
                        nexthops: Nexthops::one(Nexthop {
                            addr: gateway,
                            ifindex,
                        }),
                    })
                    .collect();
                let started = Instant::now();
                dp.apply(updates).await.map_err(|e| e.to_string())?;
                Ok(started.elapsed())
            })
        })
        .join()
        .map_err(|_| "dataplane thread panicked".to_string())??;
        check(&ns, routes)?;
        Ok(took)
    }

    fn check(ns: &Netns, routes: u32) -> Result<(), String> {
        let n = ns.count()?;
        if n != routes as usize {
            return Err(format!("{} holds {n} routes, not {routes}", ns.0));
        }
        Ok(())
    }

    pub fn main() -> ExitCode {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("netlink_bench needs root (network namespaces)");
            return ExitCode::FAILURE;
        }
        let mut args = std::env::args().skip(1);
        let routes: u32 =
            args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
        let rounds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
        println!("{routes} single-path /64 routes, {rounds} rounds");
        let mut ratios = Vec::new();
        for round in 1..=rounds {
            let result = time_ip_batch(routes)
                .and_then(|ip| Ok((ip, time_dataplane(routes)?)));
            match result {
                Ok((ip, dp)) => {
                    let ratio = dp.as_secs_f64() / ip.as_secs_f64();
                    println!(
                        "round {round}: ip -6 -batch {:>8.1} ms   LinuxDataplane::apply {:>8.1} ms   ratio {ratio:.2}",
                        ip.as_secs_f64() * 1e3,
                        dp.as_secs_f64() * 1e3,
                    );
                    ratios.push(ratio);
                }
                Err(e) => {
                    eprintln!("round {round} failed: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        ratios.sort_by(f64::total_cmp);
        println!("median ratio {:.2}", ratios[ratios.len() / 2]);
        ExitCode::SUCCESS
    }
}
