//! The daemon's kernel work over rtnetlink: links, addresses and the routes it owns.
//! Decisions (which routes, which path) are made in `overlayd_proto::routing`; this module
//! only reads kernel state into those types and carries out the resulting operations.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressProtocol};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use overlayd_proto::routing::{KernelRoute, RouteKind, RouteOp, UnderlayLookup};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// Routes the daemon installs carry this protocol number (`ip route show proto 79`):
/// it is how the daemon knows its own routes and never touches anyone else's.
pub const ROUTE_PROTOCOL: u8 = 79;

/// A connection to the kernel's routing netlink in one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    /// A second socket with strict dump checking, so the kernel itself filters route dumps
    /// to our protocol and table: on a host with a full BGP table, reading back our routes
    /// every few seconds must not mean reading them all. `None` inside pods.
    routes: Option<Handle>,
    /// Held for each dump: the kernel refuses a dump (EBUSY) on a socket whose previous
    /// dump is still running, and the daemon's tasks share one connection.
    dumps: Arc<tokio::sync::Mutex<()>>,
}

/// Is this netlink failure the given errno?
fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(m) if m.code.is_some_and(|c| c.get().abs() == errno))
}

/// The alias (`ip link show` prints it) of the bridge overlayd creates; an existing bridge
/// without it is someone else's and is never adopted.
pub const BRIDGE_ALIAS: &str = "overlayd";

/// A link as far as the daemon cares.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// Its hardware address, if it has an Ethernet one.
    pub mac: Option<overlayd_proto::wire::MacAddr>,
}

/// The kernel's local table (`ip route show table local`), where local routes live.
const RT_TABLE_LOCAL: u8 = 255;

