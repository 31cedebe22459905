//! The `msloss` command-line tool (see the library, `msloss_cli`).

fn main() -> std::process::ExitCode {
    msloss_cli::run()
}
