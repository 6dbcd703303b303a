//! Gossip configuration and timer profiles.

use std::net::SocketAddr;

use ipnet::Ipv4Net;
use std::time::{Duration, Instant};

use super::subnet::SubnetPool;

/// Largest datagram the core emits, sealing overhead included: fits a 1500-byte MTU
/// with IPv6 and UDP headers and some tunnel headroom, so gossip never fragments.
pub const MAX_PACKET: usize = 1400;
/// Smallest `max_packet` allowed: a UDP payload that fits IPv6's minimum MTU (1280 − 40 −
/// 8). Every message the core builds fits one datagram of this size.
pub const MIN_PACKET: usize = 1232;

/// Longest timer but `tombstone_gc_after`: a week. Together with the other bounds it
/// keeps every product the core computes (a timer scaled by local health, a suspicion
/// timeout) far from overflowing an `Instant` or a `Duration`.
pub const MAX_TIMER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest `tombstone_gc_after`: a year.
pub const MAX_TOMBSTONE_GC: Duration = Duration::from_secs(365 * 24 * 3600);
/// Largest `suspicion_mult`, `suspicion_max_mult` and `retransmit_mult`.
pub const MAX_MULTIPLIER: u32 = 100;
/// Largest `indirect_probes`, `gossip_fanout`, `suspicion_confirmations` and `lhm_max`.
pub const MAX_COUNT: usize = 64;

/// `t + d`, with `d` capped at a thousand years: no timer product can overflow an
/// `Instant` (a deadline that far is never reached either way).
pub(crate) fn after(t: Instant, d: Duration) -> Instant {
    const FOREVER: Duration = Duration::from_secs(1000 * 365 * 24 * 3600);
    t.checked_add(d.min(FOREVER)).unwrap_or(t)
}

/// Every timer of the protocol. `n` below is the number of live members.
///
/// Bounds ([`Timing::validate`]): timers at most [`MAX_TIMER`] (a week), tombstones kept
/// at most [`MAX_TOMBSTONE_GC`] (a year), multipliers at most [`MAX_MULTIPLIER`], counts
/// and `lhm_max` at most [`MAX_COUNT`].
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Time between probes: each interval one member is probed (randomised round-robin).
    /// Scaled by the local health multiplier.
    pub probe_interval: Duration,
    /// How long a direct ping waits for its ack before asking others (ping-req).
    /// Scaled by the local health multiplier.
    pub probe_timeout: Duration,
    /// How many members a ping-req goes to (SWIM's `k`).
    pub indirect_probes: usize,
    /// Minimum suspicion timeout = `suspicion_mult · max(1, log10 n) · probe_interval`.
    pub suspicion_mult: u32,
    /// Maximum suspicion timeout = `suspicion_max_mult ·` the minimum. A suspicion starts
    /// at the maximum and shrinks toward the minimum as others confirm it (Lifeguard).
    pub suspicion_max_mult: u32,
    /// Independent confirmations that shrink a suspicion to the minimum (Lifeguard's K).
    pub suspicion_confirmations: usize,
    /// Time between gossip rounds; also the tick that expires suspicions.
    pub gossip_interval: Duration,
    /// Members each gossip round sends pending broadcasts to.
    pub gossip_fanout: usize,
    /// Time between anti-entropy exchanges (digest push-pull with one random member).
    pub push_pull_interval: Duration,
    /// Time between re-announcements to one random dead member and to one seed that is
    /// not a live member: how partitions heal and isolated nodes find their way back.
    pub reannounce_interval: Duration,
    /// How long dead or left members are kept (re-announced to, stale news refused).
    pub dead_reap_after: Duration,
    /// Age (by HLC wall time) after which a delete's tombstone is dropped. A node cut
    /// off from every member for longer re-pulls full state and drops zombies.
    pub tombstone_gc_after: Duration,
    /// Broadcast retransmit limit = `retransmit_mult · ⌈log10(n + 1)⌉`.
    pub retransmit_mult: u32,
    /// Cap of the local health multiplier (Lifeguard's S); probe interval and timeout
    /// are scaled by `score + 1`.
    pub lhm_max: u32,
    /// How long a full-state stream may take before it is retried elsewhere.
    pub stream_timeout: Duration,
    /// How long a node without a subnet waits for full state before claiming one anyway.
    pub claim_wait: Duration,
}

