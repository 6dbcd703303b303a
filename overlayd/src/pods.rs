//! Pods: a network namespace attached to the node bridge by a veth pair, with an address
//! from the node's pod subnet. Records persist in `STATE_DIR/pods.json`; an address held
//! by a record is never handed out again until the pod is deleted, across restarts too.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use overlayd_proto::ipam::{IpamError, PodIpam};
use overlayd_proto::pod::{host_veth_name, validate_pod_name};
use overlayd_proto::service::codec::{PodEndpoint, validate_pod_labels};
use serde::{Deserialize, Serialize};

pub use overlayd_proto::api::PodRecord;

use crate::netlink::Netlink;
use crate::netns;

/// Name of the pod's interface inside its namespace.
pub const POD_IFNAME: &str = "eth0";

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    /// The last address handed out, so allocation resumes after it.
    cursor: Option<Ipv4Addr>,
    pods: BTreeMap<String, PodRecord>,
}

/// What [`Pods::renumber`] left undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renumbered {
    /// Pods that found no free address in the subnet.
    pub waiting: usize,
    /// Pods that have an address waiting but could not be re-addressed (yet).
    pub failed: usize,
}

/// The node's pods, their addresses and the file that keeps them.
pub struct Pods {
    path: PathBuf,
    ipam: PodIpam,
    pods: BTreeMap<String, PodRecord>,
    /// Pods recorded with an address outside the current subnet, to be moved into it.
    strays: Vec<PodRecord>,
    bridge: u32,
    mtu: u32,
    /// What pods' resolv.conf says, when the node runs the cluster DNS.
    dns: Option<PodDns>,
}

/// The DNS a pod is given: the node's responder (its bridge gateway) and the cluster
/// domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDns {
    pub nameserver: Ipv4Addr,
    pub domain: String,
}

/// Where `ip netns exec NAME` finds a namespace's own /etc files.
const ETC_NETNS: &str = "/etc/netns";
/// The first line of a resolv.conf the daemon wrote: it rewrites or removes only these.
const RESOLV_CONF_MARK: &str = "# overlayd:";

