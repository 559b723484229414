//! Shell completions and the manual page, generated from the clap definitions so that they
//! cannot drift from the commands (`bitsctl completions SHELL`, `bitsctl man`). Packagers
//! install their output (see dist/README.md).

use clap::CommandFactory as _;

use crate::args::Cli;

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> String {
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "bitsctl", &mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// bitsctl(1) in roff.
pub fn man_page() -> std::io::Result<String> {
    let mut text = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut text)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap_complete::Shell;

    use super::*;

    fn subcommands() -> Vec<String> {
        let names: Vec<String> =
            Cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect();
        assert!(names.len() > 25, "{names:?}");
        names
    }

    #[test]
    fn every_completion_script_knows_every_subcommand() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = completions(shell);
            for name in subcommands() {
                assert!(script.contains(&name), "{shell}: no {name}");
            }
        }
        // `set`'s flags complete too.
        assert!(completions(Shell::Bash).contains("--no-progress-timeout"));
    }

    #[test]
    fn the_bash_script_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bitsctl.bash");
        std::fs::write(&path, completions(Shell::Bash)).unwrap();
        let status = std::process::Command::new("bash").arg("-n").arg(&path).status().unwrap();
        assert!(status.success(), "bash -n refused the completion script");
    }

    #[test]
    fn the_man_page_lists_every_subcommand() {
        let page = man_page().unwrap();
        assert!(page.contains(".TH bitsctl 1"), "{page}");
        for name in subcommands() {
            // roff escapes '-' as '\-'.
            let roff = name.replace('-', "\\-");
            assert!(page.contains(&roff), "no {name} in the man page");
        }
    }
}
