//! `--record DIR`: every message a client sends, written as received (header and payload; file
//! descriptors are not recorded) to `DIR/conn<N>-<part>.bin`, a new part every
//! [`MESSAGES_PER_PART`] messages. Each part is a valid message stream on its own, the seed format
//! of the `session_stream` fuzz target (`fuzz/`).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Messages per file.
pub const MESSAGES_PER_PART: u64 = 64;

static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// The recording of one connection.
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    conn: u64,
    messages: u64,
    file: Option<File>,
}

impl Recorder {
    /// Records the next connection into `dir` (created if missing).
    pub fn new(dir: &Path) -> io::Result<Recorder> {
        std::fs::create_dir_all(dir)?;
        Ok(Recorder {
            dir: dir.to_path_buf(),
            conn: CONNECTIONS.fetch_add(1, Ordering::Relaxed),
            messages: 0,
            file: None,
        })
    }

    /// Appends one complete message.
    pub fn record(&mut self, message: &[u8]) {
        if let Err(e) = self.write(message) {
            log::warn!("--record: {e}; recording stopped");
            self.messages = u64::MAX;
        }
    }

    fn write(&mut self, message: &[u8]) -> io::Result<()> {
        if self.messages == u64::MAX {
            return Ok(());
        }
        if self.messages % MESSAGES_PER_PART == 0 {
            let part = self.messages / MESSAGES_PER_PART;
            let path = self.dir.join(format!("conn{}-{part:05}.bin", self.conn));
            self.file = Some(File::create(path)?);
        }
        self.messages += 1;
        match &mut self.file {
            Some(f) => f.write_all(message),
            None => Ok(()),
        }
    }
}