impl Timing {
    /// One data centre: sub-millisecond RTTs, failure known everywhere within ~3 s.
    ///
    /// | timer | default |
    /// |---|---|
    /// | probe_interval | 400 ms |
    /// | probe_timeout | 150 ms |
    /// | indirect_probes | 3 |
    /// | suspicion_mult / max_mult / confirmations | 2 / 3 / 3 (min 0.8 s, max 2.4 s at n ≤ 10) |
    /// | gossip_interval / fanout | 100 ms / 3 |
    /// | push_pull_interval | 15 s |
    /// | reannounce_interval | 2 s |
    /// | dead_reap_after | 30 min |
    /// | tombstone_gc_after | 24 h |
    /// | retransmit_mult | 6 |
    /// | lhm_max | 8 |
    /// | stream_timeout | 5 s |
    /// | claim_wait | 5 s |
    pub fn lan() -> Self {
        Timing {
            probe_interval: Duration::from_millis(400),
            probe_timeout: Duration::from_millis(150),
            indirect_probes: 3,
            suspicion_mult: 2,
            suspicion_max_mult: 3,
            suspicion_confirmations: 3,
            gossip_interval: Duration::from_millis(100),
            gossip_fanout: 3,
            push_pull_interval: Duration::from_secs(15),
            reannounce_interval: Duration::from_secs(2),
            dead_reap_after: Duration::from_secs(30 * 60),
            tombstone_gc_after: Duration::from_secs(24 * 3600),
            retransmit_mult: 6,
            lhm_max: 8,
            stream_timeout: Duration::from_secs(5),
            claim_wait: Duration::from_secs(5),
        }
    }

    /// Across data centres: RTTs up to a few hundred ms, fewer false positives, slower
    /// detection (memberlist's WAN profile, with re-announcement).
    ///
    /// | timer | default |
    /// |---|---|
    /// | probe_interval | 5 s |
    /// | probe_timeout | 3 s |
    /// | indirect_probes | 3 |
    /// | suspicion_mult / max_mult / confirmations | 6 / 4 / 3 |
    /// | gossip_interval / fanout | 500 ms / 4 |
    /// | push_pull_interval | 60 s |
    /// | reannounce_interval | 15 s |
    /// | dead_reap_after | 2 h |
    /// | tombstone_gc_after | 72 h |
    /// | retransmit_mult | 6 |
    /// | lhm_max | 8 |
    /// | stream_timeout | 30 s |
    /// | claim_wait | 30 s |
    pub fn wan() -> Self {
        Timing {
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            indirect_probes: 3,
            suspicion_mult: 6,
            suspicion_max_mult: 4,
            suspicion_confirmations: 3,
            gossip_interval: Duration::from_millis(500),
            gossip_fanout: 4,
            push_pull_interval: Duration::from_secs(60),
            reannounce_interval: Duration::from_secs(15),
            dead_reap_after: Duration::from_secs(2 * 3600),
            tombstone_gc_after: Duration::from_secs(72 * 3600),
            retransmit_mult: 6,
            lhm_max: 8,
            stream_timeout: Duration::from_secs(30),
            claim_wait: Duration::from_secs(30),
        }
    }

