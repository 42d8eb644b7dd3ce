//! Why the import policy refuses an item, and the counts and log notes of
//! its refusals.

use std::collections::BTreeMap;

use ddm_proto::PeerId;

/// Why an announced item was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// The default route `::/0`, without `--accept-default-route`.
    DefaultRoute,
    /// A destination overlapping a special-purpose range.
    SpecialDestination,
    /// A path naming no router.
    EmptyPath,
    /// A path longer than `--max-path-len`.
    PathTooLong,
    /// A path naming an empty hostname.
    EmptyHostname,
    /// A path naming a hostname longer than [`MAX_HOSTNAME_LEN`] bytes.
    HostnameTooLong,
    /// A tunnel endpoint whose VNI does not fit in 24 bits.
    VniTooLarge,
    /// A tunnel endpoint whose boundary address is special-purpose.
    SpecialBoundary,
    /// A new destination past `--max-prefixes-per-peer`.
    PrefixLimit,
    /// A new tunnel endpoint past `--max-prefixes-per-peer`.
    TunnelLimit,
}

impl Refusal {
    /// How many reasons there are.
    pub const COUNT: usize = 10;

    /// Every reason, in declaration order.
    pub const ALL: [Refusal; Refusal::COUNT] = [
        Refusal::DefaultRoute,
        Refusal::SpecialDestination,
        Refusal::EmptyPath,
        Refusal::PathTooLong,
        Refusal::EmptyHostname,
        Refusal::HostnameTooLong,
        Refusal::VniTooLarge,
        Refusal::SpecialBoundary,
        Refusal::PrefixLimit,
        Refusal::TunnelLimit,
    ];

    /// The reason's name in logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::DefaultRoute => "default_route",
            Refusal::SpecialDestination => "special_purpose_destination",
            Refusal::EmptyPath => "empty_path",
            Refusal::PathTooLong => "path_too_long",
            Refusal::EmptyHostname => "empty_hostname",
            Refusal::HostnameTooLong => "hostname_too_long",
            Refusal::VniTooLarge => "vni_too_large",
            Refusal::SpecialBoundary => "special_purpose_boundary",
            Refusal::PrefixLimit => "prefix_limit",
            Refusal::TunnelLimit => "tunnel_limit",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Refusals counted by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusalCounts([u64; Refusal::COUNT]);

impl RefusalCounts {
    /// How many items were refused for `reason`.
    pub fn get(&self, reason: Refusal) -> u64 {
        self.0[reason.index()]
    }

    /// How many items were refused in all.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// True when nothing was refused.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Every reason with its count (zeros included), in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL.iter().map(|r| (*r, self.get(*r)))
    }

    /// Count `n` more refusals for `reason`.
    pub fn add(&mut self, reason: Refusal, n: u64) {
        let c = &mut self.0[reason.index()];
        *c = c.saturating_add(n);
    }
}

impl std::fmt::Display for RefusalCounts {
    /// `reason=count` for every non-zero count, comma-separated.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (r, n) in self.iter().filter(|(_, n)| *n > 0) {
            if !first {
                f.write_str(",")?;
            }
            write!(f, "{r}={n}")?;
            first = false;
        }
        Ok(())
    }
}

/// The policy's counters, for `RouterMsg::GetPolicyCounters`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyCounters {
    /// Every refusal since the router started.
    pub total: RefusalCounts,
    /// Refusals per peer, for peers that are up (and, for up to
    /// [`LOG_INTERVAL`], peers that went down).
    pub per_peer: BTreeMap<PeerId, RefusalCounts>,
}

/// A refusal to log now: the first of its peer and reason, or the first
/// after [`LOG_INTERVAL`] of silence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalNote {
    /// Who sent the refused items.
    pub peer: PeerId,
    /// Why they were refused.
    pub reason: Refusal,
    /// One refused item, briefly (never a whole oversized path).
    pub example: String,
    /// Refusals of this reason from this peer since it was first seen.
    pub refused: u64,
    /// Of those, how many this note is the first log line for (the ones
    /// since the previous note of this peer and reason).
    pub unlogged: u64,
}
