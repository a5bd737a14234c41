//! `dmtcp_restorer`: maps a checkpoint image back at its old addresses.
//!
//! `dmtcp_restart` validates the image, then replaces itself with this
//! program (`exec`), handing it a pipe fd on which it streams the memory map
//! and the memory contents (see `dmtcp_sys::restore`). This program links
//! at a fixed address inside the window every checkpointed process kept
//! reserved, uses no libc, and works in a few steps:
//!
//! 1. switch to a stack inside its own image, read the header and area table;
//! 2. unmap everything the kernel gave this process except itself and the
//!    vDSO/vvar pages; move the running kernel's vDSO/vvar onto the addresses
//!    the checkpointed process had them at (glibc caches pointers into them),
//!    or, when this kernel's vDSO differs from the image's, leave it where it
//!    is and put a proxy at the old address: a trampoline at each old entry
//!    point to the same function of the new vDSO (see `dmtcp_sys::vdso`);
//! 3. re-create every area (anonymous, or the same file at the same offset),
//!    fill it from the stream (or map raw chunks from the image, or register
//!    compressed ones with a userfaultfd it then hands to the page server,
//!    `dmtcp_restart`'s `lazy` module), give it back its protection;
//! 4. restore the kernel's brk/arg/env pointers (`PR_SET_MM_MAP`), and jump
//!    into the restored preload library's restart entry, which re-creates
//!    the threads.
//!
//! Any failure prints a message to stderr and exits with status 1: the
//! program is never half-started.
#![no_std]
#![no_main]

use core::cell::UnsafeCell;
use dmtcp_sys::nr;
use dmtcp_sys::restore::*;
use dmtcp_sys::vdso::{self, VdsoSym};
use dmtcp_sys::{is_err, syscall3, syscall6, write_all};

const MAX_AREAS: usize = 65536;
const PATH_POOL: usize = 8 << 20;
const STACK_SIZE: usize = 1 << 20;
const MAPS_BUF: usize = 256 << 10;
const DATA_EXIT: i32 = 1;

/// A statically allocated value that only the restorer's single thread touches.
#[repr(C, align(16))]
struct Bss<T>(UnsafeCell<T>);
// SAFETY: the restorer is single-threaded; nothing is shared across threads.
unsafe impl<T> Sync for Bss<T> {}
impl<T> Bss<T> {
    const fn new(v: T) -> Self {
        Bss(UnsafeCell::new(v))
    }
    fn get(&self) -> *mut T {
        self.0.get()
    }
}

#[no_mangle]
static RESTORER_STACK: Bss<[u8; STACK_SIZE]> = Bss::new([0; STACK_SIZE]);
static AREAS: Bss<[AreaDesc; MAX_AREAS]> = Bss::new(
    [AreaDesc {
        start: 0,
        len: 0,
        offset: 0,
        prot: 0,
        kind: 0,
        flags: 0,
        path_len: 0,
        fd: -1,
        _pad: 0,
    }; MAX_AREAS],
);
static PATH_AT: Bss<[u32; MAX_AREAS]> = Bss::new([0; MAX_AREAS]);
static PATHS: Bss<[u8; PATH_POOL]> = Bss::new([0; PATH_POOL]);
static MAPS: Bss<[u8; MAPS_BUF]> = Bss::new([0; MAPS_BUF]);
/// Entry points of the image's vDSO (from the stream) and of this kernel's.
static OLD_SYMS: Bss<[VdsoSym; MAX_VDSO_SYMS]> = Bss::new(
    [VdsoSym {
        offset: 0,
        name: [0; vdso::SYM_NAME_MAX],
    }; MAX_VDSO_SYMS],
);
static NEW_SYMS: Bss<[VdsoSym; MAX_VDSO_SYMS]> = Bss::new(
    [VdsoSym {
        offset: 0,
        name: [0; vdso::SYM_NAME_MAX],
    }; MAX_VDSO_SYMS],
);
/// Area indexes sorted by address (placing the vDSO in a free range).
static ORDER: Bss<[u32; MAX_AREAS + 8]> = Bss::new([0; MAX_AREAS + 8]);
static HEADER: Bss<StreamHeader> = Bss::new(StreamHeader {
    magic: 0,
    version: 0,
    n_areas: 0,
    entry: 0,
    entry_stack_top: 0,
    special: [SpecialArea { start: 0, len: 0 }; 3],
    mm: MmMap {
        start_code: 0,
        end_code: 0,
        start_data: 0,
        end_data: 0,
        start_brk: 0,
        brk: 0,
        start_stack: 0,
        arg_start: 0,
        arg_end: 0,
        env_start: 0,
        env_end: 0,
        auxv: 0,
        auxv_size: 0,
        exe_fd: 0,
    },
    args: RestartArgs {
        coord_fd: 0,
        info_fd: 0,
        flags: 0,
        lazy_fd: -1,
    },
    image_fd: -1,
    n_vdso_syms: 0,
    vdso_flags: 0,
    lazy_sock: -1,
});

core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "mov rdi, rsp",
    "lea rsp, [rip + {stack} + {size}]",
    "and rsp, -16",
    "xor ebp, ebp",
    "call {main}",
    "ud2",
    stack = sym RESTORER_STACK,
    size = const STACK_SIZE,
    main = sym restorer_main,
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    fail(b"internal error (panic)", None)
}

