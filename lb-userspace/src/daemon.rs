//! `xlb run`: load (or adopt), attach, and then one loop that owns all state. Everything that
//! changes state arrives as a [`Msg`] on that loop's one channel (see [`crate::msg`]): API
//! requests, health check outcomes, conntrack sweeps, hook results, link changes, signals and
//! the ticks; `Daemon::on` handles each with one `match`. After each change the loop
//! computes the desired state and hands it to the map writer's thread ([`commit::Writer`]),
//! where the reconciler writes the difference to the maps; while it waits, the loop answers
//! the requests that only read and holds the others.
use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::MapData;
use std::ops::ControlFlow;
use std::os::fd::AsFd;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::{
    api,
    commit::{self, CommitError},
    config,
    dataplane::{self, Attachment, Dataplane, LoadOptions, Pinning},
    health::{self, CheckOutcome, CheckerHandle},
    instance::{self, InstanceLock, PinManifest},
    links,
    model::{ApiError, BackendSource, ChangeResult, Envelope, Reply, Request, Status},
    msg::{self, HookResult, Msg},
    passive,
    reconcile::{Links, ReconcileError, Reconciler},
    scaling::{self, HookJob},
    state::{
        persist::{saved_state, StateFile},
        CheckToken, Desired, State,
    },
    sweep::{self, Sweep},
};

const BPFFS: &str = "/sys/fs/bpf";
/// How often open flows are counted and expired ones deleted (and drains can finish).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Mount bpffs at /sys/fs/bpf unless it is there already.
pub fn ensure_bpffs() -> Result<()> {
    let path = Path::new(BPFFS);
    if instance::is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path).ok();
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {BPFFS}"))?;
    info!("mounted bpffs at {BPFFS}");
    Ok(())
}

/// Where the kernel's tracing file system is mounted on current systems.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs at `/sys/kernel/tracing` when neither it nor the older
/// `/sys/kernel/debug/tracing` is mounted: attaching the `xdp_devmap_xmit` tracepoint
/// (`xmit_drops`) needs it. Most systemd hosts mount it at boot; a minimal host or a
/// container may not. Needs CAP_SYS_ADMIN; without it the error says so and the caller
/// carries on without the tracepoint.
pub fn ensure_tracefs() -> Result<()> {
    let mounted = |p: &str| Path::new(p).join("events").is_dir();
    if mounted(TRACEFS) || mounted("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    match nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) => info!("mounted tracefs at {TRACEFS}"),
        // Another process mounted it at the same time.
        Err(_) if mounted(TRACEFS) => {}
        Err(e) => return Err(e).with_context(|| format!("mounting tracefs at {TRACEFS}")),
    }
    Ok(())
}

fn random_seed() -> u32 {
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.subsec_nanos() ^ std::process::id();
    }
    u32::from_ne_bytes(b)
}

/// Whether `pid` is a live process (a zombie is not).
pub fn alive(pid: u32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    // /proc/PID/stat: "PID (COMM) STATE ...", COMM may hold spaces and parentheses.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn monotonic_coarse_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Sweep the connection table every [`SWEEP_EVERY`] on a thread of its own (the table can
/// hold millions of flows; see [`crate::sweep`]): count open flows per backend, delete
/// expired entries, and report the entries of backend ids that are free, for the owner loop
/// to decide on (the reconciler deletes those).
fn spawn_sweeper(
    pins: (PathBuf, PathBuf),
    cfg: sweep::SweepConfig,
    tx: mpsc::Sender<Msg>,
) -> Result<std::thread::JoinHandle<()>> {
    let (ct_pin, backends_pin) = pins;
    let ct = MapData::from_pin(&ct_pin).with_context(|| format!("opening {}", ct_pin.display()))?;
    let un_pin = ct_pin.with_file_name(lb_common::MAP_UNCONFIRMED);
    let unconfirmed =
        MapData::from_pin(&un_pin).with_context(|| format!("opening {}", un_pin.display()))?;
    let backends = MapData::from_pin(&backends_pin)
        .with_context(|| format!("opening {}", backends_pin.display()))?;
    Ok(std::thread::spawn(move || loop {
        let cpu = crate::batch::thread_cpu_time();
        let result = sweep::free_backends(backends.fd().as_fd()).and_then(|free| {
            let now = monotonic_coarse_ns();
            let mut s = sweep::sweep_once(ct.fd().as_fd(), &free, &cfg, now)?;
            // Answered flows waiting in UNCONFIRMED (a UDP request and its reply) are open
            // flows too; the table's idle ones go as the connection table's do.
            let u = sweep::sweep_unconfirmed(unconfirmed.fd().as_fd(), &free, &cfg, now)?;
            for (id, n) in u.open {
                *s.open.entry(id).or_default() += n;
            }
            s.scanned += u.scanned;
            s.expired += u.expired;
            Ok(s)
        });
        let used = crate::batch::thread_cpu_time().saturating_sub(cpu);
        match result {
            Ok(s) => {
                if s.expired > 0 {
                    debug!(
                        scanned = s.scanned,
                        expired = s.expired,
                        cpu_ms = used.as_millis() as u64,
                        "conntrack sweep deleted expired entries"
                    );
                }
                if tx.blocking_send(Msg::Sweep(s)).is_err() {
                    return;
                }
            }
            Err(e) => warn!(error = %e, "conntrack sweep failed"),
        }
        std::thread::sleep(sweep::pause_after(used, SWEEP_EVERY));
    }))
}

/// Start a hook on its own task; its result comes back on `tx`.
fn spawn_hook(job: HookJob, tx: mpsc::Sender<Msg>) {
    tokio::spawn(async move {
        let result = match job {
            HookJob::Launch {
                group,
                command,
                count,
                reason,
                timeout,
            } => {
                let env = [
                    ("XLB_TARGET_GROUP", group.clone()),
                    ("XLB_REASON", reason),
                    ("XLB_COUNT", count.to_string()),
                ];
                let r = scaling::run_hook(&command, &env, timeout)
                    .await
                    .map_err(|e| e.to_string());
                HookResult::Launch { group, result: r }
            }
            HookJob::Terminate {
                group,
                command,
                backend,
                reason,
                timeout,
            } => {
                let env = [
                    ("XLB_TARGET_GROUP", group.clone()),
                    ("XLB_REASON", reason),
                    ("XLB_BACKEND", backend.clone()),
                ];
                let r = scaling::run_hook(&command, &env, timeout)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                HookResult::Terminate {
                    group,
                    backend,
                    result: r,
                }
            }
            HookJob::Metrics {
                group,
                command,
                backends,
                timeout,
            } => {
                let env = [
                    ("XLB_TARGET_GROUP", group.clone()),
                    ("XLB_BACKENDS", backends.join(" ")),
                ];
                let (lines, ok) = match scaling::run_hook(&command, &env, timeout).await {
                    Ok(out) => (out.lines, true),
                    Err(e) => {
                        warn!(group = %group, error = %e, "metric_command failed");
                        (Vec::new(), false)
                    }
                };
                HookResult::Metrics { group, lines, ok }
            }
        };
        let _ = tx.send(Msg::Hook(result)).await;
    });
}

/// `xlb diff` / `xlb reload --dry-run`: the config (given, or the config file at
/// `config_path`, read as a reload reads it) against the running state; nothing changes.
fn diff(
    req: crate::model::DiffRequest,
    state: &State,
    applied: &Desired,
    ring: u32,
    config_path: &Path,
    open: &HashMap<u32, u64>,
) -> Result<Reply, ApiError> {
    let (cfg, file) = match req.config {
        Some(text) => {
            let file = req.file.unwrap_or_else(|| "(config)".into());
            let cfg = config::parse(&text, &file).map_err(|e| ApiError::Invalid(e.to_string()))?;
            (cfg, file)
        }
        None => {
            let cfg = config::load(config_path).map_err(|e| ApiError::Invalid(e.to_string()))?;
            (cfg, config_path.display().to_string())
        }
    };
    let preview = crate::diff::preview(state, applied, ring, cfg, &file, open)?;
    Ok(Reply::Diff(Box::new(preview)))
}

/// Run `f` on a blocking thread; its answer to await.
fn off_loop<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> commit::Pending<T> {
    let (done, pending) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let _ = done.send(f());
    });
    pending
}

