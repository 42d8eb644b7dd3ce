//! Discovery: finding the one peer on each interface (DESIGN §2).
//!
//! * [`packet`] is the wire codec;
//! * [`fsm`] is the per-interface peer state machine (pure: inputs in,
//!   effects out, time passed in);
//! * `actor` runs the machine over a packet I/O seam and timers.

pub mod packet;
