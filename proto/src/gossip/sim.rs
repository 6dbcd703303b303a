//! Deterministic simulation of many gossip nodes: a fake clock (a base `Instant` plus
//! offsets), a network with per-packet loss, delay and jitter, partitions and crashes,
//! all drawn from one seed. The driver jumps time to the earliest delivery or timer.
//!
//! `cargo test -p overlayd-proto gossip::sim` runs the scenarios;
//! `cargo test -p overlayd-proto --release -- --ignored gossip_report --nocapture` prints
//! the measurements recorded in docs/gossip.md.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;

/// Unix ms at simulation start.
const WALL0: u64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
pub(crate) struct NetConfig {
    pub(crate) loss: f64,
    pub(crate) delay: Duration,
    pub(crate) jitter: Duration,
    /// Extra loss of packets *to* a node (a degraded receiver), by node index.
    pub(crate) inbound_loss: BTreeMap<usize, f64>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            loss: 0.0,
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(1),
            inbound_loss: BTreeMap::new(),
        }
    }
}

#[derive(Debug)]
enum Delivery {
    Datagram {
        to: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    StreamRequest {
        server: usize,
        client: usize,
        request: Vec<u8>,
    },
    StreamResponse {
        client: usize,
        bytes: Vec<u8>,
    },
    StreamFailed {
        client: usize,
        server: SocketAddr,
    },
}

/// What a node saw, compact (no records), for timing assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    Up(String),
    Updated(String),
    Down(String, DownReason),
    Object(String, Option<Vec<u8>>),
    Subnet(Ipv4Net),
    Exhausted,
    Conflict(SocketAddr),
}

pub(crate) struct SimNode {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    pub(crate) gossip: Option<Gossip>,
    pub(crate) crashed: bool,
    pub(crate) group: u32,
    pub(crate) keyring: Keyring,
    pub(crate) seen: Vec<(Instant, Seen)>,
    pub(crate) tx_bytes: u64,
    pub(crate) tx_packets: u64,
    /// Wall clock skew of this node, ms.
    pub(crate) skew_ms: i64,
    /// Start time (nodes join staggered).
    pub(crate) start_at: Instant,
    pub(crate) boots: u64,
    pub(crate) initial: NodeRecord,
}

pub(crate) struct Sim {
    pub(crate) base: Instant,
    pub(crate) now: Instant,
    pub(crate) rng: StdRng,
    pub(crate) net: NetConfig,
    pub(crate) config: GossipConfig,
    pub(crate) nodes: Vec<SimNode>,
    by_addr: BTreeMap<SocketAddr, usize>,
    deliveries: BTreeMap<(Instant, u64), Delivery>,
    timers: BTreeSet<(Instant, usize)>,
    timer_of: Vec<Option<Instant>>,
    next_id: u64,
    pub(crate) keep_events: bool,
    /// Copies of every datagram a node sent, for replay tests.
    pub(crate) capture: Option<Vec<(usize, SocketAddr, Vec<u8>)>>,
    /// One-way cuts: datagrams from the first node to the second are lost.
    pub(crate) one_way: BTreeSet<(usize, usize)>,
}

pub(crate) fn node_name(i: usize) -> String {
    format!("node-{i:04}")
}

pub(crate) fn node_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250 + 1) as u8], 7946))
}

pub(crate) fn cluster_key() -> SecretKey {
    SecretKey([42; 32])
}

