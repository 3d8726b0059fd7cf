//! `faultline-server`: see [`faultline_server`] and `faultline-server --help`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use faultline_device::{GuestMem, InterruptSink};
use faultline_server::backend::{device_config, DeviceFactory};
use faultline_server::cli::Args;
use faultline_server::listener::BoundSocket;
use faultline_server::server;
use faultline_server::signals::SignalFd;
use vm_memory::GuestMemoryMmap;

/// Interrupt sink for the configuration check device: drops everything.
struct NoIrq;

impl InterruptSink for NoIrq {
    fn signal(&self, _vector: u16) {}
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::new()
        .filter_level(args.log_level())
        .parse_default_env()
        .format_timestamp_micros()
        .init();

    // Block the handled signals before any other thread exists (device threads inherit the
    // mask), so they only arrive through the signalfd.
    let signals = match SignalFd::new() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot set up signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };

    if let Some(path) = &args.trace {
        faultline_device::trace::start(path.clone());
        log::info!("recording a fault timeline into {}", path.display());
    }

    let config = device_config(
        args.contexts,
        args.engines,
        args.lanes,
        args.tlb_sets,
        args.tlb_ways,
    );
    let factory = DeviceFactory::faultline(config.clone());
    // Refuse a bad configuration now rather than when the first client connects.
    match (factory.create)(GuestMem::new(GuestMemoryMmap::new()), Arc::new(NoIrq)) {
        Ok(d) => d.shutdown(),
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    }

    let bound = match (&args.socket, args.fd) {
        (Some(path), _) => BoundSocket::bind(path),
        (None, Some(fd)) => BoundSocket::from_fd(fd),
        (None, None) => {
            log::error!("--socket or --fd is required");
            return ExitCode::from(2);
        }
    };
    let socket = match bound {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "faultline-server {} starting, device {config:?}",
        env!("CARGO_PKG_VERSION")
    );
    let result = server::run(&socket, signals, factory);
    drop(socket);
    match result {
        Ok(sig) => {
            log::info!("stopped by {sig}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
