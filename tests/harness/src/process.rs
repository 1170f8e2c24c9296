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

/// The test venv's python (`$EGRESS_PYTHON`, else /opt/egress-py/bin), its install hint
/// naming the `packages` a test needs of it.
pub fn venv_python(packages: &str) -> PathBuf {
    find_binary(
        "python",
        "EGRESS_PYTHON",
        &[PathBuf::from("/opt/egress-py/bin")],
        &format!("bash scripts/install-test-deps.sh (a venv at /opt/egress-py with {packages})"),
    )
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

/// Send `signal` to the process `pid` (a child of the test).
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory preconditions; the pid is the test's own child.
    unsafe { libc::kill(pid as i32, signal) };
}

/// SIGSTOP the process `pid` and wait until every one of its threads has stopped: what it
/// has open and written stays as it is until SIGCONT or SIGKILL (`kill` only asks; a
/// thread on a CPU stops a moment later).
pub fn pause(pid: u32) {
    signal(pid, libc::SIGSTOP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !all_threads_stopped(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} did not stop within 30 s of SIGSTOP"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// True when every thread of `pid` is stopped (state `T`), or the process is gone.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // `pid (comm) S ...`: the state follows the last ')' (comm may hold one).
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        state.is_none_or(|s| s.starts_with('T') || s.starts_with('t') || s.starts_with('Z'))
    })
}

/// The files the process `pid` has open: each descriptor with what `/proc/<pid>/fd` links
/// it to (`<dir>/#<inode> (deleted)` for an unnamed `O_TMPFILE` file).
pub fn open_files(pid: u32) -> Vec<(u32, PathBuf)> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| {
            let number = fd.file_name().to_str()?.parse().ok()?;
            Some((number, std::fs::read_link(fd.path()).ok()?))
        })
        .collect()
}