/// Where the restorer's messages go: the stderr `dmtcp_restart` was
/// started with (its copy, named by the second argument), not fd 2, which
/// is the restarted program's already (a log file of the program's, say).
static ERR_FD: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(2);

fn err_fd() -> i32 {
    ERR_FD.load(core::sync::atomic::Ordering::Relaxed)
}

fn fail(msg: &[u8], val: Option<u64>) -> ! {
    fail_parts(&[msg], val)
}

/// Like [`fail`], with a message in several pieces.
fn fail_parts(parts: &[&[u8]], val: Option<u64>) -> ! {
    let _ = write_all(err_fd(), b"dmtcp_restorer: ");
    for p in parts {
        let _ = write_all(err_fd(), p);
    }
    if let Some(v) = val {
        let mut b = [0u8; 16];
        let _ = write_all(err_fd(), b" 0x");
        let _ = write_all(err_fd(), dmtcp_sys::fmt_hex(v, &mut b));
    }
    let _ = write_all(err_fd(), b"\n");
    dmtcp_sys::exit_group(DATA_EXIT)
}

fn fail_err(msg: &[u8], val: u64, err: isize) -> ! {
    let _ = write_all(err_fd(), b"dmtcp_restorer: ");
    let _ = write_all(err_fd(), msg);
    let mut b = [0u8; 16];
    let _ = write_all(err_fd(), b" 0x");
    let _ = write_all(err_fd(), dmtcp_sys::fmt_hex(val, &mut b));
    let mut d = [0u8; 20];
    let _ = write_all(err_fd(), b" (errno ");
    let _ = write_all(err_fd(), dmtcp_sys::fmt_u64((-err) as u64, &mut d));
    let _ = write_all(err_fd(), b")\n");
    dmtcp_sys::exit_group(DATA_EXIT)
}

fn read_exact(fd: i32, buf: &mut [u8], what: &[u8]) {
    let r = dmtcp_sys::read_full(fd, buf);
    if r < 0 {
        fail_err(what, 0, r);
    }
    if r as usize != buf.len() {
        fail(
            b"restore stream ended early (the image is damaged; see the message above)",
            None,
        );
    }
}

fn parse_dec(s: *const u8) -> Option<i32> {
    let mut v: i32 = 0;
    let mut i = 0;
    loop {
        // SAFETY: argv strings are NUL-terminated, read until the NUL.
        let c = unsafe { *s.add(i) };
        if c == 0 {
            return if i == 0 { None } else { Some(v) };
        }
        if !c.is_ascii_digit() || i > 8 {
            return None;
        }
        v = v * 10 + (c - b'0') as i32;
        i += 1;
    }
}

fn parse_hex(s: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => break,
        };
        v = (v << 4) | d as u64;
        i += 1;
    }
    (v, i)
}

/// One line of /proc/self/maps: start, end and the name field.
fn parse_maps_line(line: &[u8]) -> (u64, u64, &[u8]) {
    let (start, n) = parse_hex(line);
    let (end, m) = parse_hex(&line[n + 1..]);
    let _ = m;
    // The name starts after the 5th field; find it by skipping fields.
    let mut fields = 0;
    let mut i = 0;
    while i < line.len() && fields < 5 {
        while i < line.len() && line[i] != b' ' {
            i += 1;
        }
        while i < line.len() && line[i] == b' ' {
            i += 1;
        }
        fields += 1;
    }
    (start, end, &line[i..])
}

