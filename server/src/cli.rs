//! Command line.

use std::path::PathBuf;

use clap::Parser;

/// vfio-user server for the faultline GPU-like PCI device.
///
/// Serves one client (a QEMU `vfio-user-pci` device) at a time on a UNIX socket; each client gets
/// a freshly reset device. SIGINT/SIGTERM stop the server and remove the socket; SIGUSR1 logs the
/// device counters.
#[derive(Debug, Parser)]
#[command(name = "faultline-server", version)]
pub struct Args {
    /// Path of the UNIX socket to listen on. A stale socket file is replaced; a socket a live
    /// server listens on is an error.
    #[arg(
        long = "socket",
        visible_alias = "socket-path",
        value_name = "PATH",
        required_unless_present = "fd",
        conflicts_with = "fd"
    )]
    pub socket: Option<PathBuf>,

    /// Listen on this inherited, already listening UNIX socket instead of a path.
    #[arg(long, value_name = "FDNUM")]
    pub fd: Option<i32>,

    /// More logging: -v debug, -vv trace (default: info). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Device address-space contexts.
    #[arg(long, value_name = "N")]
    pub contexts: Option<u16>,

    /// Device engines.
    #[arg(long, value_name = "N")]
    pub engines: Option<u8>,

    /// Lanes per engine.
    #[arg(long, value_name = "N")]
    pub lanes: Option<u16>,

    /// Device TLB sets.
    #[arg(long = "tlb-sets", value_name = "N")]
    pub tlb_sets: Option<u32>,

    /// Device TLB ways.
    #[arg(long = "tlb-ways", value_name = "N")]
    pub tlb_ways: Option<u32>,

    /// Record every message clients send into DIR (seed corpora for the fuzz targets).
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
}

impl Args {
    /// The log level selected by `-v`.
    pub fn log_level(&self) -> log::LevelFilter {
        match self.verbose {
            0 => log::LevelFilter::Info,
            1 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let a =
            Args::try_parse_from(["x", "--socket", "/tmp/s", "-vv", "--tlb-ways", "4"]).unwrap();
        assert_eq!(a.socket, Some(PathBuf::from("/tmp/s")));
        assert_eq!(a.log_level(), log::LevelFilter::Trace);
        assert_eq!(a.tlb_ways, Some(4));
        assert!(Args::try_parse_from(["x"]).is_err());
        assert_eq!(
            Args::try_parse_from(["x", "--fd", "3"]).unwrap().fd,
            Some(3)
        );
        assert!(Args::try_parse_from(["x", "--fd", "3", "--socket", "/s"]).is_err());
        assert!(Args::try_parse_from(["x", "--socket-path", "/s", "--engines", "300"]).is_err());
    }
}