/// Per-backend counters between two scaling rounds.
#[derive(Default)]
struct Rates {
    prev: HashMap<u32, lb_common::Counters>,
    at: Option<Instant>,
}

impl Rates {
    /// Per member uid: new flows/s, packets/s, bytes/s since the last call; and whether the
    /// previous reading is recent enough for them to mean something.
    fn sample(
        &mut self,
        dp: &Dataplane,
        desired: &Desired,
        now: Instant,
    ) -> (HashMap<u64, (f64, f64, f64)>, bool) {
        let dt = self
            .at
            .map(|t| now.saturating_duration_since(t).as_secs_f64());
        let fresh = dt.is_some_and(|d| d > 0.0 && d < 5.0);
        let mut out: HashMap<u64, (f64, f64, f64)> = HashMap::new();
        let mut next = HashMap::new();
        for b in desired.backends.values() {
            let c = dp.backend_counters(b.id);
            if let (Some(p), Some(dt)) = (self.prev.get(&b.id), dt.filter(|_| fresh)) {
                let d = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
                let e = out.entry(b.member).or_default();
                e.0 += d(c.new_flows, p.new_flows);
                e.1 += d(c.packets + c.reply_packets, p.packets + p.reply_packets);
                e.2 += d(c.bytes + c.reply_bytes, p.bytes + p.reply_bytes);
            }
            next.insert(b.id, c);
        }
        self.prev = next;
        self.at = Some(now);
        (out, fresh)
    }
}

struct Daemon {
    config_path: PathBuf,
    state: State,
    /// The loaded program: attachments and reads (counters, status). Its maps are written
    /// only by `writer`.
    dp: Dataplane,
    /// The one writer of the maps: a thread of its own (see [`commit::Writer`]).
    writer: commit::Writer,
    /// What the maps hold: the desired state last applied.
    desired: Arc<Desired>,
    /// A desired state is being written (see [`Daemon::write`]).
    writing: bool,
    /// The loop's channel (see [`crate::msg`]).
    rx: mpsc::Receiver<Msg>,
    /// Messages that came while a map write was in flight and wait for it to end, in order
    /// (read-only requests are answered at once instead).
    deferred: VecDeque<Msg>,
    attachments: Vec<Attachment>,
    checkers: HashMap<CheckToken, (String, CheckerHandle)>,
    /// Marks and routing of DSR checks through VIPs (`target = "vip"`).
    vip_checks: crate::vipcheck::VipChecks,
    /// The owner loop's channel, for the producers the loop starts (checkers, hooks).
    tx: mpsc::Sender<Msg>,
    started: Instant,
    rates: Rates,
    /// Passive health per (backend id, member uid): the last counters read and the window.
    passive: HashMap<
        (u32, u64),
        (
            lb_common::PassiveCounters,
            passive::Window,
            passive::SampleWatch,
        ),
    >,
    /// The last apply of a fact failed: the next tick tries again.
    retry_apply: bool,
    /// The interfaces xlb attaches to and how (from the config at start).
    interfaces: Vec<String>,
    xdp_mode: config::XdpMode,
    /// Whether the link watcher last saw each of them up.
    seen_up: HashMap<String, bool>,
    /// The ifindex XDP was last attached to, per interface.
    attached_ifindex: HashMap<String, u32>,
    /// `[daemon.announce]`: the fleet's announcements (None without that section).
    fleet: Option<crate::fleet::Fleet>,
    /// Each service's table fingerprint, for `xlb status`.
    fingerprints: Arc<crate::fleet::FingerprintCache>,
    /// Open flows per backend id, from the last conntrack sweep (for `xlb diff`).
    last_open: HashMap<u32, u64>,
    /// `[[alert]]` rules, and their sender.
    alerts: crate::alert::Alerter,
    alert_sender: crate::alert::Sender,
    /// `state.events_total` when the alerts last looked.
    alerts_seen: u64,
    /// Metrics counted here and the snapshots the HTTP listener serves.
    telemetry: crate::metrics::Telemetry,
    /// Entries in the connection table at the last sweep.
    conntrack_entries: Option<u64>,
}

