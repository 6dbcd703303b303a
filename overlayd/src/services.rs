//! Services in the daemon: keeps the catalog (`proto::service::catalog`) in step with the
//! objects of the cluster store — the gossip core, or this node alone without `[gossip]`
//! — publishes the resolved [`ServiceTable`] for the proxy, the DNS responder and the
//! API, writes this node's pods as endpoints, makes the housekeeper's repairs, applies
//! the config's `[[service]]` list once the node has the cluster's state, and carries out
//! `overlayd service add|del|get|list`.
//!
//! [`ServiceState`] is driven by the task that owns the store: the gossip task (objects
//! change there) or, without gossip, [`run_local`]. Every decision is proto's; this only
//! moves objects, stamps and results.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use overlayd_proto::api::ServiceInfo;
use overlayd_proto::gossip::{Gossip, Hlc, ObjectError};
use overlayd_proto::service::catalog::{
    Catalog, Housekeeping, PendingWrites, delete_service, put_services, repairs,
};
use overlayd_proto::service::codec::{ObjectWrite, PodEndpoint, service_writes};
use overlayd_proto::service::{ServiceKey, ServiceSettings, ServiceSpec, ServiceTable};
use tokio::sync::{mpsc, oneshot, watch};

/// Rebuilds of the catalog are at least this far apart, and at least twice as far as the
/// last one took: a burst of gossip (a joiner's full state, a bulk import) or of
/// `service add`s costs a rebuild now and then, not one per object, and a catalog of
/// 10 000 Services (tens of ms to build) never keeps the task busy more than a third of
/// the time.
const REBUILD_EVERY: Duration = Duration::from_millis(20);

/// Even when nothing changed, the catalog is rebuilt (and repairs made) this often: a
/// member that gossip forgets raises no event, and orphaned parts age.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// How long a node with seeds waits for the cluster's state before it applies its
/// config's Services anyway (it may be the first node up).
const CONFIG_WAIT: Duration = Duration::from_secs(10);

/// Where Service and pod objects live: the gossip core (replicated), or this node alone.
pub trait ObjectStore {
    /// Every live object.
    fn objects(&self) -> Vec<(&str, &[u8])>;
    /// Writes (`Some`) or deletes (`None`) an object.
    fn set_object(
        &mut self,
        now: Instant,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), ObjectError>;
    /// A fresh timestamp above every one written or seen.
    fn stamp(&mut self, now: Instant) -> Hlc;
    /// Up members (alive or suspect), this node included.
    fn live(&self) -> BTreeSet<String>;
    /// Every member known, in any state.
    fn members(&self) -> BTreeSet<String>;
    /// Whether the store holds the cluster's state: a full-state pull has completed.
    fn synced(&self) -> bool;
}

impl ObjectStore for Gossip {
    fn objects(&self) -> Vec<(&str, &[u8])> {
        Gossip::objects(self).collect()
    }

    fn set_object(
        &mut self,
        now: Instant,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), ObjectError> {
        Gossip::set_object(self, now, key, value)
    }

    fn stamp(&mut self, now: Instant) -> Hlc {
        Gossip::stamp(self, now)
    }

    fn live(&self) -> BTreeSet<String> {
        self.members()
            .filter(|m| m.state.is_up())
            .map(|m| m.name.to_owned())
            .collect()
    }

    fn members(&self) -> BTreeSet<String> {
        Gossip::members(self).map(|m| m.name.to_owned()).collect()
    }

    fn synced(&self) -> bool {
        self.stats().streams_completed > 0
    }
}

/// The store of a node without gossip: its own objects only.
pub struct LocalStore {
    name: String,
    objects: BTreeMap<String, Vec<u8>>,
    last: Hlc,
}

impl LocalStore {
    pub fn new(name: &str) -> Self {
        LocalStore {
            name: name.to_owned(),
            objects: BTreeMap::new(),
            last: Hlc(0),
        }
    }
}

impl ObjectStore for LocalStore {
    fn objects(&self) -> Vec<(&str, &[u8])> {
        self.objects
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect()
    }

    fn set_object(
        &mut self,
        _now: Instant,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), ObjectError> {
        match value {
            Some(v) => self.objects.insert(key.to_owned(), v),
            None => self.objects.remove(key),
        };
        Ok(())
    }

