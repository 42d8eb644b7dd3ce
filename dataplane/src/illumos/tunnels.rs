//! Tunnel endpoints to OPTE: the effective tunnel set, programmed per
//! overlay prefix by difference (set what is new, clear what went), through
//! a driver handle ([`OpteDriver`]; the ioctl itself is illumos-only).
//!
//! Where the driver is absent (a switch zone has none) or cannot be opened,
//! the set is recorded only, and the driver is looked for again at each
//! change of the set (the original daemon opens it for every batch): one
//! loaded after the daemon started is then given the whole set. Once open,
//! the handle is kept until the driver says it is gone. The set stays
//! recorded and visible through the admin API either way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use oxnet::IpNet;
use slog::{info, warn, Logger};

use super::opte::{encode_v2b, Tep};
use crate::{DataplaneError, TunnelEntry};

/// Why a driver request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpteError {
    /// There is no driver here (`/dev/xde` does not exist).
    #[error("no encapsulation driver (/dev/xde)")]
    Absent,
    /// `/dev/xde` exists but could not be opened.
    #[error("cannot open /dev/xde: {0}")]
    Open(String),
    /// The driver speaks another API version.
    #[error(
        "OPTE API version mismatch: we speak {ours}, the driver {}",
        driver.map_or("another".to_string(), |d| d.to_string())
    )]
    Version {
        /// `--opte-api-version`.
        ours: u64,
        /// The driver's, when it said.
        driver: Option<u64>,
    },
    /// The driver could not carry the request out now (out of memory,
    /// busy, interrupted): tried again after the worker's back-off.
    #[error("OPTE request failed for now: {0}")]
    Busy(String),
    /// Any other failure.
    #[error("OPTE request failed: {0}")]
    Other(String),
}

/// One OPTE command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2bCmd {
    /// Add endpoints to a prefix.
    Set,
    /// Remove endpoints from a prefix (the prefix goes when it has none).
    Clear,
}

/// A handle on the encapsulation driver.
pub trait OpteDriver: Send + 'static {
    /// Sends one encoded set or clear request.
    fn send(&mut self, cmd: V2bCmd, request: &[u8]) -> Result<(), OpteError>;
}

/// Opens the driver: `Ok(None)` where there is none.
pub type Opener<D> = Box<dyn FnMut() -> Result<Option<D>, OpteError> + Send>;

/// The overlay prefix's address (host bits cleared) and length.
fn key(net: &IpNet) -> (IpAddr, u8) {
    (net.prefix(), net.width())
}

/// The tunnel endpoints programmed in OPTE.
pub struct Tunnels<D: OpteDriver> {
    /// `None` while the driver is absent (or could not be opened).
    driver: Option<D>,
    /// Opens the driver, again at each change of the set while there is
    /// none.
    open: Opener<D>,
    /// Why the driver was last not there (logged when it changes).
    missing: Option<String>,
    /// What OPTE holds from us, per overlay prefix.
    programmed: BTreeMap<(IpAddr, u8), BTreeSet<Tep>>,
    log: Logger,
}

impl<D: OpteDriver> Tunnels<D> {
    /// Programs through the driver `open` opens, or records only while
    /// there is none.
    pub fn new(open: Opener<D>, log: Logger) -> Self {
        let mut t = Tunnels {
            driver: None,
            open,
            missing: None,
            programmed: BTreeMap::new(),
            log,
        };
        t.look_for_driver();
        t
    }

    /// Opens the driver if there is none; logs when that changes.
    fn look_for_driver(&mut self) {
        if self.driver.is_some() {
            return;
        }
        let why = match (self.open)() {
            Ok(Some(d)) => {
                if self.missing.take().is_some() {
                    info!(
                        self.log,
                        "encapsulation driver found: \
                        programming the tunnel endpoints"
                    );
                }
                self.driver = Some(d);
                return;
            }
            Ok(None) => OpteError::Absent.to_string(),
            Err(e) => e.to_string(),
        };
        if self.missing.as_ref() != Some(&why) {
            info!(self.log, "no encapsulation driver: tunnel endpoints are \
                recorded, not programmed, until it is found at a change \
                of the set"; "why" => &why);
            self.missing = Some(why);
        }
    }

