//! The daemon's Services data path: keeps the proxy's listeners and balancers, the DNS
//! responder's table and this node's LoadBalancer addresses in step with the resolved
//! Services and the peers, and answers the API's Service requests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use overlayd_config::Dataplane;
use overlayd_proto::api::{self, ServiceReport};
use overlayd_proto::service::frontend::{self, Frontend, FrontendAddr, LocalNode};
use overlayd_proto::service::{ServiceTable, ServiceType, kernel, lb};
use tokio::sync::watch;

use super::Shared;

/// How often listeners that failed to bind are retried, and LoadBalancer addresses
/// re-checked, when nothing changed.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

/// The longest a changed table waits for the previous pass's pacing.
const MAX_PACE: Duration = Duration::from_secs(2);

/// Gratuitous ARP announcements sent when this node takes a LoadBalancer IP.
const GARP_COUNT: usize = 3;

/// Serves every change of the Service table, and every peer change (LoadBalancer IPs
/// follow the live members of the segment).
pub(super) async fn serve(
    shared: Arc<Shared>,
    mut table: watch::Receiver<Arc<ServiceTable>>,
) -> Result<()> {
    let mut retry = false;
    let mut served: Option<Arc<ServiceTable>> = None;
    let mut kernel_path = KernelPath::default();
    let mut frontends = BTreeMap::new();
    if shared.cfg.services.dataplane != Dataplane::Kernel {
        // A kernel data path a run before this one installed would take the proxy's
        // connections: it goes.
        if let Err(e) = crate::nft::install_services(&kernel::remove_script()) {
            tracing::debug!("removing a kernel Services table: {e:#}");
        }
    }
    // How long the last pass over a changed table took: the next waits twice that, so a
    // stream of changes (a bulk load of 10 000 Services) is served in coalesced passes
    // rather than one O(Services) pass per change, which starved every other task.
    let mut took = Duration::ZERO;
    loop {
        let current = table.borrow_and_update().clone();
        let changed = served.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &current));
        let started = std::time::Instant::now();
        if changed || retry {
            frontends = frontend::frontends(
                &current,
                &LocalNode {
                    underlay: shared.local.underlay_addr,
                },
            );
            let outcome = shared.proxy.update(current.clone(), frontends.clone());
            for (addr, error) in &outcome.failed {
                tracing::warn!(frontend = %addr, "cannot listen (retrying): {error}");
            }
            retry = !outcome.failed.is_empty();
            if let Some(dns) = &shared.dns {
                dns.set_table(current.clone());
            }
            // New or gone VIPs: their local routes follow at once.
            let vips_changed = served.as_ref().is_none_or(|s| s.vips() != current.vips());
            if vips_changed {
                shared.reconcile_now.notify_one();
            }
            served = Some(current.clone());
            took = started.elapsed();
        }
        if let Err(e) = sync_lb(&shared, &current).await {
            tracing::warn!("LoadBalancer addresses: {e:#}");
        }
        if shared.cfg.services.dataplane == Dataplane::Kernel {
            kernel_path.sync(&shared, &current, &frontends);
        }
        tokio::select! {
            changed = table.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                tokio::time::sleep((2 * took).min(MAX_PACE)).await;
            }
            _ = shared.services_now.notified() => {}
            _ = shared.proxy.health_changed() => {}
            _ = tokio::time::sleep(RESYNC_INTERVAL) => {}
        }
    }
}

/// The kernel data path as last installed.
#[derive(Default)]
struct KernelPath {
    script: Option<String>,
}

impl KernelPath {
    /// Installs the plan for the table, this node's frontends and the backends' health
    /// now, if it differs from what is installed. On failure the proxy, which listens on
    /// every Service address all along, serves everything; retried at the next pass.
    fn sync(
        &mut self,
        shared: &Shared,
        table: &ServiceTable,
        frontends: &BTreeMap<FrontendAddr, Frontend>,
    ) {
        let net = kernel::Network {
            local_pods: shared.subnet().net,
            cluster: shared.cfg.cluster.cidr,
        };
        let plan = kernel::plan(table, frontends, &net, |k| shared.proxy.usable(k));
        if self.script.as_deref() == Some(plan.script.as_str()) {
            return;
        }
        match crate::nft::install_services(&plan.script) {
            Ok(()) => {
                tracing::info!(
                    kernel = plan.served.len(),
                    proxy = plan.proxied.len(),
                    "Service ports on the kernel data path"
                );
                for ((key, port), why) in &plan.proxied {
                    tracing::debug!(service = %key, port, why = why.as_str(), "left to the proxy");
                }
                self.script = Some(plan.script);
            }
            Err(e) => {
                tracing::warn!(
                    "installing the Services' nftables table (the proxy serves meanwhile): {e:#}"
                );
                self.script = None;
            }
        }
    }
}