    fn stamp(&mut self, _now: Instant) -> Hlc {
        let wall = Hlc::new(crate::gossip::wall_clock_ms(), 0);
        self.last = wall.max(Hlc(self.last.0 + 1));
        self.last
    }

    fn live(&self) -> BTreeSet<String> {
        [self.name.clone()].into()
    }

    fn members(&self) -> BTreeSet<String> {
        self.live()
    }

    fn synced(&self) -> bool {
        true
    }
}

/// What the API asks of the Services.
pub enum ServiceCommand {
    Put(ServiceSpec, oneshot::Sender<Result<ServiceInfo>>),
    Apply(Vec<ServiceSpec>, oneshot::Sender<Result<Vec<ServiceInfo>>>),
    Delete(ServiceKey, oneshot::Sender<Result<ServiceInfo>>),
    Get(ServiceKey, oneshot::Sender<Result<ServiceInfo>>),
    List(oneshot::Sender<Vec<ServiceInfo>>),
}

/// The daemon's handle on the Services: the table as it changes, and the commands.
#[derive(Clone)]
pub struct ServicesHandle {
    commands: mpsc::Sender<ServiceCommand>,
    table: watch::Receiver<Arc<ServiceTable>>,
}

impl ServicesHandle {
    /// The resolved Services, now and as they change.
    pub fn table(&self) -> watch::Receiver<Arc<ServiceTable>> {
        self.table.clone()
    }

    pub async fn put(&self, spec: ServiceSpec) -> Result<ServiceInfo> {
        self.ask(|tx| ServiceCommand::Put(spec, tx)).await?
    }

    pub async fn apply(&self, specs: Vec<ServiceSpec>) -> Result<Vec<ServiceInfo>> {
        self.ask(|tx| ServiceCommand::Apply(specs, tx)).await?
    }

    pub async fn delete(&self, key: ServiceKey) -> Result<ServiceInfo> {
        self.ask(|tx| ServiceCommand::Delete(key, tx)).await?
    }

    pub async fn get(&self, key: ServiceKey) -> Result<ServiceInfo> {
        self.ask(|tx| ServiceCommand::Get(key, tx)).await?
    }

    pub async fn list(&self) -> Result<Vec<ServiceInfo>> {
        self.ask(ServiceCommand::List).await
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> ServiceCommand) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| anyhow!("the Services task has stopped"))?;
        rx.await
            .map_err(|_| anyhow!("the Services task has stopped"))
    }
}

/// This node's pods as endpoints, by pod name; the daemon sends a new map whenever a pod
/// is added, deleted or moved. `None` until the daemon has loaded its pods: until then
/// nothing is repaired, so a restarting node never withdraws the pods it published
/// before (they would leave every Service for a moment).
pub type LocalPods = Option<BTreeMap<String, PodEndpoint>>;

/// The Services side of the task that owns the store.
pub struct ServiceState {
    local: String,
    settings: ServiceSettings,
    catalog: Catalog,
    /// The store changed since the last build.
    dirty: bool,
    last_build: Option<Instant>,
    /// How long the last build took.
    build_took: Duration,
    /// Services this node wrote since the last build, oldest first: each new one is
    /// allocated around them, and answered with its preview, without a rebuild per write
    /// (which made a run of `service add`s quadratic).
    pending: PendingWrites,
    /// Services written or deleted since the last build: a second write or a delete of
    /// one of them rebuilds first, so it works on the catalog's view of its parts.
    touched: BTreeSet<ServiceKey>,
    /// A Service was deleted since the last build: a write rebuilds first, so it can
    /// take the values the deleted one held.
    deleted: bool,
    pods: watch::Receiver<LocalPods>,
    table: watch::Sender<Arc<ServiceTable>>,
    /// The config's `[[service]]` list, until it is applied.
    config_specs: Option<Vec<ServiceSpec>>,
    /// When the config's Services are applied even without the cluster's state (the node
    /// may be the first up, its seeds not).
    config_deadline: Instant,
    /// Whether the node joins through seeds (else it is the first: apply at once).
    has_seeds: bool,
    /// Objects the last build left out (malformed, or refused under our settings).
    skipped: usize,
    /// Members gossip declared dead whose nodes still answer on the data path (issue 9:
    /// gossip death is not data-path death): their pods stay endpoints, in rotation while
    /// their health checks pass. Not live for the housekeeping: a node without a daemon
    /// makes no repairs.
    daemon_down: BTreeSet<String>,
}

