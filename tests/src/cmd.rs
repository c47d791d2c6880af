//! Running commands with useful errors.

use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// `program arg arg ...` as a shell would show it.
pub(crate) fn render(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion (stdin null, output captured); fails with its stderr and stdout
/// unless it exits 0.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let shown = render(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            match String::from_utf8_lossy(&out.stdout).trim() {
                "" => String::new(),
                s => format!(" (stdout: {s})"),
            }
        );
    }
    Ok(out)
}

/// `ip ARGS...` in the root namespace (use `-n NS` to act inside one).
pub(crate) fn ip<I, S>(args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run(Command::new("ip").args(args))
}
