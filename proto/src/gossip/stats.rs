//! Counters the shell exports as metrics.

/// Why a datagram or stream payload was dropped whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GossipDrop {
    /// No installed key opens it, or it was sealed for another cluster name.
    DecryptFailed,
    /// A sequence number already seen, or older than the replay window.
    Replayed,
    /// From an earlier boot (generation) of the sender than one already heard of.
    StaleGeneration,
    /// Authenticated but not a well-formed envelope or message (a bug or version skew).
    Malformed,
    /// Larger than `max_packet`.
    Oversized,
    /// First byte is not a sealed-format version we speak.
    UnknownVersion,
    /// Shorter than the sealing overhead.
    Truncated,
    /// Sealed by this node itself (reflected or looped back).
    FromSelf,
    /// A stream response nobody asked for (or for a request that timed out).
    UnexpectedStream,
    /// Authenticated, but from a sender generation more than a day ahead of this node's
    /// clock (it would make the sender's real packets stale).
    Implausible,
    /// Sealed for another node (a captured packet replayed elsewhere, or an address now
    /// used by a node of another name), or sealed for anyone but carrying more than its
    /// sender's own announcement.
    Misdirected,
}

impl GossipDrop {
    pub const ALL: [GossipDrop; 11] = [
        GossipDrop::DecryptFailed,
        GossipDrop::Replayed,
        GossipDrop::StaleGeneration,
        GossipDrop::Malformed,
        GossipDrop::Oversized,
        GossipDrop::UnknownVersion,
        GossipDrop::Truncated,
        GossipDrop::FromSelf,
        GossipDrop::UnexpectedStream,
        GossipDrop::Implausible,
        GossipDrop::Misdirected,
    ];

    /// Stable snake_case name for counters and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            GossipDrop::DecryptFailed => "decrypt_failed",
            GossipDrop::Replayed => "replayed",
            GossipDrop::StaleGeneration => "stale_generation",
            GossipDrop::Malformed => "malformed",
            GossipDrop::Oversized => "oversized",
            GossipDrop::UnknownVersion => "unknown_version",
            GossipDrop::Truncated => "truncated",
            GossipDrop::FromSelf => "from_self",
            GossipDrop::UnexpectedStream => "unexpected_stream",
            GossipDrop::Implausible => "implausible",
            GossipDrop::Misdirected => "misdirected",
        }
    }

    /// Dense index into [`GossipStats::drops`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Everything the gossip core counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Drops by [`GossipDrop::index`].
    pub drops: [u64; GossipDrop::ALL.len()],
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub datagrams_received: u64,
    pub bytes_received: u64,
    /// Messages of a type this version does not know, skipped inside accepted datagrams.
    pub unknown_messages: u64,
    /// Pings for another node name (a restarted node on a reused address).
    pub wrong_target_pings: u64,
    pub probes_sent: u64,
    /// Probes that ended without an ack (each raised a suspicion).
    pub probes_failed: u64,
    /// Times this node refuted a suspicion or death claim about itself.
    pub refutations: u64,
    /// Members this node declared dead after its own suspicion timed out.
    pub declared_dead: u64,
    pub streams_requested: u64,
    pub streams_served: u64,
    pub streams_completed: u64,
    pub tombstones_collected: u64,
    /// Alive claims for this node's name from another address (duplicate node names).
    pub name_conflicts: u64,
    /// Messages ignored for claiming what no honest node sends: an incarnation at
    /// `u64::MAX`, a generation more than a day ahead of this node's clock, an object
    /// timestamp more than `MAX_DRIFT` ahead.
    pub implausible_claims: u64,
}

impl GossipStats {
    pub fn drop_count(&self, reason: GossipDrop) -> u64 {
        self.drops[reason.index()]
    }

    /// `(name, count)` for every reason, in [`GossipDrop::ALL`] order.
    pub fn drops_by_name(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        GossipDrop::ALL
            .iter()
            .map(|r| (r.as_str(), self.drops[r.index()]))
    }

    pub(crate) fn count_drop(&mut self, reason: GossipDrop) {
        self.drops[reason.index()] += 1;
    }
}