/// The commands' receiving end, for the task that drives a [`ServiceState`].
pub type Commands = mpsc::Receiver<ServiceCommand>;

impl ServiceState {
    /// A state to drive, the handle for the daemon, and the receiver of API commands.
    pub fn new(
        local: &str,
        settings: ServiceSettings,
        config_specs: Vec<ServiceSpec>,
        has_seeds: bool,
        pods: watch::Receiver<LocalPods>,
    ) -> (ServiceState, ServicesHandle, Commands) {
        let (table_tx, table_rx) = watch::channel(Arc::new(ServiceTable::default()));
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let state = ServiceState {
            local: local.to_owned(),
            settings,
            catalog: Catalog::default(),
            dirty: true,
            last_build: None,
            build_took: Duration::ZERO,
            pending: PendingWrites::default(),
            touched: BTreeSet::new(),
            deleted: false,
            pods,
            table: table_tx,
            config_specs: (!config_specs.is_empty()).then_some(config_specs),
            config_deadline: Instant::now() + CONFIG_WAIT,
            has_seeds,
            skipped: 0,
            daemon_down: BTreeSet::new(),
        };
        let handle = ServicesHandle {
            commands: commands_tx,
            table: table_rx,
        };
        (state, handle, commands_rx)
    }

    /// The store changed (an object or a member): rebuild soon.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The members whose daemons are down while their nodes answer: their pods stay
    /// endpoints. Rebuilds soon when the set changed.
    pub fn set_daemon_down(&mut self, members: &BTreeSet<String>) {
        if self.daemon_down != *members {
            self.daemon_down = members.clone();
            self.dirty = true;
        }
    }

    /// When [`ServiceState::tick`] has work to do: a rebuild (paced), or the config's
    /// Services to apply.
    pub fn deadline(&self) -> Option<Instant> {
        let rebuild = self.rebuild_due();
        Some(match &self.config_specs {
            Some(_) => rebuild.min(self.config_deadline),
            None => rebuild,
        })
    }

    /// When the catalog is rebuilt next: soon after a change, else at the next resync.
    fn rebuild_due(&self) -> Instant {
        match self.last_build {
            None => Instant::now(),
            Some(t) if self.dirty => t + REBUILD_EVERY.max(2 * self.build_took),
            Some(t) => t + RESYNC_EVERY,
        }
    }

    /// A future that resolves when this node's pods change (then call `mark_dirty`).
    pub async fn pods_changed(&mut self) {
        if self.pods.changed().await.is_err() {
            // The daemon dropped the sender: it is stopping; wait for the end.
            std::future::pending::<()>().await;
        }
    }

    /// Does what is due: rebuilds the catalog if the store changed (and makes this node's
    /// repairs, which may change it again), applies the config's Services once the node
    /// is part of the cluster (or waited long enough).
    pub fn tick(&mut self, store: &mut impl ObjectStore, now: Instant) {
        if self.last_build.is_none() || now >= self.rebuild_due() {
            self.rebuild(store, now);
        }
        if self.config_specs.is_some() {
            // Against a catalog without the cluster's Services every one would be written
            // anew, with a new creation stamp, and could lose conflicts it had won.
            let has_state = !self.has_seeds || store.synced();
            if has_state || now >= self.config_deadline {
                self.apply_config(store, now);
            }
        }
    }

    fn rebuild(&mut self, store: &mut impl ObjectStore, now: Instant) {
        // Repairs change the store; a few rounds settle it (each round's writes are
        // deterministic, so a second round finds nothing left to do).
        for _ in 0..3 {
            self.build(store, now);
            let Some(local_pods) = self.pods.borrow_and_update().clone() else {
                return;
            };
            let live = store.live();
            let members = store.members();
            let writes = repairs(
                &self.catalog,
                &self.settings,
                &Housekeeping {
                    local: &self.local,
                    live: &live,
                    members: &members,
                    local_pods: &local_pods,
                    stamp: store.stamp(now),
                    wall_ms: crate::gossip::wall_clock_ms(),
                },
            );
            if writes.is_empty() {
                return;
            }
            tracing::debug!(writes = writes.len(), "Service repairs");
            if let Err(e) = apply(store, now, &writes) {
                tracing::warn!("writing Service repairs: {e:#}");
                return;
            }
        }
        self.dirty = true;
    }

