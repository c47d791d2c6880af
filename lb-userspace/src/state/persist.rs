//! Persistence: what a restarted daemon needs to carry on where the last one stopped. The
//! state file ([`StateFile`]) holds the load options, the pin path, the attached interfaces
//! and [`Persisted`], what it keeps of [`State`]: ids of services and backends (so
//! connection-tracking entries keep pointing at the right backend), runtime changes, health,
//! drains and scale-out hooks in progress. [`State::snapshot`] makes it, [`State::restore`]
//! takes it back; [`saved_state`] decides whether a starting daemon may go on without it.
use std::{
    collections::HashSet,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lb_common::MAX_BACKENDS;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{BackendKey, Drain, Ids, Member, State};
use crate::{
    config::TargetGroupConfig,
    dataplane::LoadOptions,
    health::HealthTracker,
    instance,
    model::{BackendSource, BackendState},
};

/// The state file: what a restarted daemon needs to carry on where the last one stopped.
#[derive(Debug, Serialize, Deserialize)]
pub struct StateFile {
    pub pid: u32,
    pub load: LoadOptions,
    pub pin_path: PathBuf,
    pub interfaces: Vec<(String, String)>,
    pub state: Persisted,
}

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("reading {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a state file of this version: {source}", .path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: {what}", .path.display())]
    Invalid { path: PathBuf, what: String },
}

impl StateFile {
    /// The state file at `path`: None when there is none; an error when it cannot be read,
    /// is not one, or holds values out of range.
    pub fn read(path: &Path) -> Result<Option<StateFile>, StateFileError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateFileError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let s: StateFile =
            serde_json::from_slice(&text).map_err(|source| StateFileError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        s.state.check().map_err(|what| StateFileError::Invalid {
            path: path.to_path_buf(),
            what,
        })?;
        Ok(Some(s))
    }

    /// Replace the file atomically (mode 0600, fsynced; see [`instance::write_private`]).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        instance::write_private(path, &serde_json::to_vec_pretty(self)?)
    }
}

/// The state a starting daemon takes over. An unreadable state file is refused while pinned
/// maps exist (`adopting`): their connection-tracking entries point at the backend ids it
/// records, and ids assigned afresh would send established flows to other backends.
pub fn saved_state(
    state_file: &Path,
    pin_path: &Path,
    adopting: bool,
) -> anyhow::Result<Option<StateFile>> {
    match StateFile::read(state_file) {
        Ok(s) => Ok(s),
        Err(e) if adopting => anyhow::bail!(
            "{e}\nthe pinned maps in {pin} hold connection-tracking entries that point at the \
             backend ids this file records: starting without it would assign ids afresh and \
             move established flows to other backends, so xlb does not start. To recover: \
             restore or repair {file}; or move it away to start anyway (established flows may \
             move to other backends); or run `xlb stop --cleanup` to detach XDP and remove \
             the pinned maps (established flows are dropped) and start afresh",
            pin = pin_path.display(),
            file = state_file.display()
        ),
        Err(e) => {
            warn!(error = %e, "ignoring an unreadable state file (no pinned maps to adopt)");
            Ok(None)
        }
    }
}