impl Sim {
    /// `n` nodes; node 0 is the seed everyone joins through. Nodes start spread over
    /// `join_spread`.
    pub(crate) fn new(
        seed: u64,
        n: usize,
        config: GossipConfig,
        net: NetConfig,
        join_spread: Duration,
    ) -> Sim {
        let base = Instant::now();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut config = config;
        config.seeds = vec![node_addr(0)];
        let mut nodes = Vec::with_capacity(n);
        let mut by_addr = BTreeMap::new();
        for i in 0..n {
            let addr = node_addr(i);
            by_addr.insert(addr, i);
            let start_at = if i == 0 {
                base
            } else {
                base + join_spread.mul_f64(rng.random::<f64>())
            };
            let record = NodeRecord::new(
                node_name(i),
                addr,
                Ipv4Addr::new(192, 168, (i / 250) as u8, (i % 250 + 1) as u8),
                None,
            );
            nodes.push(SimNode {
                name: node_name(i),
                addr,
                gossip: None,
                crashed: false,
                group: 0,
                keyring: Keyring::new(cluster_key()),
                seen: Vec::new(),
                tx_bytes: 0,
                tx_packets: 0,
                skew_ms: 0,
                start_at,
                boots: 0,
                initial: record,
            });
        }
        let mut sim = Sim {
            base,
            now: base,
            rng,
            net,
            config,
            timers: BTreeSet::new(),
            timer_of: vec![None; n],
            nodes,
            by_addr,
            deliveries: BTreeMap::new(),
            next_id: 0,
            keep_events: true,
            capture: None,
            one_way: BTreeSet::new(),
        };
        for i in 0..n {
            let at = sim.nodes[i].start_at;
            sim.set_timer(i, Some(at));
        }
        sim
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    pub(crate) fn set_timer(&mut self, i: usize, t: Option<Instant>) {
        if let Some(old) = self.timer_of[i].take() {
            self.timers.remove(&(old, i));
        }
        if let Some(t) = t {
            self.timers.insert((t, i));
            self.timer_of[i] = Some(t);
        }
    }

    pub(crate) fn wall_ms(&self, i: usize) -> u64 {
        let ms = (self.now - self.base).as_millis() as i64 + self.nodes[i].skew_ms;
        (WALL0 as i64 + ms) as u64
    }

    /// Boots node `i` now (again, if it ran before: a restart with a new generation).
    pub(crate) fn boot(&mut self, i: usize, record: NodeRecord) {
        let generation = self.wall_ms(i) * 1000 + self.nodes[i].boots;
        self.nodes[i].boots += 1;
        let seed = self.rng.random::<u64>();
        let g = Gossip::new(
            self.config.clone(),
            record,
            self.nodes[i].keyring.clone(),
            generation,
            seed,
            self.now,
            self.wall_ms(i),
        )
        .expect("valid sim config");
        self.nodes[i].gossip = Some(g);
        self.nodes[i].crashed = false;
        self.drain(i);
    }

    /// Stops node `i` dead: no more packets in or out, no timers.
    pub(crate) fn crash(&mut self, i: usize) {
        self.nodes[i].crashed = true;
        self.nodes[i].gossip = None;
        self.set_timer(i, None);
    }

    pub(crate) fn gossip(&self, i: usize) -> &Gossip {
        self.nodes[i].gossip.as_ref().expect("node running")
    }

    pub(crate) fn gossip_mut(&mut self, i: usize) -> &mut Gossip {
        self.nodes[i].gossip.as_mut().expect("node running")
    }

    /// Runs `f` on node `i` at the current time and carries out what it produced.
    pub(crate) fn with<R>(&mut self, i: usize, f: impl FnOnce(&mut Gossip, Instant) -> R) -> R {
        let now = self.now;
        let r = f(self.gossip_mut(i), now);
        self.drain(i);
        r
    }

    pub(crate) fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].gossip.is_some() && !self.nodes[i].crashed)
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].group == self.nodes[b].group
    }

    fn latency(&mut self) -> Duration {
        self.net.delay + self.net.jitter.mul_f64(self.rng.random::<f64>())
    }

    fn schedule(&mut self, at: Instant, d: Delivery) {
        self.next_id += 1;
        self.deliveries.insert((at, self.next_id), d);
    }

    /// Moves node `i`'s output onto the network and its events into its log.
    fn drain(&mut self, i: usize) {
        let Some(g) = self.nodes[i].gossip.as_mut() else {
            return;
        };
        let mut transmits = Vec::new();
        while let Some(t) = g.poll_transmit() {
            transmits.push(t);
        }
        let mut streams = Vec::new();
        while let Some(s) = g.poll_stream() {
            streams.push(s);
        }
        let mut events = Vec::new();
        while let Some(e) = g.poll_event() {
            events.push(e);
        }
        let next = g.poll_timeout();
        self.set_timer(i, next);
        let from = self.nodes[i].addr;
        for t in transmits {
            assert!(
                t.payload.len() <= self.config.max_packet,
                "datagram of {} bytes",
                t.payload.len()
            );
            self.nodes[i].tx_bytes += t.payload.len() as u64;
            self.nodes[i].tx_packets += 1;
            if let Some(c) = self.capture.as_mut() {
                c.push((i, t.dst, t.payload.clone()));
            }
            let Some(&to) = self.by_addr.get(&t.dst) else {
                continue;
            };
            let loss = self
                .net
                .loss
                .max(self.net.inbound_loss.get(&to).copied().unwrap_or(0.0));
            if !self.reachable(i, to)
                || self.one_way.contains(&(i, to))
                || self.rng.random::<f64>() < loss
            {
                continue;
            }
            let at = self.now + self.latency();
            self.schedule(
                at,
                Delivery::Datagram {
                    to,
                    from,
                    bytes: t.payload,
                },
            );
        }
        for s in streams {
            let target = self.by_addr.get(&s.to).copied();
            let at = self.now + self.latency();
            match target {
                Some(server) if self.reachable(i, server) && !self.nodes[server].crashed => {
                    self.schedule(
                        at,
                        Delivery::StreamRequest {
                            server,
                            client: i,
                            request: s.request,
                        },
                    );
                }
                _ => {
                    let at = self.now + Duration::from_secs(1);
                    self.schedule(
                        at,
                        Delivery::StreamFailed {
                            client: i,
                            server: s.to,
                        },
                    );
                }
            }
        }
        if self.keep_events {
            let now = self.now;
            for e in events {
                let seen = match e {
                    Event::MemberUp(r) => Seen::Up(r.name),
                    Event::MemberUpdated(r) => Seen::Updated(r.name),
                    Event::MemberDown { name, reason } => Seen::Down(name, reason),
                    Event::ObjectChanged { key, value } => Seen::Object(key, value),
                    Event::LocalSubnetChanged { subnet, .. } => Seen::Subnet(subnet),
                    Event::SubnetPoolExhausted => Seen::Exhausted,
                    Event::NameConflict { addr } => Seen::Conflict(addr),
                };
                self.nodes[i].seen.push((now, seen));
            }
        }
    }

    /// Advances to `end`, delivering packets and firing timers in time order.
    pub(crate) fn run_until(&mut self, end: Instant) {
        loop {
            let next_delivery = self.deliveries.keys().next().map(|(t, _)| *t);
            let next_timer = self.timers.iter().next().map(|(t, _)| *t);
            let next = match (next_delivery, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if next_delivery == Some(next) {
                let Some((_, d)) = self.deliveries.pop_first() else {
                    break;
                };
                self.deliver(d);
            } else {
                let Some((_, i)) = self.timers.pop_first() else {
                    break;
                };
                self.timer_of[i] = None;
                self.fire(i);
            }
        }
        self.now = self.now.max(end);
    }

    /// Runs until `pred` holds (checked every `step`) or `limit` passes. Returns the
    /// elapsed time from the call when it held.
    pub(crate) fn run_until_pred(
        &mut self,
        limit: Duration,
        step: Duration,
        mut pred: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        while self.now < start + limit {
            if pred(self) {
                return Some(self.now - start);
            }
            let next = self.now + step;
            self.run_until(next);
        }
        pred(self).then(|| self.now - start)
    }

    fn fire(&mut self, i: usize) {
        if self.nodes[i].crashed {
            return;
        }
        if self.nodes[i].gossip.is_none() {
            let record = self.nodes[i].initial.clone();
            self.boot(i, record);
            return;
        }
        let now = self.now;
        if let Some(g) = self.nodes[i].gossip.as_mut() {
            g.handle_timeout(now);
        }
        self.drain(i);
    }

    fn deliver(&mut self, d: Delivery) {
        let now = self.now;
        match d {
            Delivery::Datagram { to, from, bytes } => {
                if self.nodes[to].crashed {
                    return;
                }
                let Some(g) = self.nodes[to].gossip.as_mut() else {
                    return;
                };
                g.handle_datagram(now, from, &bytes);
                self.drain(to);
            }
            Delivery::StreamRequest {
                server,
                client,
                request,
            } => {
                let lat = self.latency();
                let reachable = self.reachable(server, client);
                let crashed = self.nodes[server].crashed;
                let response = match self.nodes[server].gossip.as_mut() {
                    Some(g) if !crashed => g.serve_stream(now, &request).ok(),
                    _ => None,
                };
                self.drain(server);
                let server_addr = self.nodes[server].addr;
                match response {
                    Some(bytes) if reachable => {
                        self.schedule(now + lat, Delivery::StreamResponse { client, bytes })
                    }
                    _ => self.schedule(
                        now + lat,
                        Delivery::StreamFailed {
                            client,
                            server: server_addr,
                        },
                    ),
                }
            }
            Delivery::StreamResponse { client, bytes } => {
                let Some(g) = self.nodes[client].gossip.as_mut() else {
                    return;
                };
                g.handle_stream_response(now, &bytes);
                self.drain(client);
            }
            Delivery::StreamFailed { client, server } => {
                let Some(g) = self.nodes[client].gossip.as_mut() else {
                    return;
                };
                g.handle_stream_failed(now, server);
                self.drain(client);
            }
        }
    }

    /// Splits the network: node `i` can only reach nodes with the same group.
    pub(crate) fn partition(&mut self, group_of: impl Fn(usize) -> u32) {
        for i in 0..self.nodes.len() {
            self.nodes[i].group = group_of(i);
        }
    }

    pub(crate) fn heal(&mut self) {
        self.partition(|_| 0);
    }

    /// Every running node sees every other running node alive with its current record,
    /// and nothing else up.
    pub(crate) fn converged(&self) -> bool {
        if self.nodes.iter().any(|n| !n.crashed && n.gossip.is_none()) {
            return false;
        }
        let running: Vec<usize> = self.running().collect();
        running.iter().all(|&i| self.sees_exactly(i, &running))
    }

    pub(crate) fn sees_exactly(&self, i: usize, expected: &[usize]) -> bool {
        let g = self.gossip(i);
        let up = g
            .members()
            .filter(|m| m.state.is_up() && !m.is_local)
            .count();
        up == expected.len() - 1
            && expected.iter().filter(|&&j| j != i).all(|&j| {
                let want = self.gossip(j).local();
                g.member(&self.nodes[j].name)
                    .is_some_and(|m| m.state == MemberState::Alive && m.record == Some(want))
            })
    }

    /// True iff every running node holds `name` in one of `states`.
    pub(crate) fn all_see(&self, name: &str, states: &[MemberState]) -> bool {
        self.running()
            .filter(|&i| self.nodes[i].name != name)
            .all(|i| {
                self.gossip(i)
                    .member(name)
                    .is_some_and(|m| states.contains(&m.state))
            })
    }

    /// Number of (observer, member) pairs where a running member was declared down by a
    /// running observer — false positives when nothing crashed.
    pub(crate) fn false_downs(&self) -> usize {
        self.running()
            .map(|i| {
                self.nodes[i]
                    .seen
                    .iter()
                    .filter(|(_, s)| matches!(s, Seen::Down(_, DownReason::Dead)))
                    .count()
            })
            .sum()
    }

    /// An envelope from `sender` for node `to`, sealed with the cluster key: what any key
    /// holder can send, whatever it claims.
    pub(crate) fn forge(
        &self,
        to: usize,
        sender: &str,
        generation: u64,
        seq: u64,
        messages: &[message::Message],
    ) -> Vec<u8> {
        let header = message::Header {
            channel: message::Channel::Datagram,
            sender: sender.to_owned(),
            recipient: message::recipient_id(&self.nodes[to].name),
            generation,
            seq,
        };
        let mut w = codec::Writer::new();
        header.encode(&mut w);
        for m in messages {
            // Out-of-bounds messages are the point of some forgeries: written as is.
            let _ = m.encode(&mut w);
        }
        let mut nonce = [0xa5; 24];
        nonce[16..].copy_from_slice(&seq.to_be_bytes());
        Keyring::new(cluster_key()).seal(&self.config.cluster_name, nonce, &w.buf)
    }

    pub(crate) fn total_drops(&self, reason: GossipDrop) -> u64 {
        self.running()
            .map(|i| self.gossip(i).stats().drop_count(reason))
            .sum()
    }
}

/// Lan timing with a config for `n` nodes.
pub(crate) fn lan_config() -> GossipConfig {
    GossipConfig::new("sim-cluster", vec![])
}

#[cfg(test)]
mod tests;