    fn build(&mut self, store: &mut impl ObjectStore, now: Instant) {
        let started = Instant::now();
        let mut live = store.live();
        live.extend(self.daemon_down.iter().cloned());
        let catalog = Catalog::build(store.objects(), &live, &self.settings, &self.catalog);
        self.build_took = started.elapsed();
        self.pending.clear();
        self.touched.clear();
        self.deleted = false;
        if catalog.skipped() != self.skipped {
            if catalog.skipped() > 0 {
                tracing::warn!(
                    skipped = catalog.skipped(),
                    "Service objects left out: malformed, or refused under this node's service \
                     settings (every node needs the same cluster.service_cidr, \
                     services.node_port_range and services.external_pool)"
                );
            }
            self.skipped = catalog.skipped();
        }
        self.catalog = catalog;
        self.dirty = false;
        self.last_build = Some(now);
        let table = self.catalog.table();
        self.table.send_if_modified(|current| {
            let differs = **current != *table;
            if differs {
                *current = Arc::new(table.clone());
            }
            differs
        });
    }

    fn apply_config(&mut self, store: &mut impl ObjectStore, now: Instant) {
        let Some(specs) = self.config_specs.take() else {
            return;
        };
        if self.dirty {
            self.build(store, now);
        }
        let stamp = store.stamp(now);
        match put_services(&specs, stamp, &self.catalog, &self.settings) {
            Ok(writes) => {
                tracing::info!(
                    services = specs.len(),
                    writes = writes.len(),
                    "applied the config's Services"
                );
                if let Err(e) = apply(store, now, &writes) {
                    tracing::error!("writing the config's Services: {e:#}");
                }
                self.rebuild(store, now);
            }
            Err((i, e)) => tracing::error!(
                service = %specs[i].key(),
                "the config's Services were not applied: {e}"
            ),
        }
    }

    /// Carries out one API command.
    pub fn command(&mut self, store: &mut impl ObjectStore, now: Instant, command: ServiceCommand) {
        match command {
            ServiceCommand::Put(spec, reply) => {
                let _ = reply.send(self.put(store, now, spec));
            }
            ServiceCommand::Apply(specs, reply) => {
                let _ = reply.send(self.apply_many(store, now, &specs));
            }
            ServiceCommand::Delete(key, reply) => {
                let _ = reply.send(self.delete(store, now, &key));
            }
            ServiceCommand::Get(key, reply) => {
                let _ = reply.send(self.get(store, now, &key));
            }
            ServiceCommand::List(reply) => {
                let state = self.fresh(store, now);
                let list = state
                    .catalog
                    .objects()
                    .filter_map(|(key, _)| state.info(key).ok())
                    .collect();
                let _ = reply.send(list);
            }
        }
    }

    /// The state with a catalog that holds every write made so far.
    fn fresh(&mut self, store: &mut impl ObjectStore, now: Instant) -> &Self {
        if self.dirty {
            self.rebuild(store, now);
        }
        self
    }

    /// Writes one Service. Unless it was written or deleted since the last build, no
    /// rebuild: it is allocated around the catalog and the writes pending since
    /// (`allocate_pending`) and answered with its preview; the next build (paced, see
    /// [`REBUILD_EVERY`]) has the final word, as for a write from any other node.
    fn put(
        &mut self,
        store: &mut impl ObjectStore,
        now: Instant,
        spec: ServiceSpec,
    ) -> Result<ServiceInfo> {
        let key = spec.key();
        if self.last_build.is_none() || self.deleted || self.touched.contains(&key) {
            self.rebuild(store, now);
        }
        let stamp = store.stamp(now);
        let Some(object) = self
            .pending
            .allocate(&spec, stamp, &self.catalog, &self.settings)?
        else {
            return self.info(&key);
        };
        let writes = service_writes(&object, stamp, &self.catalog.part_keys(&key))?;
        apply(store, now, &writes)?;
        tracing::info!(service = %key, "Service written");
        let service = self.catalog.preview(&object);
        self.touched.insert(key);
        self.dirty = true;
        // A lone write is built (and the table published) before the answer, so the node
        // serves the Service when `service add` returns; in a run of writes the paced
        // rebuild takes the rest.
        if now >= self.rebuild_due() {
            self.rebuild(store, now);
        }
        Ok(ServiceInfo { spec, service })
    }