impl Netlink {
    /// Connects in the calling thread's network namespace. Must run inside a tokio runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        let (mut conn, routes, _) =
            rtnetlink::new_connection().context("opening a netlink socket")?;
        let strict = {
            use rtnetlink::sys::AsyncSocket;
            conn.socket_mut()
                .socket_mut()
                .set_netlink_get_strict_chk(true)
        };
        let routes = match strict {
            Ok(()) => {
                tokio::spawn(conn);
                Some(routes)
            }
            Err(e) => {
                tracing::debug!("no strict netlink dumps ({e}); filtering route dumps ourselves");
                None
            }
        };
        Ok(Netlink {
            handle,
            routes,
            dumps: Arc::default(),
        })
    }

    /// Connects inside another network namespace: the socket is opened on a thread that
    /// joined `netns`, and netlink sockets stay bound to the namespace they were made in.
    pub fn connect_in(netns: BorrowedFd<'_>) -> Result<Self> {
        let rt = tokio::runtime::Handle::current();
        let fd = netns.as_raw_fd();
        let (conn, handle) = std::thread::scope(|s| {
            s.spawn(|| -> Result<_> {
                // SAFETY: `fd` is borrowed for the whole scope; setns only reads it.
                let ns = unsafe { BorrowedFd::borrow_raw(fd) };
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("joining the pod's network namespace")?;
                let _guard = rt.enter();
                let (conn, handle, _) =
                    rtnetlink::new_connection().context("opening a netlink socket")?;
                Ok((conn, handle))
            })
            .join()
            .map_err(|_| anyhow!("netns thread panicked"))?
        })?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            routes: None,
            dumps: Arc::default(),
        })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        Ok(self.link_msg_by_name(name).await?.as_ref().map(to_link))
    }

    async fn link_msg_by_name(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up interface {name}")),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(to_link)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up interface #{index}")),
        }
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let _dump = self.dumps.lock().await;
        let msgs: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await?;
        Ok(msgs.iter().map(to_link).collect())
    }

    /// Creates the bridge unless it exists; sets its MTU and brings it up. An existing
    /// interface of that name that is not a bridge overlayd made (alias [`BRIDGE_ALIAS`])
    /// is refused: the daemon would strip its addresses and delete it on a clean stop
    /// (`bridge.name = "eth0"` or `"docker0"`, say).
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32> {
        let existing = self.link_msg_by_name(name).await?;
        if let Some(msg) = &existing {
            let is_bridge = msg.attributes.iter().any(|a| {
                matches!(a, LinkAttribute::LinkInfo(infos)
                    if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))))
            });
            if !is_bridge {
                bail!(
                    "interface {name} exists and is not a bridge; set bridge.name to a name \
                     no other interface uses"
                );
            }
            let ours = msg
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfAlias(alias) if alias == BRIDGE_ALIAS));
            if !ours {
                bail!(
                    "bridge {name} exists and was not made by overlayd (its alias is not \
                     {BRIDGE_ALIAS:?}); overlayd would take over its addresses and delete it \
                     on stop: set bridge.name to a name no interface uses, or delete the bridge"
                );
            }
        } else {
            match self
                .handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::EEXIST) => {
                    bail!("bridge {name} appeared while overlayd was creating it; start again")
                }
                Err(e) => return Err(e).with_context(|| format!("creating bridge {name}")),
            }
        }
        let link = match &existing {
            Some(msg) => to_link(msg),
            None => self
                .link_by_name(name)
                .await?
                .ok_or_else(|| anyhow!("bridge {name} vanished"))?,
        };
        if existing.is_none() {
            // The kernel ignores an alias given at creation, so it is set right after:
            // a crash in between leaves a bridge the next start refuses, saying so.
            let mut alias = LinkUnspec::new_with_index(link.index).build();
            alias
                .attributes
                .push(LinkAttribute::IfAlias(BRIDGE_ALIAS.to_owned()));
            self.handle
                .link()
                .set(alias)
                .execute()
                .await
                .with_context(|| format!("marking bridge {name} as overlayd's"))?;
        }
        self.set_link(link.index, Some(mtu), None, true).await?;
        Ok(link.index)
    }

    /// Sets MTU and/or controller (bridge) of a link and brings it up or down.
    pub async fn set_link(
        &self,
        index: u32,
        mtu: Option<u32>,
        controller: Option<u32>,
        up: bool,
    ) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        if let Some(c) = controller {
            b = b.controller(c);
        }
        b = if up { b.up() } else { b.down() };
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .with_context(|| format!("configuring interface #{index}"))
    }

    /// Turns hairpin mode on for a bridge port: a pod's packet that the node DNATs back to
    /// the pod itself (a Service on the kernel data path with the client among its
    /// backends) may leave by the port it came in on, as kubelet's hairpin-veth mode.
    pub async fn set_hairpin(&self, index: u32) -> Result<()> {
        let msg = rtnetlink::LinkBridgePort::new(index).hairpin(true).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .with_context(|| format!("setting hairpin mode on bridge port #{index}"))
    }

    /// Forgets the neighbour (ARP) entry of `ip` on link `index`, if there is one: a pod
    /// made again, or a new pod given a freed address, has a new MAC, and a cached entry
    /// (even `REACHABLE`, confirmed by the old flow) would send its traffic nowhere until it
    /// times out.
    pub async fn forget_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        use netlink_packet_route::AddressFamily;
        use netlink_packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage,
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("forgetting the neighbour {ip}")),
        }
    }

    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting interface #{index}")),
        }
    }

    /// Creates a veth pair: `host` here, `peer` directly inside the namespace `peer_ns`.
    pub async fn add_veth_into(
        &self,
        host: &str,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
        mtu: u32,
    ) -> Result<()> {
        let peer_msg = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(host, peer)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .with_context(|| {
                format!("creating veth {host} with peer {peer} in the pod's namespace")
            })
    }

    /// IPv4 addresses on a link, with their prefix lengths.
    pub async fn ipv4_addrs(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let _dump = self.dumps.lock().await;
        let mut req = self.handle.address().get();
        if let Some(index) = index {
            req = req.set_link_index_filter(index);
        }
        let msgs: Vec<_> = req
            .execute()
            .try_collect()
            .await
            .context("listing addresses")?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip))
                    | AddressAttribute::Address(IpAddr::V4(ip)) => {
                        Some((m.header.index, *ip, m.header.prefix_len))
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds `addr/prefix` to a link unless it is there already.
    pub async fn ensure_addr(&self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("adding {addr}/{prefix} to interface #{index}"))
            }
        }
    }

    /// The /32 addresses on a link tagged with [`ROUTE_PROTOCOL`] (LoadBalancer IPs this
    /// node holds).
    pub async fn owned_addrs(&self, index: u32) -> Result<Vec<Ipv4Addr>> {
        let _dump = self.dumps.lock().await;
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .context("listing addresses")?;
        let ours = AddressAttribute::Protocol(AddressProtocol::Other(ROUTE_PROTOCOL));
        Ok(msgs
            .iter()
            .filter(|m| m.attributes.contains(&ours))
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds `addr/32` to a link tagged with [`ROUTE_PROTOCOL`], so [`Netlink::owned_addrs`]
    /// finds it again after a restart; present already is fine.
    pub async fn add_owned_addr(&self, index: u32, addr: Ipv4Addr) -> Result<()> {
        let mut req = self.handle.address().add(index, IpAddr::V4(addr), 32);
        req.message_mut()
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::Other(
                ROUTE_PROTOCOL,
            )));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding {addr}/32 to interface #{index}")),
        }
    }

    /// Makes `addr/prefix` the link's only IPv4 address: adds it, then deletes the others.
    pub async fn set_only_addr(&self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        self.ensure_addr(index, addr, prefix).await?;
        self.delete_addrs(index, |other| other != addr).await
    }

    /// Removes `addr` (whatever its prefix length) from a link; absent is fine.
    pub async fn delete_addr(&self, index: u32, addr: Ipv4Addr) -> Result<()> {
        self.delete_addrs(index, |other| other == addr).await
    }

    /// Removes the link's IPv4 addresses that `doomed` picks, in one dump.
    async fn delete_addrs(&self, index: u32, doomed: impl Fn(Ipv4Addr) -> bool) -> Result<()> {
        let _dump = self.dumps.lock().await;
        let mut req = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = req.try_next().await.context("listing addresses")? {
            let addr = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let Some(addr) = addr.filter(|a| doomed(*a)) else {
                continue;
            };
            tracing::info!(%addr, "removing an address from interface #{index}");
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(e).with_context(|| format!("removing {addr}")),
            }
        }
        Ok(())
    }

    /// Sets the default route via `gateway` (used inside pods), replacing any other.
    pub async fn set_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .with_context(|| format!("setting the default route via {gateway}"))
    }

    /// The kernel's choice of route to `dst` (`ip route get`).
    pub async fn route_get(&self, dst: Ipv4Addr) -> Result<UnderlayLookup> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let mut routes = self.handle.route().get(msg).execute();
        let route = routes
            .try_next()
            .await
            .with_context(|| format!("looking up the route to {dst}"))?
            .ok_or_else(|| anyhow!("no route to {dst}"))?;
        let mut lookup = UnderlayLookup {
            gateway: None,
            oif: 0,
        };
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => lookup.gateway = Some(*gw),
                RouteAttribute::Oif(oif) => lookup.oif = *oif,
                _ => {}
            }
        }
        Ok(lookup)
    }

    /// The interface of the IPv4 default route in the main table.
    pub async fn default_route_oif(&self) -> Result<Option<u32>> {
        let msgs = {
            let _dump = self.dumps.lock().await;
            self.dump_ipv4_routes().await?
        };
        Ok(msgs.iter().find_map(|m| {
            let is_default = m.header.destination_prefix_length == 0
                && m.header.table == RouteHeader::RT_TABLE_MAIN;
            is_default
                .then(|| {
                    m.attributes.iter().find_map(|a| {
                        if let RouteAttribute::Oif(o) = a {
                            Some(*o)
                        } else {
                            None
                        }
                    })
                })
                .flatten()
        }))
    }

    /// Every IPv4 route; the caller holds `dumps`.
    async fn dump_ipv4_routes(&self) -> Result<Vec<RouteMessage>> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        self.handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .context("listing routes")
    }

    /// The routes tagged with [`ROUTE_PROTOCOL`] in the main table, and in the local table
    /// (the Service CIDR's local route).
    pub async fn owned_routes(&self) -> Result<Vec<KernelRoute>> {
        let _dump = self.dumps.lock().await;
        let tables = [RouteHeader::RT_TABLE_MAIN, RT_TABLE_LOCAL];
        let msgs = match &self.routes {
            Some(strict) => {
                let mut msgs = Vec::new();
                for table in tables {
                    let filter = RouteMessageBuilder::<Ipv4Addr>::new()
                        .table_id(u32::from(table))
                        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                        .kind(RouteType::Unspec)
                        .build();
                    let found: Vec<RouteMessage> = strict
                        .route()
                        .get(filter)
                        .execute()
                        .try_collect()
                        .await
                        .context("listing our routes")?;
                    msgs.extend(found);
                }
                msgs
            }
            None => self.dump_ipv4_routes().await?,
        };
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
                    && tables.contains(&m.header.table)
            })
            .filter_map(to_kernel_route)
            .collect())
    }

    pub async fn apply(&self, op: &RouteOp) -> Result<()> {
        match op {
            RouteOp::Add(r) => self.handle.route().add(to_message(r)).execute().await,
            RouteOp::Replace(r) => {
                self.handle
                    .route()
                    .add(to_message(r))
                    .replace()
                    .execute()
                    .await
            }
            RouteOp::Delete(r) => match self.handle.route().del(to_message(r)).execute().await {
                Err(e) if is_errno(&e, libc::ESRCH) => Ok(()),
                other => other,
            },
        }
        .with_context(|| format!("applying {op:?}"))
    }
}