impl Daemon {
    /// A daemon over a loaded data plane whose maps `writer` writes, with the loop's channel
    /// (`chan`); nothing is written or attached yet.
    fn new(
        config_path: PathBuf,
        state: State,
        dp: Dataplane,
        writer: commit::Writer,
        chan: (mpsc::Sender<Msg>, mpsc::Receiver<Msg>),
    ) -> Self {
        let d = &state.config.daemon;
        Daemon {
            config_path,
            interfaces: d.interfaces.clone(),
            xdp_mode: d.xdp_mode,
            state,
            writer,
            desired: Arc::default(),
            writing: false,
            rx: chan.1,
            deferred: VecDeque::new(),
            attachments: Vec::new(),
            checkers: HashMap::new(),
            vip_checks: crate::vipcheck::VipChecks::new(),
            tx: chan.0,
            started: Instant::now(),
            rates: Rates::default(),
            passive: HashMap::new(),
            retry_apply: false,
            seen_up: HashMap::new(),
            attached_ifindex: HashMap::new(),
            fleet: None,
            fingerprints: Default::default(),
            last_open: HashMap::new(),
            alerts: crate::alert::Alerter::default(),
            alert_sender: crate::alert::Sender::default(),
            alerts_seen: 0,
            telemetry: crate::metrics::Telemetry::new(),
            conntrack_entries: None,
            dp,
        }
    }

    /// Handle one message of the loop; `Break` stops the daemon.
    async fn on(&mut self, m: Msg) -> ControlFlow<()> {
        match m {
            Msg::Stop => return ControlFlow::Break(()),
            Msg::Reload => {
                let r = self.reload().await;
                self.state.record_change("", "SIGHUP", "reload", &r);
            }
            Msg::Api(env) if env.request.reads_only() => self.answer_read(env),
            Msg::Api(env) => {
                let r = self.handle(env.request).await;
                if let Err(e) = &r {
                    debug!(error = %e, "API request failed");
                }
                let _ = env.reply.send(r);
            }
            Msg::Hook(r) => self.hook_done(r).await,
            Msg::Links(l) => self.links_changed(l).await,
            Msg::Check(token, outcome) => self.check_done(&token, &outcome).await,
            Msg::PassiveTick => self.passive_poll().await,
            Msg::Sweep(sweep) => self.sweep_done(sweep).await,
            Msg::Tick => self.tick().await,
        }
        ControlFlow::Continue(())
    }

    /// The loop: one message at a time, in arrival order (those held back during a map
    /// write first), until a stop. The daemon keeps a sender of its own (for the checkers
    /// and hooks it starts), so the channel never closes under it.
    async fn serve(&mut self) {
        loop {
            let m = match self.deferred.pop_front() {
                Some(m) => m,
                None => match self.rx.recv().await {
                    Some(m) => m,
                    None => return,
                },
            };
            if self.on(m).await.is_break() {
                return;
            }
        }
    }

    /// Wait for the map writer's answer to a job. Meanwhile the loop goes on reading its
    /// channel: requests that only read (`xlb status`, events, diff, flows) are answered at
    /// once, from the state as it is and the maps as last applied; everything else waits in
    /// `deferred`, in order, until the write is done (up to [`msg::CAPACITY`] messages, after
    /// which the loop stops reading and the producers wait, as when the loop is busy).
    /// `None` when the writer's thread is gone.
    async fn wait<T>(&mut self, mut pending: commit::Pending<T>) -> Option<T> {
        loop {
            tokio::select! {
                biased;
                r = &mut pending => return r.ok(),
                m = self.rx.recv(), if self.deferred.len() < msg::CAPACITY => match m {
                    Some(Msg::Api(env)) if env.request.reads_only() => self.answer_read(env),
                    Some(m) => self.deferred.push_back(m),
                    None => {}
                },
            }
        }
    }

    /// Write `desired` (the state's, computed by the caller) through the map writer; on
    /// success it is what the maps hold. Meanwhile `status` says `maps_writing`.
    async fn write(&mut self, desired: Desired) -> Result<(), CommitError> {
        self.writing = true;
        let r = self.write_maps(desired).await;
        self.writing = false;
        r
    }

    async fn write_maps(&mut self, desired: Desired) -> Result<(), CommitError> {
        let desired = Arc::new(desired);
        let pending = self.writer.apply(desired.clone(), self.desired.clone());
        self.wait(pending).await.ok_or(CommitError::WriterGone)??;
        // The status view's fingerprints of the new tables (a Maglev build each), off the
        // loop too, while the loop still shows the tables replaced.
        let (cache, applied) = (self.fingerprints.clone(), desired.clone());
        let (ring, seed) = (self.dp.opts.ring_size, self.dp.opts.hash_seed);
        let warm = off_loop(move || {
            for s in &applied.services {
                // What `status` asks for: the active backends' Maglev keys and weights.
                let members = s
                    .backends
                    .iter()
                    .filter_map(|id| applied.backends.get(id))
                    .filter(|b| b.active)
                    .map(|b| (b.key.maglev_key(), b.weight))
                    .collect();
                cache.get(s.id, members, ring, seed);
            }
        });
        let _ = self.wait(warm).await;
        self.desired = desired;
        Ok(())
    }

    /// Run a job of the reconciler's other than a desired state on the map writer.
    async fn write_job<T>(
        &mut self,
        pending: commit::Pending<Result<T, ReconcileError>>,
    ) -> Result<T, String> {
        match self.wait(pending).await {
            Some(r) => r.map_err(|e| e.to_string()),
            None => Err(CommitError::WriterGone.to_string()),
        }
    }

    /// A health check's outcome: a transition is an event and changes the maps.
    async fn check_done(&mut self, token: &CheckToken, outcome: &CheckOutcome) {
        self.telemetry.check(&self.state, token, outcome);
        if let Some(t) = self.state.observe(token, outcome) {
            let msg = format!("{} {} → {} ({})", t.backend, t.from, t.to, t.reason);
            self.state
                .push_event(&t.group, "health", msg, Default::default());
            if let Err(e) = self.apply().await {
                error!(error = %e, "applying a health change failed");
            }
        }
    }

    /// A conntrack sweep's findings: delete the flows of backends that are gone (decided
    /// here, see [`Reconciler::remove_stale_flows`]) and take the open-flow counts.
    async fn sweep_done(&mut self, sweep: Sweep) {
        let pending = self.writer.remove_stale_flows(sweep.stale);
        match self.write_job(pending).await {
            Ok(0) => {}
            Ok(n) => debug!(entries = n, "removed flows of backends that are gone"),
            Err(e) => warn!(error = %e, "removing flows of backends that are gone"),
        }
        let desired = self.desired.clone();
        self.state.apply_sweep(&sweep.open, &desired, sweep.at);
        self.last_open = sweep.open;
        self.conntrack_entries = Some(sweep.entries);
    }