    /// What OPTE holds from us.
    pub fn programmed(&self) -> &BTreeMap<(IpAddr, u8), BTreeSet<Tep>> {
        &self.programmed
    }

    /// Makes OPTE hold exactly `tunnels` (grouped per overlay prefix).
    pub fn set(
        &mut self,
        tunnels: &BTreeSet<TunnelEntry>,
    ) -> Result<(), DataplaneError> {
        let mut want: BTreeMap<(IpAddr, u8), BTreeSet<Tep>> = BTreeMap::new();
        for t in tunnels {
            want.entry(key(&t.origin.overlay_prefix))
                .or_default()
                .insert(Tep { ip: t.origin.boundary_addr, vni: t.origin.vni });
        }
        let fresh = self.driver.is_none();
        self.look_for_driver();
        let done = self.converge(want);
        // A driver opened for this call that answers it is gone is taken
        // as absent (the set recorded only) rather than as gone for now:
        // the worker's retry would open and lose it again, for good.
        if fresh && self.driver.is_none() {
            return Ok(());
        }
        done
    }

    /// Clears everything we programmed.
    pub fn clear_all(&mut self) -> Result<usize, DataplaneError> {
        let n = self.programmed.values().map(BTreeSet::len).sum();
        self.converge(BTreeMap::new()).map(|()| n)
    }

