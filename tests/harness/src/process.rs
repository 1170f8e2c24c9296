//! Finding server binaries and running them as an unprivileged user when we are root.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Find `name`: `$env_var` first, then `extra_dirs`, then `PATH`. Panics with `install` when absent.
pub fn find_binary(name: &str, env_var: &str, extra_dirs: &[PathBuf], install: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return path;
        }
        panic!("{env_var}={} does not exist; {install}", path.display());
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in extra_dirs.iter().chain(path_dirs.iter()) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("test server binary '{name}' not found (set {env_var} or put it on PATH); install it with: {install}");
}

/// The user to run servers as: ourselves, or `postgres` (then `nobody`) when we are root,
/// because PostgreSQL refuses to run as root.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl RunAs {
    /// Pick the user.
    pub fn unprivileged() -> RunAs {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        if uid != 0 {
            return RunAs { uid, gid };
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        for wanted in ["postgres", "nobody"] {
            for line in passwd.lines() {
                let fields: Vec<&str> = line.split(':').collect();
                if fields.len() > 3 && fields[0] == wanted {
                    if let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse()) {
                        return RunAs { uid, gid };
                    }
                }
            }
        }
        panic!("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as");
    }

    /// Apply to a command (a no-op when that is already who we are).
    pub fn apply(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != self.uid {
            cmd.uid(self.uid).gid(self.gid);
        }
    }

    /// Give `path` (recursively not needed: fresh dirs) to this user.
    pub fn own(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .expect("chown test directory");
    }
}

/// Wait until something accepts TCP connections on `port`, or panic after `timeout`.
pub fn wait_for_port(port: u16, timeout: std::time::Duration, what: &str, log: &Path) {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    panic!(
        "{what} did not start listening on 127.0.0.1:{port} within {timeout:?}; its log:\n{tail}"
    );
}
