//! The environment variables a binary reads, printed by the hidden `--list-env` flag so
//! that deployment templates can be checked against the binary itself.

/// One line per variable: `NAME<TAB>required|optional`, sorted by name.
///
/// `cmd` contributes every flag's `env`; `extra` names variables read outside clap
/// (libpq's, the AWS chain's); `required` marks those a deployment must set.
pub fn listing(cmd: &clap::Command, extra: &[&str], required: &[&str]) -> String {
    let mut names: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().to_string())
        .chain(extra.iter().map(|s| s.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
        .iter()
        .map(|n| {
            let need = if required.contains(&n.as_str()) {
                "required"
            } else {
                "optional"
            };
            format!("{n}\t{need}\n")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_flag_and_extra_variables() {
        let cmd = clap::Command::new("x").arg(clap::Arg::new("a").long("a").env("A_VAR"));
        assert_eq!(
            listing(&cmd, &["PGHOST"], &["PGHOST"]),
            "A_VAR\toptional\nPGHOST\trequired\n"
        );
    }
}