impl State {
    pub fn snapshot(&self) -> Persisted {
        let now = Instant::now();
        Persisted {
            service_ids: self
                .service_ids
                .pairs()
                .map(|(k, v)| (k.clone(), v))
                .collect(),
            backend_ids: self
                .backend_ids
                .pairs()
                .map(|(k, v)| (k.clone(), v))
                .collect(),
            groups: self
                .groups
                .iter()
                .map(|(name, g)| PersistedGroup {
                    name: name.clone(),
                    cfg: fingerprint(&g.cfg),
                    runtime_changed: g.runtime_changed,
                    members: g
                        .members
                        .iter()
                        .map(|m| PersistedMember {
                            addr: m.addr,
                            port: m.port,
                            weight: m.weight,
                            source: m.source,
                            state: m.health.state(),
                            reason: m.health.reason().to_string(),
                            drain_left_secs: m
                                .drain
                                .as_ref()
                                .map(|d| d.deadline.saturating_duration_since(now).as_secs_f64()),
                            drain_reason: m.drain.as_ref().map(|d| d.reason.clone()),
                            terminate_after_drain: m.terminate_after_drain,
                        })
                        .collect(),
                    desired: g.scaling.as_ref().map(|s| s.scaler.desired()),
                    launch: g.scaling.as_ref().and_then(|s| {
                        // A hook running now, or one of the previous instance still awaited.
                        let started = s.launch_started?;
                        (s.launching > 0).then(|| PersistedLaunch {
                            count: s.launching,
                            started_unix_secs: started
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap_or_default()
                                .as_secs_f64(),
                        })
                    }),
                })
                .collect(),
        }
    }

    /// Take ids, runtime changes, health and drains from a previous instance. A group whose
    /// config is unchanged gets its saved backends back as they were (runtime changes
    /// included); a changed group keeps the config's backends with the saved health of those
    /// it still lists.
    pub fn restore(&mut self, saved: Persisted) -> Vec<String> {
        let now = Instant::now();
        self.service_ids = Ids::restore(self.config.daemon.max_services, saved.service_ids);
        self.backend_ids = Ids::restore(MAX_BACKENDS, saved.backend_ids);
        let mut notes = Vec::new();
        for pg in saved.groups {
            let Some(g) = self.groups.get(&pg.name) else {
                notes.push(format!("target group {} is gone from the config", pg.name));
                continue;
            };
            let same = fingerprint(&g.cfg) == pg.cfg;
            let mut restored = Vec::new();
            for pm in &pg.members {
                let health = HealthTracker::restore(pm.state, &pm.reason, now);
                // Never panics, whatever the file holds (`Persisted::check` refuses such
                // values before this).
                let left = pm.drain_left_secs.map(|left| {
                    Duration::try_from_secs_f64(left.clamp(0.0, MAX_SAVED_DRAIN_SECS))
                        .unwrap_or_default()
                });
                let drain = left.map(|left| Drain {
                    started: now,
                    deadline: now.checked_add(left).unwrap_or(now),
                    reason: pm.drain_reason.clone().unwrap_or_else(|| "draining".into()),
                });
                if same || pm.source == BackendSource::Scaling {
                    let uid = self.uid();
                    let mut m =
                        Member::new(uid, pm.addr, pm.port, pm.weight, pm.source, health, now);
                    m.drain = drain;
                    m.terminate_after_drain = pm.terminate_after_drain;
                    restored.push(m);
                } else if let Some(m) = self.groups.get_mut(&pg.name).and_then(|g| {
                    g.members
                        .iter_mut()
                        .find(|m| m.addr == pm.addr && m.port == pm.port)
                }) {
                    m.health = health;
                }
            }
            let g = self.groups.get_mut(&pg.name).expect("checked above");
            if let (Some(gs), Some(desired)) = (g.scaling.as_mut(), pg.desired) {
                let _ = gs.scaler.set_desired(desired, now);
            }
            if let (Some(gs), Some(cfg), Some(l)) = (
                g.scaling.as_mut(),
                g.cfg.scaling.as_ref(),
                pg.launch.as_ref(),
            ) {
                let started = std::time::UNIX_EPOCH
                    + Duration::try_from_secs_f64(l.started_unix_secs).unwrap_or_default();
                let since = std::time::SystemTime::now()
                    .duration_since(started)
                    .unwrap_or_default();
                let window = (cfg.hook_timeout + cfg.grace_period).saturating_sub(since);
                if !window.is_zero() && l.count > 0 {
                    gs.launching = l.count.min(cfg.max);
                    gs.launch_started = Some(started);
                    gs.resumed_launch_until = now.checked_add(window);
                    notes.push(format!(
                        "target group {}: a scale-out hook for {} backends was running when \
                         xlb stopped; no new launch for {}",
                        pg.name,
                        l.count,
                        humantime::format_duration(Duration::from_secs(window.as_secs()))
                    ));
                }
            }
            if same {
                g.members = restored;
                g.runtime_changed = pg.runtime_changed;
            } else {
                g.members.extend(restored);
                notes.push(format!(
                    "target group {} changed in the config while xlb was down: its runtime changes were dropped",
                    pg.name
                ));
            }
        }
        notes
    }
}