/// Holds exactly the LoadBalancer IPs this node is the holder of: for each active
/// LoadBalancer Service's external IP on this node's segment (inside a subnet of the
/// underlay interface), the candidates are this node and the peers on the segment, and
/// `lb::holder` picks one — the same one on every node of the segment. A newly taken
/// address is announced with gratuitous ARP.
async fn sync_lb(shared: &Shared, table: &ServiceTable) -> Result<()> {
    let ips: BTreeSet<Ipv4Addr> = table
        .iter()
        .filter(|s| s.kind == ServiceType::LoadBalancer && s.is_active())
        .filter_map(|s| s.external_ip)
        .collect();
    // Who may hold an IP: overlayd nodes that gossip says are up (a static peer may be a
    // kernel vxlan node, which cannot hold one). Without gossip nobody can tell who is
    // alive, so nobody holds one (two nodes would take the same IP).
    let live: BTreeSet<String> = match &shared.gossip {
        Some(handle) if !ips.is_empty() => handle
            .members()
            .await?
            .into_iter()
            .filter(|m| m.state.is_up())
            .map(|m| m.name)
            .collect(),
        _ => BTreeSet::new(),
    };
    let on_link_peers: Vec<String> = shared
        .peers
        .lock()
        .map_err(|_| anyhow::anyhow!("peer list lock poisoned"))?
        .admitted
        .iter()
        .filter(|p| p.on_link && live.contains(&p.peer.name))
        .map(|p| p.peer.name.clone())
        .collect();
    let underlay = shared.local.underlay.index;
    let mut holders = BTreeMap::new();
    let mut wanted = BTreeSet::new();
    let addresses: Vec<(Ipv4Addr, u8)> = shared
        .nl
        .ipv4_addrs(Some(underlay))
        .await?
        .into_iter()
        .map(|(_, ip, prefix)| (ip, prefix))
        .collect();
    for ip in ips {
        if !lb::on_segment(ip, &addresses) || shared.gossip.is_none() {
            // Not this node's segment (its holder is decided there), or no gossip.
            holders.insert(ip, None);
            continue;
        }
        let candidates = std::iter::once(shared.local.name.as_str())
            .chain(on_link_peers.iter().map(String::as_str));
        let holder = lb::holder(ip, candidates).map(str::to_owned);
        if holder.as_deref() == Some(shared.local.name.as_str()) {
            wanted.insert(ip);
        }
        holders.insert(ip, holder);
    }
    *shared.lb_holders.lock().unwrap_or_else(|e| e.into_inner()) = holders;

    let held: BTreeSet<Ipv4Addr> = shared.nl.owned_addrs(underlay).await?.into_iter().collect();
    for ip in wanted.difference(&held) {
        shared.nl.add_owned_addr(underlay, *ip).await?;
        tracing::info!(%ip, "took the LoadBalancer IP");
        if let Some(mac) = shared.local.underlay.mac
            && let Err(e) = crate::arp::announce(underlay, mac, *ip, GARP_COUNT)
        {
            tracing::warn!(%ip, "announcing the LoadBalancer IP: {e:#}");
        }
    }
    for ip in held.difference(&wanted) {
        shared.nl.delete_addr(underlay, *ip).await?;
        tracing::info!(%ip, "gave up the LoadBalancer IP");
    }
    Ok(())
}

/// Removes every LoadBalancer IP this node holds (a stop that removes the data path).
pub(super) async fn release_lb(shared: &Shared) -> Result<()> {
    let underlay = shared.local.underlay.index;
    for ip in shared.nl.owned_addrs(underlay).await? {
        shared.nl.delete_addr(underlay, ip).await?;
    }
    Ok(())
}

/// `overlayd services`: the table with the proxy's view of each Service's ports.
pub(super) fn report(shared: &Shared) -> api::ServicesReport {
    let table = shared.services.table().borrow().clone();
    let mut ports: BTreeMap<_, Vec<api::PortReport>> = BTreeMap::new();
    for port in shared.proxy.report().ports {
        ports
            .entry(port.key.service.clone())
            .or_default()
            .push(port);
    }
    let holders = shared
        .lb_holders
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let services = table
        .iter()
        .map(|s| ServiceReport {
            lb_holder: s
                .external_ip
                .and_then(|ip| holders.get(&ip).cloned().flatten()),
            ports: ports.remove(&s.key).unwrap_or_default(),
            service: s.clone(),
        })
        .collect();
    api::ServicesReport { services }
}