fn to_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(a) => {
                link.mac = <[u8; 6]>::try_from(a.as_slice())
                    .ok()
                    .map(overlayd_proto::wire::MacAddr)
            }
            _ => {}
        }
    }
    link
}

fn to_kernel_route(msg: &RouteMessage) -> Option<KernelRoute> {
    let mut dst_addr = Ipv4Addr::UNSPECIFIED;
    let mut route = KernelRoute {
        dst: Ipv4Net::default(),
        kind: match msg.header.kind {
            RouteType::BlackHole => RouteKind::Blackhole,
            RouteType::Local => RouteKind::Local,
            _ => RouteKind::Unicast,
        },
        gateway: None,
        oif: None,
        pref_src: None,
        mtu: None,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst_addr = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some(*a),
            RouteAttribute::PrefSource(RouteAddress::Inet(a)) => route.pref_src = Some(*a),
            RouteAttribute::Oif(o) => route.oif = Some(*o),
            RouteAttribute::Metrics(metrics) => {
                route.mtu = metrics.iter().find_map(|m| match m {
                    RouteMetric::Mtu(mtu) => Some(*mtu),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    route.dst = Ipv4Net::new(dst_addr, msg.header.destination_prefix_length).ok()?;
    Some(route)
}

fn to_message(route: &KernelRoute) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix_len())
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
    match route.kind {
        RouteKind::Blackhole => {
            b = b.kind(RouteType::BlackHole).scope(RouteScope::Universe);
        }
        RouteKind::Local => {
            b = b
                .kind(RouteType::Local)
                .scope(RouteScope::Host)
                .table_id(u32::from(RT_TABLE_LOCAL));
            if let Some(oif) = route.oif {
                b = b.output_interface(oif);
            }
        }
        RouteKind::Unicast => {
            b = b.scope(if route.gateway.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            });
            if let Some(gw) = route.gateway {
                b = b.gateway(gw);
            }
            if let Some(oif) = route.oif {
                b = b.output_interface(oif);
            }
            if let Some(src) = route.pref_src {
                b = b.pref_source(src);
            }
        }
    }
    let mut msg = b.build();
    if let Some(mtu) = route.mtu {
        msg.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    msg
}

/// Fails unless this process may do the kernel work: CAP_NET_ADMIN for links, routes
/// and nftables, CAP_SYS_ADMIN for network namespaces (setns, mounts). Root has both; a
/// service may get them as ambient capabilities instead.
pub fn require_net_admin() -> Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| effective & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "overlayd needs {} to manage interfaces, routes and namespaces: run it as root or grant them",
        missing.join(" and ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own in a new, empty network namespace (root only).
    fn in_new_netns<T: Send + 'static>(
        f: impl FnOnce(Netlink) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
        + Send
        + 'static,
    ) -> Option<T> {
        if !nix::unistd::geteuid().is_root() {
            // Straight to stderr: the test harness swallows eprintln! of passing tests.
            use std::io::Write;
            let _ = std::io::stderr().write_all(
                b"\n*** netlink test SKIPPED: it needs root for a network namespace \
                  (CI runs it as root)\n",
            );
            return None;
        }
        let thread = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move { f(Netlink::connect().expect("netlink")).await })
        });
        Some(thread.join().expect("netns thread"))
    }

    #[test]
    fn ensure_bridge_adopts_only_a_bridge_it_made() {
        in_new_netns(|nl| {
            Box::pin(async move {
                nl.handle
                    .link()
                    .add(LinkVeth::new("ext0", "ext1").build())
                    .execute()
                    .await
                    .expect("creating a veth");
                let refused = nl.ensure_bridge("ext0", 1400).await;
                assert!(
                    refused
                        .as_ref()
                        .is_err_and(|e| e.to_string().contains("not a bridge")),
                    "{refused:?}"
                );
                let veth = nl.link_by_name("ext0").await.unwrap().unwrap();
                assert_ne!(veth.mtu, 1400, "the veth was reconfigured");

                // Our own bridge is created, and adopted again.
                let index = nl.ensure_bridge("ovdtest0", 1400).await.expect("creating");
                assert_eq!(nl.ensure_bridge("ovdtest0", 1400).await.unwrap(), index);

                // A bridge someone else made is refused and left as it was.
                nl.handle
                    .link()
                    .add(LinkBridge::new("br0").build())
                    .execute()
                    .await
                    .expect("creating a foreign bridge");
                let refused = nl.ensure_bridge("br0", 1400).await;
                assert!(
                    refused
                        .as_ref()
                        .is_err_and(|e| e.to_string().contains("not made by overlayd")),
                    "{refused:?}"
                );
                let br0 = nl.link_by_name("br0").await.unwrap().unwrap();
                assert_ne!(br0.mtu, 1400, "the foreign bridge was reconfigured");

                // Addresses left by a move that failed half-way go when the next one lands.
                for stale in ["10.244.1.1", "10.244.2.1"] {
                    nl.ensure_addr(index, stale.parse().unwrap(), 24)
                        .await
                        .unwrap();
                }
                let gateway: Ipv4Addr = "10.244.3.1".parse().unwrap();
                nl.set_only_addr(index, gateway, 24).await.unwrap();
                let addrs: Vec<_> = nl
                    .ipv4_addrs(Some(index))
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|(_, a, p)| (a, p))
                    .collect();
                assert_eq!(addrs, [(gateway, 24)]);
            })
        });
    }

    /// A VIP's local route goes into the local table, is read back as ours, makes the
    /// address bindable and reachable, and is deleted again.
    #[test]
    fn a_local_route_makes_a_vip_bindable() {
        in_new_netns(|nl| {
            Box::pin(async move {
                let lo = nl.link_by_name("lo").await.unwrap().unwrap();
                nl.set_link(lo.index, None, None, true).await.unwrap();
                let route = KernelRoute {
                    dst: "10.96.7.9/32".parse().unwrap(),
                    kind: RouteKind::Local,
                    gateway: None,
                    oif: Some(lo.index),
                    pref_src: None,
                    mtu: None,
                };
                let vip = "10.96.7.9:80";
                assert!(std::net::TcpListener::bind(vip).is_err(), "bindable before");

                nl.apply(&RouteOp::Add(route)).await.unwrap();

                assert_eq!(nl.owned_routes().await.unwrap(), [route]);
                let listener = std::net::TcpListener::bind(vip).expect("binding a VIP");
                let client = std::net::TcpStream::connect(vip).expect("connecting to the VIP");
                drop((listener, client));
                nl.apply(&RouteOp::Delete(route)).await.unwrap();
                assert_eq!(nl.owned_routes().await.unwrap(), []);
            })
        });
    }

    /// A tunnel route's `mtu` is set, read back, and removed again by a replace without
    /// it; the kernel then answers an oversized DF packet on that route with the MTU.
    #[test]
    fn a_route_mtu_is_applied_read_back_and_cleared() {
        in_new_netns(|nl| {
            Box::pin(async move {
                let lo = nl.link_by_name("lo").await.unwrap().unwrap();
                nl.set_link(lo.index, None, None, true).await.unwrap();
                let mut route = KernelRoute {
                    dst: "10.244.3.0/24".parse().unwrap(),
                    kind: RouteKind::Unicast,
                    gateway: None,
                    oif: Some(lo.index),
                    pref_src: None,
                    mtu: Some(1350),
                };
                nl.apply(&RouteOp::Add(route)).await.unwrap();
                assert_eq!(nl.owned_routes().await.unwrap(), [route]);

                route.mtu = None;
                nl.apply(&RouteOp::Replace(route)).await.unwrap();
                assert_eq!(nl.owned_routes().await.unwrap(), [route]);
            })
        });
    }

    /// Addresses added as ours are found again as ours; others on the link are not.
    #[test]
    fn owned_addresses_are_tagged_and_found_again() {
        in_new_netns(|nl| {
            Box::pin(async move {
                let lo = nl.link_by_name("lo").await.unwrap().unwrap();
                nl.ensure_addr(lo.index, "192.0.2.1".parse().unwrap(), 24)
                    .await
                    .unwrap();
                let lb: Ipv4Addr = "192.0.2.240".parse().unwrap();

                nl.add_owned_addr(lo.index, lb).await.unwrap();
                nl.add_owned_addr(lo.index, lb).await.unwrap();

                assert_eq!(nl.owned_addrs(lo.index).await.unwrap(), [lb]);
                nl.delete_addr(lo.index, lb).await.unwrap();
                assert_eq!(
                    nl.owned_addrs(lo.index).await.unwrap(),
                    Vec::<Ipv4Addr>::new()
                );
                let left: Vec<Ipv4Addr> = nl
                    .ipv4_addrs(Some(lo.index))
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|(_, a, _)| a)
                    .collect();
                assert_eq!(left, ["192.0.2.1".parse::<Ipv4Addr>().unwrap()]);
            })
        });
    }
}
