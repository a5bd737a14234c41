//! One logging scheme for the preload library and the tools.
//!
//! - Levels: `error`, `warn`, `info` (a tool's notes), `debug`, `trace`.
//! - The level: `DMTCP_LOG` (a level name or 1-5), default `info`; a
//!   tool's `-v`/`--verbose` raises it (and exports `DMTCP_LOG`, so the
//!   processes it starts log the same), `-q` lowers it (as `DMTCP_QUIET`
//!   does for the library).
//! - stderr: a tool prints what its level lets through, with its own
//!   prefix (`dmtcp_restart: ...`); the library prints only warnings and
//!   errors, since stderr is the program's (`[dmtcp PID] warning: ...`).
//! - A log file per process, as DMTCP has, when `DMTCP_LOG` is set (or a
//!   tool runs with `-v`): everything the level lets through, appended to
//!   `$DMTCP_TMPDIR` (else `$TMPDIR`, else /tmp) `/dmtcp-<user>@<host>/
//!   <name>.<pid>.log`, opened and closed for each line (so forks and
//!   restarts need nothing).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering::Relaxed};
use std::sync::OnceLock;

/// How much to say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl Level {
    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Off,
            1 => Level::Error,
            2 => Level::Warn,
            3 => Level::Info,
            4 => Level::Debug,
            _ => Level::Trace,
        }
    }

    /// A level as `DMTCP_LOG` gives it: a name or a number.
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "off" | "0" | "none" => Level::Off,
            "error" | "1" => Level::Error,
            "warn" | "warning" | "2" => Level::Warn,
            "info" | "3" => Level::Info,
            "debug" | "4" => Level::Debug,
            "trace" | "5" => Level::Trace,
            _ => return None,
        })
    }

    /// Its name (also what `DMTCP_LOG` takes).
    pub fn name(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }
}

/// The environment variable of the level.
pub const ENV: &str = "DMTCP_LOG";

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static TOOL: AtomicBool = AtomicBool::new(true);
static FILE: AtomicBool = AtomicBool::new(false);
static SETUP: OnceLock<Setup> = OnceLock::new();
/// Where the stderr lines go (2 unless [`keep_stderr`] moved them).
static STDERR: AtomicI32 = AtomicI32::new(2);

/// Keep this process's stderr at fd `at` (a close-on-exec copy) and write
/// the lines there from now on: for `dmtcp_restart`, whose fd 2 becomes
/// the restarted program's before it is done. False (and lines stay on
/// fd 2) where the copy cannot be made.
pub fn keep_stderr(at: i32) -> bool {
    // SAFETY: dup3 of our own fd 2 onto `at`, which nothing else of this
    // process uses.
    if unsafe { libc::dup3(2, at, libc::O_CLOEXEC) } != at {
        return false;
    }
    STDERR.store(at, Relaxed);
    true
}

/// The fd this process's stderr lines go to (2, or where [`keep_stderr`]
/// kept it).
pub fn stderr_fd() -> i32 {
    STDERR.load(Relaxed)
}

/// Put the stderr [`keep_stderr`] kept back at fd 2 and write the lines
/// there again (a process forked from `dmtcp_restart` that will not be
/// the program: the page server).
pub fn restore_stderr() {
    let at = STDERR.load(Relaxed);
    // SAFETY: dup2 of the fd keep_stderr made onto fd 2 of this process,
    // which is not the program's.
    if at != 2 && unsafe { libc::dup2(at, 2) } == 2 {
        // SAFETY: closing our own copy.
        unsafe { libc::close(at) };
        STDERR.store(2, Relaxed);
    }
}

struct Setup {
    /// What stderr lines start with (`dmtcp_restart: `, `[dmtcp_coordinator] `),
    /// empty for the library (which prefixes its pid itself).
    prefix: String,
    /// The file name's first part (the tool's or the program's name).
    name: String,
}

/// Set up a tool's logging after its options are parsed: `verbose` and
/// `quiet` are the counts of `-v` and `-q`.
pub fn init_tool(name: &str, prefix: &str, verbose: u8, quiet: u8) {
    let env = std::env::var(ENV).ok();
    let base = env.as_deref().and_then(Level::parse).unwrap_or(Level::Info) as u8;
    let level = Level::from_u8((base + verbose).saturating_sub(quiet).min(5));
    LEVEL.store(level as u8, Relaxed);
    TOOL.store(true, Relaxed);
    FILE.store(env.is_some() || verbose > 0, Relaxed);
    let _ = SETUP.set(Setup {
        prefix: prefix.to_string(),
        name: name.to_string(),
    });
    if verbose > 0 {
        // The processes this tool starts (and the library in them) log
        // alike. Tools set it at start-up, before any thread exists.
        std::env::set_var(ENV, level.name());
    }
}