    /// Returns `Err` naming the first timer or count that cannot work: zero where it
    /// must be positive, beyond its bound, or a probe timeout not shorter than the
    /// probe interval.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("probe_interval", self.probe_interval),
            ("probe_timeout", self.probe_timeout),
            ("gossip_interval", self.gossip_interval),
            ("push_pull_interval", self.push_pull_interval),
            ("reannounce_interval", self.reannounce_interval),
            ("stream_timeout", self.stream_timeout),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(ConfigError::ZeroTimer(name));
        }
        let timers = [
            ("probe_interval", self.probe_interval, MAX_TIMER),
            ("probe_timeout", self.probe_timeout, MAX_TIMER),
            ("gossip_interval", self.gossip_interval, MAX_TIMER),
            ("push_pull_interval", self.push_pull_interval, MAX_TIMER),
            ("reannounce_interval", self.reannounce_interval, MAX_TIMER),
            ("dead_reap_after", self.dead_reap_after, MAX_TIMER),
            (
                "tombstone_gc_after",
                self.tombstone_gc_after,
                MAX_TOMBSTONE_GC,
            ),
            ("stream_timeout", self.stream_timeout, MAX_TIMER),
            ("claim_wait", self.claim_wait, MAX_TIMER),
        ];
        if let Some(&(timer, value, max)) = timers.iter().find(|(_, d, max)| d > max) {
            return Err(ConfigError::TimerTooLong { timer, value, max });
        }
        let multiplier = |m: u32| usize::try_from(m).unwrap_or(usize::MAX);
        let max_multiplier = multiplier(MAX_MULTIPLIER);
        let counts = [
            ("indirect_probes", self.indirect_probes, MAX_COUNT),
            (
                "suspicion_mult",
                multiplier(self.suspicion_mult),
                max_multiplier,
            ),
            (
                "suspicion_max_mult",
                multiplier(self.suspicion_max_mult),
                max_multiplier,
            ),
            (
                "suspicion_confirmations",
                self.suspicion_confirmations,
                MAX_COUNT,
            ),
            ("gossip_fanout", self.gossip_fanout, MAX_COUNT),
            (
                "retransmit_mult",
                multiplier(self.retransmit_mult),
                max_multiplier,
            ),
            ("lhm_max", multiplier(self.lhm_max), MAX_COUNT),
        ];
        if let Some(&(setting, value, max)) = counts.iter().find(|(_, v, max)| v > max) {
            return Err(ConfigError::TooLarge {
                setting,
                value,
                max,
            });
        }
        if self.probe_timeout >= self.probe_interval {
            return Err(ConfigError::ProbeTimeoutTooLong);
        }
        if self.suspicion_mult == 0 || self.suspicion_max_mult == 0 || self.retransmit_mult == 0 {
            return Err(ConfigError::ZeroMultiplier);
        }
        Ok(())
    }
}

/// Static configuration of one gossip node.
#[derive(Debug, Clone, PartialEq)]
pub struct GossipConfig {
    /// Authenticated (as associated data) in every packet: nodes of another cluster
    /// cannot talk to this one even if they share a key.
    pub cluster_name: String,
    /// Gossip addresses to join through and re-announce to. One is enough. The node's
    /// own address may be listed (it is skipped), so every node can share one list.
    pub seeds: Vec<SocketAddr>,
    pub timing: Timing,
    /// Largest datagram, sealing included: [`MIN_PACKET`]..=65507, [`MAX_PACKET`] by
    /// default. Keep it equal cluster-wide: larger datagrams are dropped as oversized.
    pub max_packet: usize,
    /// Where nodes without a configured subnet claim one. `None`: no claiming.
    pub subnet_pool: Option<SubnetPool>,
    /// Subnets held outside gossip's view (static peers that do not gossip, such as a
    /// kernel vxlan node): claims avoid them, and a claim that overlaps one is moved.
    pub reserved: Vec<Ipv4Net>,
}

