//! Changes to the state as transactions, and the one writer of the maps.
//!
//! A change is checked (its desired state computed, capacities included) before any map is
//! written, and a change the maps refuse leaves neither the state nor the maps changed:
//!
//! - transactions (API requests, `xlb reload`, SIGHUP: [`begin`], then the write, then
//!   [`Undo::undo`] on any error): on any error the previous [`State`] comes back, and the
//!   maps are made to hold the previous desired state again;
//! - facts the daemon observed (health transitions, finished drains, scaling rounds, hook
//!   results): the state keeps what happened; when the maps refuse the result, they are put
//!   back to the last desired state that was applied and the owner loop tries again on its
//!   next tick.
//!
//! Either way the maps are written by [`write()`], which writes the new desired state and, when
//! a write fails, the previous one again. In the daemon it runs on the map writer's thread
//! ([`Writer`]): the only place that holds the reconciler and writable map handles, so the
//! one-writer rule holds by construction. Map syscalls and Maglev builds (tens of
//! milliseconds for a large table) run there, off the async workers; the owner loop hands a
//! job over, and while it waits for the answer it still answers the requests that only read
//! (`xlb status`), holding everything else until the write is done.
use std::sync::Arc;

use lb_common::FlowKey;
use tokio::sync::oneshot;
use tracing::error;

use crate::{
    model::ApiError,
    reconcile::{Links, MapWriter, ReconcileError, Reconciler},
    state::{Desired, State, StateError},
};

