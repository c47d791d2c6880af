//! The `xlb` command.
use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use xlb::{cli::Action, endpoint::Endpoint};

#[derive(Parser)]
#[command(name = "xlb", version, about = "An XDP layer-4 load balancer")]
struct Cli {
    /// The daemon's API socket, for the client commands [default: /run/xlb/xlb.sock, or
    /// daemon.api_socket of --config]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Options of every command that talks to a running xlb.
#[derive(Args)]
struct ClientArgs {
    /// Print the API's JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Find the API socket in this config file (daemon.api_socket) unless --socket is given
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program (adopting what a previous instance pinned), attach it, and balance
    /// traffic until SIGINT/SIGTERM (SIGHUP reloads the config). XDP stays attached after exit.
    Run {
        #[arg(long, short, default_value = "/etc/xlb/xlb.toml")]
        config: PathBuf,
    },
    /// Stop the daemon holding the state file's lock. XDP stays attached and keeps forwarding
    /// with the last state unless `--cleanup` is given, which also detaches XDP and removes
    /// what xlb pinned (as its pin manifest records) and the state file (established flows
    /// are then lost).
    Stop {
        #[arg(long, short, default_value = "/etc/xlb/xlb.toml")]
        config: PathBuf,
        #[arg(long)]
        cleanup: bool,
    },
    /// Validate a config file and exit (non-zero with the position of the error).
    Check {
        #[arg(long, short, default_value = "/etc/xlb/xlb.toml")]
        config: PathBuf,
    },
    /// Show the running xlb: interfaces, services, target groups and counters.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List backends with their state, weight, flows and counters.
    Backends {
        /// Only this target group (all groups when omitted)
        group: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add, remove, drain or re-weight a backend of a target group.
    Backend {
        #[command(subcommand)]
        command: BackendCommand,
    },
    /// Reload the config file, as SIGHUP does, and report whether it was accepted.
    Reload {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set a scaling group's desired capacity (within its min and max).
    Scale {
        /// The target group
        group: String,
        #[arg(long)]
        desired: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show recent events: scaling decisions with the metrics behind them, hook results,
    /// health changes.
    Events {
        /// Only this target group
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum BackendCommand {
    /// Add a backend to a target group (the group's port when PORT is omitted).
    Add {
        /// The target group
        group: String,
        /// The backend: ADDR, ADDR:PORT or [V6ADDR]:PORT
        #[arg(value_name = "ADDR[:PORT]")]
        address: Endpoint,
        /// Its weight (xlb's default when omitted)
        #[arg(long, value_name = "N")]
        weight: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a backend from a target group at once (its open flows are dropped).
    Remove {
        /// The target group
        group: String,
        /// The backend: ADDR, ADDR:PORT or [V6ADDR]:PORT
        #[arg(value_name = "ADDR[:PORT]")]
        address: Endpoint,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drain a backend: no new flows, open ones continue for the deregistration delay.
    Drain {
        /// The target group
        group: String,
        /// The backend: ADDR, ADDR:PORT or [V6ADDR]:PORT
        #[arg(value_name = "ADDR[:PORT]")]
        address: Endpoint,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set a backend's weight (0 sends it no new flows).
    Weight {
        /// The target group
        group: String,
        /// The backend: ADDR, ADDR:PORT or [V6ADDR]:PORT
        #[arg(value_name = "ADDR[:PORT]")]
        address: Endpoint,
        /// The new weight
        #[arg(value_name = "N")]
        weight: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Run a client command on a current-thread runtime.
fn client(socket: Option<PathBuf>, client: ClientArgs, action: Action) -> ExitCode {
    let socket = xlb::cli::socket_path(socket.as_deref(), client.config.as_deref());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xlb: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(xlb::cli::run(&socket, &action, client.json))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XLB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if cli.socket.is_some()
        && matches!(
            cli.command,
            Command::Run { .. } | Command::Check { .. } | Command::Stop { .. }
        )
    {
        eprintln!("xlb: --socket is for the client commands (status, backends, backend, reload)");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Status { client: args } => client(cli.socket, args, Action::Status),
        Command::Backends {
            group,
            client: args,
        } => client(cli.socket, args, Action::Backends { group }),
        Command::Reload { client: args } => client(cli.socket, args, Action::Reload),
        Command::Scale {
            group,
            desired,
            client: args,
        } => client(cli.socket, args, Action::Scale { group, desired }),
        Command::Events {
            group,
            client: args,
        } => client(cli.socket, args, Action::Events { group }),
        Command::Backend { command } => match command {
            BackendCommand::Add {
                group,
                address,
                weight,
                client: args,
            } => client(
                cli.socket,
                args,
                Action::AddBackend {
                    group,
                    address: address.to_string(),
                    weight,
                },
            ),
            BackendCommand::Remove {
                group,
                address,
                client: args,
            } => client(
                cli.socket,
                args,
                Action::RemoveBackend {
                    group,
                    address: address.to_string(),
                },
            ),
            BackendCommand::Drain {
                group,
                address,
                client: args,
            } => client(
                cli.socket,
                args,
                Action::DrainBackend {
                    group,
                    address: address.to_string(),
                },
            ),
            BackendCommand::Weight {
                group,
                address,
                weight,
                client: args,
            } => client(
                cli.socket,
                args,
                Action::SetWeight {
                    group,
                    address: address.to_string(),
                    weight,
                },
            ),
        },
        Command::Check { config } => match xlb::config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} services, {} target groups)",
                    config.display(),
                    cfg.services.len(),
                    cfg.target_groups.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Stop { config, cleanup } => match xlb::daemon::stop(&config, cleanup) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xlb: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("xlb: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(xlb::daemon::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xlb: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
