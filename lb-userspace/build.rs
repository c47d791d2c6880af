//! Builds the XDP programs (`lb-ebpf`) for the BPF target with aya-build and leaves the
//! object in OUT_DIR, where `src/ebpf.rs` embeds it.
use std::process::Command;

fn missing_toolchain() -> Option<String> {
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !matches!(linker, Ok(ref o) if o.status.success()) {
        return Some("bpf-linker is not installed".into());
    }
    let src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output();
    match src {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src")) =>
        {
            None
        }
        _ => Some("the nightly toolchain with rust-src is not installed".into()),
    }
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var_os("AYA_BUILD_SKIP").is_none() {
        if let Some(what) = missing_toolchain() {
            anyhow::bail!(
                "cannot build the XDP program: {what}.\n\
                 Run `cargo xtask setup` once (it installs rust-src for nightly, bpf-linker 0.10.4 \
                 and the test packages), then build again."
            );
        }
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .map_err(|e| {
        anyhow::anyhow!("building the XDP program failed (try `cargo xtask setup`): {e:#}")
    })
}