/// Why a desired state did not reach the maps.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// It does not fit (too many ids or addresses): nothing was written.
    #[error("{0}")]
    Capacity(#[from] StateError),
    /// A map write failed; the maps were put back to the previous desired state (or, when
    /// that failed too, `restore` says why).
    #[error("{error}{}", restore.as_ref().map(|r| format!("; putting the previous state back failed too: {r}")).unwrap_or_default())]
    Write {
        error: Box<ReconcileError>,
        restore: Option<Box<ReconcileError>>,
    },
    /// The map writer's thread is gone (it panicked): nothing more can be written.
    #[error("the map writer stopped")]
    WriterGone,
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Capacity(_) => ApiError::Conflict(e.to_string()),
            CommitError::Write { .. } | CommitError::WriterGone => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

/// Write `desired` into the maps, which hold `previous` (the desired state last applied);
/// when a write fails, make them hold `previous` again.
pub fn write(
    reconciler: &mut Reconciler,
    dp: &mut impl MapWriter,
    desired: &Desired,
    previous: &Desired,
) -> Result<(), CommitError> {
    if let Err(error) = reconciler.apply(dp, desired) {
        let restore = reconciler.apply(dp, previous).err().map(Box::new);
        if let Some(r) = &restore {
            error!(error = %r, "putting the previous desired state back into the maps failed");
        }
        return Err(CommitError::Write {
            error: Box::new(error),
            restore,
        });
    }
    Ok(())
}

/// Compute the desired state of `state` and write it on this thread (tests, tools; the
/// daemon hands the write to its [`Writer`]). `applied` is what the maps hold: it becomes the
/// new desired state on success, and the maps are made to hold it again when a write fails.
pub fn apply(
    state: &mut State,
    reconciler: &mut Reconciler,
    applied: &mut Desired,
    dp: &mut impl MapWriter,
) -> Result<(), CommitError> {
    let desired = state.desired()?;
    write(reconciler, dp, &desired, applied)?;
    *applied = desired;
    Ok(())
}

/// The state as it was before a change: put it back with [`Undo::undo`] when the write fails.
pub struct Undo(State);

impl Undo {
    pub fn undo(self, state: &mut State) {
        *state = self.0;
    }
}

/// Run `change` on `state` and compute the desired state it leads to, capacities checked:
/// its result, the undo, and the desired state to write. On any error the state is what it
/// was before and nothing is to be written.
pub fn begin<T, E>(
    state: &mut State,
    change: impl FnOnce(&mut State) -> Result<T, E>,
) -> Result<(T, Undo, Desired), ApiError>
where
    ApiError: From<E>,
{
    let before = state.clone();
    let out = match change(state) {
        Ok(v) => v,
        Err(e) => {
            *state = before;
            return Err(e.into());
        }
    };
    match state.desired() {
        Ok(desired) => Ok((out, Undo(before), desired)),
        Err(e) => {
            *state = before;
            Err(CommitError::from(e).into())
        }
    }
}

/// Run `change` on `state` and write the result on this thread (tests, tools; the daemon
/// writes through its [`Writer`]); on any error (of the change, of its capacities, of a map
/// write) the state is what it was before and the maps hold `applied`.
pub fn transact<T, E>(
    state: &mut State,
    reconciler: &mut Reconciler,
    applied: &mut Desired,
    dp: &mut impl MapWriter,
    change: impl FnOnce(&mut State) -> Result<T, E>,
) -> Result<T, ApiError>
where
    ApiError: From<E>,
{
    let (out, undo, desired) = begin(state, change)?;
    if let Err(e) = write(reconciler, dp, &desired, applied) {
        undo.undo(state);
        return Err(e.into());
    }
    *applied = desired;
    Ok(out)
}

/// Tests: a look at the writer's maps (see [`Writer::with`]).
#[cfg(test)]
type WithMaps = Box<dyn FnOnce(&mut dyn std::any::Any) + Send>;

/// A job's answer, to await; `Err` when the writer's thread is gone.
pub type Pending<T> = oneshot::Receiver<T>;

/// What the map writer's thread does, one job at a time, in the order they come.
enum Job {
    Apply {
        desired: Arc<Desired>,
        previous: Arc<Desired>,
        done: oneshot::Sender<Result<(), CommitError>>,
    },
    IdleSlots(oneshot::Sender<Result<usize, ReconcileError>>),
    StaleFlows(
        Vec<(FlowKey, u32)>,
        oneshot::Sender<Result<usize, ReconcileError>>,
    ),
    Links(Links, oneshot::Sender<Result<(), ReconcileError>>),
    TxPorts(Vec<u32>, oneshot::Sender<Result<(), ReconcileError>>),
    /// Tests: look at (or arm) the fake maps on the writer's thread.
    #[cfg(test)]
    With(WithMaps),
}

/// The one writer of the maps: a thread of its own that owns the [`Reconciler`] and the
/// handles it writes through, and runs the jobs handed to it one at a time, in order. Each
/// method hands a job over and returns its answer to await; the owner loop waits for one
/// before it hands over the next, so at most one job is queued.
pub struct Writer {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Writer {
    /// Start the thread; it ends when the [`Writer`] is dropped (after the job in hand).
    pub fn spawn<W: MapWriter + Send + 'static>(
        mut reconciler: Reconciler,
        mut dp: W,
    ) -> std::io::Result<Writer> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("xlb-map-writer".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let rec = &mut reconciler;
                    // A caller that stopped waiting does not mind the answer.
                    match job {
                        Job::Apply {
                            desired,
                            previous,
                            done,
                        } => {
                            let _ = done.send(write(rec, &mut dp, &desired, &previous));
                        }
                        Job::IdleSlots(done) => {
                            let _ = done.send(rec.prepare_idle_slots(&mut dp));
                        }
                        Job::StaleFlows(found, done) => {
                            let _ = done.send(rec.remove_stale_flows(&mut dp, &found));
                        }
                        Job::Links(links, done) => {
                            let _ = done.send(rec.apply_links(&mut dp, &links));
                        }
                        Job::TxPorts(ports, done) => {
                            let _ = done.send(rec.set_tx_ports(&mut dp, &ports));
                        }
                        #[cfg(test)]
                        Job::With(f) => f(&mut dp),
                    }
                }
            })?;
        Ok(Writer { jobs })
    }

    fn submit<T>(&self, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> Pending<T> {
        let (done, pending) = oneshot::channel();
        // A thread that is gone drops the job, and with it `done`: the answer is `Err`.
        let _ = self.jobs.send(job(done));
        pending
    }

    /// Write `desired` over `previous` (what the maps hold), see [`write()`].
    pub fn apply(
        &self,
        desired: Arc<Desired>,
        previous: Arc<Desired>,
    ) -> Pending<Result<(), CommitError>> {
        self.submit(|done| Job::Apply {
            desired,
            previous,
            done,
        })
    }

    /// [`Reconciler::prepare_idle_slots`].
    pub fn prepare_idle_slots(&self) -> Pending<Result<usize, ReconcileError>> {
        self.submit(Job::IdleSlots)
    }

    /// [`Reconciler::remove_stale_flows`].
    pub fn remove_stale_flows(
        &self,
        found: Vec<(FlowKey, u32)>,
    ) -> Pending<Result<usize, ReconcileError>> {
        self.submit(|done| Job::StaleFlows(found, done))
    }

    /// [`Reconciler::apply_links`].
    pub fn apply_links(&self, links: Links) -> Pending<Result<(), ReconcileError>> {
        self.submit(|done| Job::Links(links, done))
    }

    /// [`Reconciler::set_tx_ports`].
    pub fn set_tx_ports(&self, ports: Vec<u32>) -> Pending<Result<(), ReconcileError>> {
        self.submit(|done| Job::TxPorts(ports, done))
    }

    /// Tests: run `f` on the writer's thread with its maps (of type `W`, as spawned).
    #[cfg(test)]
    pub fn with<W: 'static, R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut W) -> R + Send + 'static,
    ) -> Pending<R> {
        let (done, pending) = oneshot::channel();
        let _ = self.jobs.send(Job::With(Box::new(move |dp| {
            let dp = dp.downcast_mut::<W>().expect("the writer's map type");
            let _ = done.send(f(dp));
        })));
        pending
    }
}

