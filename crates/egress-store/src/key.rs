//! Object keys: joining a prefix and a relative key, and refusing keys that cannot be a
//! path inside a local directory.

/// `prefix/key`, or `key` when the prefix is empty. The one place keys are joined.
pub fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}/{key}"),
    }
}

/// The listing prefix for everything under `prefix` (`p/`, or empty for a whole bucket).
pub fn dir_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// Why `key` cannot name a file under a directory, or `None` when it can: an absolute key
/// (a leading `/`, which `prefix//x` also produces), an empty, `.` or `..` segment, or a
/// NUL byte would address something else than the file the key names, or something
/// outside the directory.
pub(crate) fn local_path_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("is empty");
    }
    if key.starts_with('/') {
        return Some("starts with '/' (an absolute path; `prefix//name` in S3 gives this)");
    }
    if key.contains('\0') {
        return Some("contains a NUL byte");
    }
    for segment in key.split('/') {
        match segment {
            "" => return Some("has an empty path segment ('//')"),
            "." | ".." => return Some("has a '.' or '..' segment that would leave its folder"),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_prefixes() {
        assert_eq!(join("p", "2024-01-01/t.csv.gz"), "p/2024-01-01/t.csv.gz");
        assert_eq!(join("", "k"), "k");
        assert_eq!(join("p", ""), "p");
        assert_eq!(dir_prefix(""), "");
        assert_eq!(dir_prefix("a/b"), "a/b/");
    }

    #[test]
    fn hostile_keys_are_named() {
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a/.",
            "",
            "a\0b",
        ] {
            assert!(local_path_problem(bad).is_some(), "{bad:?} must be refused");
        }
        for good in [
            "a",
            "a/b.csv.gz",
            "with space/ü.txt",
            "..a/b..",
            "a/.hidden",
        ] {
            assert_eq!(local_path_problem(good), None, "{good:?} is fine");
        }
    }
}
