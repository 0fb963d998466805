//! What every kxdp binary's command line shares: its man page and shell
//! completions (the daemons print them with `--man` and `--completions
//! SHELL`, kxdpctl with `kxdpctl man` and `kxdpctl completions SHELL`), and
//! the check, run by each binary's unit tests, that every argument says
//! what it is for.

use std::io::{self, Write};
use std::path::Path;

use clap::Command;
pub use clap_complete::Shell;

/// `--man` and `--completions SHELL`, for a daemon (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DocFlags {
    /// Print this program's man page (roff, section 8) and exit, e.g.
    /// `kxdp-dataplane --man > /usr/local/share/man/man8/kxdp-dataplane.8`.
    #[arg(long)]
    pub man: bool,
    /// Print a completion script for SHELL and exit, e.g.
    /// `kxdp-control --completions bash > /etc/bash_completion.d/kxdp-control`.
    #[arg(long, value_name = "SHELL")]
    pub completions: Option<Shell>,
}

impl DocFlags {
    /// Prints what was asked for; true if the program should now exit.
    pub fn handled(&self, cmd: Command) -> io::Result<bool> {
        let mut out = io::stdout().lock();
        if self.man {
            man(cmd.clone(), "8", &mut out)?;
        }
        if let Some(shell) = self.completions {
            completions(shell, cmd, &mut out);
        }
        Ok(self.man || self.completions.is_some())
    }
}

/// `cmd`'s man page, in `section` ("1" for a tool, "8" for a daemon).
pub fn man(cmd: Command, section: &str, out: &mut dyn Write) -> io::Result<()> {
    clap_mangen::Man::new(cmd)
        .section(section)
        .source(format!("kxdp {}", env!("CARGO_PKG_VERSION")))
        .render(out)
}

/// One man page per command and subcommand (`kxdpctl.1`,
/// `kxdpctl-nodes.1`, ...) in `dir`.
pub fn man_pages(cmd: Command, dir: &Path) -> io::Result<()> {
    clap_mangen::generate_to(cmd, dir)
}

/// `cmd`'s completion script for `shell`.
pub fn completions(shell: Shell, mut cmd: Command, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Every argument of `cmd` and its subcommands, at any depth, that has no
/// help text, as "kxdpctl pod add --node"; positionals are named by their
/// value name. clap's own `--help` and `--version` are not looked at.
pub fn undocumented(cmd: &Command) -> Vec<String> {
    let mut missing = Vec::new();
    walk(cmd, cmd.get_name(), &mut missing);
    missing
}

fn walk(cmd: &Command, path: &str, missing: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let documented = arg
            .get_help()
            .or(arg.get_long_help())
            .is_some_and(|h| !h.to_string().trim().is_empty());
        if !documented {
            let name = match arg.get_long() {
                Some(long) => format!("--{long}"),
                None => format!("<{id}>"),
            };
            missing.push(format!("{path} {name}"));
        }
    }
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        if sub.get_about().is_none() && sub.get_long_about().is_none() {
            missing.push(format!("{path} {} (the subcommand)", sub.get_name()));
        }
        walk(sub, &format!("{path} {}", sub.get_name()), missing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    #[test]
    fn undocumented_names_each_argument_without_help() {
        let cmd = Command::new("t")
            .arg(Arg::new("node").long("node"))
            .arg(
                Arg::new("all")
                    .long("all")
                    .help("Every one.")
                    .action(ArgAction::SetTrue),
            )
            .subcommand(
                Command::new("sub")
                    .about("A subcommand.")
                    .arg(Arg::new("file")),
            )
            .subcommand(Command::new("bare"));
        assert_eq!(
            undocumented(&cmd),
            ["t --node", "t sub <file>", "t bare (the subcommand)"]
        );
    }

    #[test]
    fn man_and_completions_name_the_flags() {
        let cmd = Command::new("t").arg(Arg::new("node").long("node").help("The node."));
        let mut page = Vec::new();
        man(cmd.clone(), "8", &mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.contains(".TH t 8") && page.contains("node"), "{page}");
        let mut script = Vec::new();
        completions(Shell::Bash, cmd, &mut script);
        assert!(String::from_utf8(script).unwrap().contains("--node"));
    }
}