impl GossipConfig {
    /// LAN timing, [`MAX_PACKET`], no subnet pool.
    pub fn new(cluster_name: impl Into<String>, seeds: Vec<SocketAddr>) -> Self {
        GossipConfig {
            cluster_name: cluster_name.into(),
            seeds,
            timing: Timing::lan(),
            max_packet: MAX_PACKET,
            subnet_pool: None,
            reserved: Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.timing.validate()?;
        if !(MIN_PACKET..=65_507).contains(&self.max_packet) {
            return Err(ConfigError::MaxPacket(self.max_packet));
        }
        if self.cluster_name.is_empty() {
            return Err(ConfigError::NoClusterName);
        }
        if let Some(pool) = self.subnet_pool
            && (pool.prefix < pool.cluster.prefix_len() || pool.prefix > 30)
        {
            return Err(ConfigError::SubnetPrefix);
        }
        Ok(())
    }
}

/// Why a gossip configuration cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("gossip timer {0} must be greater than zero")]
    ZeroTimer(&'static str),
    #[error("probe_timeout must be shorter than probe_interval")]
    ProbeTimeoutTooLong,
    #[error(
        "gossip timer {timer} is {} ms; it must be at most {} ms ({} days)",
        value.as_millis(),
        max.as_millis(),
        max.as_secs() / 86_400
    )]
    TimerTooLong {
        timer: &'static str,
        value: Duration,
        max: Duration,
    },
    #[error("gossip setting {setting} is {value}; it must be at most {max}")]
    TooLarge {
        setting: &'static str,
        value: usize,
        max: usize,
    },
    #[error("suspicion_mult, suspicion_max_mult and retransmit_mult must be at least 1")]
    ZeroMultiplier,
    #[error("max_packet {0} is outside {MIN_PACKET}..=65507")]
    MaxPacket(usize),
    #[error("cluster_name must not be empty")]
    NoClusterName,
    #[error(
        "the node subnet prefix must be at least the cluster CIDR's prefix length and at most /30"
    )]
    SubnetPrefix,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_valid() {
        Timing::lan().validate().unwrap();
        Timing::wan().validate().unwrap();
        GossipConfig::new("c", vec![]).validate().unwrap();
    }

    #[test]
    fn rejects_unworkable_timers() {
        let mut t = Timing::lan();
        t.probe_timeout = t.probe_interval;
        assert_eq!(t.validate(), Err(ConfigError::ProbeTimeoutTooLong));
        let mut t = Timing::lan();
        t.gossip_interval = Duration::ZERO;
        assert_eq!(t.validate(), Err(ConfigError::ZeroTimer("gossip_interval")));
        let mut c = GossipConfig::new("c", vec![]);
        c.max_packet = 100;
        assert_eq!(c.validate(), Err(ConfigError::MaxPacket(100)));
    }

    type SetTimer = fn(&mut Timing, Duration);
    type SetCount = fn(&mut Timing, usize);

    /// No timer or count can be large enough to overflow the core's arithmetic.
    #[test]
    fn rejects_extreme_timers_and_counts() {
        let week = Duration::from_secs(7 * 24 * 3600);
        let year = Duration::from_secs(365 * 24 * 3600);
        let huge = Duration::from_millis(u64::MAX);
        let cases: Vec<(SetTimer, &str)> = vec![
            (|t, d| t.probe_interval = d, "probe_interval"),
            (|t, d| t.gossip_interval = d, "gossip_interval"),
            (|t, d| t.push_pull_interval = d, "push_pull_interval"),
            (|t, d| t.reannounce_interval = d, "reannounce_interval"),
            (|t, d| t.dead_reap_after = d, "dead_reap_after"),
            (|t, d| t.stream_timeout = d, "stream_timeout"),
            (|t, d| t.claim_wait = d, "claim_wait"),
        ];
        for (set, name) in cases {
            let mut t = Timing::lan();
            set(&mut t, week);
            assert_eq!(t.validate(), Ok(()), "{name} at the bound");
            set(&mut t, week + Duration::from_millis(1));
            assert_eq!(
                t.validate(),
                Err(ConfigError::TimerTooLong {
                    timer: name,
                    value: week + Duration::from_millis(1),
                    max: week
                })
            );
            set(&mut t, huge);
            assert!(t.validate().is_err(), "{name}");
        }
        let mut t = Timing::lan();
        t.tombstone_gc_after = year;
        assert_eq!(t.validate(), Ok(()));
        t.tombstone_gc_after = year + Duration::from_millis(1);
        assert_eq!(
            t.validate(),
            Err(ConfigError::TimerTooLong {
                timer: "tombstone_gc_after",
                value: year + Duration::from_millis(1),
                max: year
            })
        );
        let counts: Vec<(SetCount, &str, usize)> = vec![
            (|t, v| t.indirect_probes = v, "indirect_probes", 64),
            (|t, v| t.gossip_fanout = v, "gossip_fanout", 64),
            (
                |t, v| t.suspicion_confirmations = v,
                "suspicion_confirmations",
                64,
            ),
            (|t, v| t.suspicion_mult = v as u32, "suspicion_mult", 100),
            (
                |t, v| t.suspicion_max_mult = v as u32,
                "suspicion_max_mult",
                100,
            ),
            (|t, v| t.retransmit_mult = v as u32, "retransmit_mult", 100),
            (|t, v| t.lhm_max = v as u32, "lhm_max", 64),
        ];
        for (set, name, max) in counts {
            let mut t = Timing::lan();
            set(&mut t, max);
            assert_eq!(t.validate(), Ok(()), "{name} at the bound");
            set(&mut t, max + 1);
            assert_eq!(
                t.validate(),
                Err(ConfigError::TooLarge {
                    setting: name,
                    value: max + 1,
                    max
                }),
                "{name}"
            );
            set(&mut t, u32::MAX as usize);
            assert!(t.validate().is_err(), "{name}");
        }
    }
}