fn fingerprint(cfg: &TargetGroupConfig) -> String {
    serde_json::to_string(cfg).unwrap_or_default()
}

/// What the state file keeps of [`State`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Persisted {
    pub service_ids: Vec<(String, u32)>,
    pub backend_ids: Vec<(BackendKey, u32)>,
    pub groups: Vec<PersistedGroup>,
}

/// The longest drain a state file may hold (deregistration delays are at most an hour).
const MAX_SAVED_DRAIN_SECS: f64 = 86_400.0;

impl Persisted {
    /// Values a restore cannot take (ids out of range or used twice, weights or ports out of
    /// range, drains that are not a number of seconds within a day): the state file is not
    /// one xlb wrote, and using it could panic or corrupt the maps.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = HashSet::new();
        for (name, id) in &self.service_ids {
            if !seen.insert(*id) {
                return Err(format!("service id {id} ({name}) is used twice"));
            }
        }
        let mut seen = HashSet::new();
        for (key, id) in &self.backend_ids {
            if *id >= MAX_BACKENDS {
                return Err(format!(
                    "backend id {id} is out of range (< {MAX_BACKENDS})"
                ));
            }
            if !seen.insert(*id) {
                return Err(format!(
                    "backend id {id} ({}) is used twice",
                    key.maglev_key()
                ));
            }
        }
        for g in &self.groups {
            if let Some(l) = &g.launch {
                if !(l.started_unix_secs.is_finite() && l.started_unix_secs >= 0.0) {
                    return Err(format!("group {}: launch start is not a time", g.name));
                }
            }
            for m in &g.members {
                let who = format!("group {} backend {}", g.name, m.addr);
                if m.weight == 0 || m.weight > crate::config::MAX_WEIGHT {
                    return Err(format!("{who}: weight {} is out of range", m.weight));
                }
                if m.port == Some(0) {
                    return Err(format!("{who}: port 0"));
                }
                if let Some(left) = m.drain_left_secs {
                    if !(0.0..=MAX_SAVED_DRAIN_SECS).contains(&left) {
                        return Err(format!(
                            "{who}: drain time left {left} s is not within 0-{MAX_SAVED_DRAIN_SECS} s"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PersistedGroup {
    pub name: String,
    /// The group's config when saved, as JSON: runtime changes are restored only while the
    /// config of the group is the same.
    pub cfg: String,
    pub runtime_changed: bool,
    pub members: Vec<PersistedMember>,
    /// The scaling group's desired capacity.
    #[serde(default)]
    pub desired: Option<u32>,
    /// A scale-out hook running when the state was saved.
    #[serde(default)]
    pub launch: Option<PersistedLaunch>,
}

/// A scale-out hook in progress.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PersistedLaunch {
    pub count: u32,
    /// When it started, seconds since the Unix epoch.
    pub started_unix_secs: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PersistedMember {
    pub addr: IpAddr,
    pub port: Option<u16>,
    pub weight: u32,
    pub source: BackendSource,
    pub state: BackendState,
    pub reason: String,
    pub drain_left_secs: Option<f64>,
    pub drain_reason: Option<String>,
    #[serde(default)]
    pub terminate_after_drain: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{outcome, state, token, CFG};
    use crate::state::Desired;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn snapshot_restores_ids_health_and_runtime_changes() {
        let mut s = state(CFG);
        let t = token(&s, "198.18.2.11");
        s.observe(&t, &outcome(false));
        s.add_backend("g", "198.18.2.14", None, BackendSource::Api)
            .unwrap();
        let d = s.desired().unwrap();
        let saved = serde_json::to_string(&s.snapshot()).unwrap();

        let mut r = state(CFG);
        r.restore(serde_json::from_str(&saved).unwrap());
        let d2 = r.desired().unwrap();
        let ids = |d: &Desired| -> Vec<(String, u32)> {
            d.backends
                .values()
                .map(|b| (b.key.maglev_key(), b.id))
                .collect()
        };
        assert_eq!(ids(&d), ids(&d2), "backend ids survive a restart");
        let m = r.groups["g"]
            .members
            .iter()
            .find(|m| m.addr.to_string() == "198.18.2.11")
            .unwrap();
        assert_eq!(m.state(), BackendState::Unhealthy);
        assert_eq!(
            r.groups["g"].members.len(),
            4,
            "the runtime backend is back"
        );
    }

    #[test]
    fn restore_of_huge_drain_does_not_panic() {
        let s = state(CFG);
        let mut p = s.snapshot();
        p.groups[0].members[0].drain_left_secs = Some(1e300);
        assert!(p.check().is_err(), "refused when read");
        // And restoring it anyway does not panic.
        let mut r = state(CFG);
        r.restore(p);
        assert!(r.groups["g"].members[0].drain.is_some());
    }

    fn file(state: Persisted) -> StateFile {
        StateFile {
            pid: 1,
            load: LoadOptions {
                ring_size: 1021,
                conntrack_size: 1024,
                reverse_size: 1024,
                max_services: 4,
                hash_seed: 7,
            },
            pin_path: "/sys/fs/bpf/xlb-t".into(),
            interfaces: vec![],
            state,
        }
    }

    fn persisted(drain_left_secs: Option<f64>) -> Persisted {
        serde_json::from_value(serde_json::json!({
            "service_ids": [["web", 0]],
            "backend_ids": [[{"group": "g", "addr": "198.18.2.11", "port": 80}, 0]],
            "groups": [{
                "name": "g", "cfg": "{}", "runtime_changed": false,
                "members": [{
                    "addr": "198.18.2.11", "port": null, "weight": 1, "source": "config",
                    "state": "healthy", "reason": "ok",
                    "drain_left_secs": drain_left_secs, "drain_reason": null
                }]
            }]
        }))
        .unwrap()
    }

    #[test]
    fn state_file_round_trip_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        file(persisted(Some(5.0))).write(&path).unwrap();
        let back = StateFile::read(&path).unwrap().expect("a state file");
        assert_eq!(back.load.hash_seed, 7);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "it holds the hash seed: {mode:o}");
    }

    #[test]
    fn unreadable_state_file_is_refused_while_pinned_maps_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let pins = Path::new("/sys/fs/bpf/xlb-t");
        // None at all: a fresh start either way.
        assert!(saved_state(&path, pins, true).unwrap().is_none());
        std::fs::write(&path, b"{ not json").unwrap();
        let e = saved_state(&path, pins, true)
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("xlb stop --cleanup") && e.contains("move it away"),
            "says how to recover: {e}"
        );
        // Without pinned maps nothing depends on it: ignored.
        assert!(saved_state(&path, pins, false).unwrap().is_none());
    }

    #[test]
    fn state_values_that_would_panic_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        for bad in [1e300, f64::MAX, -1.0] {
            file(persisted(Some(bad))).write(&path).unwrap();
            let e = StateFile::read(&path).expect_err("out of range");
            assert!(matches!(e, StateFileError::Invalid { .. }), "{bad}: {e}");
            assert!(saved_state(&path, Path::new("/x"), true).is_err());
        }
        // NaN and infinities do not even survive JSON (serde writes null): a parse error.
        std::fs::write(
            &path,
            serde_json::to_string(&file(persisted(Some(1.0))))
                .unwrap()
                .replace("\"drain_left_secs\":1.0", "\"drain_left_secs\":1e999"),
        )
        .unwrap();
        assert!(StateFile::read(&path).is_err());
    }
}
