//! Where the daemon learns its peers: the static `[[peer]]` list, or the gossip task
//! (which adds the static peers to the members it knows). A source publishes the whole
//! current peer set on a watch channel.

use overlayd_config::schema::Peer;
use overlayd_proto::PeerInfo;
use overlayd_proto::wire::MacAddr;
use tokio::sync::watch;

/// Anything that can tell the daemon the current set of peers.
pub trait PeerSource: Send + Sync {
    /// The current peers, and every later change.
    fn subscribe(&self) -> watch::Receiver<Vec<PeerInfo>>;
}

/// The `[[peer]]` list of the config file.
pub struct StaticPeers {
    tx: watch::Sender<Vec<PeerInfo>>,
}

impl StaticPeers {
    pub fn new(peers: &[Peer]) -> Self {
        StaticPeers {
            tx: watch::Sender::new(peer_infos(peers)),
        }
    }
}

/// The data path's view of `[[peer]]` entries; a peer without a configured VTEP MAC has
/// the one derived from its name, as it derives it itself.
pub fn peer_infos(peers: &[Peer]) -> Vec<PeerInfo> {
    peers
        .iter()
        .map(|p| PeerInfo {
            name: p.name.clone(),
            underlay: p.underlay_address,
            pod_subnet: p.pod_subnet,
            vtep_mac: p
                .vtep_mac
                .unwrap_or_else(|| MacAddr::vtep_for_node(&p.name)),
            zone: String::new(),
            quic_port: None,
            cert_fingerprint: None,
            relay: false,
        })
        .collect()
}

impl PeerSource for StaticPeers {
    fn subscribe(&self) -> watch::Receiver<Vec<PeerInfo>> {
        self.tx.subscribe()
    }
}