impl Pods {
    /// Loads `state_dir/pods.json` (absent means no pods) and rebuilds the allocator.
    pub fn load(state_dir: &Path, ipam: PodIpam, bridge: u32, mtu: u32) -> Result<Self> {
        let path = state_dir.join("pods.json");
        let file: StoreFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is corrupt; move it away to start without pods",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoreFile::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut pods = Pods {
            path,
            ipam,
            pods: BTreeMap::new(),
            strays: Vec::new(),
            bridge,
            mtu,
            dns: None,
        };
        for (name, record) in file.pods {
            match pods.ipam.restore(record.ip, &name) {
                Ok(()) => {
                    pods.pods.insert(name, record);
                }
                // The node's subnet changed while the daemon was down: move the pod.
                Err(IpamError::OutOfRange { .. }) => pods.strays.push(record),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("pod {name} in {}", pods.path.display()));
                }
            }
        }
        if let Some(cursor) = file.cursor {
            pods.ipam.set_cursor(cursor);
        }
        Ok(pods)
    }

    /// Every recorded pod, also those still waiting to be moved into the subnet.
    pub fn list(&self) -> Vec<PodRecord> {
        self.pods.values().chain(&self.strays).cloned().collect()
    }

    /// The pods as Service endpoints, by name: those with an address in the subnet (a pod
    /// waiting to be moved is unreachable and no backend).
    pub fn endpoints(&self) -> BTreeMap<String, PodEndpoint> {
        self.pods
            .iter()
            .map(|(name, pod)| {
                (
                    name.clone(),
                    PodEndpoint {
                        ip: pod.ip,
                        labels: pod.labels.clone(),
                    },
                )
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Re-attaches the host side of every recorded pod to the bridge (after a restart the
    /// bridge may be new), and moves pods recorded in an older subnet into the current
    /// one. Pods whose veth is gone are reported and keep their address.
    pub async fn reattach(&mut self, nl: &Netlink) -> Result<()> {
        if !self.strays.is_empty() {
            let left = self.renumber(self.ipam.subnet()).await?;
            if left.failed > 0 {
                tracing::error!(
                    "{} pods could not be moved into {}; they keep their old address until the \
                     next start, subnet change or pod deletion",
                    left.failed,
                    self.ipam.subnet()
                );
            }
        }
        // Pods still waiting for an address stay recorded: the daemon runs on, so that they
        // can be deleted (which makes room for the others).
        let mut gone = Vec::new();
        for pod in self.pods.values() {
            match nl.link_by_name(&pod.veth).await? {
                Some(link) => {
                    nl.set_link(link.index, Some(self.mtu), Some(self.bridge), true)
                        .await?;
                    nl.set_hairpin(link.index).await?
                }
                None => gone.push(pod.name.clone()),
            }
        }
        for name in gone {
            if let Err(e) = self.replumb(nl, &name).await {
                tracing::warn!(
                    pod = %name,
                    "the pod's veth is gone and it could not be made again ({e:#}); its address \
                     stays reserved until `overlayd pod del {name}`"
                );
            }
        }
        Ok(())
    }

    /// Makes a pod whose veth is gone again, with its address: in its namespace if that
    /// is still the one it was added with; in a new one if the daemon made the namespace
    /// and it is gone (a reboot, or a restarted container: the bind mount went with the
    /// mount namespace, a stale file may remain). A namespace the daemon did not make and
    /// that is gone is not guessed at.
    async fn replumb(&mut self, nl: &Netlink, name: &str) -> Result<()> {
        let Some(pod) = self.pods.get(name).cloned() else {
            return Ok(());
        };
        let live = netns::inode_of(&pod.netns)
            .ok()
            .filter(|ino| pod.netns_inode.is_none_or(|want| *ino == want));
        let pod = match live {
            Some(_) => pod,
            None if pod.netns_owned => {
                let file = pod
                    .netns
                    .file_name()
                    .and_then(|f| f.to_str())
                    .with_context(|| format!("{} names no namespace", pod.netns.display()))?
                    .to_owned();
                netns::delete(&pod.netns)?;
                let path = netns::create(&file)?;
                let inode = netns::inode_of(&path)?;
                PodRecord {
                    netns: path,
                    netns_inode: Some(inode),
                    ..pod
                }
            }
            None => bail!(
                "its namespace {} is gone, and the daemon did not make it",
                pod.netns.display()
            ),
        };
        self.plumb(nl, &pod).await?;
        let resolv_conf = self.write_resolv_conf(&pod);
        let pod = PodRecord { resolv_conf, ..pod };
        tracing::info!(pod = %pod.name, ip = %pod.ip, netns = %pod.netns.display(), "pod made again (its veth was gone)");
        self.pods.insert(pod.name.clone(), pod);
        self.save()
    }

    /// Creates a pod. On any failure everything done so far is undone.
    pub async fn add(
        &mut self,
        nl: &Netlink,
        name: &str,
        ip: Option<Ipv4Addr>,
        netns_spec: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<PodRecord> {
        validate_pod_name(name)?;
        validate_pod_labels(&labels)?;
        if let Some(existing) = self.pods.get(name) {
            bail!("pod {name} already exists with address {}", existing.ip);
        }
        if let Some(stray) = self.strays.iter().find(|p| p.name == name) {
            bail!(
                "pod {name} already exists with address {}, outside this node's subnet and \
                 waiting for a free address in it",
                stray.ip
            );
        }
        let ip = self.ipam.allocate(name, ip)?;
        match self.attach(nl, name, ip, netns_spec, labels).await {
            Ok(record) => {
                self.pods.insert(name.to_owned(), record.clone());
                if let Err(e) = self.save() {
                    self.pods.remove(name);
                    self.ipam.release(ip);
                    let _ = self.detach(nl, &record).await;
                    return Err(e);
                }
                Ok(record)
            }
            Err(e) => {
                self.ipam.release(ip);
                Err(e)
            }
        }
    }

    async fn attach(
        &self,
        nl: &Netlink,
        name: &str,
        ip: Ipv4Addr,
        netns_spec: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<PodRecord> {
        // Two pod names whose hashes collide would share a veth name: refuse the second
        // before anything is made (or undone) under that name.
        let veth = host_veth_name(name);
        if let Some(holder) = self.pods.values().find(|p| p.veth == veth) {
            bail!(
                "pod {name} would need veth {veth}, which pod {} holds; choose another name",
                holder.name
            );
        }
        let (netns_path, owned) = match netns_spec {
            Some(spec) => (netns::resolve(spec), false),
            None => (netns::create(name)?, true),
        };
        let netns_inode = match netns::inode_of(&netns_path) {
            Ok(ino) => ino,
            Err(e) => {
                if owned {
                    let _ = netns::delete(&netns_path);
                }
                return Err(e);
            }
        };
        let record = PodRecord {
            name: name.to_owned(),
            ip,
            netns: netns_path,
            netns_owned: owned,
            netns_inode: Some(netns_inode),
            veth,
            labels,
            resolv_conf: None,
        };
        if let Err(e) = self.plumb(nl, &record).await {
            let _ = self.detach(nl, &record).await;
            return Err(e);
        }
        let resolv_conf = self.write_resolv_conf(&record);
        Ok(PodRecord {
            resolv_conf,
            ..record
        })
    }

    async fn plumb(&self, nl: &Netlink, pod: &PodRecord) -> Result<()> {
        let ns = open_pod_netns(pod)?;
        // A leftover veth with this name is ours (prefix + hash of the name) from an add
        // that died half-way: no record holds it.
        if let Some(stale) = nl.link_by_name(&pod.veth).await? {
            nl.delete_link(stale.index).await?;
        }
        let in_pod = Netlink::connect_in(std::os::fd::AsFd::as_fd(&ns))?;
        if in_pod.link_by_name(POD_IFNAME).await?.is_some() {
            bail!(
                "namespace {} already has an interface {POD_IFNAME}",
                pod.netns.display()
            );
        }
        nl.add_veth_into(
            &pod.veth,
            POD_IFNAME,
            std::os::fd::AsFd::as_fd(&ns),
            self.mtu,
        )
        .await?;
        let host = nl
            .link_by_name(&pod.veth)
            .await?
            .ok_or_else(|| anyhow!("veth {} vanished", pod.veth))?;
        nl.set_link(host.index, Some(self.mtu), Some(self.bridge), true)
            .await?;
        nl.set_hairpin(host.index).await?;
        nl.forget_neighbour(self.bridge, pod.ip).await?;

        let lo = in_pod
            .link_by_name("lo")
            .await?
            .ok_or_else(|| anyhow!("the pod's namespace has no lo"))?;
        in_pod.set_link(lo.index, None, None, true).await?;
        let eth = in_pod
            .link_by_name(POD_IFNAME)
            .await?
            .ok_or_else(|| anyhow!("{POD_IFNAME} did not appear in the pod's namespace"))?;
        in_pod
            .ensure_addr(eth.index, pod.ip, self.ipam.subnet().prefix_len())
            .await?;
        in_pod.set_link(eth.index, None, None, true).await?;
        in_pod.set_default_route(self.ipam.gateway()).await?;
        Ok(())
    }

    /// Moves every pod that is not inside `subnet` into it (the node lost a subnet
    /// conflict, or its subnet changed while the daemon was down): each gets a free
    /// address of `subnet` and a default route via its gateway. Pods already inside keep
    /// their address, so running it again after a partial failure finishes the move.
    /// Pods whose namespace is gone keep a reservation in the new subnet. Pods that find
    /// no free address stay recorded (saved, listed, deletable) and are moved by a later
    /// call. A pod that could not be re-addressed keeps its old address on record, so a
    /// later call tries again. `Err` only if the records cannot be saved.
    pub async fn renumber(&mut self, subnet: ipnet::Ipv4Net) -> Result<Renumbered> {
        let everyone: Vec<PodRecord> = std::mem::take(&mut self.pods)
            .into_values()
            .chain(std::mem::take(&mut self.strays))
            .collect();
        let held: Vec<(&str, Ipv4Addr)> =
            everyone.iter().map(|p| (p.name.as_str(), p.ip)).collect();
        let plan = self.ipam.renumber(subnet, &held);
        let moves: BTreeMap<usize, Ipv4Addr> = plan.moves.into_iter().collect();
        let mut ipam = plan.ipam;
        let mut pods = BTreeMap::new();
        let mut stuck = Vec::new();
        let mut failed = 0;
        for (i, pod) in everyone.into_iter().enumerate() {
            if plan.stuck.contains(&i) {
                tracing::error!(pod = %pod.name, ip = %pod.ip, "no free address for the pod in {subnet}");
                stuck.push(pod);
                continue;
            }
            let Some(&ip) = moves.get(&i) else {
                pods.insert(pod.name.clone(), pod);
                continue;
            };
            tracing::warn!(pod = %pod.name, old = %pod.ip, new = %ip, "moving the pod into subnet {subnet}");
            // A pod whose namespace is gone has nothing to re-address: it keeps a
            // reservation in the new subnet until it is deleted.
            if pod.netns.exists()
                && let Err(e) = self.readdress(&pod, ip, &ipam).await
            {
                // Recorded with its old address it stays a stray, so the next try
                // re-addresses it; recorded with the new one it never would be.
                tracing::warn!(pod = %pod.name, "moving to {ip} failed, will retry: {e:#}");
                ipam.release(ip);
                stuck.push(pod);
                failed += 1;
                continue;
            }
            pods.insert(pod.name.clone(), PodRecord { ip, ..pod });
        }
        self.ipam = ipam;
        self.pods = pods;
        // Pods that found no address, or could not be moved, stay recorded (and saved) to
        // be moved on the next try, instead of being forgotten.
        self.strays = stuck;
        self.save()?;
        if !self.strays.is_empty() {
            tracing::error!(
                "{} pods found no free address in {subnet} and wait, unreachable, for one; \
                 delete pods (each deletion moves a waiting pod in) or give the node a larger \
                 subnet",
                self.strays.len()
            );
        }
        Ok(Renumbered {
            waiting: self.strays.len() - failed,
            failed,
        })
    }

    async fn readdress(&self, pod: &PodRecord, ip: Ipv4Addr, ipam: &PodIpam) -> Result<()> {
        let ns = open_pod_netns(pod)?;
        let in_pod = Netlink::connect_in(std::os::fd::AsFd::as_fd(&ns))?;
        let eth = in_pod
            .link_by_name(POD_IFNAME)
            .await?
            .ok_or_else(|| anyhow!("the pod has no {POD_IFNAME}"))?;
        in_pod
            .ensure_addr(eth.index, ip, ipam.subnet().prefix_len())
            .await?;
        in_pod.delete_addr(eth.index, pod.ip).await?;
        in_pod.set_default_route(ipam.gateway()).await
    }

    /// Deletes a pod: its veth pair, its namespace if the daemon made it, its address.
    pub async fn del(&mut self, nl: &Netlink, name: &str) -> Result<PodRecord> {
        if let Some(at) = self.strays.iter().position(|p| p.name == name) {
            // Recorded outside the subnet: it holds no address of the allocator.
            let record = self.strays[at].clone();
            self.detach(nl, &record).await?;
            self.strays.remove(at);
            self.save()?;
            return Ok(record);
        }
        let record = self
            .pods
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("no pod named {name}"))?;
        self.detach(nl, &record).await?;
        self.pods.remove(name);
        self.ipam.release(record.ip);
        if self.strays.is_empty() {
            self.save()?;
        } else {
            // The freed address can take a pod that waits for one: move it in and attach
            // it to the bridge (this saves too).
            self.reattach(nl).await?;
        }
        Ok(record)
    }

    /// Points every pod's resolv.conf at `dns` (the node's DNS and domain; `None`: the
    /// node runs none, and the files the daemon wrote are removed), then saves.
    pub fn set_dns(&mut self, dns: Option<PodDns>) -> Result<()> {
        if self.dns == dns {
            return Ok(());
        }
        self.dns = dns;
        let names: Vec<String> = self.pods.keys().cloned().collect();
        for name in names {
            let Some(pod) = self.pods.get(&name) else {
                continue;
            };
            let written = match self.dns {
                Some(_) => self.write_resolv_conf(pod),
                None => {
                    remove_resolv_conf(pod);
                    None
                }
            };
            if let Some(pod) = self.pods.get_mut(&name) {
                pod.resolv_conf = written;
            }
        }
        self.save()
    }

    /// Writes the pod's `/etc/netns/NETNS/resolv.conf` (for a pod whose namespace is named
    /// under /run/netns, so `ip netns exec` can bind it over /etc/resolv.conf), unless a
    /// file the daemon did not write is there. Returns the path written; failures are
    /// logged (the pod works without it, but names do not resolve in it).
    fn write_resolv_conf(&self, pod: &PodRecord) -> Option<PathBuf> {
        let dns = self.dns.as_ref()?;
        let name = netns_name(&pod.netns)?;
        let dir = Path::new(ETC_NETNS).join(name);
        let path = dir.join("resolv.conf");
        if let Ok(existing) = std::fs::read_to_string(&path)
            && !existing.starts_with(RESOLV_CONF_MARK)
        {
            tracing::warn!(pod = %pod.name, "{} exists and is not ours; leaving it", path.display());
            return None;
        }
        let text = format!(
            "{RESOLV_CONF_MARK} pod {}; the node's cluster DNS (rewritten by the daemon)\n{}",
            pod.name,
            overlayd_proto::service::dns::resolv_conf(dns.nameserver, &dns.domain, "default")
        );
        let written = std::fs::create_dir_all(&dir)
            .map_err(anyhow::Error::from)
            .and_then(|()| crate::write_atomic(&path, text.as_bytes()));
        match written {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!(pod = %pod.name, "writing {}: {e:#}", path.display());
                None
            }
        }
    }

    async fn detach(&self, nl: &Netlink, pod: &PodRecord) -> Result<()> {
        if let Some(link) = nl.link_by_name(&pod.veth).await? {
            nl.delete_link(link.index).await?;
        }
        if pod.netns_owned {
            netns::delete(&pod.netns)?;
        }
        remove_resolv_conf(pod);
        Ok(())
    }

    /// Writes the records atomically: a temporary file, fsync, rename, fsync of the dir.
    fn save(&self) -> Result<()> {
        // Strays (recorded in an older subnet, not moved yet) are saved too: they are
        // moved on a later start or subnet change.
        let pods = self
            .pods
            .iter()
            .map(|(name, pod)| (name.clone(), pod.clone()))
            .chain(
                self.strays
                    .iter()
                    .map(|pod| (pod.name.clone(), pod.clone())),
            )
            .collect();
        let file = StoreFile {
            cursor: Some(self.ipam.cursor()),
            pods,
        };
        crate::write_atomic(&self.path, &serde_json::to_vec_pretty(&file)?)
    }
}

/// The name `ip netns` knows a namespace by: the file name of a path under /run/netns.
fn netns_name(path: &Path) -> Option<&str> {
    (path.parent()? == Path::new(netns::NETNS_RUN_DIR))
        .then(|| path.file_name()?.to_str())
        .flatten()
}

/// Removes the resolv.conf the daemon wrote for `pod` (and its directory if that is then
/// empty); a file someone else wrote there is left alone.
fn remove_resolv_conf(pod: &PodRecord) {
    let Some(path) = &pod.resolv_conf else {
        return;
    };
    let ours = std::fs::read_to_string(path).is_ok_and(|t| t.starts_with(RESOLV_CONF_MARK));
    if ours {
        let _ = std::fs::remove_file(path);
        if let Some(dir) = path.parent() {
            // Fails, as it should, while the directory holds anything else.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Opens a pod's namespace, refusing one that is not the namespace the pod was added with
/// or that is the host's own.
fn open_pod_netns(pod: &PodRecord) -> Result<std::fs::File> {
    let ns = netns::open(&pod.netns)?;
    let ino = netns::inode(&ns)?;
    if pod.netns_inode.is_some_and(|want| want != ino) {
        bail!(
            "{} no longer names the namespace pod {} was added with; not touching it",
            pod.netns.display(),
            pod.name
        );
    }
    if netns::is_host(ino) {
        bail!(
            "{} is the host's own network namespace, not a pod's",
            pod.netns.display()
        );
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, ip: &str) -> PodRecord {
        PodRecord {
            name: name.into(),
            ip: ip.parse().unwrap(),
            netns: format!("/nonexistent/{name}").into(),
            netns_owned: false,
            netns_inode: None,
            veth: host_veth_name(name),
            labels: BTreeMap::new(),
            resolv_conf: None,
        }
    }

    /// A move into a subnet too small for every pod moves those it can, keeps the others
    /// recorded (on disk too) and says so; a later move into a larger subnet takes them.
    #[test]
    fn renumber_keeps_pods_that_find_no_address() {
        let dir = std::env::temp_dir().join(format!("overlayd-pods-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = StoreFile {
            cursor: None,
            pods: ["a", "b", "c"]
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), record(n, &format!("10.244.1.{}", i + 2))))
                .collect(),
        };
        std::fs::write(dir.join("pods.json"), serde_json::to_vec(&file).unwrap()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let old: ipnet::Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let mut pods = Pods::load(&dir, PodIpam::new(old), 0, 1500).unwrap();
        assert_eq!(pods.len(), 3);

        // A /30 has one pod address (.2): one pod moves, two wait.
        let small: ipnet::Ipv4Net = "10.244.9.0/30".parse().unwrap();
        assert_eq!(
            rt.block_on(pods.renumber(small)).unwrap(),
            Renumbered {
                waiting: 2,
                failed: 0
            }
        );
        assert_eq!(pods.len(), 1);
        assert_eq!(pods.list().len(), 3, "pod list hides the waiting pods");
        let saved = || -> StoreFile {
            serde_json::from_slice(&std::fs::read(dir.join("pods.json")).unwrap()).unwrap()
        };
        assert_eq!(saved().pods.len(), 3, "pods were forgotten");

        // Deleting the pod that moved makes room: a waiting one moves in.
        let moved = pods
            .list()
            .into_iter()
            .find(|p| small.contains(&p.ip))
            .unwrap();
        rt.block_on(async {
            let nl = Netlink::connect().unwrap();
            pods.del(&nl, &moved.name).await.unwrap();
        });
        let in_small: Vec<_> = pods
            .list()
            .into_iter()
            .filter(|p| small.contains(&p.ip))
            .collect();
        assert_eq!(in_small.len(), 1, "{:?}", pods.list());
        assert_ne!(in_small[0].name, moved.name);
        assert_eq!(saved().pods.len(), 2);

        // A larger subnet takes everyone.
        let large: ipnet::Ipv4Net = "10.244.8.0/24".parse().unwrap();
        assert_eq!(rt.block_on(pods.renumber(large)).unwrap().waiting, 0);
        let ips: Vec<_> = pods.list().into_iter().map(|p| p.ip).collect();
        assert_eq!(ips.len(), 2);
        assert!(ips.iter().all(|ip| large.contains(ip)), "{ips:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A pod whose namespace is there but cannot be re-addressed keeps its old address on
    /// record, so the next renumber tries it again (before, the new address was recorded
    /// and the pod was never re-plumbed).
    #[test]
    fn renumber_retries_a_pod_it_could_not_readdress() {
        let dir = std::env::temp_dir().join(format!("overlayd-pods-r-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A regular file where the namespace should be: it exists, but entering it fails.
        let not_a_netns = dir.join("not-a-netns");
        std::fs::write(&not_a_netns, b"").unwrap();
        let stuck = PodRecord {
            netns: not_a_netns,
            ..record("stuck", "10.244.1.2")
        };
        let file = StoreFile {
            cursor: None,
            pods: [("stuck".to_string(), stuck)].into_iter().collect(),
        };
        std::fs::write(dir.join("pods.json"), serde_json::to_vec(&file).unwrap()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let old: ipnet::Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let new: ipnet::Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let mut pods = Pods::load(&dir, PodIpam::new(old), 0, 1500).unwrap();

        for attempt in 1..=2 {
            let left = rt.block_on(pods.renumber(new)).unwrap();

            assert_eq!(
                left,
                Renumbered {
                    waiting: 0,
                    failed: 1
                },
                "attempt {attempt}"
            );
            let listed = pods.list();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].ip.to_string(), "10.244.1.2", "attempt {attempt}");
            let saved: StoreFile =
                serde_json::from_slice(&std::fs::read(dir.join("pods.json")).unwrap()).unwrap();
            assert_eq!(saved.pods["stuck"].ip.to_string(), "10.244.1.2");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_namespaces_named_under_run_netns_get_a_resolv_conf() {
        assert_eq!(
            netns_name(Path::new("/run/netns/ovl-lab-n1-p1")),
            Some("ovl-lab-n1-p1")
        );
        assert_eq!(netns_name(Path::new("/proc/42/ns/net")), None);
        assert_eq!(netns_name(Path::new("/run/netns/a/b")), None);
    }
}
