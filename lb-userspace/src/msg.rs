//! The owner loop's one message type. Every producer (the API server, the health checkers,
//! the conntrack sweeper, scaling hooks, the link watcher, and small tasks for signals and
//! timers) sends a [`Msg`] on one bounded channel; the loop in [`crate::daemon`] takes them
//! one at a time, in arrival order, and handles each with one `match`.
//!
//! # Back-pressure
//!
//! The channel holds [`CAPACITY`] messages. A producer that finds it full waits in `send`
//! (the sweeper thread in `blocking_send`): nothing is dropped and nothing piles up without
//! bound. Waiting senders are served first come, first served (tokio's bounded channel hands
//! out freed slots in the order senders asked for them), so no producer can starve another:
//! an API request waits behind at most what was queued before it — at most [`CAPACITY`]
//! messages and the senders already waiting — however many health checks keep finishing.
//! Each producer has little in flight: a health checker waits for its outcome to be queued
//! before it checks again (one per backend at most), an API connection waits for its answer,
//! the sweeper and the link watcher send one snapshot at a time, and the timers wait like the
//! others. Handling a message is quick: map writes and Maglev builds run on the map writer's
//! thread ([`crate::commit::Writer`]), and while one runs the loop still answers the requests
//! that only read (see [`Request::reads_only`]).
use std::time::Duration;

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    time::MissedTickBehavior,
};

#[cfg(doc)]
use crate::model::Request;
use crate::{
    health::CheckOutcome, model::Envelope, reconcile::Links, state::CheckToken, sweep::Sweep,
};

/// Messages the owner loop's channel holds at most (see the module docs).
pub const CAPACITY: usize = 1024;

/// Everything that reaches the owner loop.
pub enum Msg {
    /// An API request and where its answer goes.
    Api(Envelope),
    /// A health check's outcome.
    Check(CheckToken, CheckOutcome),
    /// What a conntrack sweep counted and found.
    Sweep(Sweep),
    /// A scaling hook finished.
    Hook(HookResult),
    /// What the link watcher saw.
    Links(Links),
    /// SIGINT or SIGTERM: stop.
    Stop,
    /// SIGHUP: reload the config file.
    Reload,
    /// Every second: finished drains, scaling, the fleet, alerts, idle table slots, the HTTP
    /// snapshot.
    Tick,
    /// Every [`crate::passive::POLL_EVERY`]: read and judge the passive-health counters.
    PassiveTick,
}

/// A finished hook, back on the owner loop.
pub enum HookResult {
    Launch {
        group: String,
        result: Result<crate::scaling::HookOutput, String>,
    },
    Terminate {
        group: String,
        backend: String,
        result: Result<(), String>,
    },
    Metrics {
        group: String,
        lines: Vec<String>,
        /// The command ran and exited 0 (for the metrics).
        ok: bool,
    },
}

impl From<Envelope> for Msg {
    fn from(e: Envelope) -> Self {
        Msg::Api(e)
    }
}

impl From<(CheckToken, CheckOutcome)> for Msg {
    fn from((token, outcome): (CheckToken, CheckOutcome)) -> Self {
        Msg::Check(token, outcome)
    }
}

impl From<Links> for Msg {
    fn from(l: Links) -> Self {
        Msg::Links(l)
    }
}

/// Turn SIGINT and SIGTERM into [`Msg::Stop`] and SIGHUP into [`Msg::Reload`] (the handlers
/// are installed before this returns).
pub fn spawn_signals(tx: mpsc::Sender<Msg>) -> std::io::Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                _ = sigint.recv() => Msg::Stop,
                _ = sigterm.recv() => Msg::Stop,
                _ = sighup.recv() => Msg::Reload,
            };
            if tx.send(m).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Send `make()` every `every` (the first at once), with `missed` deciding what a tick that
/// could not be sent in time becomes.
pub fn spawn_timer(
    tx: mpsc::Sender<Msg>,
    every: Duration,
    missed: MissedTickBehavior,
    make: fn() -> Msg,
) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(missed);
        loop {
            interval.tick().await;
            if tx.send(make()).await.is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Request;

    /// Many producers that never stop sending (health checks in a storm) do not starve an API
    /// request: it is received after at most what was queued or waiting before it.
    #[tokio::test]
    async fn a_flood_of_check_outcomes_does_not_starve_the_api() {
        const CAP: usize = 8;
        const PRODUCERS: usize = 32;
        let (tx, mut rx) = mpsc::channel::<Msg>(CAP);
        for _ in 0..PRODUCERS {
            let tx = tx.clone();
            tokio::spawn(async move { while tx.send(Msg::Tick).await.is_ok() {} });
        }
        // Let the channel fill and every producer wait for a slot.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(tx.capacity(), 0, "full");
        let (reply, _answer) = tokio::sync::oneshot::channel();
        let send = tx.send(Msg::Api(Envelope {
            request: Request::Status,
            reply,
        }));
        tokio::pin!(send);
        // Polled once, it waits in line for a slot behind the producers.
        assert!(futures_util::poll!(&mut send).is_pending());
        let mut sent = false;
        let mut before = 0usize;
        loop {
            match rx.recv().await.expect("open") {
                Msg::Api(_) => break,
                _ => before += 1,
            }
            if !sent {
                sent = futures_util::poll!(&mut send).is_ready();
            }
            assert!(
                before <= CAP + PRODUCERS,
                "{before} messages went before the API request (at most {} were queued or \
                 waiting before it)",
                CAP + PRODUCERS
            );
        }
        assert!(sent);
    }
}
