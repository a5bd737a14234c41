//! The stream `dmtcp_restart` feeds the restorer through a pipe.
//!
//! Layout: one [`StreamHeader`], then `n_areas` × ([`AreaDesc`] followed by
//! `path_len` bytes of path padded to a multiple of 8), then `n_vdso_syms`
//! × [`crate::vdso::VdsoSym`] (the old vDSO's entry points), then any number of
//! [`DataRecord`]s each followed by `len` bytes of memory contents, closed by
//! a record with `len == 0`. All integers are native-endian (x86_64).

/// "DMTCPRST" in little-endian: marks a restore stream.
pub const STREAM_MAGIC: u64 = u64::from_le_bytes(*b"DMTCPRST");
/// Version of this stream layout.
pub const STREAM_VERSION: u32 = 6;

/// Area kinds.
pub const KIND_ANON_PRIVATE: u32 = 0;
/// Anonymous shared memory (re-created, not yet shared across processes).
pub const KIND_ANON_SHARED: u32 = 1;
/// Private mapping of a file that still exists: re-mapped, written pages overlaid.
pub const KIND_FILE_PRIVATE: u32 = 2;
/// Shared mapping of a file: re-mapped, contents live in the file.
pub const KIND_FILE_SHARED: u32 = 3;

/// Area flag: the mapping grows down (the main stack).
pub const AREA_GROWSDOWN: u32 = 1;
/// A shared file mapping whose contents are in the image (POSIX shared
/// memory under /dev/shm): written back into the file at restart.
pub const AREA_SAVED: u32 = 2;

/// A special kernel mapping at checkpoint time ([vvar], [vvar_vclock], [vdso]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialArea {
    /// Start address (0 when absent).
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// `struct prctl_mm_map` of `<linux/prctl.h>`, for `PR_SET_MM_MAP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: u64,
    pub auxv_size: u32,
    pub exe_fd: u32,
}

/// What the restorer hands to the restart entry of the restored library.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RestartArgs {
    /// Socket already connected to the coordinator (or -1).
    pub coord_fd: i32,
    /// Readable fd holding the restart info (JSON), or -1.
    pub info_fd: i32,
    /// `RESTART_BRK_SET` when `PR_SET_MM_MAP` succeeded.
    pub flags: u32,
    /// Socket to the page server of a lazy restore of compressed chunks
    /// (see [`REC_UFFD`]), or -1: the restored library asks it for every
    /// page still missing and waits for the answer before a fork or a
    /// checkpoint.
    pub lazy_fd: i32,
}

/// Flag of [`RestartArgs::flags`]: the kernel's brk/arg/env pointers were restored.
pub const RESTART_BRK_SET: u32 = 1;
/// Flag of [`RestartArgs::flags`] set by `dmtcp_restart`: the process runs in
/// a fresh pid namespace where threads can get their old ids back.
pub const RESTART_SET_TID: u32 = 2;
/// Flag of [`RestartArgs::flags`] set by a restorer that knows
/// [`RestartArgs::lazy_fd`] (a restorer of before the lazy restore wrote a
/// shorter struct: the library must not take what follows it for a socket).
pub const RESTART_LAZY_FD: u32 = 4;

/// The kernel's `struct clone_args` (clone3), up to `cgroup` (version 2, 88 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}
const _: () = assert!(core::mem::size_of::<CloneArgs>() == 88);
const _: () = assert!(core::mem::offset_of!(CloneArgs, set_tid) == 64);

/// First record of the stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamHeader {
    pub magic: u64,
    pub version: u32,
    pub n_areas: u32,
    /// Address of `dmtcp_restart_entry` in the restored library.
    pub entry: u64,
    /// Top of the stack the entry runs on (inside the restored image).
    pub entry_stack_top: u64,
    /// [vvar], [vvar_vclock], [vdso] of the checkpointed process.
    pub special: [SpecialArea; 3],
    pub mm: MmMap,
    pub args: RestartArgs,
    /// The image, readable, for `REC_READ` records (-1 if none).
    pub image_fd: i32,
    /// Records of the old vDSO's entry points after the area table (0: the
    /// image recorded none, so only a vDSO of the same layout will do).
    pub n_vdso_syms: u32,
    /// `VDSO_*` flags.
    pub vdso_flags: u32,
    /// Unix socket to the page server (-1: no [`REC_UFFD`] records): the
    /// restorer sends its userfaultfd there (`SCM_RIGHTS`), and hands the
    /// socket on to the restored library as [`RestartArgs::lazy_fd`].
    pub lazy_sock: i32,
}