extern "C" fn restorer_main(sp: *const usize) -> ! {
    // SAFETY: at process entry the kernel put argc, then argv pointers, at sp.
    let (argc, argv) = unsafe { (*sp, sp.add(1) as *const *const u8) };
    if argc < 2 {
        fail(
            b"usage: dmtcp_restorer FD [ERR_FD] (run by dmtcp_restart, not by hand)",
            None,
        );
    }
    // SAFETY: argc >= 2, so argv[1] is a valid NUL-terminated string.
    let fd = match parse_dec(unsafe { *argv.add(1) }) {
        Some(fd) => fd,
        None => fail(
            b"usage: dmtcp_restorer FD [ERR_FD] (run by dmtcp_restart, not by hand)",
            None,
        ),
    };

    if argc >= 3 {
        // SAFETY: argc >= 3, so argv[2] is a valid NUL-terminated string.
        if let Some(e) = parse_dec(unsafe { *argv.add(2) }) {
            ERR_FD.store(e, core::sync::atomic::Ordering::Relaxed);
        }
    }

    // SAFETY: single-threaded; these statics are only touched here.
    let hdr = unsafe { &mut *HEADER.get() };
    read_exact(fd, as_bytes_mut(hdr), b"reading the stream header");
    if hdr.magic != STREAM_MAGIC || hdr.version != STREAM_VERSION {
        fail(b"not a restore stream of this version", Some(hdr.magic));
    }
    let n = hdr.n_areas as usize;
    if n > MAX_AREAS {
        fail(b"too many memory areas", Some(n as u64));
    }
    // SAFETY: single-threaded access to the restorer's own tables.
    let (areas, path_at, paths) =
        unsafe { (&mut *AREAS.get(), &mut *PATH_AT.get(), &mut *PATHS.get()) };
    let mut pool = 0usize;
    for i in 0..n {
        read_exact(fd, as_bytes_mut(&mut areas[i]), b"reading the area table");
        let a = areas[i];
        let plen = pad8(a.path_len as usize);
        if a.path_len as usize > 4096 || pool + plen + 1 > PATH_POOL {
            fail(b"area path too long", Some(a.start));
        }
        read_exact(fd, &mut paths[pool..pool + plen], b"reading an area path");
        paths[pool + a.path_len as usize] = 0;
        path_at[i] = pool as u32;
        pool += plen + 1;
        if a.start % 4096 != 0 || a.len % 4096 != 0 || a.len == 0 {
            fail(b"misaligned area", Some(a.start));
        }
        if ranges_overlap(
            a.start,
            a.len,
            dmtcp_sys::RESTORER_BASE as u64,
            dmtcp_sys::RESTORER_SIZE as u64,
        ) {
            fail(
                b"an area of the image lies in the restorer window",
                Some(a.start),
            );
        }
    }

    let nv = hdr.n_vdso_syms as usize;
    if nv > MAX_VDSO_SYMS {
        fail(b"too many vDSO entry points in the stream", Some(nv as u64));
    }
    // SAFETY: single-threaded access to the restorer's own table.
    let old_syms = unsafe { &mut *OLD_SYMS.get() };
    for s in old_syms.iter_mut().take(nv) {
        read_exact(fd, as_bytes_mut(s), b"reading the vDSO entry points");
    }

    let cur = clear_address_space();
    place_special_areas(&cur, hdr, &mut old_syms[..nv], &areas[..n]);

    for i in 0..n {
        map_area(&areas[i], &paths[path_at[i] as usize..]);
    }
    let (files, n_files, uffd) = fill_from_stream(fd, hdr.image_fd);
    for a in areas.iter().take(n) {
        // SAFETY: re-protecting an area this program mapped itself.
        let r = unsafe {
            syscall3(
                nr::MPROTECT,
                a.start as usize,
                a.len as usize,
                a.prot as usize,
            )
        };
        if is_err(r) {
            fail_err(b"mprotect failed at", a.start, r);
        }
    }
    // SAFETY: closing the stream and image fds (nothing is mapped from them).
    unsafe {
        syscall3(nr::CLOSE, fd as usize, 0, 0);
        if hdr.image_fd >= 0 {
            syscall3(nr::CLOSE, hdr.image_fd as usize, 0, 0);
        }
        for &f in &files[..n_files] {
            syscall3(nr::CLOSE, f as usize, 0, 0);
        }
    }

    let mut args = hdr.args;
    args.lazy_fd = -1;
    // This restorer fills `lazy_fd` (-1 or the page server's socket).
    args.flags |= RESTART_LAZY_FD;
    if hdr.lazy_sock >= 0 {
        if uffd >= 0 {
            send_fd(hdr.lazy_sock, uffd);
            // SAFETY: the page server holds the userfaultfd now; the
            // program never sees it.
            unsafe { syscall3(nr::CLOSE, uffd as usize, 0, 0) };
            args.lazy_fd = hdr.lazy_sock;
        } else {
            // SAFETY: no page to serve: the socket is not needed.
            unsafe { syscall3(nr::CLOSE, hdr.lazy_sock as usize, 0, 0) };
        }
    }
    if hdr.mm.start_brk != 0 {
        let mut mm = hdr.mm;
        mm.auxv = 0;
        mm.auxv_size = 0;
        mm.exe_fd = u32::MAX;
        // SAFETY: PR_SET_MM_MAP reads a prctl_mm_map struct of the given size.
        let r = unsafe {
            syscall6(
                nr::PRCTL,
                nr::PR_SET_MM,
                nr::PR_SET_MM_MAP,
                &mm as *const MmMap as usize,
                core::mem::size_of::<MmMap>(),
                0,
                0,
            )
        };
        if !is_err(r) {
            args.flags |= RESTART_BRK_SET;
        }
    }

    if err_fd() != 2 {
        // SAFETY: closing dmtcp_restart's copy of its stderr: the program
        // does not inherit it.
        unsafe { syscall3(nr::CLOSE, err_fd() as usize, 0, 0) };
        ERR_FD.store(2, core::sync::atomic::Ordering::Relaxed);
    }

    let top = (hdr.entry_stack_top as usize) & !15;
    let argp = top - 64;
    // SAFETY: the entry stack lies in the restored image (the preload
    // library's bss), mapped writable a moment ago.
    unsafe { core::ptr::write(argp as *mut RestartArgs, args) };
    let entry = hdr.entry as usize;
    // SAFETY: jump into the restored library's restart entry on its own
    // stack; it never returns (it becomes the program's main thread).
    unsafe {
        core::arch::asm!(
            "mov rsp, {sp}",
            "xor ebp, ebp",
            "call {entry}",
            "ud2",
            sp = in(reg) argp - 16,
            entry = in(reg) entry,
            in("rdi") argp,
            options(noreturn)
        );
    }
}

fn ranges_overlap(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b + blen && b < a + alen
}

/// The kernel's special mappings found in this process.
struct Current {
    special: [SpecialArea; 3],
}

