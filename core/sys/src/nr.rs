//! x86_64 system call numbers and the constants the raw paths need.
#![allow(missing_docs)]

pub const READ: usize = 0;
pub const POLL: usize = 7;
pub const GETRANDOM: usize = 318;
pub const GETEUID: usize = 107;
pub const WRITE: usize = 1;
pub const OPEN: usize = 2;
pub const CLOSE: usize = 3;
pub const FSTAT: usize = 5;
pub const LSEEK: usize = 8;
pub const MMAP: usize = 9;
pub const MPROTECT: usize = 10;
pub const MUNMAP: usize = 11;
pub const RT_SIGACTION: usize = 13;
pub const RT_SIGPROCMASK: usize = 14;
pub const RT_SIGPENDING: usize = 127;
pub const RT_SIGTIMEDWAIT: usize = 128;
pub const RT_SIGQUEUEINFO: usize = 129;
pub const RT_TGSIGQUEUEINFO: usize = 297;
pub const TIMER_CREATE: usize = 222;
pub const TIMER_SETTIME: usize = 223;
pub const TIMER_GETTIME: usize = 224;
pub const TIMER_DELETE: usize = 226;
pub const PREAD64: usize = 17;
pub const PWRITE64: usize = 18;
pub const MREMAP: usize = 25;
pub const MINCORE: usize = 27;
pub const NANOSLEEP: usize = 35;
pub const DUP2: usize = 33;
pub const DUP3: usize = 292;
pub const IOCTL: usize = 16;
pub const SENDMSG: usize = 46;
pub const O_NONBLOCK: usize = 0o4000;
pub const GETPID: usize = 39;
pub const CLONE: usize = 56;
pub const CLONE3: usize = 435;
pub const CLOSE_RANGE: usize = 436;
pub const EXIT: usize = 60;
pub const KILL: usize = 62;
pub const FCNTL: usize = 72;
pub const SIGALTSTACK: usize = 131;
pub const PRCTL: usize = 157;
pub const ARCH_PRCTL: usize = 158;
pub const GETTID: usize = 186;
pub const FUTEX: usize = 202;
pub const MEMBARRIER: usize = 324;
pub const GETDENTS64: usize = 217;
pub const SET_TID_ADDRESS: usize = 218;
pub const EXIT_GROUP: usize = 231;
pub const TGKILL: usize = 234;
pub const SET_ROBUST_LIST: usize = 273;
pub const GET_ROBUST_LIST: usize = 274;
pub const RSEQ: usize = 334;

pub const PROT_NONE: usize = 0;
pub const PROT_READ: usize = 1;
pub const PROT_WRITE: usize = 2;
pub const PROT_EXEC: usize = 4;

pub const MAP_SHARED: usize = 0x01;
pub const MAP_PRIVATE: usize = 0x02;
pub const MAP_FIXED: usize = 0x10;
pub const MAP_ANONYMOUS: usize = 0x20;
pub const MAP_GROWSDOWN: usize = 0x0100;
pub const MAP_NORESERVE: usize = 0x4000;
pub const MAP_FIXED_NOREPLACE: usize = 0x10_0000;

pub const MREMAP_MAYMOVE: usize = 1;
pub const MREMAP_FIXED: usize = 2;

pub const O_RDONLY: usize = 0;
pub const O_RDWR: usize = 2;
pub const O_CLOEXEC: usize = 0o2_000_000;
pub const O_CREAT: usize = 0o100;

pub const FLOCK: usize = 73;
pub const LOCK_EX: usize = 2;
pub const LOCK_NB: usize = 4;

pub const ARCH_SET_FS: usize = 0x1002;
pub const ARCH_GET_FS: usize = 0x1003;

pub const PR_SET_NAME: usize = 15;
pub const PR_SET_MM: usize = 35;
pub const PR_SET_MM_MAP: usize = 14;
pub const PR_GET_TID_ADDRESS: usize = 40;

pub const FUTEX_WAIT_PRIVATE: usize = 128;
pub const FUTEX_WAKE_PRIVATE: usize = 129;
/// membarrier(2) commands.
pub const MEMBARRIER_CMD_GLOBAL: usize = 1;
pub const MEMBARRIER_CMD_PRIVATE_EXPEDITED: usize = 8;
pub const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: usize = 16;

pub const CLONE_VM: usize = 0x100;
pub const CLONE_FS: usize = 0x200;
pub const CLONE_FILES: usize = 0x400;
pub const CLONE_SIGHAND: usize = 0x800;
pub const CLONE_THREAD: usize = 0x10000;
pub const CLONE_SYSVSEM: usize = 0x40000;
pub const CLONE_SETTLS: usize = 0x80000;
pub const CLONE_PARENT_SETTID: usize = 0x100000;
pub const CLONE_CHILD_CLEARTID: usize = 0x200000;

pub const EINTR: isize = 4;
pub const EAGAIN: isize = 11;
pub const EEXIST: isize = 17;
pub const ENOENT: isize = 2;
pub const GETPPID: usize = 110;