    /// Writes many Services, allocated together (`put_services`); nothing is written if
    /// one of them is refused.
    fn apply_many(
        &mut self,
        store: &mut impl ObjectStore,
        now: Instant,
        specs: &[ServiceSpec],
    ) -> Result<Vec<ServiceInfo>> {
        self.fresh(store, now);
        let writes = put_services(specs, store.stamp(now), &self.catalog, &self.settings)
            .map_err(|(i, e)| anyhow!("service[{i}] ({}): {e}", specs[i].key()))?;
        apply(store, now, &writes)?;
        tracing::info!(services = specs.len(), "Services written");
        self.rebuild(store, now);
        specs.iter().map(|s| self.info(&s.key())).collect()
    }

    /// Deletes one Service; like [`ServiceState::put`], without a rebuild unless the
    /// Service was written or deleted since the last one.
    fn delete(
        &mut self,
        store: &mut impl ObjectStore,
        now: Instant,
        key: &ServiceKey,
    ) -> Result<ServiceInfo> {
        if self.last_build.is_none() || self.touched.contains(key) {
            self.rebuild(store, now);
        }
        let info = self.info(key)?;
        apply(store, now, &delete_service(key, &self.catalog))?;
        tracing::info!(service = %key, "Service deleted");
        self.touched.insert(key.clone());
        self.deleted = true;
        self.dirty = true;
        if now >= self.rebuild_due() {
            self.rebuild(store, now);
        }
        Ok(info)
    }

    /// A Service as the catalog holds it, with every write made so far.
    fn get(
        &mut self,
        store: &mut impl ObjectStore,
        now: Instant,
        key: &ServiceKey,
    ) -> Result<ServiceInfo> {
        self.fresh(store, now).info(key)
    }

    fn info(&self, key: &ServiceKey) -> Result<ServiceInfo> {
        let (Some(object), Some(service)) =
            (self.catalog.object(key), self.catalog.table().get(key))
        else {
            bail!("no Service {key}");
        };
        Ok(ServiceInfo {
            spec: object.spec.clone(),
            service: service.clone(),
        })
    }
}

/// Applies writes in order.
fn apply(store: &mut impl ObjectStore, now: Instant, writes: &[ObjectWrite]) -> Result<()> {
    for w in writes {
        store
            .set_object(now, &w.key, w.value.clone())
            .map_err(|e| anyhow!("writing {}: {e}", w.key))?;
    }
    Ok(())
}