/// Unmap everything but this program and the special kernel mappings.
fn clear_address_space() -> Current {
    // SAFETY: single-threaded access to the maps buffer.
    let buf = unsafe { &mut *MAPS.get() };
    // SAFETY: the path is a NUL-terminated literal.
    let mfd = unsafe {
        syscall3(
            nr::OPEN,
            c"/proc/self/maps".as_ptr() as usize,
            nr::O_RDONLY,
            0,
        )
    };
    if is_err(mfd) {
        fail_err(b"cannot open /proc/self/maps", 0, mfd);
    }
    let len = dmtcp_sys::read_full(mfd as i32, &mut buf[..]);
    if len < 0 || len as usize == buf.len() {
        fail(b"cannot read /proc/self/maps", None);
    }
    // SAFETY: closing our own fd.
    unsafe { syscall3(nr::CLOSE, mfd as usize, 0, 0) };
    let mut cur = Current {
        special: [SpecialArea::default(); 3],
    };
    let text = &buf[..len as usize];
    // Collect first, unmap afterwards: the buffer is ours and stays valid.
    let mut to_unmap: [(u64, u64); 64] = [(0, 0); 64];
    let mut k = 0;
    for line in text.split(|&c| c == b'\n') {
        if line.is_empty() {
            continue;
        }
        let (start, end, name) = parse_maps_line(line);
        if let Some(i) = SPECIAL_NAMES.iter().position(|s| *s == name) {
            cur.special[i] = SpecialArea {
                start,
                len: end - start,
            };
            continue;
        }
        if name == b"[vsyscall]" || start >= 0xffff_8000_0000_0000 {
            continue;
        }
        if dmtcp_sys::in_restorer_window(start as usize, end as usize) {
            continue;
        }
        if k == to_unmap.len() {
            fail(b"too many mappings in the restorer", None);
        }
        to_unmap[k] = (start, end - start);
        k += 1;
    }
    for &(s, l) in &to_unmap[..k] {
        // SAFETY: none of these areas belongs to this program's image or
        // stack (we run on RESTORER_STACK inside the window).
        let r = unsafe { syscall3(nr::MUNMAP, s as usize, l as usize, 0) };
        if is_err(r) {
            fail_err(b"munmap failed at", s, r);
        }
    }
    cur
}

const VDSO: usize = 2;
const PAGE: u64 = 4096;
/// Highest end of a user mapping placed here (47-bit address space).
const USER_TOP: u64 = 0x7fff_ffff_f000;
/// Lowest address used for the vDSO when it has to move.
const USER_BOTTOM: u64 = 0x1_0000;
/// Room left free below a grows-down area (the stack) and above the
/// program break when the vDSO has to move, so neither loses room to grow.
const STACK_ROOM: u64 = 256 << 20;
const BRK_ROOM: u64 = 1 << 30;

/// Put this kernel's [vvar], [vvar_vclock] and [vdso] where the image needs
/// them: onto the image's addresses when the layout and entry points match
/// (glibc keeps pointers into the vDSO); otherwise (or when the stream
/// forces it) leave them out of the image's way and build a proxy at the
/// old vDSO's address that sends each old entry point to the new vDSO.
fn place_special_areas(
    cur: &Current,
    hdr: &StreamHeader,
    old_syms: &mut [VdsoSym],
    areas: &[AreaDesc],
) {
    let old = &hdr.special;
    if old[VDSO].start == 0 {
        // The image had no vDSO: drop ours so it cannot collide.
        for s in cur.special.iter().filter(|s| s.start != 0) {
            // SAFETY: unmapping a kernel special mapping nothing here uses.
            unsafe { syscall3(nr::MUNMAP, s.start as usize, s.len as usize, 0) };
        }
        return;
    }
    for o in old.iter().filter(|o| o.start != 0) {
        if ranges_overlap(
            o.start,
            o.len,
            dmtcp_sys::RESTORER_BASE as u64,
            dmtcp_sys::RESTORER_SIZE as u64,
        ) {
            fail(
                b"the image's vDSO lies in the restorer window",
                Some(o.start),
            );
        }
    }
    let have_vdso = cur.special[VDSO].start != 0;
    // SAFETY: single-threaded access to the restorer's own table.
    let new_syms = unsafe { &mut *NEW_SYMS.get() };
    let (n_new, unreadable) = if have_vdso {
        read_entry_points(cur.special[VDSO], new_syms)
    } else {
        (0, None)
    };
    let layout = have_vdso && same_layout(cur, old);
    // Entry points unknown on either side: the layout alone decides.
    let entries = old_syms.is_empty()
        || unreadable.is_some()
        || vdso::same_entry_points(old_syms, &new_syms[..n_new]);
    let forced = hdr.vdso_flags & VDSO_FORCE_PROXY != 0;
    if layout && entries && !forced {
        move_specials(cur, old[VDSO].start.wrapping_sub(cur.special[VDSO].start));
        return;
    }
    if old_syms.is_empty() {
        if forced && layout {
            fail(b"DMTCP_RESTORE_VDSO_PROXY: the image records no vDSO entry points, no proxy can be built", None);
        }
        if !have_vdso {
            fail(b"this kernel gives no [vdso], the image needs one", None);
        }
        fail(
            b"the vDSO/vvar of this kernel differs in size or layout from the checkpointed one, and the image does not \
              record the old vDSO's entry points (made by an older version, or a thread stayed inside the vDSO at checkpoint time): \
              restart on the kernel the image was made on",
            None,
        );
    }
    if let Some(e) = unreadable {
        fail_parts(
            &[b"this kernel's vDSO cannot be read: ", e.as_bytes()],
            None,
        );
    }
    // The new vDSO stays where it is unless it is in the image's way.
    let delta = if have_vdso {
        out_of_the_way(cur, hdr, areas)
    } else {
        0
    };
    if delta != 0 {
        move_specials(cur, delta);
    }
    let new_vdso = if have_vdso {
        cur.special[VDSO].start.wrapping_add(delta)
    } else {
        0
    };
    build_vdso_proxy(
        old[VDSO],
        old_syms,
        &new_syms[..n_new],
        new_vdso,
        hdr.vdso_flags,
        forced,
        delta != 0,
    );
}

