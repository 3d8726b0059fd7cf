//! `faultline-server`: see [`faultline_server`] and `faultline-server --help`.

use std::process::ExitCode;

use clap::Parser;
use faultline_server::backend::{device_config, DeviceFactory};
use faultline_server::cli::Args;
use faultline_server::limits;
use faultline_server::listener::BoundSocket;
use faultline_server::server;
use faultline_server::signals::SignalFd;

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

    let config = device_config(
        args.contexts,
        args.engines,
        args.lanes,
        args.tlb_sets,
        args.tlb_ways,
    );
    // Refuse a bad configuration now rather than when the first client connects (checked, not
    // built: a device starts engines × lanes threads).
    if let Err(e) = config.validate() {
        log::error!("{e}");
        return ExitCode::from(2);
    }
    let mut factory = DeviceFactory::faultline(config.clone());
    // Every device-visible DMA region holds a descriptor: allow as many as the hard limit lets
    // us, and advertise no more regions than the descriptors left.
    let nofile = match limits::raise_nofile() {
        Ok(n) => n,
        Err(e) => {
            log::warn!("cannot read RLIMIT_NOFILE: {e}");
            1024
        }
    };
    let open = limits::open_fds().unwrap_or(16);
    factory.max_dma_maps = limits::max_dma_maps(nofile, open);
    log::info!(
        "RLIMIT_NOFILE {nofile}, {open} descriptors open: max_dma_maps {}",
        factory.max_dma_maps
    );

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
    let result = server::run(&socket, signals, factory, args.record.as_deref());
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