/// Most old vDSO entry points a stream may carry.
pub const MAX_VDSO_SYMS: usize = 256;
/// Flag of [`StreamHeader::vdso_flags`]: build the vDSO proxy even when the
/// running kernel's vDSO has the image's layout (for tests).
pub const VDSO_FORCE_PROXY: u32 = 1;
/// Flag of [`StreamHeader::vdso_flags`]: in the proxy, stub every entry
/// point with its system call, as if the new vDSO lacked them all (tests).
pub const VDSO_FORCE_STUBS: u32 = 2;

/// One memory area to re-create.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AreaDesc {
    pub start: u64,
    pub len: u64,
    /// File offset for file mappings.
    pub offset: u64,
    /// PROT_* bits.
    pub prot: u32,
    /// One of the `KIND_*` values.
    pub kind: u32,
    /// `AREA_*` flags.
    pub flags: u32,
    /// Length of the path that follows (0 for anonymous areas).
    pub path_len: u32,
    /// Shared anonymous areas: an fd of the restorer holding the shared
    /// object to map (-1: a fresh one).
    pub fd: i32,
    pub _pad: u32,
}

/// Record kind: memory contents follow in the stream.
pub const REC_DATA: u64 = 0;
// Kind 1 was a mapping of the range from the image file (until stream
// version 5): nothing is mapped from an image any more.
/// Record kind: the streamer found the image damaged and said so; the
/// restorer exits with status 1 without a message of its own. (Its `len`
/// is not 0, so that it never reads as the end of the stream.)
pub const REC_ABORT: u64 = 2;
/// Record kind: the `REC_READ` records that follow read from the file open
/// at fd `file_off` (an earlier image an incremental one refers to, or the
/// image itself again); the restorer closes it at the end. `len` is not 0.
pub const REC_FILE: u64 = 3;
/// Record kind: the range `[addr, addr + len)` (inside an anonymous private
/// area) is filled later, on demand, by the page server (its compressed
/// chunk was checked already): the restorer registers it with a
/// userfaultfd (missing pages) instead of writing it. `file_off` unused.
pub const REC_UFFD: u64 = 4;
/// Record kind: read the range's contents from the image (or the file the
/// last `REC_FILE` named) at `file_off` into the range (the chunk's
/// stored bytes were checked there already). Memory is not mapped from the
/// image: after `madvise(MADV_DONTNEED)` a private mapping of the image
/// would show the image's bytes where anonymous memory reads zeros (and
/// glibc's `calloc` expects them) and a private file mapping its file's
/// bytes, and `mremap` would grow it with the image's next bytes.
pub const REC_READ: u64 = 5;
/// Most files a stream's `REC_FILE` records may name.
pub const MAX_STREAM_FILES: usize = 65;

/// Header of a block of memory contents in the stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataRecord {
    pub addr: u64,
    /// Bytes of memory; 0 ends the stream.
    pub len: u64,
    /// `REC_DATA`, `REC_READ`, ...
    pub kind: u64,
    /// Offset in the image file (`REC_READ`).
    pub file_off: u64,
}

/// Names of the special areas, in the order of [`StreamHeader::special`].
pub const SPECIAL_NAMES: [&[u8]; 3] = [b"[vvar]", b"[vvar_vclock]", b"[vdso]"];

/// Round `n` up to a multiple of 8.
pub const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

// Compile-time layout checks: these structs cross a process boundary
// (written by dmtcp_restart, read by the restorer) and one is a kernel ABI.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<MmMap>() == 104);
    assert!(offset_of!(MmMap, auxv) == 88);
    assert!(offset_of!(MmMap, exe_fd) == 100);
    assert!(size_of::<SpecialArea>() == 16);
    assert!(size_of::<RestartArgs>() == 16);
    assert!(size_of::<StreamHeader>() == 8 + 4 + 4 + 8 + 8 + 48 + 104 + 16 + 16);
    assert!(size_of::<AreaDesc>() == 48);
    assert!(size_of::<DataRecord>() == 32);
};

/// View a plain-old-data value as bytes.
pub fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is Copy, repr(C) plain data in every use here (no padding
    // with uninitialised bytes: all structs above are fully packed by their
    // field order, checked by the size assertions).
    unsafe { core::slice::from_raw_parts(v as *const T as *const u8, core::mem::size_of::<T>()) }
}

/// View a plain-old-data value as mutable bytes.
pub fn as_bytes_mut<T: Copy>(v: &mut T) -> &mut [u8] {
    // SAFETY: as above; every bit pattern is valid for these integer-only structs.
    unsafe { core::slice::from_raw_parts_mut(v as *mut T as *mut u8, core::mem::size_of::<T>()) }
}