/// Do this kernel's special areas have the sizes and relative places the image's had?
fn same_layout(cur: &Current, old: &[SpecialArea; 3]) -> bool {
    let delta = old[VDSO].start.wrapping_sub(cur.special[VDSO].start);
    (0..3).all(|i| {
        let (c, o) = (cur.special[i], old[i]);
        (c.start == 0) == (o.start == 0)
            && c.len == o.len
            && (c.start == 0 || o.start.wrapping_sub(c.start) == delta)
    })
}

/// Read this kernel's vDSO entry points into `out`: (count, error).
fn read_entry_points(
    v: SpecialArea,
    out: &mut [VdsoSym; MAX_VDSO_SYMS],
) -> (usize, Option<&'static str>) {
    // SAFETY: the kernel's [vdso] mapping of this process, readable and
    // never written; it is not moved or unmapped while the slice lives.
    let image = unsafe { core::slice::from_raw_parts(v.start as *const u8, v.len as usize) };
    let mut n = 0;
    let mut overflow = false;
    let r = vdso::for_each_function(image, |name, off| {
        // Names too long for a record are left out: old entry points of that
        // name then get a stub (the image could not record them either).
        if let Some(s) = VdsoSym::new(name, off) {
            if n < out.len() {
                out[n] = s;
                n += 1;
            } else {
                overflow = true;
            }
        }
    });
    match r {
        Err(e) => (0, Some(e)),
        Ok(_) if overflow => (0, Some("it exports too many functions")),
        Ok(_) => (n, None),
    }
}

/// Move every special area of this kernel by `delta`.
fn move_specials(cur: &Current, delta: u64) {
    if delta == 0 {
        return;
    }
    // Move the farthest one first in the direction of travel so a move never
    // lands on a mapping not yet moved.
    let mut order = [0usize, 1, 2];
    order.sort_unstable_by_key(|&i| cur.special[i].start);
    if (delta as i64) > 0 {
        order.reverse();
    }
    for &i in &order {
        let c = cur.special[i];
        if c.start == 0 {
            continue;
        }
        let to = c.start.wrapping_add(delta);
        // SAFETY: moving a kernel special mapping to a range that nothing
        // else occupies (the address space was cleared, and the target
        // range was chosen free of the image's areas).
        let r = unsafe {
            syscall6(
                nr::MREMAP,
                c.start as usize,
                c.len as usize,
                c.len as usize,
                nr::MREMAP_MAYMOVE | nr::MREMAP_FIXED,
                to as usize,
                0,
            )
        };
        if is_err(r) {
            fail_err(b"cannot move the vDSO/vvar to", to, r);
        }
    }
}

/// Ranges the new vDSO/vvar must keep clear of: `n_areas` areas of the
/// image (with room for the stack to grow), then the extras.
struct Busy<'a> {
    areas: &'a [AreaDesc],
    extra: [(u64, u64); 8],
    n_extra: usize,
}

impl Busy<'_> {
    fn len(&self) -> usize {
        self.areas.len() + self.n_extra
    }
    /// Range `i` as [start, end).
    fn get(&self, i: usize) -> (u64, u64) {
        match self.areas.get(i) {
            Some(a) if a.flags & AREA_GROWSDOWN != 0 => {
                (a.start.saturating_sub(STACK_ROOM), a.start + a.len)
            }
            Some(a) => (a.start, a.start + a.len),
            None => self
                .extra
                .get(i - self.areas.len())
                .copied()
                .unwrap_or((0, 0)),
        }
    }
    fn push(&mut self, start: u64, end: u64) {
        if self.n_extra < self.extra.len() && end > start {
            self.extra[self.n_extra] = (start, end);
            self.n_extra += 1;
        }
    }
}

