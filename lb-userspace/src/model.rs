//! The control plane's public vocabulary: what the API returns and accepts, what the CLI
//! prints. Plain serde types, no behaviour.
use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// A backend's state, as AWS target groups name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// Not yet checked enough to be called healthy or unhealthy.
    Initial,
    Healthy,
    Unhealthy,
    /// Leaving the group: no new flows, established ones continue until they end or the
    /// deregistration delay runs out.
    Draining,
}

impl std::fmt::Display for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Initial => "initial",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Draining => "draining",
        })
    }
}

/// Where a backend came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendSource {
    Config,
    Api,
    Scaling,
}

/// Traffic counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    pub dropped: u64,
    /// TCP SYNs from clients (`new_flows` counts confirmed flows only).
    #[serde(default)]
    pub syns: u64,
}

impl From<lb_common::Counters> for TrafficCounters {
    fn from(c: lb_common::Counters) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            reply_packets: c.reply_packets,
            reply_bytes: c.reply_bytes,
            dropped: c.dropped,
            syns: c.syns,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub group: String,
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub state: BackendState,
    /// Why the backend is in its state ("connect refused", "HTTP 503", "drained by API", ...).
    pub reason: String,
    /// Seconds since the last state change.
    pub since_secs: f64,
    /// Whether new flows may be sent to it now.
    pub receiving_new_flows: bool,
    /// Flows pinned to it that are still open.
    pub active_flows: u64,
    pub source: BackendSource,
    /// Seconds left of the deregistration delay, while draining.
    pub drain_remaining_secs: Option<f64>,
    pub counters: TrafficCounters,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub port: Option<u16>,
    /// `"drop"` or `"fail_open"`.
    pub all_unhealthy: String,
    pub deregistration_delay_secs: f64,
    /// e.g. `"http GET /health :8080 every 30s"`; None when the group is not checked.
    pub health_check: Option<String>,
    /// True when no backend is healthy and `all_unhealthy = "fail_open"` sends to all.
    pub failing_open: bool,
    /// Present when the group scales.
    #[serde(default)]
    pub scaling: Option<ScalingStatus>,
    pub backends: Vec<BackendStatus>,
}

/// A scaling group's bounds and what it is doing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalingStatus {
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    /// Backends in service (not draining).
    pub in_service: u32,
    /// Backends a scale-out hook is launching now.
    pub launching: u32,
    /// `idle`, `running scale-out hook`, `retrying in 4s after: ...`.
    pub hook: String,
    /// The last scaling decision, if any.
    pub last_decision: Option<String>,
    /// The group's metrics at the last scaling round (per-backend averages and group totals
    /// measured by the data path, and averages of what the backends report); a metric with
    /// no fresh data is absent.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// Something the control plane decided or saw: scaling decisions with the metric values
/// behind them, hook results, health changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub time: f64,
    pub group: String,
    /// `scale_out`, `scale_in`, `schedule`, `manual`, `replace`, `launched`, `terminated`,
    /// `hook_failed`, `health`, `change` (a change through the API or SIGHUP, accepted),
    /// `rejected` (one refused). Reload events have an empty group.
    pub kind: String,
    pub message: String,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub desired: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub target_group: String,
    /// Backends in the service's live Maglev table.
    pub backends_in_table: usize,
    pub counters: TrafficCounters,
    /// `"dsr/l2"`, `"dsr/ipip"` or `"dsr/gue"` for a service in direct-server-return mode;
    /// absent for NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<String>,
    /// Fingerprint of the service's Maglev table as backend addresses (with the hash seed
    /// and table size): nodes of a fleet that send a flow to the same backend show the same.
    #[serde(default)]
    pub table_fingerprint: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    /// `"native"` or `"generic"`.
    pub mode: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: f64,
    pub config_file: String,
    pub interfaces: Vec<InterfaceStatus>,
    pub services: Vec<ServiceStatus>,
    pub groups: Vec<GroupStatus>,
    /// Global data-path counters by name (`passed`, `dropped`, `malformed`, ...).
    pub global: BTreeMap<String, u64>,
    /// `[daemon.announce]`: the node's announcements; None without that section.
    #[serde(default)]
    pub announce: Option<AnnounceStatus>,
    /// A change is being written to the maps: the backends' states shown may be ahead of
    /// the data path until it is done (`backends_in_table` counts what the maps hold).
    #[serde(default)]
    pub maps_writing: bool,
}

