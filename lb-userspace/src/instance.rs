//! What one xlb instance keeps beside its state file: the lock that makes it the only daemon
//! of that state file, the manifest of what it pinned (all that `xlb stop --cleanup` may
//! remove), the check that `pin_path` is on bpffs, and crash-safe writes of private files.
//!
//! For `state_file = "/run/xlb/state.json"`: the lock is `/run/xlb/state.json.lock`, the
//! manifest `/run/xlb/state.json.pins`.
use std::{
    collections::BTreeSet,
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// bpffs' `f_type` (`BPF_FS_MAGIC`).
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "another xlb{} holds the lock {} of state file {}: one daemon per state file; stop it \
         first (`xlb stop`) or give this one another daemon.state_file",
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        .lock.display(),
        .state_file.display()
    )]
    Held {
        lock: PathBuf,
        state_file: PathBuf,
        pid: Option<u32>,
    },
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "pin_path {} is not on bpffs (the filesystem at {} is not bpf): xlb pins its maps and \
         links only in a bpffs directory such as /sys/fs/bpf/xlb",
        .pin_path.display(),
        .checked.display()
    )]
    NotBpffs { pin_path: PathBuf, checked: PathBuf },
}

fn sibling(state_file: &Path, suffix: &str) -> PathBuf {
    let mut name = state_file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "xlb".into());
    name.push(suffix);
    state_file.with_file_name(name)
}

/// The lock file of `state_file`.
pub fn lock_path(state_file: &Path) -> PathBuf {
    sibling(state_file, ".lock")
}

/// The pin manifest of `state_file`.
pub fn manifest_path(state_file: &Path) -> PathBuf {
    sibling(state_file, ".pins")
}

/// An exclusive `flock` on the lock file next to the state file, held while this lives (the
/// kernel drops it when the process exits, even by `kill -9`).
#[derive(Debug)]
pub struct InstanceLock {
    _lock: nix::fcntl::Flock<File>,
    pub path: PathBuf,
}

impl InstanceLock {
    /// Take the lock without waiting; [`InstanceError::Held`] if another process has it.
    /// The lock file holds the pid of its holder (for the message of the next one).
    pub fn acquire(state_file: &Path) -> Result<Self, InstanceError> {
        let path = lock_path(state_file);
        let io_err = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| InstanceError::Io { what, path, source }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode_0600()
            .open(&path)
            .map_err(io_err("opening", &path))?;
        let mut lock =
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    let pid = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                    return Err(InstanceError::Held {
                        lock: path,
                        state_file: state_file.to_path_buf(),
                        pid,
                    });
                }
                Err((_, e)) => {
                    return Err(InstanceError::Io {
                        what: "locking",
                        path,
                        source: e.into(),
                    })
                }
            };
        let _ = lock
            .set_len(0)
            .and_then(|_| writeln!(&mut *lock, "{}", std::process::id()));
        Ok(Self { _lock: lock, path })
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// Whether `path` is on bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|st| {
        // `f_type` is a C long (or narrower): widen it whatever its type.
        #[allow(clippy::unnecessary_cast)]
        let t = st.filesystem_type().0 as i64;
        t == BPF_FS_MAGIC
    })
}

/// Check that `pin_path` (or, while it does not exist yet, the nearest directory above it)
/// is on bpffs.
pub fn check_bpffs(pin_path: &Path) -> Result<(), InstanceError> {
    let checked = pin_path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    if !is_bpffs(&checked) {
        return Err(InstanceError::NotBpffs {
            pin_path: pin_path.to_path_buf(),
            checked,
        });
    }
    Ok(())
}

/// Write `bytes` to `path` so that a crash leaves the old file or the new one, never a mix:
/// a temporary file of a unique name in the same directory, mode 0600 (the state file holds
/// the hash seed), written and fsynced, renamed over `path`, then the directory fsynced.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    // tempfile creates it with O_EXCL and mode 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.",
            path.file_name().unwrap_or_default().to_string_lossy()
        ))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// What xlb pinned in a pin directory: the only objects `xlb stop --cleanup` removes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinManifest {
    pub pin_path: PathBuf,
    /// File names in `pin_path`.
    pub names: BTreeSet<String>,
}

