//! Auto scaling (issue 5):
//!
//! - [`policy`]: the policy engine ([`Scaler`]) that decides a scaling group's `desired`
//!   capacity from policies and schedules (pure logic);
//! - [`orchestrate`]: a group's scaling state ([`GroupScaling`]) and the rounds that bring
//!   the group towards `desired` (which hooks to start, what to drain or replace), and what
//!   the hooks' results change ([`HookJob`], `State::scaling_round`, `State::launch_done`, …);
//! - [`hooks`]: the hook runner ([`run_hook`], the only I/O here) and its [`Backoff`];
//! - [`parse`]: the backends a scale-out hook printed ([`parse_backends`]).

pub mod hooks;
pub mod orchestrate;
pub mod parse;
pub mod policy;

pub use hooks::{hook_env, run_hook, Backoff, HookError, HookOutput};
pub use orchestrate::{GroupScaling, HookJob};
pub use parse::parse_backends;
pub use policy::{
    metric_value, reported_freshness, BackendSample, Decision, DecisionKind, GroupSample, Scaler,
};