    /// The 1 s tick: finished drains (and a failed apply tried again), scaling, the fleet,
    /// alerts, the idle table slots, the HTTP snapshot.
    async fn tick(&mut self) {
        let left = self.state.finish_drains(Instant::now());
        if !left.is_empty() || self.retry_apply {
            for l in &left {
                info!("{l}");
            }
            if let Err(e) = self.apply().await {
                error!(error = %e, "applying finished drains failed");
            }
        }
        self.scaling_round().await;
        self.fleet_update();
        self.alert_round();
        let pending = self.writer.prepare_idle_slots();
        if let Err(e) = self.write_job(pending).await {
            warn!(error = %e, "preparing the idle table slots failed");
        }
        self.publish();
    }

    /// Write what the state now wants (after a fact: a health transition, a finished drain,
    /// a scaling round, a hook's result); keep checks and the state file in step. When the
    /// maps refuse it, they are put back to the last desired state and the next tick tries
    /// again.
    async fn apply(&mut self) -> Result<(), ApiError> {
        let r = match self.state.desired() {
            Ok(desired) => self.write(desired).await,
            Err(e) => Err(CommitError::Capacity(e)),
        };
        self.retry_apply = r.is_err();
        self.after_change();
        r.map_err(ApiError::from)
    }

    /// Run `change` on the state as a transaction (API requests, reloads): on any error the
    /// state and the maps are what they were.
    async fn transact<T, E>(
        &mut self,
        change: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, ApiError>
    where
        ApiError: From<E>,
    {
        let (out, undo, desired) = commit::begin(&mut self.state, change)?;
        if let Err(e) = self.write(desired).await {
            undo.undo(&mut self.state);
            return Err(e.into());
        }
        self.retry_apply = false;
        self.after_change();
        Ok(out)
    }

    fn after_change(&mut self) {
        self.sync_checks();
        self.persist();
        self.fleet_update();
    }

    /// Tell the announcer what the node can serve now; log and record a finished drain.
    fn fleet_update(&mut self) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let services: Vec<crate::fleet::ServiceReadiness> = self
            .desired
            .services
            .iter()
            .map(|s| crate::fleet::ServiceReadiness {
                vip: s.vip,
                in_table: s
                    .backends
                    .iter()
                    .any(|id| self.desired.backends.get(id).is_some_and(|b| b.active)),
                healthy: self.state.groups.get(&s.target_group).is_some_and(|g| {
                    g.members
                        .iter()
                        .any(|m| m.state() == crate::model::BackendState::Healthy)
                }),
            })
            .collect();
        let node = crate::fleet::NodeReadiness {
            attached: self.interfaces.iter().all(|i| {
                self.attachments.iter().any(|a| a.iface == *i)
                    && self.attached_ifindex.contains_key(i)
                    && self.seen_up.get(i) != Some(&false)
            }),
            maps_ok: !self.retry_apply,
        };
        let packets = self
            .desired
            .services
            .iter()
            .map(|s| self.dp.service_counters(s.id).packets)
            .sum();
        let open_flows = self
            .state
            .groups
            .values()
            .flat_map(|g| g.members.iter())
            .map(|m| m.active_flows)
            .sum();
        if let Some(msg) = fleet.update(Instant::now(), &services, node, packets, open_flows) {
            info!("{msg}");
            self.state.push_event("", "node", msg, Default::default());
        }
    }

    fn sync_checks(&mut self) {
        let mut wanted = self.state.wanted_checks();
        self.vip_checks.assign(&mut wanted);
        let keep: std::collections::HashSet<&CheckToken> =
            wanted.iter().map(|(t, _, _)| t).collect();
        self.checkers.retain(|t, _| keep.contains(t));
        for (token, spec, interval) in wanted {
            let fp = format!("{spec:?}/{interval:?}");
            if self.checkers.get(&token).is_some_and(|(f, _)| *f == fp) {
                continue;
            }
            let handle = health::spawn_checker(token.clone(), spec, interval, self.tx.clone());
            self.checkers.insert(token, (fp, handle));
        }
    }

    fn persist(&self) {
        let d = &self.state.config.daemon;
        let file = StateFile {
            pid: std::process::id(),
            load: self.dp.opts,
            pin_path: d.pin_path.clone(),
            interfaces: self
                .attachments
                .iter()
                .map(|a| (a.iface.clone(), a.mode.to_string()))
                .collect(),
            state: self.state.snapshot(),
        };
        if let Err(e) = file.write(&d.state_file) {
            warn!(file = %d.state_file.display(), error = %e, "cannot write the state file");
        }
    }

    async fn reload(&mut self) -> Result<String, ApiError> {
        // The service manager hears RELOADING=1 … READY=1 around it, accepted or not.
        crate::service::notify_reloading();
        let r = self.reload_config().await;
        self.telemetry.live.reload(r.is_ok());
        crate::service::notify_ready(&self.status_line());
        r
    }

    /// One line for the service manager's status.
    fn status_line(&self) -> String {
        format!(
            "serving {} services, {} backends",
            self.desired.services.len(),
            self.desired.backends.len()
        )
    }

    async fn reload_config(&mut self) -> Result<String, ApiError> {
        let cfg = config::load(&self.config_path).map_err(|e| ApiError::Invalid(e.to_string()))?;
        let notes = self.transact(|s| Ok::<_, ApiError>(s.reload(cfg))).await?;
        for n in &notes {
            info!("reload: {n}");
        }
        Ok(if notes.is_empty() {
            "config reloaded: nothing changed".to_string()
        } else {
            format!("config reloaded: {}", notes.join("; "))
        })
    }

    /// Evaluate the `[[alert]]` rules on what the loop knows now and send what is due (on
    /// tasks of their own).
    fn alert_round(&mut self) {
        self.alerts.set_rules(&self.state.config.alerts);
        let fresh = self.state.events_total.saturating_sub(self.alerts_seen) as usize;
        self.alerts_seen = self.state.events_total;
        let skip = self.state.events.len().saturating_sub(fresh);
        let new_events = self.state.events.iter().skip(skip).cloned().collect();
        if self.state.config.alerts.is_empty() {
            return;
        }
        let mut drops: Vec<(Option<String>, u64)> = vec![(
            None,
            self.dp
                .global_counters()
                .into_iter()
                .find(|(k, _)| *k == "dropped")
                .map_or(0, |(_, v)| v),
        )];
        for s in &self.desired.services {
            drops.push((Some(s.name.clone()), self.dp.service_counters(s.id).dropped));
        }
        let snap = crate::alert::Snapshot::of(&self.state, drops, new_events);
        for n in self.alerts.evaluate(Instant::now(), &snap) {
            self.alert_sender.send(n);
        }
    }

