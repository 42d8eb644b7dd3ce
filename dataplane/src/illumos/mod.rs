//! The illumos dataplane: kernel routes through the routing socket and
//! tunnel endpoints through OPTE.
//!
//! * [`rtsock`] and [`opte`] are pure encoders and parsers of the two
//!   interfaces, tested on every platform with golden bytes from their
//!   documented layouts.
//! * [`record`] keeps the routes we own under the data directory (the
//!   routing socket has no owner mark).
//! * [`kernel`] is the dataplane (routes by difference, the record, OPTE
//!   through [`tunnels`]), written against two small traits so that its
//!   logic is tested on every platform with fakes.
//! * `sys` (illumos with the `illumos` feature only) implements those
//!   traits with the real routing socket and `/dev/xde` ioctl, and opens
//!   the whole dataplane ([`open`] there).

pub mod kernel;
pub mod opte;
pub mod record;
pub mod rtsock;
#[cfg(all(target_os = "illumos", feature = "illumos"))]
pub mod sys;
pub mod tunnels;