/// Set up the library's logging (at start-up): `quiet` is DMTCP_QUIET.
pub fn init_library(program: &str, quiet: u8) {
    let env = std::env::var(ENV).ok();
    let base = env.as_deref().and_then(Level::parse).unwrap_or(Level::Info) as u8;
    LEVEL.store(base.saturating_sub(quiet), Relaxed);
    TOOL.store(false, Relaxed);
    FILE.store(env.is_some(), Relaxed);
    let _ = SETUP.set(Setup {
        prefix: String::new(),
        name: program.to_string(),
    });
}

/// The level now.
pub fn level() -> Level {
    Level::from_u8(LEVEL.load(Relaxed))
}

/// Would a message at `l` go anywhere?
pub fn enabled(l: Level) -> bool {
    l != Level::Off && l <= level()
}

/// The directory of the log files.
pub fn dir() -> std::path::PathBuf {
    let base = std::env::var_os(crate::env::TMPDIR)
        .or_else(|| std::env::var_os("TMPDIR"))
        .unwrap_or_else(|| "/tmp".into());
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let user = std::env::var("USER").unwrap_or_else(|_| uid.to_string());
    std::path::PathBuf::from(base).join(format!("dmtcp-{user}@{}", crate::hostname()))
}

/// This process's log file (whether or not it is written).
pub fn file() -> std::path::PathBuf {
    let name = SETUP.get().map_or("dmtcp", |s| s.name.as_str());
    dir().join(format!("{name}.{}.log", std::process::id()))
}

/// Say `args` at level `l`: on stderr as the scheme says (see the module),
/// and into the log file when there is one.
pub fn log(l: Level, args: std::fmt::Arguments) {
    if !enabled(l) {
        return;
    }
    let tool = TOOL.load(Relaxed);
    if tool || l <= Level::Warn {
        let line = if tool {
            let prefix = SETUP.get().map_or("", |s| s.prefix.as_str());
            format!("{prefix}{args}\n")
        } else {
            let word = match l {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                _ => "",
            };
            format!("[dmtcp {}] {word}{args}\n", std::process::id())
        };
        write_fd(STDERR.load(Relaxed), line.as_bytes());
    }
    if FILE.load(Relaxed) {
        to_file(l, args);
    }
}

fn to_file(l: Level, args: std::fmt::Arguments) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let d = dir();
    let _ = std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&d);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let line = format!(
        "{}.{:03} {} {}\n",
        t.as_secs(),
        t.subsec_millis(),
        l.name(),
        args
    );
    if let Ok(f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(file())
    {
        use std::os::fd::AsRawFd;
        write_fd(f.as_raw_fd(), line.as_bytes());
    }
}

/// One write(2) (or as few as it takes), no stdio buffer or lock.
fn write_fd(fd: i32, mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: writing our own bytes to an fd.
        let n = unsafe { libc::write(fd, b.as_ptr() as *const libc::c_void, b.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        b = &b[n as usize..];
    }
}

/// An error, on stderr and in the log file.
#[macro_export]
macro_rules! log_error { ($($a:tt)*) => { $crate::log::log($crate::log::Level::Error, format_args!($($a)*)) } }
/// A warning.
#[macro_export]
macro_rules! log_warn { ($($a:tt)*) => { $crate::log::log($crate::log::Level::Warn, format_args!($($a)*)) } }
/// A note (a tool shows it unless `-q`; the library only logs it to its file).
#[macro_export]
macro_rules! log_info { ($($a:tt)*) => { $crate::log::log($crate::log::Level::Info, format_args!($($a)*)) } }
/// Detail for `-v` / `DMTCP_LOG=debug`.
#[macro_export]
macro_rules! log_debug { ($($a:tt)*) => { $crate::log::log($crate::log::Level::Debug, format_args!($($a)*)) } }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_by_name_and_number() {
        assert_eq!(Level::parse("debug"), Some(Level::Debug));
        assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
        assert_eq!(Level::parse("5"), Some(Level::Trace));
        assert_eq!(Level::parse("loud"), None);
        for l in [
            Level::Off,
            Level::Error,
            Level::Warn,
            Level::Info,
            Level::Debug,
            Level::Trace,
        ] {
            assert_eq!(Level::parse(l.name()), Some(l));
        }
    }
}
