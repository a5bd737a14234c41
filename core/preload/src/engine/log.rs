//! The library's messages, in the scheme of `dmtcp_common::log`: warnings
//! and errors on the program's stderr (`[dmtcp PID] warning: ...`), and
//! everything the level lets through in the process's log file when
//! `DMTCP_LOG` is set. Not for signal handlers (it formats into a String).

use dmtcp_common::log::{log, Level};

/// Start-up: the level from `DMTCP_LOG` and `DMTCP_QUIET` (1: no notes,
/// 2: no warnings either).
pub fn init(program: &str, quiet: u8) {
    dmtcp_common::log::init_library(program, quiet);
}

/// A warning (hidden by -q -q).
pub fn warn(args: core::fmt::Arguments) {
    log(Level::Warn, args);
}

/// An error.
pub fn error(args: core::fmt::Arguments) {
    log(Level::Error, args);
}

/// A note: the log file only.
pub fn info(args: core::fmt::Arguments) {
    log(Level::Info, args);
}

/// Detail for `DMTCP_LOG=debug`: the log file only.
pub fn debug(args: core::fmt::Arguments) {
    log(Level::Debug, args);
}
