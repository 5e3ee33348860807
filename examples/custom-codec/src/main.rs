//! `meshgate-lenrpc`: meshgate with the `lenrpc` codec registered.
//!   meshgate-lenrpc run CONFIG | meshgate-lenrpc validate CONFIG

use meshgate_core::server::{self, ServerOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let (Some(cmd), Some(file)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: meshgate-lenrpc run|validate CONFIG");
        return ExitCode::from(2);
    };
    let file = PathBuf::from(file);
    let registry = match meshgate_example_custom_codec::registry() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match cmd.as_str() {
        "validate" => match server::validate(&file, &registry) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        "run" => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the tokio runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = ServerOptions {
                drain_time: Duration::from_secs(5),
                watch_interval: Duration::from_secs(1),
                ..Default::default()
            };
            match rt.block_on(server::run(
                &file,
                Arc::new(registry),
                opts,
                CancellationToken::new(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("usage: meshgate-lenrpc run|validate CONFIG");
            ExitCode::from(2)
        }
    }
}
