//! Every flag of both daemons can come from a `KXDP_...` environment
//! variable (a systemd EnvironmentFile, a container's env), and `--help`
//! says which.

use clap::CommandFactory;

fn check(mut cmd: clap::Command) {
    let name = cmd.get_name().to_string();
    let mut seen = std::collections::BTreeSet::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        // --man and --completions print and exit, as --help does: a
        // variable would make every start print a page instead.
        if ["help", "version", "man", "completions"].contains(&id) {
            continue;
        }
        if arg.is_hide_set() {
            // Test-only flags (`--test-fault`) are hidden and have no
            // variable on purpose: an inherited environment cannot arm them.
            assert!(
                arg.get_env().is_none(),
                "{name} --{id} is hidden but has a variable"
            );
            continue;
        }
        let env = arg
            .get_env()
            .unwrap_or_else(|| panic!("{name} --{id} has no environment variable"))
            .to_string_lossy()
            .to_string();
        assert!(env.starts_with("KXDP_"), "{name} --{id}: {env}");
        assert!(seen.insert(env.clone()), "{name}: {env} serves two flags");
    }
    let help = cmd.render_long_help().to_string();
    for env in &seen {
        assert!(
            help.contains(&format!("env: {env}")),
            "{name} --help does not name {env}"
        );
    }
    assert!(
        help.contains("environment variable"),
        "{name} --help does not explain them"
    );
}

#[test]
fn every_daemon_flag_has_an_environment_variable_named_in_help() {
    check(kxdp_control::cli::Args::command());
    check(kxdp_dataplane::cli::Args::command());
}