/// The node's place in a fleet: what it announces and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    /// `"bird"`.
    pub via: String,
    /// The kernel routing table the announced routes are kept in.
    pub table: u32,
    /// `serving`, `draining` or `drained`.
    pub node: String,
    /// While draining: seconds until it is reported drained at the latest.
    pub drain_remaining_secs: Option<f64>,
    /// Whether the routes in `table` are what xlb wants (false while a write is retried).
    pub routes_in_sync: bool,
    /// The last error writing routes, if the last attempt failed.
    pub route_error: Option<String>,
    /// `up (BIRD 2.0.12 ready.)` or `unreachable at PATH: why` (checked every few seconds).
    pub bird: String,
    pub vips: Vec<VipAnnouncement>,
}

/// One VIP: announced or not, and why not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipAnnouncement {
    pub vip: std::net::IpAddr,
    /// xlb wants it announced (the route is in the table once `routes_in_sync`).
    pub announced: bool,
    /// `serving`, or why it is withdrawn: `node drained`, `no healthy backend`, ...
    pub reason: String,
}

/// A backend named in a request: `ADDR`, `ADDR:PORT` or `[V6ADDR]:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRef {
    pub address: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddBackend {
    pub address: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetWeight {
    pub address: String,
    pub weight: u32,
}

/// What a change did, for the CLI to print.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeResult {
    pub message: String,
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: String,
}

/// A request to the one owner of state, as the API server hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    AddBackend {
        group: String,
        body: AddBackend,
    },
    RemoveBackend {
        group: String,
        body: BackendRef,
    },
    DrainBackend {
        group: String,
        body: BackendRef,
    },
    SetWeight {
        group: String,
        body: SetWeight,
    },
    Reload,
    Scale {
        group: String,
        body: ScaleRequest,
    },
    /// Recent events, oldest first; of one group when given.
    Events {
        group: Option<String>,
    },
    /// What `xlb flows` and `xlb lookup` need from the owner (no map reads).
    FlowContext,
    /// `xlb node drain`: withdraw every VIP, keep forwarding what still arrives.
    NodeDrain,
    /// `xlb node undrain`: announce again.
    NodeUndrain,
    /// What a reload would change (`xlb diff`, `xlb reload --dry-run`); changes nothing.
    Diff(DiffRequest),
}

impl Request {
    /// Whether it only reads (status, events, a diff, the flows' context): the daemon answers
    /// these even while a map write is in flight.
    pub fn reads_only(&self) -> bool {
        matches!(
            self,
            Request::Status | Request::Events { .. } | Request::FlowContext | Request::Diff(_)
        )
    }

    /// For a request that changes something: its target group (empty for a reload) and what
    /// it asks for, for the trail of changes. None for reads.
    pub fn change(&self) -> Option<(String, String)> {
        Some(match self {
            Self::Status | Self::Events { .. } | Self::FlowContext | Self::Diff(_) => return None,
            Self::Reload => (String::new(), "reload".into()),
            Self::AddBackend { group, body } => (
                group.clone(),
                match body.weight {
                    Some(w) => format!("add backend {} with weight {w}", body.address),
                    None => format!("add backend {}", body.address),
                },
            ),
            Self::RemoveBackend { group, body } => {
                (group.clone(), format!("remove backend {}", body.address))
            }
            Self::DrainBackend { group, body } => {
                (group.clone(), format!("drain backend {}", body.address))
            }
            Self::SetWeight { group, body } => (
                group.clone(),
                format!("set the weight of {} to {}", body.address, body.weight),
            ),
            Self::Scale { group, body } => {
                (group.clone(), format!("scale to desired {}", body.desired))
            }
            Self::NodeDrain => (String::new(), "drain the node".into()),
            Self::NodeUndrain => (String::new(), "undrain the node".into()),
        })
    }
}

/// Why the owner refused or failed a request. The API layer ([`crate::api`]) maps each kind
/// to its HTTP status; the message is shown as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request or the config it loads is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No such group or backend.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the current state (e.g. the backend exists already).
    #[error("{0}")]
    Conflict(String),
    /// Applying the change to the data path failed.
    #[error("{0}")]
    Internal(String),
}