    /// Answer a request that only reads ([`Request::reads_only`]): at once, or, for a diff
    /// (which parses a config and builds Maglev tables), on a blocking thread that answers
    /// by itself.
    fn answer_read(&self, env: Envelope) {
        let r = match env.request {
            Request::Diff(req) => {
                let (state, applied) = (self.state.clone(), self.desired.clone());
                let (ring, path) = (self.dp.opts.ring_size, self.config_path.clone());
                let open = self.last_open.clone();
                tokio::task::spawn_blocking(move || {
                    let r = diff(req, &state, &applied, ring, &path, &open);
                    let _ = env.reply.send(r);
                });
                return;
            }
            req => self.read(req),
        };
        if let Err(e) = &r {
            debug!(error = %e, "API request failed");
        }
        let _ = env.reply.send(r);
    }

    /// Answer a request that only reads, but a diff ([`Daemon::answer_read`]).
    fn read(&self, req: Request) -> Result<Reply, ApiError> {
        match req {
            Request::Status => Ok(Reply::Status(Box::new(self.status()))),
            Request::FlowContext => Ok(Reply::FlowContext(Box::new(self.flow_context()))),
            Request::Events { group } => Ok(Reply::Events(
                self.state
                    .events
                    .iter()
                    .filter(|e| group.as_ref().is_none_or(|g| *g == e.group))
                    .cloned()
                    .collect(),
            )),
            _ => Err(ApiError::Invalid("not a read".into())),
        }
    }

    /// A request that changes something.
    async fn handle(&mut self, req: Request) -> Result<Reply, ApiError> {
        match req {
            req if req.reads_only() => Err(ApiError::Invalid("not a change".into())),
            req => {
                // Every change asked for, accepted or rejected, leaves a trail: an event and
                // a log line saying what changed (a scale records its own `manual` event).
                let (group, what) = req.change().unwrap_or_default();
                let scale = matches!(req, Request::Scale { .. });
                let r = self.change(req).await;
                if !(scale && r.is_ok()) {
                    self.state.record_change(&group, "API", &what, &r);
                }
                r.map(|message| Reply::Done(ChangeResult { message }))
            }
        }
    }

    /// A change through the API; its result message.
    async fn change(&mut self, req: Request) -> Result<String, ApiError> {
        match req {
            Request::Status | Request::Events { .. } | Request::FlowContext | Request::Diff(_) => {
                Err(ApiError::Invalid("not a change".into()))
            }
            Request::Reload => self.reload().await,
            Request::AddBackend { group, body } => {
                self.transact(|s| {
                    s.add_backend(&group, &body.address, body.weight, BackendSource::Api)
                })
                .await
            }
            Request::RemoveBackend { group, body } => {
                self.transact(|s| s.remove_backend(&group, &body.address))
                    .await
            }
            Request::DrainBackend { group, body } => {
                self.transact(|s| s.drain_backend(&group, &body.address, "drained by API"))
                    .await
            }
            Request::Scale { group, body } => {
                let m = self.state.scale(&group, body.desired)?;
                self.scaling_round().await;
                Ok(m)
            }
            Request::SetWeight { group, body } => {
                self.transact(|s| s.set_weight(&group, &body.address, body.weight))
                    .await
            }
            Request::NodeDrain | Request::NodeUndrain => {
                let Some(fleet) = self.fleet.as_mut() else {
                    return Err(ApiError::Invalid(
                        "the config has no [daemon.announce]: this node announces nothing to \
                         drain"
                            .into(),
                    ));
                };
                let r = if matches!(req, Request::NodeDrain) {
                    fleet.drain(Instant::now())
                } else {
                    fleet.undrain()
                };
                self.fleet_update();
                r
            }
        }
    }

    /// Measure, decide and act for every scaling group.
    async fn scaling_round(&mut self) {
        let now = Instant::now();
        let (rates, fresh) = self.rates.sample(&self.dp, &self.desired, now);
        let (jobs, changed) =
            self.state
                .scaling_round(now, std::time::SystemTime::now(), &rates, fresh);
        // A launch in progress is saved at once: a restart before it reports must not launch
        // the same backends again.
        let launching = jobs.iter().any(|j| matches!(j, HookJob::Launch { .. }));
        for job in jobs {
            spawn_hook(job, self.tx.clone());
        }
        self.telemetry.scaling(&self.state);
        if changed {
            if let Err(e) = self.apply().await {
                error!(error = %e, "applying a scaling change failed");
            }
        } else if launching {
            self.persist();
        }
    }

