//! Messages to stderr, written with one write(2) (no stdio, no locks).

use core::sync::atomic::{AtomicI32, Ordering};

/// Quietness: 0 normal, 1 no notes, 2 no warnings.
pub static QUIET: AtomicI32 = AtomicI32::new(0);

fn emit(level: &str, args: core::fmt::Arguments) {
    let msg = format!("[dmtcp {}] {level}{args}\n", std::process::id());
    let _ = dmtcp_sys::write_all(2, msg.as_bytes());
}

/// A warning (hidden by -q -q).
pub fn warn(args: core::fmt::Arguments) {
    if QUIET.load(Ordering::Relaxed) < 2 {
        emit("warning: ", args);
    }
}

/// An error (always shown).
pub fn error(args: core::fmt::Arguments) {
    emit("error: ", args);
}