/// A data plane over hash maps that can fail on the Nth write, for the reconciler's and the
/// transactions' failure paths.
#[cfg(test)]
pub mod fake {
    use std::collections::{BTreeMap, HashMap};

    use aya::maps::MapError;
    use lb_common::{
        AddrKey, BackendAddr, BackendAddrValue, BackendInfo, FlowKey, ServiceInfo, ServiceKey,
        VlanInfo,
    };

    use crate::reconcile::{table_base, MapWriter};

    #[derive(Default, Clone)]
    pub struct FakeMaps {
        pub ring: u32,
        pub ports: HashMap<u32, u64>,
        pub addrs: HashMap<AddrKey, u32>,
        pub backends: BTreeMap<u32, BackendInfo>,
        pub maglev: HashMap<u32, u32>,
        pub services: HashMap<ServiceKey, ServiceInfo>,
        pub backend_addrs: HashMap<BackendAddr, BackendAddrValue>,
        pub vlans: HashMap<u32, VlanInfo>,
        pub tx_ports: Vec<u32>,
        pub conntrack: HashMap<FlowKey, u32>,
        pub passive_conf: HashMap<u32, lb_common::PassiveConf>,
        /// Writes so far (successful or not).
        pub writes: usize,
        /// The write (1-based) that fails, once.
        pub fail_on: Option<usize>,
        /// The write (1-based) that pauses, once: it waits twice on the barrier (the test
        /// waits once to know the write has begun, once to let it go on).
        pub pause_on: Option<(usize, std::sync::Arc<std::sync::Barrier>)>,
    }

    /// What the data path sees: every service's live table, and the other maps (the idle
    /// slots and write history left out).
    #[derive(Debug, PartialEq, Eq)]
    pub struct View {
        pub services: BTreeMap<String, (u32, u32, Vec<u32>)>,
        pub backends: BTreeMap<u32, String>,
        pub backend_addrs: BTreeMap<String, String>,
        pub addrs: BTreeMap<String, u32>,
        pub ports: BTreeMap<u32, u64>,
        pub passive_conf: BTreeMap<u32, u64>,
    }

    impl FakeMaps {
        pub fn new(ring: u32) -> Self {
            Self {
                ring,
                ..Self::default()
            }
        }