    /// Read the passive-health counters of the backends of groups with passive health, judge
    /// each backend's window, and act on the verdicts; end ejections that are over.
    async fn passive_poll(&mut self) {
        let now = Instant::now();
        let mut changed = false;
        for (group, msg) in self.state.end_ejections(now) {
            self.state
                .push_event(&group, "passive", msg, Default::default());
            changed = true;
        }
        let groups: HashMap<u64, (String, bool)> = self
            .state
            .passive_members()
            .into_iter()
            .map(|(g, uid, judged)| (uid, (g, judged)))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut verdicts = Vec::new();
        let now_ns = monotonic_coarse_ns();
        for b in self.desired.backends.values() {
            let Some((group, judged)) = groups.get(&b.member) else {
                continue;
            };
            let Some(cfg) = self
                .state
                .groups
                .get(group)
                .and_then(|g| g.cfg.passive_health.as_ref())
            else {
                continue;
            };
            let cur = self.dp.passive_counters(b.id);
            let sample = self.dp.maps().syn_samples.get(&b.id, 0).unwrap_or_default();
            let key = (b.id, b.member);
            seen.insert(key);
            match self.passive.entry(key) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    // The first reading is the baseline (the id may have served before).
                    e.insert((
                        cur,
                        passive::Window::default(),
                        passive::SampleWatch::default(),
                    ));
                }
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let (last, window, watch) = e.get_mut();
                    let mut d = passive::delta(last, &cur);
                    watch.adjust(&mut d, &sample, now_ns, b.syn_timeout_ns);
                    *last = cur;
                    window.push(now, d, cfg.window);
                    if !judged {
                        window.clear();
                    } else if let Some(v) = passive::judge(cfg, window) {
                        // Acted on or not (already down, ejection capped), the evidence is
                        // used up: a backend the checks bring back starts afresh.
                        window.clear();
                        verdicts.push((group.clone(), b.member, v));
                    }
                }
            }
        }
        self.passive.retain(|k, _| seen.contains(k));
        for (group, uid, v) in verdicts {
            if let Some(msg) = self.state.passive_verdict(&group, uid, &v, now) {
                self.state
                    .push_event(&group, "passive", msg, Default::default());
                changed = true;
            }
        }
        if changed {
            if let Err(e) = self.apply().await {
                error!(error = %e, "applying a passive health change failed");
            }
        }
    }

    async fn hook_done(&mut self, r: HookResult) {
        let (group, hook, ok) = match &r {
            HookResult::Launch { group, result } => (group, "scale_out", result.is_ok()),
            HookResult::Terminate { group, result, .. } => (group, "scale_in", result.is_ok()),
            HookResult::Metrics { group, ok, .. } => (group, "metrics", *ok),
        };
        self.telemetry.live.hook_run(group, hook, ok);
        let changed = match r {
            HookResult::Launch { group, result } => self.state.launch_done(&group, result),
            HookResult::Terminate {
                group,
                backend,
                result,
            } => {
                self.state.terminate_done(&group, &backend, result);
                false
            }
            HookResult::Metrics { group, lines, .. } => {
                self.state.metrics_done(&group, &lines);
                false
            }
        };
        if changed {
            if let Err(e) = self.apply().await {
                error!(error = %e, "adding launched backends failed");
            }
        } else {
            self.persist();
        }
    }

    /// What the link watcher saw: attach XDP again to a configured interface that was
    /// re-created (it has another ifindex than the one XDP was attached to) or came back up,
    /// then write `VLANS` and `TX_PORTS`.
    async fn links_changed(&mut self, links: Links) {
        let mut reattached = false;
        for iface in self.interfaces.clone() {
            let Some(&(ifindex, up)) = links.interfaces.get(&iface) else {
                if self.seen_up.remove(&iface).is_some() {
                    warn!(iface = %iface, "interface gone: XDP is attached again when it returns");
                }
                continue;
            };
            let came_up = up && self.seen_up.get(&iface) == Some(&false);
            self.seen_up.insert(iface.clone(), up);
            if self.attached_ifindex.get(&iface) == Some(&ifindex) && !came_up {
                continue;
            }
            match self
                .dp
                .attach(lb_common::PROG_XDP_LB, &iface, self.xdp_mode)
            {
                Ok(a) => {
                    info!(iface = %iface, ifindex, mode = %a.mode, "XDP attached again");
                    self.attached_ifindex.insert(iface.clone(), ifindex);
                    self.attachments.retain(|x| x.iface != iface);
                    self.attachments.push(a);
                    reattached = true;
                }
                Err(e) => {
                    error!(
                        iface = %iface,
                        error = %e,
                        "attaching XDP again failed (tried again when the interface changes)"
                    );
                    self.attached_ifindex.remove(&iface);
                }
            }
        }
        let pending = self.writer.apply_links(links);
        if let Err(e) = self.write_job(pending).await {
            error!(error = %e, "writing VLANS / TX_PORTS failed");
        }
        if reattached {
            self.persist();
        }
    }

    /// Names, ids and sizes for `xlb flows` / `xlb lookup`, which read the maps off this loop.
    fn flow_context(&self) -> crate::flows::FlowContext {
        let states: HashMap<u64, String> = self
            .state
            .groups
            .values()
            .flat_map(|g| g.members.iter().map(|m| (m.uid, m.state().to_string())))
            .collect();
        let d = &self.state.config.daemon;
        crate::flows::FlowContext {
            pin_dir: self.dp.pin_dir().map(Path::to_path_buf),
            ring_size: self.dp.opts.ring_size,
            hash_seed: self.dp.opts.hash_seed,
            idle: crate::flows::idle_config(d.tcp_idle_timeout, d.udp_idle_timeout),
            services: self
                .desired
                .services
                .iter()
                .map(|s| crate::flows::FlowService {
                    id: s.id,
                    name: s.name.clone(),
                    vip: s.vip,
                    port: s.port,
                    protocol: s.protocol.number(),
                })
                .collect(),
            backends: self
                .desired
                .backends
                .iter()
                .map(|(id, b)| {
                    (
                        *id,
                        crate::flows::FlowBackend {
                            group: b.key.group.clone(),
                            addr: b.key.addr,
                            port: b.key.port,
                            state: states
                                .get(&b.member)
                                .cloned()
                                .unwrap_or_else(|| "unknown".into()),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Hand the HTTP listener a fresh snapshot (when it is on).
    fn publish(&mut self) {
        if !self.telemetry.publishing() {
            return;
        }
        let status = self.status();
        self.telemetry.publish(
            status,
            &self.state.events,
            self.conntrack_entries,
            u64::from(self.dp.opts.conntrack_size),
        );
    }

    fn status(&self) -> Status {
        let mut st = crate::status::StatusView {
            state: &self.state,
            desired: &self.desired,
            dp: &self.dp,
            fingerprints: &self.fingerprints,
            started: self.started,
            config_path: &self.config_path,
            attachments: &self.attachments,
            fleet: self.fleet.as_ref(),
        }
        .build();
        st.global.extend(self.vip_checks.counters());
        st.maps_writing = self.writing;
        st
    }
}

pub async fn run(config_path: PathBuf) -> Result<()> {
    let cfg = config::load(&config_path)?;
    let d = cfg.daemon.clone();
    // Missing capabilities named up front, not as an EPERM from deep inside the loader.
    crate::service::check_capabilities(!instance::is_bpffs(Path::new(BPFFS)))?;
    // One daemon per state file: before touching anything.
    let _lock = InstanceLock::acquire(&d.state_file)?;
    ensure_bpffs()?;
    instance::check_bpffs(&d.pin_path)?;

    let adopting = Dataplane::has_pinned_maps(&d.pin_path);
    let saved = saved_state(&d.state_file, &d.pin_path, adopting)?;
    // What this instance pins, recorded before pinning: all `xlb stop --cleanup` removes.
    PinManifest::record(
        &d.state_file,
        &d.pin_path,
        Dataplane::map_names()
            .into_iter()
            .map(String::from)
            .chain(d.interfaces.iter().map(|i| Dataplane::link_pin_name(i))),
    )
    .with_context(|| {
        format!(
            "writing the pin manifest {}",
            instance::manifest_path(&d.state_file).display()
        )
    })?;
    let mut opts = LoadOptions {
        ring_size: d.maglev_table_size,
        conntrack_size: d.conntrack_size,
        reverse_size: d.reverse_size,
        max_services: d.max_services,
        hash_seed: d.hash_seed.unwrap_or_else(random_seed),
    };
    let mut restored = None;
    if adopting {
        match saved {
            Some(s) if s.pin_path == d.pin_path => {
                // The seed must stay what the flows in the table were hashed with.
                if d.hash_seed.is_none() {
                    opts.hash_seed = s.load.hash_seed;
                }
                restored = Some(s.state);
            }
            _ => warn!(
                pin_path = %d.pin_path.display(),
                "adopting pinned maps without a state file: backend ids are assigned afresh, \
                 established flows may move"
            ),
        }
    }
    let dp = Dataplane::load(opts, Pinning::Dir(d.pin_path.clone()))
        .context("loading the XDP program")?;
    let reconciler = if dp.adopted {
        info!(pin_path = %d.pin_path.display(), "adopted the maps of a previous instance");
        Reconciler::adopt(&dp)?
    } else {
        Reconciler::new()
    };
    let mut state = State::new(cfg);
    if let Some(p) = restored {
        for n in state.restore(p) {
            info!("restore: {n}");
        }
    }

    // The one writer of the maps, on a thread of its own with handles of its own.
    let writer = commit::Writer::spawn(
        reconciler,
        dp.write_maps()
            .context("opening the maps for the map writer")?,
    )
    .context("starting the map writer thread")?;
    // One channel for everything that reaches the loop (see `crate::msg` on its bound).
    let (tx, rx) = mpsc::channel::<Msg>(msg::CAPACITY);
    let mut daemon = Daemon::new(config_path.clone(), state, dp, writer, (tx.clone(), rx));
    daemon
        .apply()
        .await
        .map_err(|e| anyhow::anyhow!("filling the maps: {e}"))?;

    for iface in &d.interfaces {
        let a = daemon
            .dp
            .attach(lb_common::PROG_XDP_LB, iface, d.xdp_mode)?;
        daemon.attachments.push(a);
    }
    dataplane::log_attachments(&daemon.attachments);
    // The program may redirect to the interfaces it is attached to; VLAN devices and
    // interfaces that come back with a new ifindex are followed by the link watcher below.
    let attached: Vec<u32> = d
        .interfaces
        .iter()
        .map(|i| {
            nix::net::if_::if_nametoindex(i.as_str()).with_context(|| format!("ifindex of {i}"))
        })
        .collect::<Result<_>>()?;
    daemon.attached_ifindex = d
        .interfaces
        .iter()
        .cloned()
        .zip(attached.iter().copied())
        .collect();
    let pending = daemon.writer.set_tx_ports(attached);
    daemon
        .write_job(pending)
        .await
        .map_err(|e| anyhow::anyhow!("setting TX_PORTS: {e}"))?;
    let xmit = ensure_tracefs().and_then(|()| Ok(daemon.dp.attach_xmit_counter()?));
    if let Err(e) = xmit {
        warn!("xmit_drops will stay 0: attaching the xdp_devmap_xmit tracepoint failed: {e}");
    }
    daemon.persist();

    let api_group = match &d.api_group {
        None => None,
        Some(name) => Some(api::ApiGroup::lookup(name).map_err(anyhow::Error::msg)?),
    };
    let _api = api::serve_with(&d.api_socket, tx.clone(), api_group)
        .await
        .with_context(|| format!("serving the API on {}", d.api_socket.display()))?;
    let _http = match d.http_listen {
        Some(addr) => {
            let rx = daemon.telemetry.subscribe();
            daemon.publish();
            Some(crate::web::serve(addr, rx, daemon.telemetry.live.clone()).await?)
        }
        None => None,
    };
    if let Some(pins) = daemon.dp.sweeper_pins() {
        let cfg = sweep::SweepConfig {
            tcp_idle: d.tcp_idle_timeout,
            udp_idle: d.udp_idle_timeout,
        };
        spawn_sweeper(pins, cfg, tx.clone())?;
    }
    match links::spawn_watcher(d.interfaces.clone(), tx.clone()) {
        Ok(_) => {}
        Err(e) => warn!(
            error = %e,
            "cannot watch links: VLAN devices stay unknown to the data path (their traffic goes \
             through the kernel)"
        ),
    }
    info!(
        services = daemon.desired.services.len(),
        backends = daemon.desired.backends.len(),
        config = %config_path.display(),
        api = %d.api_socket.display(),
        "xlb is running"
    );
    // Announce only now that XDP is attached and the maps are written.
    if let Some(a) = d.announce.clone() {
        if d.hash_seed.is_none() {
            warn!(
                "[daemon.announce] without hash_seed: this node's seed is random, so other \
                 nodes of the fleet send the same flow to other backends (set the same \
                 hash_seed on every node)"
            );
        }
        daemon.fleet = Some(
            crate::fleet::Fleet::start(a, &d.state_file)
                .context("starting the announcer ([daemon.announce])")?,
        );
        daemon.fleet_update();
    }
    crate::service::notify_ready(&daemon.status_line());

    msg::spawn_signals(tx.clone())?;
    msg::spawn_timer(
        tx.clone(),
        Duration::from_secs(1),
        tokio::time::MissedTickBehavior::Burst,
        || Msg::Tick,
    );
    msg::spawn_timer(
        tx.clone(),
        passive::POLL_EVERY,
        tokio::time::MissedTickBehavior::Delay,
        || Msg::PassiveTick,
    );
    drop(tx);
    daemon.serve().await;
    crate::service::notify_stopping();
    if let Some(f) = &daemon.fleet {
        f.withdraw_all(Duration::from_secs(3)).await;
    }
    info!("stopping; XDP stays attached and keeps forwarding (`xlb stop --cleanup` detaches it)");
    daemon.persist();
    for (name, value) in daemon.dp.global_counters() {
        debug!(counter = name, value, "final");
    }
    Ok(())
}

/// `xlb stop`: stop the daemon of this config's state file (the holder of its lock); with
/// `cleanup`, also detach XDP and remove what xlb pinned (as its pin manifest records) and
/// the state file.
pub fn stop(config_path: &Path, cleanup: bool) -> Result<()> {
    let cfg = config::load(config_path)?;
    let d = &cfg.daemon;
    match InstanceLock::acquire(&d.state_file) {
        Ok(_free) => println!("xlb is not running"),
        Err(instance::InstanceError::Held { pid: Some(pid), .. })
            if pid != std::process::id() && alive(pid) =>
        {
            let p = nix::unistd::Pid::from_raw(pid as i32);
            nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM)
                .with_context(|| format!("signalling xlb (pid {pid})"))?;
            let deadline = Instant::now() + Duration::from_secs(15);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                anyhow::bail!("xlb (pid {pid}) did not stop within 15 s");
            }
            println!("stopped xlb (pid {pid})");
        }
        Err(e) => return Err(e.into()),
    }
    if cleanup {
        // No daemon may start meanwhile.
        let _lock = InstanceLock::acquire(&d.state_file)?;
        ensure_bpffs()?;
        instance::check_bpffs(&d.pin_path)?;
        let names = match PinManifest::read(&d.state_file) {
            Ok(Some(m)) if m.pin_path == d.pin_path => m.names,
            other => {
                if let Err(e) = other {
                    warn!(error = %e, "the pin manifest cannot be read");
                }
                println!(
                    "no pin manifest for {} at {}: removing only xlb's map names and the links \
                     of the configured interfaces",
                    d.pin_path.display(),
                    instance::manifest_path(&d.state_file).display()
                );
                Dataplane::map_names()
                    .into_iter()
                    .map(String::from)
                    .chain(d.interfaces.iter().map(|i| Dataplane::link_pin_name(i)))
                    .collect()
            }
        };
        let r = instance::remove_pins(&d.pin_path, &names)
            .with_context(|| format!("removing pinned objects from {}", d.pin_path.display()))?;
        // XDP no longer forwards here: routers must stop sending the VIPs' traffic (the
        // routes a killed daemon left), and a fresh start is not drained.
        if let Some(a) = &d.announce {
            crate::fleet::withdraw_blocking(a.table);
        }
        crate::vipcheck::cleanup_blocking();
        for f in [
            d.state_file.clone(),
            instance::manifest_path(&d.state_file),
            crate::fleet::drain_marker(&d.state_file),
        ] {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", f.display())),
            }
        }
        println!(
            "detached XDP and removed {} pinned objects from {}",
            r.removed.len(),
            d.pin_path.display()
        );
        if !r.foreign.is_empty() {
            println!(
                "left {} objects xlb did not pin (and the directory): {}",
                r.foreign.len(),
                r.foreign.join(", ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop answers `xlb status` while the map writer is in the middle of a large
    /// rebuild, and holds a change that comes meanwhile until the write is done. Ordering, not
    /// timing: the fake maps stop the writer half way until the test lets it go on.
    #[tokio::test]
    async fn status_is_answered_while_a_large_rebuild_runs() {
        use crate::{commit::fake::FakeMaps, model::SetWeight};
        use tokio::sync::oneshot;
        const RING: u32 = 131_071;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
[daemon]
interfaces = ["lo"]
maglev_table_size = {RING}
max_services = 4
state_file = "{}/state.json"

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "g"

[[target_group]]
name = "g"
backends = ["198.18.2.11", "198.18.2.12"]
"#,
            dir.path().display()
        );
        let cfg = config::parse(&text, "t.toml").unwrap();
        let opts = LoadOptions {
            ring_size: RING,
            conntrack_size: 1024,
            reverse_size: 1024,
            max_services: 4,
            hash_seed: 7,
        };
        // The data plane for the reads (counters); the writes go to fake maps.
        let dp = Dataplane::load(opts, Pinning::Ephemeral).expect("loading XDP (as root)");
        let writer = commit::Writer::spawn(Reconciler::new(), FakeMaps::new(RING)).unwrap();
        let (tx, rx) = mpsc::channel(msg::CAPACITY);
        let mut daemon = Daemon::new(
            dir.path().join("t.toml"),
            State::new(cfg),
            dp,
            writer,
            (tx.clone(), rx),
        );
        daemon.apply().await.expect("the first fill");

        // The next write stops a thousand entries into the table it rebuilds (all of the
        // idle slot: RING entries).
        let gate = Arc::new(std::sync::Barrier::new(2));
        let g = gate.clone();
        daemon
            .writer
            .with(move |m: &mut FakeMaps| m.pause_on = Some((m.writes + 1000, g)))
            .await
            .unwrap();
        let wait_at_gate = || {
            let g = gate.clone();
            tokio::task::spawn_blocking(move || {
                g.wait();
            })
        };
        // Queue a request (the channel has room) and return where its answer comes.
        let ask = |request: Request| {
            let (reply, answer) = oneshot::channel();
            tx.try_send(Msg::Api(crate::model::Envelope { request, reply }))
                .map_err(|_| "the channel has room")
                .unwrap();
            answer
        };
        let weight = |weight: u32| Request::SetWeight {
            group: "g".into(),
            body: SetWeight {
                address: "198.18.2.12".into(),
                weight,
            },
        };
        let test = async {
            let mut first = ask(weight(5));
            // The writer is half way through the rebuild, and stays there.
            wait_at_gate().await.unwrap();
            let status = ask(Request::Status)
                .await
                .expect("answered")
                .expect("a status");
            let Reply::Status(status) = status else {
                panic!("not a status")
            };
            assert!(status.maps_writing, "the status says a write is in flight");
            assert!(
                matches!(first.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
                "the change is still being written when the status comes back"
            );
            // A diff (Maglev tables built off the loop too) is answered meanwhile.
            let diff = ask(Request::Diff(crate::model::DiffRequest {
                config: Some(text.replace("198.18.2.12", "198.18.2.13")),
                file: None,
            }))
            .await
            .expect("answered");
            assert!(matches!(diff, Ok(Reply::Diff(_))), "a preview");
            // A second change waits for the first to be written.
            let mut second = ask(weight(3));
            let events = ask(Request::Events { group: None }).await.unwrap();
            assert!(events.is_ok(), "answered while the write still waits");
            assert!(matches!(
                second.try_recv(),
                Err(oneshot::error::TryRecvError::Empty)
            ));
            // Let the writer go on: both changes are done, in order.
            wait_at_gate().await.unwrap();
            first.await.unwrap().expect("the first change");
            second.await.unwrap().expect("the second change");
            let Ok(Reply::Status(status)) = ask(Request::Status).await.unwrap() else {
                panic!("a status")
            };
            assert!(!status.maps_writing, "no write in flight any more");
            tx.send(Msg::Stop).await.map_err(|_| "loop gone").unwrap();
        };
        tokio::join!(daemon.serve(), test);
        let weights: Vec<u32> = daemon.desired.backends.values().map(|b| b.weight).collect();
        assert!(weights.contains(&3) && !weights.contains(&5), "{weights:?}");
    }
}
