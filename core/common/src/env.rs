//! Environment variable names and defaults, as DMTCP users know them.

/// Coordinator host (default localhost).
pub const COORD_HOST: &str = "DMTCP_COORD_HOST";
/// Coordinator port (default 7779).
pub const COORD_PORT: &str = "DMTCP_COORD_PORT";
/// Checkpoint directory (default: the current directory at launch).
pub const CKPT_DIR: &str = "DMTCP_CHECKPOINT_DIR";
/// Checkpoint interval in seconds (0 = only on request).
pub const CKPT_INTERVAL: &str = "DMTCP_CHECKPOINT_INTERVAL";
/// Compress images (1/0).
pub const GZIP: &str = "DMTCP_GZIP";
/// Temporary directory.
pub const TMPDIR: &str = "DMTCP_TMPDIR";
/// Quietness level.
pub const QUIET: &str = "DMTCP_QUIET";
/// Extra plugins, colon separated absolute paths.
pub const PLUGIN: &str = "DMTCP_PLUGIN";
/// Checkpoint signal number (default SIGUSR2).
pub const CKPT_SIGNAL: &str = "DMTCP_CKPT_SIGNAL";
/// Internal: the library to preload, set by dmtcp_launch.
pub const LIB: &str = "DMTCP_LIB";
/// Internal: disabled plugin names, comma separated.
pub const DISABLED_PLUGINS: &str = "DMTCP_DISABLED_PLUGINS";
/// Save the contents of open regular files (`dmtcp_launch --ckpt-open-files`).
pub const CKPT_OPEN_FILES: &str = "DMTCP_CKPT_OPEN_FILES";
/// Committed checkpoint generations to keep (`--keep-generations`, default 2; 0 = all).
pub const KEEP_GENERATIONS: &str = "DMTCP_KEEP_GENERATIONS";
/// Incremental images (`dmtcp_launch --incremental`, on by default): an
/// image holds only the chunks that changed since the previous generation.
/// `0` (`dmtcp_launch --no-incremental`): off, every image full, whatever
/// [`FULL_EVERY`] says.
pub const INCREMENTAL: &str = "DMTCP_INCREMENTAL";
/// With incremental images, every Nth image of a process is full (default
/// [`DEFAULT_FULL_EVERY`]); 1: every image full (off); 0: full only when it
/// must be.
pub const FULL_EVERY: &str = "DMTCP_FULL_EVERY";
/// Default of [`FULL_EVERY`] when incremental images are on.
pub const DEFAULT_FULL_EVERY: u32 = 8;
/// Seconds the coordinator waits for every process of a round to suspend
/// before it gives the round up (`dmtcp_coordinator --suspend-timeout`,
/// default 120).
pub const SUSPEND_TIMEOUT: &str = "DMTCP_SUSPEND_TIMEOUT";
/// Forked checkpointing: a forked child writes the image while the
/// program goes on. Unset or `auto` (the default): when the node has the
/// memory for it; 1 (`dmtcp_launch --forked-ckpt`): always; 0
/// (`--no-forked-ckpt`): never.
pub const FORKED_CKPT: &str = "DMTCP_FORKED_CKPT";
/// MiB that forked writers of the user may add on the node at most (a cap
/// on the room measured from MemAvailable and the memory cgroup).
pub const FORKED_CKPT_MEM: &str = "DMTCP_FORKED_CKPT_MEM";
/// DMTCP's own name for [`FORKED_CKPT`] (read too).
pub const FORKED_CKPT_DMTCP: &str = "DMTCP_FORKED_CHECKPOINT";
/// Internal: number of writer threads per process.
pub const WRITERS: &str = "DMTCP_WRITERS";
/// Image write streams (writer threads) at once per node and user, over
/// all processes (default twice the cores, at least 4; 0: no limit).
pub const NODE_STREAMS: &str = "DMTCP_NODE_STREAMS";
/// Where the slot files of [`NODE_STREAMS`] are (default /dev/shm).
pub const NODE_STREAMS_DIR: &str = "DMTCP_NODE_STREAMS_DIR";

/// Default coordinator port.
pub const DEFAULT_PORT: u16 = 7779;
/// Default checkpoint signal (SIGUSR2).
pub const DEFAULT_CKPT_SIGNAL: i32 = 12;

/// Parse a boolean-ish environment value as DMTCP does ("0" is false).
pub fn truthy(v: &str) -> bool {
    !matches!(v.trim(), "" | "0" | "no" | "false")
}
/// File holding the coordinator's secret (`--secret-file`): a coordinator
/// started with it uses the secret in it (writing a new one if the file
/// does not exist); the tools and the library answer its challenge with it.
pub const SECRET_FILE: &str = "DMTCP_SECRET_FILE";
/// Internal: `<fd>,<pid>`, the inherited descriptor (a pipe) the library
/// of process `<pid>` reads the coordinator's secret from at start-up; set
/// by dmtcp_launch and by the library's own exec wrappers, never holding
/// the secret itself.
pub const SECRET_FD: &str = "DMTCP_SECRET_FD";
