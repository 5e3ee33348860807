//! The `meshgate` binary: the shipped registry and the command line
//! (`meshgate_cmd`).

use std::process::ExitCode;

fn main() -> ExitCode {
    match meshgate_cmd::registry() {
        Ok(r) => meshgate_cmd::main_with(r),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
