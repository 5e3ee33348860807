//! `meshgate-body-digest`: the `meshgate` binary (same command line, xDS,
//! admin and reload) with the `body_digest` stream filter registered.
//!   meshgate-body-digest run -c CONFIG | meshgate-body-digest validate CONFIG

use std::process::ExitCode;

fn main() -> ExitCode {
    match meshgate_example_filter::registry() {
        Ok(r) => meshgate_cmd::main_with(r),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
