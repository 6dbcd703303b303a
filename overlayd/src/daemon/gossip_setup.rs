//! Starting gossip for `overlayd run`: keys, seeds, the local record, the subnet claim.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::Ipv4Net;
use overlayd_config::schema::{Config, Gossip as GossipConfigFile};
use overlayd_proto::gossip::{Gossip, GossipConfig, Hlc, Keyring, NodeRecord};

use super::Local;
use crate::gossip::{self, GossipHandle, GossipSetup, SubnetClaim};

/// Capabilities this build announces to the cluster.
const CAPABILITIES: &[&str] = &["vxlan", overlayd_proto::gossip::RELAY_CAPABILITY];

/// How long a seed's DNS name is retried before the node starts without it.
const SEED_RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn start(
    cfg: &Config,
    g: &GossipConfigFile,
    local: &Local,
    services: (crate::services::ServiceState, crate::services::Commands),
) -> Result<(GossipHandle, tokio::task::JoinHandle<Result<()>>)> {
    let keys = crate::keys::load_all(&g.key_files)?;
    let (primary, rest) = keys
        .split_first()
        .ok_or_else(|| anyhow!("gossip.key_files is empty"))?;
    let mut keyring = Keyring::new(primary.clone());
    for key in rest {
        keyring.install(key.clone());
    }

    let advertise = cfg
        .gossip_advertise(local.underlay_addr)
        .ok_or_else(|| anyhow!("[gossip] is not configured"))?;
    let seeds = resolve_seeds(g).await;
    if !g.seeds.is_empty() && seeds.is_empty() {
        tracing::warn!("no seed resolved; waiting to be found by other nodes");
    }

    let tunnel_addr = cfg.node.advertise_address.unwrap_or(local.underlay_addr);
    let mut record = NodeRecord::new(
        &cfg.node.name,
        SocketAddr::V4(advertise),
        tunnel_addr,
        cfg.node.pod_subnet,
    );
    record.advertise = tunnel_addr;
    record.vtep_mac = local.vtep_mac;
    record.zone = cfg.node.zone.clone();
    record.capabilities = CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
    if let Some(q) = &cfg.quic {
        record.capabilities.push(format!(
            "{}{}",
            overlayd_proto::gossip::QUIC_CAPABILITY,
            q.port
        ));
        // The certificate peers must see from us (checked when the QUIC endpoint
        // starts, which fails the start if it would be refused).
        match crate::pki::cert_file_fingerprint(&q.cert) {
            Ok(fp) => record.set_cert_fingerprint(Some(fp)),
            Err(e) => tracing::warn!("[quic] cert: {e:#}"),
        }
    }
    record.subnet_static = cfg.node.pod_subnet.is_some();
    if cfg.node.pod_subnet.is_none() {
        match SubnetClaim::load(&cfg.daemon.state_dir)? {
            Some(claim) if cfg.cluster.cidr.contains(&claim.subnet) => {
                tracing::info!(subnet = %claim.subnet, "keeping the subnet claimed before the restart");
                record.pod_subnet = Some(claim.subnet);
                record.subnet_claimed_at = Hlc(claim.claimed_at);
            }
            Some(claim) => {
                tracing::warn!(subnet = %claim.subnet, "the persisted claim is outside cluster.cidr; claiming anew")
            }
            None => {}
        }
    }

    let mut config = GossipConfig::new(cfg.cluster.name.clone(), seeds);
    config.timing = g.timing();
    config.subnet_pool = Some(cfg.cluster.subnet_pool());
    config.reserved = cfg.peers.iter().map(|p| p.pod_subnet).collect();
    let stream_timeout = config.timing.stream_timeout;
    let generation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    let core = Gossip::new(
        config,
        record,
        keyring,
        generation,
        crate::keys::random_u64()?,
        Instant::now(),
        gossip::wall_clock_ms(),
    )
    .context("starting gossip")?;
    let static_peers = crate::discovery::peer_infos(&cfg.peers);
    gossip::start(GossipSetup {
        gossip: core,
        bind: SocketAddr::V4(g.bind),
        state_dir: cfg.daemon.state_dir.clone(),
        static_peers,
        stream_timeout,
        services,
    })
    .await
}

/// Resolves every seed to an IPv4 socket address; names that do not resolve within
/// [`SEED_RESOLVE_TIMEOUT`] are skipped with a warning.
async fn resolve_seeds(g: &GossipConfigFile) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for seed in g.seed_addrs() {
        let deadline = Instant::now() + SEED_RESOLVE_TIMEOUT;
        loop {
            match tokio::net::lookup_host((seed.host.as_str(), seed.port)).await {
                Ok(mut addrs) => {
                    if let Some(addr) = addrs.find(|a| matches!(a.ip(), IpAddr::V4(_))) {
                        out.push(addr);
                        break;
                    }
                    tracing::warn!(seed = %seed.host, "no IPv4 address for this seed");
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(seed = %seed.host, "resolving: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::warn!(seed = %seed.host, "cannot resolve this seed, starting without it: {e}");
                    break;
                }
            }
        }
    }
    out
}

/// Waits until gossip has claimed a subnet for this node (a persisted claim is there at
/// once; a new one takes the claim wait of the timing profile).
pub(super) async fn wait_for_subnet(cfg: &Config, handle: &GossipHandle) -> Result<Ipv4Net> {
    let wait = cfg
        .gossip
        .as_ref()
        .map_or(Duration::from_secs(5), |g| g.timing().claim_wait);
    let limit = wait * 3 + Duration::from_secs(10);
    let mut subnet = handle.subnet();
    if subnet.borrow().is_none() {
        tracing::info!(
            "no pod subnet configured: claiming one from {} by gossip",
            cfg.cluster.cidr
        );
    }
    let claimed = tokio::time::timeout(limit, subnet.wait_for(|s| s.is_some()))
        .await
        .map_err(|_| {
            anyhow!("no pod subnet could be claimed within {limit:?}; is cluster.cidr full?")
        })?
        .map_err(|_| anyhow!("gossip stopped before a subnet was claimed"))?;
    match *claimed {
        Some(net) => Ok(net),
        None => bail!("no pod subnet"),
    }
}
