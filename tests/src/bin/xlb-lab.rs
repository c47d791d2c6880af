//! `xlb-lab serve --name NAME [--http PORT]... [--udp PORT]... [--echo PORT]... [--udp-bind ADDR:PORT]...`: the lab
//! servers a backend runs (see `xlb_lab::server`).

use clap::{Parser, Subcommand};
use xlb_lab::server::{self, ServeConfig};

#[derive(Parser)]
#[command(about = "xlb lab servers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve HTTP, UDP and TCP echo, answering with NAME, until killed.
    Serve {
        /// Name carried by every answer.
        #[arg(long)]
        name: String,
        /// HTTP port: `GET /` answers NAME, `GET /health` 200 or 503 (`POST /health/fail|ok`).
        #[arg(long = "http", value_name = "PORT")]
        http: Vec<u16>,
        /// UDP port: any datagram is answered with NAME.
        #[arg(long = "udp", value_name = "PORT")]
        udp: Vec<u16>,
        /// TCP echo port.
        #[arg(long = "echo", value_name = "PORT")]
        echo: Vec<u16>,
        /// UDP on one address (a DSR backend's VIP), answered as `--udp`.
        #[arg(long = "udp-bind", value_name = "ADDR:PORT")]
        udp_bind: Vec<std::net::SocketAddr>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve {
            name,
            http,
            udp,
            echo,
            udp_bind,
        } => server::run(&ServeConfig {
            name,
            http,
            udp,
            echo,
            udp_bind,
        }),
    }
}