/// Drives a [`ServiceState`] over a [`LocalStore`]: a node without gossip.
pub async fn run_local(mut state: ServiceState, mut store: LocalStore, mut commands: Commands) {
    loop {
        let now = Instant::now();
        state.tick(&mut store, now);
        let deadline = state
            .deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = state.pods_changed() => state.mark_dirty(),
            command = commands.recv() => match command {
                Some(c) => state.command(&mut store, Instant::now(), c),
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlayd_proto::service::catalog::pod_writes;
    use overlayd_proto::service::{Protocol, ServicePort};
    use std::net::Ipv4Addr;

    fn spec(name: &str, port: u16) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            namespace: "default".into(),
            kind: Default::default(),
            ports: vec![ServicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port,
                target_port: Some(8080),
                node_port: None,
                proxy_protocol: false,
            }],
            selector: [("app".to_owned(), "web".to_owned())].into(),
            backends: Vec::new(),
            cluster_ip: None,
            session_affinity: Default::default(),
            affinity_timeout_s: 10_800,
            algorithm: Default::default(),
            health_check: Default::default(),
            external_ip: None,
            external_name: None,
        }
    }

    fn pods(ips: &[(&str, [u8; 4])]) -> LocalPods {
        Some(
            ips.iter()
                .map(|(name, ip)| {
                    (
                        name.to_string(),
                        PodEndpoint {
                            ip: Ipv4Addr::from(*ip),
                            labels: [("app".to_owned(), "web".to_owned())].into(),
                        },
                    )
                })
                .collect(),
        )
    }

    fn state(
        config: Vec<ServiceSpec>,
        local_pods: LocalPods,
    ) -> (ServiceState, ServicesHandle, watch::Sender<LocalPods>) {
        let (tx, rx) = watch::channel(local_pods);
        let (state, handle, _commands) =
            ServiceState::new("n1", ServiceSettings::default(), config, false, rx);
        (state, handle, tx)
    }

    /// The config's Services are applied on a node without seeds at its first tick, its
    /// pods published and selected; the table reaches the handle.
    #[test]
    fn config_services_and_pods_make_the_table() {
        let mut store = LocalStore::new("n1");
        let (mut state, handle, _pods) =
            state(vec![spec("web", 80)], pods(&[("a", [10, 244, 1, 2])]));

        state.tick(&mut store, Instant::now());

        let table = handle.table().borrow().clone();
        let web = table
            .get(&ServiceKey::new("default", "web"))
            .expect("the config's Service");
        assert!(web.is_active());
        assert!(web.cluster_ip.is_some());
        assert_eq!(web.endpoints.len(), 1);
        assert_eq!(web.endpoints[0].ip, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(table.vips().len(), 1);
    }

    /// Put answers with the allocated VIP; get, list and delete see the same.
    #[test]
    fn put_get_list_delete() {
        let mut store = LocalStore::new("n1");
        let (mut state, _handle, _pods) = state(Vec::new(), pods(&[]));
        let now = Instant::now();

        let added = state.put(&mut store, now, spec("web", 80)).unwrap();
        let vip = added.service.cluster_ip.expect("a VIP");

        let key = ServiceKey::new("default", "web");
        assert_eq!(
            state.get(&mut store, now, &key).unwrap().service.cluster_ip,
            Some(vip)
        );
        let again = state.put(&mut store, now, spec("web", 81)).unwrap();
        assert_eq!(
            again.service.cluster_ip,
            Some(vip),
            "an update keeps the VIP"
        );
        assert_eq!(again.service.ports[0].port, 81);
        let bad = state.put(&mut store, now, spec("Bad", 80));
        assert!(bad.is_err(), "an invalid spec is refused");
        state.delete(&mut store, now, &key).unwrap();
        assert!(state.get(&mut store, now, &key).is_err());
        assert!(
            state.delete(&mut store, now, &key).is_err(),
            "nothing to delete"
        );
    }

    /// A run of `service add`s is answered without a rebuild per write (it was
    /// quadratic): each gets a VIP of its own, and the table built afterwards holds every
    /// one with the VIP it was answered with.
    #[test]
    fn a_run_of_puts_is_allocated_without_a_rebuild_per_write() {
        let mut store = LocalStore::new("n1");
        let (mut state, handle, _pods) = state(Vec::new(), pods(&[("a", [10, 244, 1, 2])]));
        state.tick(&mut store, Instant::now());
        let built = state.last_build;
        assert!(built.is_some(), "the first tick builds");
        let now = Instant::now();

        let answered: Vec<(String, Ipv4Addr, usize)> = (0..50)
            .map(|i| {
                let name = format!("web{i}");
                let info = state.put(&mut store, now, spec(&name, 80)).unwrap();
                let vip = info.service.cluster_ip.expect("a VIP");
                (name, vip, info.service.endpoints.len())
            })
            .collect();
        assert_eq!(state.last_build, built, "no rebuild between the writes");
        let vips: BTreeSet<Ipv4Addr> = answered.iter().map(|(_, vip, _)| *vip).collect();
        assert_eq!(vips.len(), 50, "every Service has a VIP of its own");

        state.tick(&mut store, now + REBUILD_EVERY);
        let table = handle.table().borrow().clone();
        for (name, vip, endpoints) in &answered {
            let service = table.get(&ServiceKey::new("default", name)).expect("built");
            assert_eq!(service.cluster_ip, Some(*vip), "{name}");
            assert_eq!(service.endpoints.len(), *endpoints, "{name}");
            assert_eq!(*endpoints, 1, "the local pod its selector picks");
        }
    }

    /// A VIP freed by a delete can be given to a new Service at once.
    #[test]
    fn a_deleted_services_vip_is_free_for_the_next_write() {
        let mut store = LocalStore::new("n1");
        let (mut state, _handle, _pods) = state(Vec::new(), pods(&[]));
        let now = Instant::now();
        let old = state.put(&mut store, now, spec("old", 80)).unwrap();
        state
            .delete(&mut store, now, &ServiceKey::new("default", "old"))
            .unwrap();
        let mut new = spec("new", 80);
        let vip = old.service.cluster_ip.unwrap();
        new.cluster_ip = Some(overlayd_proto::service::ClusterIp::Ip(vip));
        let added = state.put(&mut store, now, new).unwrap();
        assert_eq!(added.service.cluster_ip, Some(vip));
    }

    /// Until the daemon has loaded its pods, the pods it published before a restart stay
    /// published: they are not withdrawn from every Service for a moment.
    #[test]
    fn published_pods_stay_until_the_local_pods_are_known() {
        let mut store = LocalStore::new("n1");
        let published = pod_writes(
            &Catalog::default(),
            "n1",
            &pods(&[("a", [10, 244, 1, 2])]).unwrap(),
        );
        for w in &published {
            store
                .set_object(Instant::now(), &w.key, w.value.clone())
                .unwrap();
        }
        let (mut state, handle, pods_tx) = state(vec![spec("web", 80)], None);

        state.tick(&mut store, Instant::now());
        let endpoints = |h: &ServicesHandle| {
            h.table()
                .borrow()
                .get(&ServiceKey::new("default", "web"))
                .map_or(0, |s| s.endpoints.len())
        };
        assert_eq!(
            endpoints(&handle),
            1,
            "withdrawn before the pods were known"
        );

        pods_tx.send_replace(pods(&[]));
        state.mark_dirty();
        state.tick(&mut store, Instant::now() + REBUILD_EVERY);
        assert_eq!(endpoints(&handle), 0, "a pod that is gone stays published");
    }

    /// A store whose members include dead ones gossip still knows (as `Gossip` has them
    /// until they are reaped), over a [`LocalStore`].
    struct WithDeadMembers {
        inner: LocalStore,
        dead: BTreeSet<String>,
    }

    impl ObjectStore for WithDeadMembers {
        fn objects(&self) -> Vec<(&str, &[u8])> {
            self.inner.objects()
        }
        fn set_object(
            &mut self,
            now: Instant,
            key: &str,
            value: Option<Vec<u8>>,
        ) -> Result<(), ObjectError> {
            self.inner.set_object(now, key, value)
        }
        fn stamp(&mut self, now: Instant) -> Hlc {
            self.inner.stamp(now)
        }
        fn live(&self) -> BTreeSet<String> {
            self.inner.live()
        }
        fn members(&self) -> BTreeSet<String> {
            let mut all = self.inner.members();
            all.extend(self.dead.iter().cloned());
            all
        }
        fn synced(&self) -> bool {
            true
        }
    }

    /// Issue 9: the pods of a member gossip declared dead while its node answers (its
    /// daemon is down) stay endpoints; once the node is not kept either, they leave.
    #[test]
    fn pods_of_a_node_whose_daemon_is_down_stay_endpoints() {
        let mut store = WithDeadMembers {
            inner: LocalStore::new("n1"),
            dead: ["n2".to_owned()].into(),
        };
        for w in pod_writes(
            &Catalog::default(),
            "n2",
            &pods(&[("b", [10, 244, 2, 2])]).unwrap(),
        ) {
            store
                .set_object(Instant::now(), &w.key, w.value.clone())
                .unwrap();
        }
        let (mut state, handle, _pods) = state(vec![spec("web", 80)], pods(&[]));
        let endpoints = |h: &ServicesHandle| {
            h.table()
                .borrow()
                .get(&ServiceKey::new("default", "web"))
                .map_or(0, |s| s.endpoints.len())
        };
        let mut now = Instant::now();
        state.tick(&mut store, now);
        assert_eq!(
            endpoints(&handle),
            0,
            "a dead member's pods are no endpoints"
        );

        state.set_daemon_down(&["n2".to_owned()].into());
        now += REBUILD_EVERY;
        state.tick(&mut store, now);
        assert_eq!(
            endpoints(&handle),
            1,
            "the pod of a node whose daemon is down left the Service"
        );

        state.set_daemon_down(&BTreeSet::new());
        now += REBUILD_EVERY;
        state.tick(&mut store, now);
        assert_eq!(endpoints(&handle), 0, "the node is gone: its pods leave");
        assert!(
            store.objects().iter().any(|(k, _)| k.contains("n2")),
            "a dead member's published pods are kept until it is reaped"
        );
    }
}