impl From<crate::state::ChangeError> for ApiError {
    fn from(e: crate::state::ChangeError) -> Self {
        use crate::state::ChangeError;
        match e {
            ChangeError::Invalid(m) => ApiError::Invalid(m),
            ChangeError::NotFound(m) => ApiError::NotFound(m),
            ChangeError::Conflict(m) => ApiError::Conflict(m),
        }
    }
}

/// A successful answer: `Status` answers `Reply::Status`, changes answer `Reply::Done`.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Status(Box<Status>),
    Done(ChangeResult),
    Events(Vec<Event>),
    FlowContext(Box<crate::flows::FlowContext>),
    Diff(Box<ChangePreview>),
}

/// A request with the channel its answer goes back on.
pub struct Envelope {
    pub request: Request,
    pub reply: tokio::sync::oneshot::Sender<Result<Reply, ApiError>>,
}

/// Where the API server hands its requests: the state owner's channel, whatever its message
/// type (the daemon's one message enum, or plain [`Envelope`]s in tests), as long as an
/// [`Envelope`] converts into it.
#[derive(Clone)]
pub struct RequestTx {
    send: std::sync::Arc<
        dyn Fn(Envelope) -> futures_util::future::BoxFuture<'static, Result<(), ()>> + Send + Sync,
    >,
}

impl RequestTx {
    /// Queue `env` for the owner (waiting while its channel is full); an error when the owner
    /// is gone.
    pub async fn send(&self, env: Envelope) -> Result<(), ()> {
        (self.send)(env).await
    }
}

impl<M: From<Envelope> + Send + 'static> From<tokio::sync::mpsc::Sender<M>> for RequestTx {
    fn from(tx: tokio::sync::mpsc::Sender<M>) -> Self {
        RequestTx {
            send: std::sync::Arc::new(move |env| {
                let tx = tx.clone();
                Box::pin(async move { tx.send(M::from(env)).await.map_err(|_| ()) })
            }),
        }
    }
}

/// The body of `POST /v1/diff`: the config to compare with the running one. Without `config`
/// the daemon reads its own config file, as a reload would.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffRequest {
    /// The config file's text.
    #[serde(default)]
    pub config: Option<String>,
    /// The name its errors give the file (the path the client read it from).
    #[serde(default)]
    pub file: Option<String>,
}

/// What loading a config would change, and how much traffic it would move.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangePreview {
    /// The config compared with the running one.
    pub config_file: String,
    /// What the reload would say besides (e.g. `[daemon]` changes that need a restart).
    pub notes: Vec<String>,
    pub services: Vec<ServiceDiff>,
    pub backends: Vec<BackendDiff>,
    /// Alert rules added, removed or changed (by name).
    #[serde(default)]
    pub alerts: Vec<String>,
}

impl ChangePreview {
    /// Whether loading the config changes nothing.
    pub fn is_empty(&self) -> bool {
        self.notes.is_empty()
            && self.alerts.is_empty()
            && self.backends.is_empty()
            && self.services.iter().all(|s| s.change == "unchanged")
    }
}

/// One service in a [`ChangePreview`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceDiff {
    pub name: String,
    /// `added`, `removed`, `changed` (its VIP, port, protocol or target group, or its table)
    /// or `unchanged`.
    pub change: String,
    /// What changed in its definition, e.g. `target_group web → web2`.
    pub details: Vec<String>,
    /// Backends in its Maglev table now and after.
    pub backends_before: usize,
    pub backends_after: usize,
    /// Entries of the Maglev table (of `table_size`) that would point at another backend:
    /// new flows hashing there go elsewhere. None for a service added or removed.
    pub table_size: u32,
    pub moved_entries: Option<u64>,
    /// `moved_entries / table_size`, 0..1.
    pub moved_share: Option<f64>,
    /// Open flows (connection-table entries, from the last sweep) of its backends now.
    pub open_flows: u64,
    /// Of those, flows pinned to backends that would leave it: drained ones keep their flows
    /// until they end or the deregistration delay runs out; removed ones move at once.
    pub flows_on_leaving: u64,
}

/// One backend that would change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendDiff {
    pub group: String,
    /// `ADDR` or `ADDR:PORT` as configured.
    pub backend: String,
    /// `added`, `removed` (at once: its group goes), `drained` (no longer listed: it drains
    /// for the deregistration delay), `undrained` (listed again while draining), `reweighted`.
    pub change: String,
    pub weight_before: Option<u32>,
    pub weight_after: Option<u32>,
    /// Its open flows now (from the last sweep).
    pub open_flows: u64,
}