        fn write(&mut self) -> Result<(), MapError> {
            self.writes += 1;
            if self
                .pause_on
                .as_ref()
                .is_some_and(|(n, _)| *n == self.writes)
            {
                if let Some((_, barrier)) = self.pause_on.take() {
                    barrier.wait();
                    barrier.wait();
                }
            }
            if self.fail_on == Some(self.writes) {
                self.fail_on = None;
                return Err(MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_elem",
                    io_error: std::io::Error::from_raw_os_error(libc_e2big()),
                }));
            }
            Ok(())
        }

        pub fn view(&self) -> View {
            View {
                services: self
                    .services
                    .iter()
                    .map(|(k, v)| {
                        let base = table_base(self.ring, v.id, v.slot);
                        let table = (0..self.ring)
                            .map(|i| self.maglev.get(&(base + i)).copied().unwrap_or(0))
                            .collect();
                        (format!("{k:?}"), (v.id, v.flags, table))
                    })
                    .collect(),
                backends: self
                    .backends
                    .iter()
                    .filter(|(_, b)| **b != BackendInfo::default())
                    .map(|(k, v)| (*k, format!("{v:?}")))
                    .collect(),
                backend_addrs: self
                    .backend_addrs
                    .iter()
                    .map(|(k, v)| (format!("{k:?}"), format!("{v:?}")))
                    .collect(),
                addrs: self
                    .addrs
                    .iter()
                    .map(|(k, v)| (format!("{k:?}"), *v))
                    .collect(),
                ports: self
                    .ports
                    .iter()
                    .filter(|(_, v)| **v != 0)
                    .map(|(k, v)| (*k, *v))
                    .collect(),
                passive_conf: self
                    .passive_conf
                    .iter()
                    .filter(|(_, v)| v.syn_timeout_ns != 0)
                    .map(|(k, v)| (*k, v.syn_timeout_ns))
                    .collect(),
            }
        }
    }

    fn libc_e2big() -> i32 {
        7
    }

    impl MapWriter for FakeMaps {
        fn ring_size(&self) -> u32 {
            self.ring
        }
        fn set_port_word(&mut self, word: u32, bits: u64) -> Result<(), MapError> {
            self.write()?;
            self.ports.insert(word, bits);
            Ok(())
        }
        fn set_addr(&mut self, key: &AddrKey, flags: u32) -> Result<(), MapError> {
            self.write()?;
            self.addrs.insert(*key, flags);
            Ok(())
        }
        fn remove_addr(&mut self, key: &AddrKey) -> Result<(), MapError> {
            self.write()?;
            self.addrs.remove(key);
            Ok(())
        }
        fn set_backend(&mut self, id: u32, info: BackendInfo) -> Result<(), MapError> {
            self.write()?;
            self.backends.insert(id, info);
            Ok(())
        }
        fn reset_nexthop(&mut self, _id: u32) -> Result<(), MapError> {
            self.write()
        }
        fn reset_backend_counters(&mut self, _id: u32) {}
        fn reset_service_counters(&mut self, _id: u32) {}
        fn set_maglev(&mut self, index: u32, backend_id: u32) -> Result<(), MapError> {
            self.write()?;
            self.maglev.insert(index, backend_id);
            Ok(())
        }
        fn set_service(&mut self, key: &ServiceKey, info: ServiceInfo) -> Result<(), MapError> {
            self.write()?;
            self.services.insert(*key, info);
            Ok(())
        }
        fn remove_service(&mut self, key: &ServiceKey) -> Result<(), MapError> {
            self.write()?;
            self.services.remove(key);
            Ok(())
        }
        fn set_backend_addr(
            &mut self,
            key: &BackendAddr,
            v: BackendAddrValue,
        ) -> Result<(), MapError> {
            self.write()?;
            self.backend_addrs.insert(*key, v);
            Ok(())
        }
        fn remove_backend_addr(&mut self, key: &BackendAddr) -> Result<(), MapError> {
            self.write()?;
            self.backend_addrs.remove(key);
            Ok(())
        }
        fn set_vlan(&mut self, ifindex: u32, v: VlanInfo) -> Result<(), MapError> {
            self.write()?;
            self.vlans.insert(ifindex, v);
            Ok(())
        }
        fn remove_vlan(&mut self, ifindex: u32) -> Result<(), MapError> {
            self.write()?;
            self.vlans.remove(&ifindex);
            Ok(())
        }
        fn set_tx_ports(&mut self, ifindexes: &[u32]) -> Result<(), MapError> {
            self.write()?;
            self.tx_ports = ifindexes.to_vec();
            Ok(())
        }
        fn flow_backend(&self, key: &FlowKey) -> Option<u32> {
            self.conntrack.get(key).copied()
        }
        fn remove_flow(&mut self, key: &FlowKey) -> Result<(), MapError> {
            self.write()?;
            self.conntrack.remove(key);
            Ok(())
        }
        fn set_passive_conf(
            &mut self,
            id: u32,
            conf: lb_common::PassiveConf,
        ) -> Result<(), MapError> {
            self.write()?;
            self.passive_conf.insert(id, conf);
            Ok(())
        }
        fn set_dsr(&mut self, _id: u32, _conf: lb_common::DsrConf) -> Result<(), MapError> {
            self.write()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::FakeMaps, *};
    use crate::model::BackendSource;
    use crate::state::ChangeError;

    const RING: u32 = 1021;

    const CFG: &str = r#"
[daemon]
interfaces = ["eth0"]
maglev_table_size = 1021

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "g"

[[service]]
name = "dns"
vip = "198.18.100.1"
port = 53
protocol = "udp"
target_group = "g"

[[service]]
name = "other"
vip = "198.18.100.2"
port = 8443
protocol = "tcp"
target_group = "h"

[[target_group]]
name = "g"
backends = ["198.18.2.11", "198.18.2.12"]

[[target_group]]
name = "h"
backends = ["198.18.2.11:9443", "198.18.2.13:9443"]
"#;

    struct Owner {
        state: State,
        rec: Reconciler,
        applied: Desired,
        dp: FakeMaps,
    }

    impl Owner {
        fn new() -> Self {
            let cfg = crate::config::parse(CFG, "t.toml").unwrap();
            let mut o = Owner {
                state: State::new(cfg),
                rec: Reconciler::new(),
                applied: Desired::default(),
                dp: FakeMaps::new(RING),
            };
            apply(&mut o.state, &mut o.rec, &mut o.applied, &mut o.dp).unwrap();
            o
        }

        fn transact<T>(
            &mut self,
            change: impl FnOnce(&mut State) -> Result<T, ChangeError>,
        ) -> Result<T, ApiError> {
            transact(
                &mut self.state,
                &mut self.rec,
                &mut self.applied,
                &mut self.dp,
                change,
            )
        }
    }

    /// The changes the tests make, each from the state `Owner::new` starts in.
    type Change = fn(&mut State) -> Result<String, ChangeError>;

    fn changes() -> Vec<(&'static str, Change)> {
        vec![
            ("add", |s| {
                s.add_backend("g", "198.18.2.14", Some(3), BackendSource::Api)
            }),
            ("remove", |s| s.remove_backend("g", "198.18.2.11")),
            ("drain", |s| s.drain_backend("h", "198.18.2.13:9443", "t")),
            ("weight", |s| s.set_weight("g", "198.18.2.12", 5)),
            ("reload", |s| {
                let text = CFG
                    .replace("198.18.100.2", "198.18.100.3")
                    .replace("\"198.18.2.11\", \"198.18.2.12\"", "\"198.18.2.15\"");
                Ok(s.reload(crate::config::parse(&text, "t.toml").unwrap())
                    .join("; "))
            }),
        ]
    }

    #[test]
    fn a_change_whose_nth_write_fails_leaves_state_and_maps_as_they_were() {
        for (name, change) in changes() {
            // How many writes the change takes when nothing fails.
            let mut clean = Owner::new();
            let start = clean.dp.writes;
            clean.transact(change).unwrap();
            let total = clean.dp.writes - start;
            assert!(total > 0, "{name}: the change writes something");
            let after = clean.dp.view();

            // Every one of the first writes, then a sample, and the last ones.
            let ns = (1..=total.min(64))
                .chain((64..total).step_by(97))
                .chain(total.saturating_sub(8).max(1)..=total);
            for n in ns {
                let mut o = Owner::new();
                let view_before = o.dp.view();
                let snapshot_before = serde_json::to_string(&o.state.snapshot()).unwrap();
                let applied_before = o.applied.clone();
                o.dp.fail_on = Some(o.dp.writes + n);
                let e = o.transact(change).expect_err("the Nth write fails");
                assert!(matches!(e, ApiError::Internal(_)), "{name}/{n}: {e}");
                assert!(o.dp.view() == view_before, "{name}/{n}: maps put back");
                assert_eq!(
                    serde_json::to_string(&o.state.snapshot()).unwrap(),
                    snapshot_before,
                    "{name}/{n}: state put back"
                );
                assert_eq!(o.applied, applied_before, "{name}/{n}");
                assert_eq!(o.state.desired().unwrap(), applied_before, "{name}/{n}");
                // Later changes still work, and reach what a change that never failed does.
                o.transact(change)
                    .unwrap_or_else(|e| panic!("{name}/{n}: retry: {e}"));
                assert!(o.dp.view() == after, "{name}/{n}: retried");
            }
        }
    }

    #[test]
    fn a_change_that_does_not_fit_writes_nothing_and_leaves_the_state() {
        let mut o = Owner::new();
        let writes = o.dp.writes;
        let snapshot = serde_json::to_string(&o.state.snapshot()).unwrap();
        // More backend ids than the maps hold: group g (no port) is behind two services, so
        // each member takes two ids.
        let e = o
            .transact(|s| {
                for i in 0..lb_common::MAX_BACKENDS / 2 {
                    let a = std::net::Ipv4Addr::from(u32::from_be_bytes([198, 19, 0, 0]) + i);
                    s.add_backend_unchecked("g", a.into());
                }
                Ok(())
            })
            .expect_err("too many backend ids");
        assert!(matches!(e, ApiError::Conflict(_)), "{e}");
        assert!(e.to_string().contains("backend ids"), "{e}");
        assert_eq!(o.dp.writes, writes, "nothing written");
        assert_eq!(
            serde_json::to_string(&o.state.snapshot()).unwrap(),
            snapshot
        );
        // And the next change goes through.
        o.transact(|s| s.set_weight("g", "198.18.2.12", 2)).unwrap();
    }

    #[test]
    fn ids_freed_by_a_change_are_available_to_it() {
        // At capacity: g (no port) behind two services takes two ids per member; h's two
        // members one each.
        let mut o = Owner::new();
        o.transact(|s| {
            for i in 0..lb_common::MAX_BACKENDS / 2 - 3 {
                let a = std::net::Ipv4Addr::from(u32::from_be_bytes([198, 19, 0, 0]) + i);
                s.add_backend_unchecked("g", a.into());
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(o.applied.backends.len(), lb_common::MAX_BACKENDS as usize);
        // One more backend id does not fit: refused by the add itself (as for a scale-out
        // hook's backends), naming the capacity, with nothing written.
        let writes = o.dp.writes;
        let e = o
            .transact(|s| s.add_backend("h", "198.18.2.30:9443", None, BackendSource::Api))
            .expect_err("full");
        assert!(
            matches!(e, ApiError::Conflict(_)) && e.to_string().contains("backend ids"),
            "{e}"
        );
        assert_eq!(o.dp.writes, writes);
        // Replacing a member: its two ids are freed before the new member takes two.
        o.transact(|s| {
            s.remove_backend("g", "198.18.2.11")?;
            s.add_backend_unchecked("g", "198.18.2.20".parse().unwrap());
            Ok(())
        })
        .unwrap();
        assert_eq!(o.applied.backends.len(), lb_common::MAX_BACKENDS as usize);
    }

    #[test]
    fn a_backend_added_during_a_sweep_keeps_its_entries() {
        let mut o = Owner::new();
        let flow = |sport: u16| lb_common::FlowKey {
            sport: sport.to_be_bytes(),
            ..Default::default()
        };
        // What a sweep saw: three entries naming ids that were free then.
        let next = *o.applied.backends.keys().last().unwrap() + 1;
        o.dp.conntrack.insert(flow(1), 99);
        o.dp.conntrack.insert(flow(2), next);
        o.dp.conntrack.insert(flow(3), 98);
        let found = [(flow(1), 99), (flow(2), next), (flow(3), 98)];
        // Meanwhile a backend is added and takes the next id; and flow 3 was re-balanced.
        o.transact(|s| s.add_backend("g", "198.18.2.14", None, BackendSource::Api))
            .unwrap();
        assert!(
            o.applied.backends.contains_key(&next),
            "the new backend has id {next}"
        );
        o.dp.conntrack.insert(flow(3), 0);
        let removed = o.rec.remove_stale_flows(&mut o.dp, &found).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(
            o.dp.conntrack.get(&flow(1)),
            None,
            "a gone backend's entry goes"
        );
        assert_eq!(
            o.dp.conntrack.get(&flow(2)),
            Some(&next),
            "the new backend keeps it"
        );
        assert_eq!(
            o.dp.conntrack.get(&flow(3)),
            Some(&0),
            "a re-balanced entry stays"
        );
    }

    #[test]
    fn passive_conf_follows_the_groups_and_idle_slots_catch_up() {
        let with = CFG.replace(
            "backends = [\"198.18.2.11\", \"198.18.2.12\"]\n",
            "backends = [\"198.18.2.11\", \"198.18.2.12\"]\n\
             health_check = { protocol = \"tcp\" }\n\
             passive_health = { unanswered_timeout = \"250ms\", redispatch = true }\n",
        );
        let cfg = crate::config::parse(&with, "t.toml").unwrap();
        let mut state = State::new(cfg);
        let (mut rec, mut applied, mut dp) =
            (Reconciler::new(), Desired::default(), FakeMaps::new(RING));
        apply(&mut state, &mut rec, &mut applied, &mut dp).unwrap();
        // Group g's backends (two, for each of its two services' ports) sample SYNs and
        // redispatch; h's do neither.
        let g: Vec<u32> = applied
            .backends
            .values()
            .filter(|b| b.key.group == "g")
            .map(|b| b.id)
            .collect();
        assert_eq!(g.len(), 4);
        let view = dp.view();
        assert_eq!(
            view.passive_conf,
            g.iter()
                .map(|id| (*id, 250_000_000))
                .collect::<std::collections::BTreeMap<_, _>>()
        );
        for b in applied.backends.values() {
            let redispatch = dp.backends[&b.id].flags & lb_common::BE_F_REDISPATCH != 0;
            assert_eq!(redispatch, b.key.group == "g", "{b:?}");
        }
        // Without passive health the entries go back to zero.
        let mut state2 = State::new(crate::config::parse(CFG, "t.toml").unwrap());
        apply(&mut state2, &mut rec, &mut applied, &mut dp).unwrap();
        assert!(dp.view().passive_conf.is_empty());
        // The idle slots: made equal to the live ones, then nothing more to write.
        assert!(rec.prepare_idle_slots(&mut dp).unwrap() > 0);
        assert_eq!(rec.prepare_idle_slots(&mut dp).unwrap(), 0);
        for (k, v) in &dp.services {
            let live = crate::reconcile::table_base(RING, v.id, v.slot);
            let idle = crate::reconcile::table_base(RING, v.id, v.slot ^ 1);
            for i in 0..RING {
                assert_eq!(
                    dp.maglev.get(&(live + i)),
                    dp.maglev.get(&(idle + i)),
                    "{k:?} entry {i}"
                );
            }
        }
    }

    /// The writer's thread writes (and puts back) as [`write()`] does on the caller's thread,
    /// one job after the other.
    #[tokio::test]
    async fn the_writer_thread_writes_and_puts_back_like_write() {
        let mut o = Owner::new();
        let writer = Writer::spawn(Reconciler::new(), FakeMaps::new(RING)).unwrap();
        let first = Arc::new(o.applied.clone());
        writer
            .apply(first.clone(), Arc::default())
            .await
            .unwrap()
            .unwrap();
        let view = writer.with(|m: &mut FakeMaps| m.view()).await.unwrap();
        assert!(view == o.dp.view(), "the same maps as written here");

        // A change whose 5th write fails: the maps hold the first state again.
        let (_, _undo, next) = begin(&mut o.state, |s| s.set_weight("g", "198.18.2.12", 5))
            .expect("a change that fits");
        writer
            .with(|m: &mut FakeMaps| m.fail_on = Some(m.writes + 5))
            .await
            .unwrap();
        let e = writer
            .apply(Arc::new(next.clone()), first.clone())
            .await
            .unwrap()
            .expect_err("the 5th write fails");
        assert!(matches!(e, CommitError::Write { restore: None, .. }), "{e}");
        let back = writer.with(|m: &mut FakeMaps| m.view()).await.unwrap();
        assert!(back == view, "put back");
        // And then it goes through.
        writer.apply(Arc::new(next), first).await.unwrap().unwrap();
        let after = writer.with(|m: &mut FakeMaps| m.view()).await.unwrap();
        assert!(after != view, "written");
        // A dropped writer ends its thread; a job nobody waits for is no error.
        drop(writer.prepare_idle_slots());
        drop(writer);
    }
}