impl PinManifest {
    /// The manifest of `state_file`; None when there is none.
    pub fn read(state_file: &Path) -> io::Result<Option<PinManifest>> {
        let path = manifest_path(state_file);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Add `names` (in `pin_path`) to the manifest of `state_file`, before pinning them.
    /// Names recorded earlier for the same `pin_path` stay (an interface dropped from the
    /// config may still have its link pinned).
    pub fn record(
        state_file: &Path,
        pin_path: &Path,
        names: impl IntoIterator<Item = String>,
    ) -> io::Result<()> {
        let mut m = match Self::read(state_file) {
            Ok(Some(m)) if m.pin_path == pin_path => m,
            _ => PinManifest {
                pin_path: pin_path.to_path_buf(),
                names: BTreeSet::new(),
            },
        };
        let before = m.names.len();
        m.names.extend(names);
        if before == m.names.len() && manifest_path(state_file).exists() {
            return Ok(());
        }
        write_private(&manifest_path(state_file), &serde_json::to_vec_pretty(&m)?)
    }
}

/// What [`remove_pins`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub removed: Vec<String>,
    /// Entries of the directory xlb did not pin, left in place.
    pub foreign: Vec<String>,
}

/// Remove the objects `names` from `dir` (those that exist; only plain names, no paths), then
/// `dir` itself if nothing else is left in it. Links go first (detaching XDP), then maps.
pub fn remove_pins(dir: &Path, names: &BTreeSet<String>) -> io::Result<Removed> {
    let mut out = Removed::default();
    let mut ordered: Vec<&String> = names.iter().collect();
    ordered.sort_by_key(|n| !n.starts_with("link_"));
    for name in ordered {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            continue;
        }
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => out.removed.push(name.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                out.foreign
                    .push(e?.file_name().to_string_lossy().into_owned());
            }
            out.foreign.sort();
            if out.foreign.is_empty() {
                std::fs::remove_dir(dir)?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_second_instance_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("sub/state.json");
        let first = InstanceLock::acquire(&state).expect("the first takes the lock");
        assert_eq!(first.path, dir.path().join("sub/state.json.lock"));
        let second = InstanceLock::acquire(&state).expect_err("the second is refused");
        let msg = second.to_string();
        assert!(
            matches!(second, InstanceError::Held { pid: Some(p), .. } if p == std::process::id()),
            "{second:?}"
        );
        assert!(
            msg.contains("another xlb") && msg.contains("xlb stop"),
            "{msg}"
        );
        drop(first);
        InstanceLock::acquire(&state).expect("free again once the first is gone");
    }

    #[test]
    fn private_writes_are_0600_atomic_and_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn bpffs_check() {
        assert!(matches!(
            check_bpffs(Path::new("/tmp/xlb-not-bpffs")),
            Err(InstanceError::NotBpffs { .. })
        ));
        assert!(check_bpffs(Path::new("/etc")).is_err());
        // /sys/fs/bpf is mounted on the machines the tests run on.
        check_bpffs(Path::new("/sys/fs/bpf/xlb-test-does-not-exist/x")).unwrap();
    }

    #[test]
    fn cleanup_removes_only_what_the_manifest_names() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let pins = dir.path().join("pins");
        std::fs::create_dir(&pins).unwrap();
        for n in ["CONNTRACK", "link_eth0", "someone_elses_map"] {
            std::fs::write(pins.join(n), b"").unwrap();
        }
        PinManifest::record(&state, &pins, ["CONNTRACK".to_string()]).unwrap();
        PinManifest::record(
            &state,
            &pins,
            ["link_eth0".to_string(), "link_gone".to_string()],
        )
        .unwrap();
        let m = PinManifest::read(&state).unwrap().unwrap();
        assert_eq!(m.names.len(), 3, "records accumulate: {m:?}");
        let r = remove_pins(&pins, &m.names).unwrap();
        assert_eq!(r.removed, ["link_eth0", "CONNTRACK"], "links first");
        assert_eq!(r.foreign, ["someone_elses_map"]);
        assert!(pins.join("someone_elses_map").exists());
        // Once only xlb's were there, the directory goes too.
        std::fs::remove_file(pins.join("someone_elses_map")).unwrap();
        let r = remove_pins(&pins, &m.names).unwrap();
        assert!(r.removed.is_empty() && r.foreign.is_empty());
        assert!(!pins.exists());
        // Names that are paths are never followed.
        let evil = BTreeSet::from(["../state.json".to_string()]);
        std::fs::write(&state, b"x").unwrap();
        remove_pins(dir.path(), &evil).unwrap();
        assert!(state.exists());
    }
}