/// How far this kernel's special areas must move to be out of the way of
/// the image's areas, its old vDSO/vvar and the restorer window (0: they
/// are already). Picks the highest free range that fits.
fn out_of_the_way(cur: &Current, hdr: &StreamHeader, areas: &[AreaDesc]) -> u64 {
    let present = cur.special.iter().filter(|s| s.start != 0);
    let lo = present.clone().map(|s| s.start).min().unwrap_or(0);
    let hi = present.map(|s| s.start + s.len).max().unwrap_or(0);
    let mut busy = Busy {
        areas,
        extra: [(0, 0); 8],
        n_extra: 0,
    };
    for o in hdr.special.iter().filter(|o| o.start != 0) {
        busy.push(o.start, o.start + o.len);
    }
    busy.push(
        dmtcp_sys::RESTORER_BASE as u64,
        (dmtcp_sys::RESTORER_BASE + dmtcp_sys::RESTORER_SIZE) as u64,
    );
    if hdr.mm.start_brk != 0 {
        busy.push(
            hdr.mm.start_brk,
            hdr.mm.brk.max(hdr.mm.start_brk).saturating_add(BRK_ROOM),
        );
    }
    let clear = (0..busy.len()).all(|i| {
        let (s, e) = busy.get(i);
        !ranges_overlap(lo.saturating_sub(PAGE), hi - lo + 2 * PAGE, s, e - s)
    });
    if clear {
        return 0;
    }
    // The current place counts as taken: a move cannot overlap itself.
    busy.push(lo, hi);
    let n = busy.len();
    // SAFETY: single-threaded access to the restorer's own table.
    let order = unsafe { &mut *ORDER.get() };
    if n > order.len() {
        fail(b"too many areas to place the vDSO", None);
    }
    for (i, o) in order.iter_mut().take(n).enumerate() {
        *o = i as u32;
    }
    order[..n].sort_unstable_by_key(|&i| busy.get(i as usize).0);
    let need = (hi - lo) + 2 * PAGE;
    let mut prev_end = USER_BOTTOM;
    let mut best = None;
    for &i in &order[..n] {
        let (s, e) = busy.get(i as usize);
        if s > prev_end && s - prev_end >= need && s <= USER_TOP {
            best = Some(s - PAGE - (hi - lo));
        }
        prev_end = prev_end.max(e);
    }
    if USER_TOP > prev_end && USER_TOP - prev_end >= need {
        best = Some(USER_TOP - PAGE - (hi - lo));
    }
    match best {
        Some(base) => base.wrapping_sub(lo),
        None => fail(b"no free address range for this kernel's vDSO", None),
    }
}

/// Map the proxy over the old vDSO's range `ov`: trampolines from its entry
/// points `old_syms` to those of the new vDSO at `new_vdso` (0: none).
fn build_vdso_proxy(
    ov: SpecialArea,
    old_syms: &mut [VdsoSym],
    new_syms: &[VdsoSym],
    new_vdso: u64,
    flags: u32,
    forced: bool,
    moved: bool,
) {
    // SAFETY: a fresh anonymous mapping at the old vDSO's range, which no
    // area of the image and no moved special area occupies
    // (MAP_FIXED_NOREPLACE refuses it otherwise).
    let r = unsafe {
        syscall6(
            nr::MMAP,
            ov.start as usize,
            ov.len as usize,
            nr::PROT_READ | nr::PROT_WRITE,
            nr::MAP_PRIVATE | nr::MAP_ANONYMOUS | nr::MAP_FIXED_NOREPLACE,
            usize::MAX,
            0,
        )
    };
    if is_err(r) || r as u64 != ov.start {
        fail_err(b"cannot map the vDSO proxy at", ov.start, r);
    }
    // SAFETY: the mapping just made, ov.len bytes, read-write, ours alone.
    let bytes = unsafe { core::slice::from_raw_parts_mut(ov.start as *mut u8, ov.len as usize) };
    let stubs = flags & VDSO_FORCE_STUBS != 0 || new_vdso == 0;
    let lookup = |name: &[u8]| {
        if stubs {
            return None;
        }
        new_syms
            .iter()
            .find(|s| s.name() == name)
            .map(|s| new_vdso.wrapping_add(s.offset))
    };
    let st = match vdso::build_proxy(old_syms, lookup, bytes, ov.start) {
        Ok(st) => st,
        Err(e) => fail_parts(
            &[
                b"cannot build the vDSO proxy: ",
                e.what.as_bytes(),
                b": ",
                e.sym.name(),
                b" at offset",
            ],
            Some(e.sym.offset),
        ),
    };
    // SAFETY: protecting the mapping made above.
    let r = unsafe {
        syscall3(
            nr::MPROTECT,
            ov.start as usize,
            ov.len as usize,
            nr::PROT_READ | nr::PROT_EXEC,
        )
    };
    if is_err(r) {
        fail_err(b"cannot protect the vDSO proxy at", ov.start, r);
    }
    // A name in /proc/<pid>/maps, where the kernel supports it (best effort).
    // SAFETY: PR_SET_VMA_ANON_NAME reads the NUL-terminated name.
    unsafe {
        syscall6(
            nr::PRCTL,
            PR_SET_VMA,
            PR_SET_VMA_ANON_NAME,
            ov.start as usize,
            ov.len as usize,
            c"dmtcp vdso proxy".as_ptr() as usize,
            0,
        )
    };
    let mut b = [0u8; 16];
    let mut d = [0u8; 20];
    let _ = write_all(err_fd(), b"dmtcp_restorer: vDSO proxy at 0x");
    let _ = write_all(err_fd(), dmtcp_sys::fmt_hex(ov.start, &mut b));
    let _ = write_all(
        2,
        if forced {
            b" (forced): "
        } else {
            b" (this kernel's vDSO differs from the image's): "
        },
    );
    let _ = write_all(err_fd(), dmtcp_sys::fmt_u64(st.redirected as u64, &mut d));
    let _ = write_all(err_fd(), b" entry points redirected to the vDSO at 0x");
    let _ = write_all(err_fd(), dmtcp_sys::fmt_hex(new_vdso, &mut b));
    let _ = write_all(
        2,
        if moved {
            b" (moved out of the image's way), " as &[u8]
        } else {
            b", "
        },
    );
    let _ = write_all(err_fd(), dmtcp_sys::fmt_u64(st.syscalls as u64, &mut d));
    let _ = write_all(err_fd(), b" system-call stubs, ");
    let _ = write_all(err_fd(), dmtcp_sys::fmt_u64(st.enosys as u64, &mut d));
    let _ = write_all(err_fd(), b" -ENOSYS stubs\n");
}

