//! Fd numbers the preload library and `dmtcp_restart` keep for themselves.

/// First fd number the library keeps for itself (its wrappers keep the
/// program off these numbers).
pub const PROTECTED_FD_BASE: i32 = 820;
/// How many fd numbers from [`PROTECTED_FD_BASE`] on are the library's.
pub const PROTECTED_FD_COUNT: i32 = 10;
/// Where `dmtcp_restart` keeps its own stderr (close-on-exec) while it
/// puts the program's fds in place, fd 2 among them: its messages from
/// then on, and those of the page server it leaves behind, still reach
/// the user who ran it, not the program's stderr. One of the library's
/// numbers, so no fd of the program is put there.
pub const RESTART_STDERR_FD: i32 = PROTECTED_FD_BASE + PROTECTED_FD_COUNT - 1;
