//! xlb: the daemon and CLI of the xlb XDP load balancer.
//!
//! - [`config`]: the TOML file, validated with positions in errors;
//! - [`maglev`]: the lookup table;
//! - [`state`]: the one owner of desired state (its changes in [`state::changes`], the state
//!   file in [`state::persist`]); [`reconcile`]: the one writer of the maps (the map types in
//!   [`reconcile::encode`]); [`commit`]: changes as transactions (checked first, undone when
//!   the maps refuse them), and the map writer's thread the reconciler runs on;
//! - [`scaling`]: the policy engine, the scaling rounds, the hook runner; [`status`]: the
//!   status view; [`api`]: the control API, where errors get their HTTP status;
//! - [`dataplane`]: the loaded XDP object; [`daemon`]: `xlb run`, the owner loop; [`msg`]:
//!   the one message type every producer sends it;
//! - [`links`]: VLAN devices and interface indexes learnt over rtnetlink;
//! - [`service`]: capabilities, systemd notification, log format;
//! - [`diff`]: what a reload would change (`xlb diff`); [`alert`]: `[[alert]]` rules and
//!   their sending; [`top`]: `xlb top`.
pub mod alert;
pub mod api;
pub mod batch;
pub mod cli;
pub mod commit;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod diff;
pub mod dsr;
pub mod ebpf;
pub mod endpoint;
pub mod fleet;
pub mod flows;
pub mod health;
pub mod instance;
pub mod links;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod msg;
pub mod passive;
pub mod reconcile;
pub mod scaling;
pub mod service;
pub mod state;
pub mod status;
pub mod sweep;
pub mod top;
pub mod vipcheck;
pub mod web;
