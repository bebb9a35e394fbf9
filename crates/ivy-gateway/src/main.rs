//! `ivy-gateway`: the meter gateway binary.

use clap::{Parser, Subcommand};

/// IVY meter gateway: DL/T 645 and DLMS/COSEM meters over TCP, bridged to MQTT.
#[derive(Debug, Parser)]
#[command(name = "ivy-gateway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Explain a DL/T 645 frame, wrapper packet, DLMS APDU or A-XDR value given as hex.
    Decode(ivy_gateway::decode::DecodeArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(Command::Decode(args)) => {
            ivy_gateway::decode::run(&args, &mut std::io::stdout().lock(), &mut std::io::stderr().lock())
        }
        None => {
            eprintln!("the service is not implemented yet; try `ivy-gateway decode --help`");
            2
        }
    };
    std::process::exit(code);
}
