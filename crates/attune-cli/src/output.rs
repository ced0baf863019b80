//! Where commands write: the process's stdout/stderr, or buffers in tests.

use std::io::{self, Write};

/// The two output streams of a command.
pub struct Terminal {
    pub stdout: Box<dyn Write>,
    pub stderr: Box<dyn Write>,
}

impl Terminal {
    /// The process's own stdout and stderr.
    pub fn stdio() -> Self {
        Terminal {
            stdout: Box::new(io::stdout()),
            stderr: Box::new(io::stderr()),
        }
    }

    /// Any two writers (used by tests).
    pub fn new(stdout: Box<dyn Write>, stderr: Box<dyn Write>) -> Self {
        Terminal { stdout, stderr }
    }

    /// Flushes both streams.
    pub fn flush(&mut self) -> io::Result<()> {
        self.stdout.flush()?;
        self.stderr.flush()
    }
}