const PR_SET_VMA: usize = 0x5356_4d41;
const PR_SET_VMA_ANON_NAME: usize = 0;

fn map_area(a: &AreaDesc, path: &[u8]) {
    let rw = nr::PROT_READ | nr::PROT_WRITE;
    let mut flags = nr::MAP_FIXED_NOREPLACE;
    if a.flags & AREA_GROWSDOWN != 0 {
        flags |= nr::MAP_GROWSDOWN;
    }
    let (fd, prot) = match a.kind {
        KIND_ANON_PRIVATE => {
            flags |= nr::MAP_PRIVATE | nr::MAP_ANONYMOUS | nr::MAP_NORESERVE;
            (-1isize, if a.prot == 0 { 0 } else { rw })
        }
        KIND_ANON_SHARED if a.fd >= 0 => {
            // The object the other processes of the job map too.
            flags |= nr::MAP_SHARED;
            (a.fd as isize, rw)
        }
        KIND_ANON_SHARED => {
            flags |= nr::MAP_SHARED | nr::MAP_ANONYMOUS;
            (-1, rw)
        }
        KIND_FILE_PRIVATE | KIND_FILE_SHARED => {
            let shared = a.kind == KIND_FILE_SHARED;
            let saved = shared && a.flags & AREA_SAVED != 0;
            let writable = shared && (saved || a.prot as usize & nr::PROT_WRITE != 0);
            let mode = if writable { nr::O_RDWR } else { nr::O_RDONLY };
            // SAFETY: `path` is NUL-terminated (the pool adds a NUL).
            let fd = unsafe { syscall3(nr::OPEN, path.as_ptr() as usize, mode | nr::O_CLOEXEC, 0) };
            if is_err(fd) {
                let _ = write_all(err_fd(), b"dmtcp_restorer: cannot open ");
                let _ = write_all(err_fd(), &path[..a.path_len as usize]);
                fail_err(b", mapped by the program at", a.start, fd);
            }
            flags |= if shared {
                nr::MAP_SHARED
            } else {
                nr::MAP_PRIVATE
            };
            // Saved contents are written in before the area gets its protection.
            (
                fd,
                if shared && !saved {
                    a.prot as usize
                } else {
                    rw
                },
            )
        }
        _ => fail(b"unknown area kind at", Some(a.start)),
    };
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the
    // address space holds only this program and the special mappings.
    let r = unsafe {
        syscall6(
            nr::MMAP,
            a.start as usize,
            a.len as usize,
            prot,
            flags,
            fd as usize,
            a.offset as usize,
        )
    };
    if fd >= 0 && a.kind != KIND_ANON_SHARED {
        // SAFETY: closing the fd we opened.
        unsafe { syscall3(nr::CLOSE, fd as usize, 0, 0) };
    }
    if is_err(r) {
        if r == -nr::EEXIST {
            fail(b"address collision re-creating the area at", Some(a.start));
        }
        fail_err(b"cannot map the area at", a.start, r);
    }
    if r as u64 != a.start {
        fail(b"the kernel placed an area elsewhere:", Some(a.start));
    }
}

/// Send `fd` to the page server over the socket `sock` (`SCM_RIGHTS`).
fn send_fd(sock: i32, fd: i32) {
    #[repr(C)]
    struct MsgHdr {
        name: usize,
        namelen: u32,
        _pad: u32,
        iov: usize,
        iovlen: usize,
        control: usize,
        controllen: usize,
        flags: i32,
        _pad2: u32,
    }
    #[repr(C)]
    struct Cmsg {
        len: usize,
        level: i32,
        kind: i32,
        fd: i32,
        _pad: u32,
    }
    let byte = [b'U'];
    let iov = [byte.as_ptr() as usize, 1usize];
    let cm = Cmsg {
        len: 20,
        level: 1, // SOL_SOCKET
        kind: 1,  // SCM_RIGHTS
        fd,
        _pad: 0,
    };
    let mh = MsgHdr {
        name: 0,
        namelen: 0,
        _pad: 0,
        iov: iov.as_ptr() as usize,
        iovlen: 1,
        control: &cm as *const Cmsg as usize,
        controllen: core::mem::size_of::<Cmsg>(),
        flags: 0,
        _pad2: 0,
    };
    // SAFETY: sendmsg reads the header, the one-byte iovec and the control
    // message above, all alive for the call.
    let r = unsafe { syscall3(nr::SENDMSG, sock as usize, &mh as *const MsgHdr as usize, 0) };
    if r != 1 {
        fail_err(
            b"cannot hand the userfaultfd to the page server on fd",
            sock as u64,
            r,
        );
    }
}