    /// Makes OPTE hold `want`.
    fn converge(
        &mut self,
        want: BTreeMap<(IpAddr, u8), BTreeSet<Tep>>,
    ) -> Result<(), DataplaneError> {
        let Some(driver) = self.driver.as_mut() else { return Ok(()) };
        let empty = BTreeSet::new();
        let keys: BTreeSet<_> =
            want.keys().chain(self.programmed.keys()).copied().collect();
        let mut failures = Vec::new();
        let mut busy = false;
        for k in keys {
            let new = want.get(&k).unwrap_or(&empty);
            let old = self.programmed.get(&k).cloned().unwrap_or_default();
            let add: Vec<Tep> = new.difference(&old).copied().collect();
            let del: Vec<Tep> = old.difference(new).copied().collect();
            let mut now = old.clone();
            for (cmd, teps) in [(V2bCmd::Set, add), (V2bCmd::Clear, del)] {
                if teps.is_empty() {
                    continue;
                }
                let req = match encode_v2b(k.0, k.1, &teps) {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("{}/{}: {e}", k.0, k.1));
                        continue;
                    }
                };
                match driver.send(cmd, &req) {
                    Ok(()) => {
                        for t in &teps {
                            if cmd == V2bCmd::Set {
                                now.insert(*t);
                            } else {
                                now.remove(t);
                            }
                        }
                    }
                    Err(OpteError::Absent) => {
                        warn!(
                            self.log,
                            "the encapsulation driver went away; tunnel \
                            endpoints are recorded only until it is back"
                        );
                        self.driver = None;
                        self.missing = Some(OpteError::Absent.to_string());
                        self.programmed.clear();
                        return Err(DataplaneError::Unavailable(
                            OpteError::Absent.to_string(),
                        ));
                    }
                    Err(e) => {
                        busy |= matches!(e, OpteError::Busy(_));
                        failures.push(format!("{}/{}: {e}", k.0, k.1))
                    }
                }
            }
            if now.is_empty() {
                self.programmed.remove(&k);
            } else {
                self.programmed.insert(k, now);
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        let what = format!(
            "{} tunnel changes failed, first: {}",
            failures.len(),
            failures[0]
        );
        // Busy: the set is given again after the worker's back-off (what
        // went in stays recorded as programmed, so only the rest is sent).
        // A refusal stands.
        Err(if busy {
            DataplaneError::Unavailable(what)
        } else {
            DataplaneError::Request(what)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TunnelOrigin;
    use std::sync::{Arc, Mutex};

    /// Requests a fake driver received.
    type Sent = Arc<Mutex<Vec<(V2bCmd, Vec<u8>)>>>;

    #[derive(Clone, Default)]
    struct Fake {
        sent: Sent,
        fail: Option<OpteError>,
    }

    impl OpteDriver for Fake {
        fn send(&mut self, cmd: V2bCmd, req: &[u8]) -> Result<(), OpteError> {
            if let Some(e) = &self.fail {
                return Err(e.clone());
            }
            self.sent.lock().unwrap().push((cmd, req.to_vec()));
            Ok(())
        }
    }

    fn entry(prefix: &str, boundary: &str, vni: u32, via: &str) -> TunnelEntry {
        TunnelEntry {
            origin: TunnelOrigin {
                overlay_prefix: prefix.parse().unwrap(),
                boundary_addr: boundary.parse().unwrap(),
                vni,
                metric: 0,
            },
            nexthop: via.parse().unwrap(),
        }
    }

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    /// An opener that finds `driver` every time.
    fn opens(driver: Option<Fake>) -> Opener<Fake> {
        Box::new(move || Ok(driver.clone()))
    }

    #[test]
    fn only_the_difference_is_sent() {
        let fake = Fake::default();
        let mut t = Tunnels::new(opens(Some(fake.clone())), log());
        let a = entry("0.0.0.0/0", "fd00:a::1", 99, "fe80::1");
        let b = entry("0.0.0.0/0", "fd00:a::2", 99, "fe80::2");
        t.set(&BTreeSet::from([a])).unwrap();
        {
            let sent = fake.sent.lock().unwrap();
            assert_eq!(sent.len(), 1);
            assert_eq!(sent[0].0, V2bCmd::Set);
            // The golden request of the facts.
            assert_eq!(sent[0].1[..7], [0, 0, 0, 0, 0, 0, 1]);
        }
        // The same endpoint through two peers is one endpoint: no request.
        let a2 = entry("0.0.0.0/0", "fd00:a::1", 99, "fe80::9");
        t.set(&BTreeSet::from([a, a2])).unwrap();
        assert_eq!(fake.sent.lock().unwrap().len(), 1);
        // Swap a for b: one set (b), one clear (a).
        t.set(&BTreeSet::from([b])).unwrap();
        let cmds: Vec<_> =
            fake.sent.lock().unwrap().iter().map(|s| s.0).collect();
        assert_eq!(cmds, [V2bCmd::Set, V2bCmd::Set, V2bCmd::Clear]);
        assert_eq!(t.clear_all().unwrap(), 1);
        assert!(t.programmed().is_empty());
        assert_eq!(fake.sent.lock().unwrap().len(), 4);
    }

    #[test]
    fn an_absent_driver_stands_aside() {
        let fake = Fake { fail: Some(OpteError::Absent), ..Fake::default() };
        let opened = Arc::new(Mutex::new(0));
        let open: Opener<Fake> = {
            let opened = opened.clone();
            Box::new(move || {
                *opened.lock().unwrap() += 1;
                Ok(Some(fake.clone()))
            })
        };
        let mut t = Tunnels::new(open, log());
        let a = entry("10.0.0.0/8", "fd00:a::1", 7, "fe80::1");
        // Opened at the start: gone for now, the worker tries again.
        assert!(t.set(&BTreeSet::from([a])).is_err());
        // Opened again for the set, and gone: recorded only, no error
        // (the worker would try again for good), and opened once a set.
        t.set(&BTreeSet::from([a])).unwrap();
        t.set(&BTreeSet::from([a])).unwrap();
        assert_eq!(*opened.lock().unwrap(), 3);
        assert!(t.programmed().is_empty());
        assert_eq!(t.clear_all().unwrap(), 0);
        let mut none: Tunnels<Fake> = Tunnels::new(opens(None), log());
        none.set(&BTreeSet::from([a])).unwrap();
        assert_eq!(none.clear_all().unwrap(), 0);
    }

    /// A driver absent at the start, or gone, is looked for again at each
    /// change of the set (the original opens it for every batch); once
    /// there, it is given the whole set.
    #[test]
    fn a_driver_that_comes_later_is_given_the_whole_set() {
        let fake = Fake::default();
        let present = Arc::new(Mutex::new(false));
        let opened = Arc::new(Mutex::new(0));
        let open: Opener<Fake> = {
            let (fake, present, opened) =
                (fake.clone(), present.clone(), opened.clone());
            Box::new(move || {
                *opened.lock().unwrap() += 1;
                Ok(present.lock().unwrap().then(|| fake.clone()))
            })
        };
        let mut t = Tunnels::new(open, log());
        let a = entry("10.0.0.0/8", "fd00:a::1", 7, "fe80::1");
        let b = entry("10.1.0.0/16", "fd00:a::2", 7, "fe80::1");
        t.set(&BTreeSet::from([a])).unwrap();
        assert!(fake.sent.lock().unwrap().is_empty());
        assert!(t.programmed().is_empty());
        *present.lock().unwrap() = true;
        t.set(&BTreeSet::from([a, b])).unwrap();
        assert_eq!(fake.sent.lock().unwrap().len(), 2, "a and b, set");
        assert_eq!(t.programmed().len(), 2);
        let opens = *opened.lock().unwrap();
        t.set(&BTreeSet::from([a])).unwrap();
        assert_eq!(*opened.lock().unwrap(), opens, "not opened again");
        assert_eq!(fake.sent.lock().unwrap().len(), 3, "b cleared");

        // The driver goes: recorded only; back, the whole set again.
        let gone = Fake { fail: Some(OpteError::Absent), ..Fake::default() };
        t.driver = Some(gone);
        assert!(t.set(&BTreeSet::from([a, b])).is_err());
        assert!(t.programmed().is_empty());
        t.set(&BTreeSet::from([a, b])).unwrap();
        assert_eq!(t.programmed().len(), 2);
        let sent = fake.sent.lock().unwrap();
        assert_eq!(sent.len(), 5, "a and b, set again");
        assert!(sent[3..].iter().all(|(cmd, _)| *cmd == V2bCmd::Set));
    }

    /// A driver that cannot be opened (not absent) is recorded only too,
    /// and tried again at the next change.
    #[test]
    fn a_driver_that_cannot_be_opened_is_tried_again() {
        let fake = Fake::default();
        let tries = Arc::new(Mutex::new(0));
        let open: Opener<Fake> = {
            let (fake, tries) = (fake.clone(), tries.clone());
            Box::new(move || {
                let mut n = tries.lock().unwrap();
                *n += 1;
                if *n < 3 {
                    Err(OpteError::Open("permission denied".into()))
                } else {
                    Ok(Some(fake.clone()))
                }
            })
        };
        let mut t = Tunnels::new(open, log());
        let a = entry("10.0.0.0/8", "fd00:a::1", 7, "fe80::1");
        t.set(&BTreeSet::from([a])).unwrap();
        assert!(t.programmed().is_empty());
        t.set(&BTreeSet::from([a])).unwrap();
        assert_eq!(t.programmed().len(), 1);
        assert_eq!(*tries.lock().unwrap(), 3);
    }

    #[test]
    fn a_version_mismatch_names_both_versions() {
        let e = OpteError::Version { ours: 41, driver: Some(42) };
        let fake = Fake { fail: Some(e), ..Fake::default() };
        let mut t = Tunnels::new(opens(Some(fake)), log());
        let a = entry("10.0.0.0/8", "fd00:a::1", 7, "fe80::1");
        let err = t.set(&BTreeSet::from([a])).unwrap_err().to_string();
        assert!(err.contains("41") && err.contains("42"), "{err}");
        assert!(t.programmed().is_empty());
    }

    /// A driver short of memory (busy) makes the set `Unavailable`, given
    /// again after the worker's back-off; a refusal is a `Request` error,
    /// which stands.
    #[test]
    fn a_busy_driver_is_unavailable_and_a_refusal_a_request_error() {
        let set_with = |fail: OpteError| {
            let fake = Fake { fail: Some(fail), ..Fake::default() };
            let a = entry("10.0.0.0/8", "fd00:a::1", 7, "fe80::1");
            Tunnels::new(opens(Some(fake)), log()).set(&BTreeSet::from([a]))
        };
        let r = set_with(OpteError::Busy("ENOMEM".into()));
        assert!(matches!(r, Err(DataplaneError::Unavailable(_))), "{r:?}");
        let r = set_with(OpteError::Other("EINVAL".into()));
        assert!(matches!(r, Err(DataplaneError::Request(_))), "{r:?}");
    }
}
