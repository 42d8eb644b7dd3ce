//! The illumos interfaces DDM programs: kernel routes through the routing
//! socket ([`rtsock`]) and tunnel endpoints through OPTE ([`opte`]).
//!
//! Both modules are pure encoders and parsers, compiled and tested on every
//! platform with golden bytes from the interfaces' documented layouts. The
//! socket and ioctl I/O that would use them on an illumos host, and the
//! illumos dataplane built on them, are not written yet (see the README).

pub mod opte;
pub mod rtsock;