/// Register `run` (start, length; nothing if empty) for missing pages with
/// the userfaultfd of the lazy restore, opened on first use.
fn register_run(uffd: &mut i32, run: (u64, u64)) {
    if run.1 == 0 {
        return;
    }
    if *uffd < 0 {
        let u = dmtcp_sys::uffd::open();
        if is_err(u) {
            fail_err(
                b"userfaultfd is not available for a lazy restore (set DMTCP_RESTART_EAGER=1); fd",
                0,
                u,
            );
        }
        *uffd = u as i32;
    }
    let r = dmtcp_sys::uffd::register(*uffd, run.0, run.1);
    if is_err(r) {
        fail_err(
            b"cannot register for a lazy restore the memory at",
            run.0,
            r,
        );
    }
}

/// Fill the areas from the stream. Returns the files `REC_FILE` records
/// named (to be closed once everything is mapped), how many, and the
/// userfaultfd the `REC_UFFD` ranges are registered with (-1: none).
fn fill_from_stream(fd: i32, image_fd: i32) -> ([i32; MAX_STREAM_FILES], usize, i32) {
    let mut files = [-1i32; MAX_STREAM_FILES];
    let mut n_files = 0;
    let mut map_fd = image_fd;
    let mut uffd = -1i32;
    // Adjacent `REC_UFFD` ranges (one per 64 KiB chunk) are registered as
    // one run: one system call (and one change of the mappings) per run
    // instead of one per chunk (16,384 for 1 GiB).
    let mut run = (0u64, 0u64);
    loop {
        let mut rec = DataRecord::default();
        read_exact(fd, as_bytes_mut(&mut rec), b"reading a data record");
        if rec.kind == REC_ABORT {
            // dmtcp_restart has said what is wrong with the image.
            dmtcp_sys::exit_group(DATA_EXIT);
        }
        if rec.len == 0 {
            register_run(&mut uffd, run);
            return (files, n_files, uffd);
        }
        if rec.kind == REC_FILE {
            map_fd = rec.file_off as i32;
            if map_fd != image_fd && !files[..n_files].contains(&map_fd) {
                if n_files == MAX_STREAM_FILES {
                    fail(b"too many image files in the restore stream", None);
                }
                files[n_files] = map_fd;
                n_files += 1;
            }
            continue;
        }
        if ranges_overlap(
            rec.addr,
            rec.len,
            dmtcp_sys::RESTORER_BASE as u64,
            dmtcp_sys::RESTORER_SIZE as u64,
        ) {
            fail(b"data record aimed at the restorer window", Some(rec.addr));
        }
        if rec.kind == REC_UFFD {
            // Filled on demand by the page server (checked by the streamer, or
            // with `--verify on-fill` by the server as it reads the chunk).
            if run.1 > 0 && run.0 + run.1 == rec.addr {
                run.1 += rec.len;
            } else {
                register_run(&mut uffd, run);
                run = (rec.addr, rec.len);
            }
            continue;
        }
        if rec.kind == REC_READ {
            // Read from the image file into place (checked by the streamer
            // where it lies).
            // SAFETY: the record's range lies in an area mapped writable
            // above; the kernel reports EFAULT (not a crash) if it does not.
            let r = unsafe {
                dmtcp_sys::pread_full_raw(map_fd, rec.addr as usize, rec.len as usize, rec.file_off)
            };
            if r < 0 {
                fail_err(b"cannot read image contents into", rec.addr, r);
            }
            if r as u64 != rec.len {
                fail(
                    b"the image file ended early (it was cut short after it was checked)",
                    Some(rec.addr),
                );
            }
            continue;
        }
        if rec.kind != REC_DATA {
            fail(b"unknown record kind in the restore stream", Some(rec.kind));
        }
        // SAFETY: the record's range lies in an area mapped writable above;
        // the kernel reports EFAULT (not a crash) if it does not.
        let r = unsafe { dmtcp_sys::read_full_raw(fd, rec.addr as usize, rec.len as usize) };
        if r < 0 {
            fail_err(b"cannot read memory contents into", rec.addr, r);
        }
        if r as u64 != rec.len {
            fail(
                b"restore stream ended early (the image is damaged; see the message above)",
                None,
            );
        }
    }
}

// The compiler lowers copies and fills to calls of these symbols, which libc
// normally provides. They are written with string instructions so the
// compiler cannot turn them back into calls to themselves.

/// # Safety
/// Standard C `memcpy` contract.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: caller guarantees valid, non-overlapping ranges of n bytes.
    unsafe {
        core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _, options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// Standard C `memmove` contract.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: forward copy is correct when dst does not start inside src.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: backward copy with the direction flag set, restored after.
    unsafe {
        core::arch::asm!(
            "std", "rep movsb", "cld",
            inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
            options(nostack)
        );
    }
    dst
}

/// # Safety
/// Standard C `memset` contract.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: caller guarantees a valid range of n bytes.
    unsafe {
        core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8, options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// Standard C `memcmp` contract.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: caller guarantees both ranges hold n readable bytes.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// Standard C `bcmp` contract.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the precompiled `core` (built for unwinding); never called,
/// since the workspace builds with panic=abort.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
