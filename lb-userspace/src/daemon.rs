//! `xlb run`: load, attach, reconcile, and serve until told to stop.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    config,
    dataplane::{self, Dataplane, LoadOptions},
    reconcile::Reconciler,
    state::State,
};

const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mount bpffs at /sys/fs/bpf unless it is there already.
pub fn ensure_bpffs() -> Result<()> {
    let path = Path::new(BPFFS);
    if let Ok(st) = nix::sys::statfs::statfs(path) {
        if st.filesystem_type().0 == BPF_FS_MAGIC {
            return Ok(());
        }
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

pub async fn run(config_path: PathBuf) -> Result<()> {
    let cfg = config::load(&config_path)?;
    ensure_bpffs()?;
    let d = &cfg.daemon;
    let opts = LoadOptions {
        ring_size: d.maglev_table_size,
        conntrack_size: d.conntrack_size,
        max_services: d.max_services,
        hash_seed: d.hash_seed.unwrap_or_else(random_seed),
    };
    let mut dp = Dataplane::load(opts).context("loading the XDP program")?;
    let mut state = State::new(cfg.clone());
    let mut reconciler = Reconciler::new();
    let desired = state.desired()?;
    reconciler.apply(&mut dp, &desired)?;

    let mut attached = Vec::new();
    for iface in &d.interfaces {
        attached.push(dp.attach(lb_common::PROG_XDP_LB, iface, d.xdp_mode)?);
    }
    dataplane::log_attachments(&attached);
    info!(
        services = desired.services.len(),
        backends = desired.backends.len(),
        config = %config_path.display(),
        "xlb is running"
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                match config::load(&config_path) {
                    Ok(new_cfg) => {
                        if new_cfg.daemon != state.config.daemon {
                            warn!("[daemon] changes need a restart; applying services and target groups only");
                        }
                        let mut next = new_cfg;
                        next.daemon = state.config.daemon.clone();
                        state.config = next;
                        match state.desired() {
                            Ok(desired) => {
                                if let Err(e) = reconciler.apply(&mut dp, &desired) {
                                    error!(error = %e, "applying the reloaded config failed");
                                } else {
                                    info!("config reloaded");
                                }
                            }
                            Err(e) => error!(error = %e, "reloaded config rejected"),
                        }
                    }
                    Err(e) => error!("reload rejected, keeping the running config: {e}"),
                }
            }
        }
    }
    info!("stopping: detaching XDP");
    for (name, value) in dp.global_counters() {
        info!(counter = name, value, "final");
    }
    drop(dp);
    Ok(())
}
