use super::*;

pub use ddm_types::{PathVector, TunnelOrigin};

/// A push: what changed at the sender since it last told us.
///
/// A missing half means "nothing changed" for that half.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Changes to underlay (sled prefix) reachability.
    #[serde(default)]
    pub underlay: Option<UnderlayUpdate>,
    /// Changes to tunnel endpoint reachability.
    #[serde(default)]
    pub tunnel: Option<TunnelUpdate>,
}

/// The underlay half of an [`Update`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlayUpdate {
    /// Paths the sender now offers.
    #[serde(default)]
    pub announce: BTreeSet<PathVector>,
    /// Paths the sender no longer offers.
    #[serde(default)]
    pub withdraw: BTreeSet<PathVector>,
}

/// The tunnel half of an [`Update`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelUpdate {
    /// Tunnel endpoints the sender now offers.
    #[serde(default)]
    pub announce: BTreeSet<TunnelOrigin>,
    /// Tunnel endpoints the sender no longer offers.
    #[serde(default)]
    pub withdraw: BTreeSet<TunnelOrigin>,
}

/// The answer to a pull: everything the sender offers to the puller.
///
/// A missing half means the empty set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    /// Every underlay path offered.
    #[serde(default)]
    pub underlay: Option<BTreeSet<PathVector>>,
    /// Every tunnel endpoint offered.
    #[serde(default)]
    pub tunnel: Option<BTreeSet<TunnelOrigin>>,
}

impl UnderlayUpdate {
    /// How many items the half carries, announced and withdrawn.
    pub fn len(&self) -> usize {
        self.announce.len() + self.withdraw.len()
    }

    /// True when the half carries nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TunnelUpdate {
    /// How many items the half carries, announced and withdrawn.
    pub fn len(&self) -> usize {
        self.announce.len() + self.withdraw.len()
    }

    /// True when the half carries nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Update {
    /// True when the update carries no change at all (nothing to send).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many path vectors and tunnel origins the update carries,
    /// announced and withdrawn.
    pub fn len(&self) -> usize {
        self.underlay.as_ref().map_or(0, |u| u.len())
            + self.tunnel.as_ref().map_or(0, v3::TunnelUpdate::len)
    }

    /// The underlay half, created empty if absent (for building pushes).
    pub fn underlay_mut(&mut self) -> &mut UnderlayUpdate {
        self.underlay.get_or_insert_with(Default::default)
    }

    /// The tunnel half, created empty if absent (for building pushes).
    pub fn tunnel_mut(&mut self) -> &mut TunnelUpdate {
        self.tunnel.get_or_insert_with(Default::default)
    }

    /// The same update with every prefix's host bits cleared.
    pub fn normalised(self) -> Self {
        Update {
            underlay: self.underlay.map(|u| UnderlayUpdate {
                announce: normalise_paths(u.announce),
                withdraw: normalise_paths(u.withdraw),
            }),
            tunnel: self.tunnel.map(|t| TunnelUpdate {
                announce: normalise_tunnels(t.announce),
                withdraw: normalise_tunnels(t.withdraw),
            }),
        }
    }
}

impl PullResponse {
    /// The same response with every prefix's host bits cleared.
    pub fn normalised(self) -> Self {
        PullResponse {
            underlay: self.underlay.map(normalise_paths),
            tunnel: self.tunnel.map(normalise_tunnels),
        }
    }
}

fn normalise_paths(set: BTreeSet<PathVector>) -> BTreeSet<PathVector> {
    set.into_iter()
        .map(|pv| PathVector {
            destination: normalise_v6(pv.destination),
            path: pv.path,
        })
        .collect()
}

/// `set` with every overlay prefix's host bits cleared.
pub fn normalise_tunnels(
    set: BTreeSet<TunnelOrigin>,
) -> BTreeSet<TunnelOrigin> {
    set.into_iter().map(super::normalise_tunnel).collect()
}
