//! Kubernetes shows the contents of `/dev/termination-log` in `oc describe pod`: we leave a
//! one-paragraph summary of the run there.

use std::path::Path;

/// Where Kubernetes looks by default.
pub const DEFAULT_PATH: &str = "/dev/termination-log";

/// Write `summary` to `path`. The default path is written only when it already exists (the
/// kubelet creates it); elsewhere it would be a stray file. Failures are ignored: the log
/// has the same information.
pub fn write(path: &str, summary: &str) {
    if path.is_empty() || (path == DEFAULT_PATH && !Path::new(path).exists()) {
        return;
    }
    // Kubernetes keeps at most 4096 bytes of it.
    let mut text = summary.replace('\n', " ");
    if text.len() > 4000 {
        let mut cut = 4000;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" ...");
    }
    text.push('\n');
    if let Err(e) = std::fs::write(path, text) {
        tracing::debug!(path, error = %e, "cannot write the termination log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_explicit_path_and_skips_a_missing_default() {
        let dir = std::env::temp_dir().join(format!("egress-term-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("log");
        write(file.to_str().unwrap(), "egress-dump failed:\nbecause");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "egress-dump failed: because\n"
        );
        if !Path::new(DEFAULT_PATH).exists() {
            write(DEFAULT_PATH, "x");
            assert!(!Path::new(DEFAULT_PATH).exists());
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
