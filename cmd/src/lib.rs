//! The `meshgate` binary's library: command line, logging, and the wiring
//! that registers every codec and filter into core's registry before
//! running. A binary with its own filters or codecs (examples/stream-filter)
//! adds them to [`registry`] and calls [`main_with`]: the same command
//! line, xDS client, admin and reload as `meshgate`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshgate_core::registry::Registry;
use meshgate_core::server::{self, ServerOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod alloc;
mod capture;

#[global_allocator]
static GLOBAL: alloc::MeshAlloc = alloc::MeshAlloc;

#[derive(Parser, Debug)]
#[command(
    name = "meshgate",
    version,
    about = "meshgate: sidecar, L4/L7 load balancer, ingress and API gateway in one binary",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (YAML or JSON); same as `meshgate run -c FILE`.
    #[arg(short = 'c', long = "config", global = false)]
    config: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    /// Log level (error, warn, info, debug, trace) or a tracing filter;
    /// RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// How long open connections may finish after SIGTERM/SIGINT, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain_time: Duration,
    /// How often the config file is checked for changes and reloaded, e.g.
    /// `1s`; `0s`: only on SIGHUP.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    watch_interval: Duration,
    /// Worker threads (Envoy's `--concurrency`); 0: one per CPU this
    /// process may use (affinity and cgroup quota). One worker runs a
    /// single event loop with no work-stealing scheduler, as nginx's
    /// `worker_processes 1` does.
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    /// Hot upgrade: the Unix socket (one per instance) through which a new
    /// process started with the same path takes this one's listening
    /// sockets, after which this one drains and exits (docs/operations.md).
    #[arg(long, value_name = "PATH")]
    upgrade_socket: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy on a config file.
    Run {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Check a config file without starting; prints `file:line: field: error`.
    Validate {
        /// The config file.
        file: PathBuf,
    },
    /// Install (or --remove) the nftables/iptables rules that send this
    /// network namespace's TCP traffic through meshgate (sidecar mode).
    Capture(capture::CaptureArgs),
}

/// Every codec and filter this binary ships, registered by name.
pub fn registry() -> Result<Registry, meshgate_core::registry::DuplicateName> {
    let mut r = Registry::new();
    meshgate_filters::register_all(&mut r)?;
    meshgate_protocols::register_all(&mut r)?;
    Ok(r)
}

/// Logs go to stderr, coloured only when stderr is a terminal: a file or
/// a pipe (systemd, docker, `2>log`) gets plain text without escape codes.
fn init_logs(level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let (filter, text) = match std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(&v).ok().map(|f| (f, v)))
    {
        Some(f) => f,
        None => match EnvFilter::try_new(level) {
            Ok(f) => (f, level.to_string()),
            Err(_) => (EnvFilter::new("info"), "info".to_string()),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter_reloading();
    let handle = builder.reload_handle();
    builder.init();
    meshgate_core::admin::set_log_control(Box::new(LogReload {
        current: std::sync::Mutex::new(text),
        reload: Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
    }));
    meshgate_core::admin::set_memory_source(alloc::memory_info);
}

/// The admin's `/logging`: swaps the log filter through the subscriber's
/// reload handle.
struct LogReload {
    current: std::sync::Mutex<String>,
    #[allow(clippy::type_complexity)]
    reload: Box<dyn Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync>,
}

impl meshgate_core::admin::LogControl for LogReload {
    fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        let f = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        (self.reload)(f)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_string();
        Ok(())
    }
}

/// Runs the command line (`run`, `validate`) with this registry.
pub fn main_with(registry: Registry) -> ExitCode {
    // First: every 2 MiB the heap touches from here on would stay resident.
    alloc::keep_small_pages();
    let cli = Cli::parse();
    init_logs(&cli.log_level);
    let (config, run) = match cli.command {
        Some(Command::Validate { file }) => {
            return match server::validate(&file, &registry) {
                Ok(s) => {
                    println!(
                        "{}: ok ({} listeners, {} clusters)",
                        file.display(),
                        s.listeners.len(),
                        s.config.clusters.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Capture(args)) => {
            return match capture::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("meshgate capture: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Run { config, run }) => (config, run),
        None => match cli.config {
            Some(c) => (c, cli.run),
            None => {
                eprintln!("meshgate: no config; use `meshgate run -c FILE` (see --help)");
                return ExitCode::from(2);
            }
        },
    };
    match run_server(config, run, registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime for `concurrency` workers (0: one per usable CPU).
///
/// One worker gets tokio's current-thread scheduler: every task runs on the
/// thread that drives the reactor, so a task's wake-up is a push onto a
/// local queue with no atomics shared with other workers, no work-stealing
/// bookkeeping and no cross-thread unpark. On one CPU (a sidecar with a
/// one-CPU quota, or a proxy pinned to a core) that saves CPU on every
/// proxied HTTP/1.1 request (benches/RESULTS.md). More workers share one
/// work-stealing runtime.
fn runtime(concurrency: usize) -> std::io::Result<(tokio::runtime::Runtime, usize)> {
    let workers = match concurrency {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        // Each worker hands its free memory back when asked (alloc::tidy).
        b.worker_threads(workers).on_thread_park(alloc::on_park);
        b
    };
    tracing::info!(
        workers,
        scheduler = if workers == 1 {
            "current-thread"
        } else {
            "work-stealing"
        },
        "starting the runtime"
    );
    let rt = b.enable_all().thread_name("meshgate-worker").build()?;
    Ok((rt, workers))
}

fn run_server(config: PathBuf, args: RunArgs, registry: Registry) -> anyhow::Result<()> {
    let (rt, workers) = runtime(args.concurrency).context("cannot start the tokio runtime")?;
    let opts = ServerOptions {
        drain_time: args.drain_time,
        watch_interval: args.watch_interval,
        upgrade_socket: args.upgrade_socket,
    };
    // A config with `dynamic_resources` gets an ADS client feeding the
    // server's dynamic-config door (core knows no xDS).
    let bootstrap = meshgate_core::config::load_file(&config)
        .ok()
        .and_then(|(c, s)| meshgate_xds::Bootstrap::from_config(&c, &s));
    rt.block_on(async {
        // Before the client runs, so its first counts are not lost.
        meshgate_core::metrics::install_recorder();
        meshgate_core::overload::set_allocator_hooks(meshgate_core::overload::AllocatorHooks {
            release: alloc::release_free_memory,
        });
        let stop = CancellationToken::new();
        tokio::spawn(alloc::tidy(workers));
        let dynamic = bootstrap.map(|b| {
            let (tx, rx) = meshgate_core::dynamic::channel();
            tokio::spawn(meshgate_xds::run(b, tx, stop.child_token()));
            rx
        });
        let r = server::run_with_dynamic(&config, Arc::new(registry), opts, stop.clone(), dynamic)
            .await;
        stop.cancel();
        r
    })?;
    Ok(())
}
