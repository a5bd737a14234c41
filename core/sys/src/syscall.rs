//! The raw `syscall` instruction, and thin typed helpers over it.
//!
//! Results follow the kernel convention: a value in `-4095..=-1` is `-errno`.

use core::arch::asm;

/// Is a raw syscall return value an error?
#[inline(always)]
pub fn is_err(ret: isize) -> bool {
    (-4095..0).contains(&ret)
}

/// A raw system call with up to six arguments.
///
/// # Safety
/// The caller must uphold the contract of the system call `n` with these
/// arguments (valid pointers, lengths, and no invalidation of memory Rust
/// still uses, e.g. by `munmap`).
#[inline(always)]
pub unsafe fn syscall6(
    n: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
    a6: usize,
) -> isize {
    let ret: isize;
    // SAFETY: the `syscall` instruction clobbers rcx and r11 only (declared);
    // arguments go in the registers the x86_64 Linux ABI prescribes; the
    // caller vouches for the call's memory effects.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a1, in("rsi") a2, in("rdx") a3,
            in("r10") a4, in("r8") a5, in("r9") a6,
            lateout("rcx") _, lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

/// A raw system call with up to three arguments.
///
/// # Safety
/// As for [`syscall6`].
#[inline(always)]
pub unsafe fn syscall3(n: usize, a1: usize, a2: usize, a3: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall6(n, a1, a2, a3, 0, 0, 0) }
}

/// Sleep `ms` milliseconds (`nanosleep(2)`, raw: no errno; an
/// interruption ends the sleep early).
pub fn sleep_ms(ms: u64) {
    let ts = [(ms / 1000) as i64, (ms % 1000) as i64 * 1_000_000];
    // SAFETY: nanosleep reads the timespec on our stack; no remainder wanted.
    unsafe { syscall3(crate::nr::NANOSLEEP, ts.as_ptr() as usize, 0, 0) };
}

/// `write(2)` of a whole buffer, retrying on short writes and EINTR.
pub fn write_all(fd: i32, mut buf: &[u8]) -> isize {
    while !buf.is_empty() {
        // SAFETY: `buf` is a live slice; write only reads it.
        let r = unsafe {
            syscall3(
                crate::nr::WRITE,
                fd as usize,
                buf.as_ptr() as usize,
                buf.len(),
            )
        };
        if r == -crate::nr::EINTR {
            continue;
        }
        if r <= 0 {
            return if r == 0 { -5 } else { r };
        }
        buf = &buf[r as usize..];
    }
    0
}

/// `read(2)` until the buffer is full; returns bytes read (short at EOF) or -errno.
pub fn read_full(fd: i32, buf: &mut [u8]) -> isize {
    // SAFETY: `buf` is a live, exclusively borrowed slice of buf.len() bytes.
    unsafe { read_full_raw(fd, buf.as_mut_ptr() as usize, buf.len()) }
}

/// `read(2)` into raw memory until `len` bytes arrived; returns bytes read or -errno.
///
/// # Safety
/// `[addr, addr+len)` must be writable memory that no Rust reference aliases.
pub unsafe fn read_full_raw(fd: i32, addr: usize, len: usize) -> isize {
    // SAFETY: the caller guarantees the destination range is writable.
    until_full(len, |done| unsafe {
        syscall3(crate::nr::READ, fd as usize, addr + done, len - done)
    })
}

/// `pread64(2)` into raw memory from offset `off` until `len` bytes
/// arrived; returns bytes read (fewer at the end of the file) or -errno.
///
/// # Safety
/// `[addr, addr+len)` must be writable memory that no Rust reference aliases.
pub unsafe fn pread_full_raw(fd: i32, addr: usize, len: usize, off: u64) -> isize {
    // SAFETY: the caller guarantees the destination range is writable.
    until_full(len, |done| unsafe {
        let at = (off + done as u64) as usize;
        syscall6(
            crate::nr::PREAD64,
            fd as usize,
            addr + done,
            len - done,
            at,
            0,
            0,
        )
    })
}

/// Call `read(done)` (one read of the bytes from `done` on) until `len`
/// bytes came, end of file, or an error other than EINTR.
fn until_full(len: usize, mut read: impl FnMut(usize) -> isize) -> isize {
    let mut done = 0usize;
    while done < len {
        let r = read(done);
        if r == -crate::nr::EINTR {
            continue;
        }
        if r < 0 {
            return r;
        }
        if r == 0 {
            break;
        }
        done += r as usize;
    }
    done as isize
}

/// Fill `buf` with random bytes from the kernel (`getrandom(2)`, blocking
/// until the pool is ready); 0 or -errno.
pub fn getrandom_full(buf: &mut [u8]) -> isize {
    let mut done = 0usize;
    while done < buf.len() {
        // SAFETY: writing within our exclusively borrowed slice.
        let r = unsafe {
            syscall3(
                crate::nr::GETRANDOM,
                buf.as_mut_ptr() as usize + done,
                buf.len() - done,
                0,
            )
        };
        if r == -crate::nr::EINTR {
            continue;
        }
        if r < 0 {
            return r;
        }
        done += r as usize;
    }
    0
}

/// Wait until `fd` is readable (or its peer hung up), at most `timeout_ms`
/// (`poll(2)`): 1 ready, 0 timed out, or -errno.
pub fn poll_in(fd: i32, timeout_ms: i32) -> isize {
    #[repr(C)]
    struct PollFd {
        fd: i32,
        events: i16,
        revents: i16,
    }
    let mut p = PollFd {
        fd,
        events: 1, // POLLIN
        revents: 0,
    };
    // SAFETY: poll reads and writes our one struct.
    unsafe {
        syscall3(
            crate::nr::POLL,
            &mut p as *mut PollFd as usize,
            1,
            timeout_ms as isize as usize,
        )
    }
}

/// The effective user id.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { syscall3(crate::nr::GETEUID, 0, 0, 0) as u32 }
}

/// The calling thread's kernel thread id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and no memory effects.
    unsafe { syscall3(crate::nr::GETTID, 0, 0, 0) as i32 }
}

/// `membarrier(cmd, 0, 0)`: 0 or -errno.
pub fn membarrier(cmd: usize) -> isize {
    // SAFETY: membarrier takes no pointers; it only orders memory.
    unsafe { syscall3(crate::nr::MEMBARRIER, cmd, 0, 0) }
}

/// The calling process's kernel pid.
pub fn getpid() -> i32 {
    // SAFETY: getpid has no arguments and no memory effects.
    unsafe { syscall3(crate::nr::GETPID, 0, 0, 0) as i32 }
}

/// Send signal `sig` to thread `tid` of thread group `tgid`.
pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> isize {
    // SAFETY: tgkill has no memory effects in the caller.
    unsafe { syscall3(crate::nr::TGKILL, tgid as usize, tid as usize, sig as usize) }
}

/// Wait on a private futex while `*word == expected`, up to `timeout_ns` (0 = forever).
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, expected: u32, timeout_ns: u64) -> isize {
    let ts = [
        (timeout_ns / 1_000_000_000) as i64,
        (timeout_ns % 1_000_000_000) as i64,
    ];
    let tsp = if timeout_ns == 0 {
        0
    } else {
        ts.as_ptr() as usize
    };
    // SAFETY: `word` is a live atomic u32; the timespec lives on our stack.
    unsafe {
        syscall6(
            crate::nr::FUTEX,
            word.as_ptr() as usize,
            crate::nr::FUTEX_WAIT_PRIVATE,
            expected as usize,
            tsp,
            0,
            0,
        )
    }
}

/// Wake up to `n` waiters of a private futex.
pub fn futex_wake(word: &core::sync::atomic::AtomicU32, n: u32) -> isize {
    // SAFETY: `word` is a live atomic u32; FUTEX_WAKE only reads its address.
    unsafe {
        syscall6(
            crate::nr::FUTEX,
            word.as_ptr() as usize,
            crate::nr::FUTEX_WAKE_PRIVATE,
            n as usize,
            0,
            0,
            0,
        )
    }
}

/// Terminate the whole process with `code`, without running any user code.
pub fn exit_group(code: i32) -> ! {
    loop {
        // SAFETY: exit_group does not return.
        unsafe {
            syscall3(crate::nr::EXIT_GROUP, code as usize, 0, 0);
        }
    }
}

/// Format `v` as decimal into `buf`, returning the used tail.
pub fn fmt_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Format `v` as lower-case hexadecimal into `buf`, returning the used tail.
pub fn fmt_hex(mut v: u64, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        let d = (v & 15) as u8;
        buf[i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Call `f` with the name of every entry of the open directory `fd`,
/// using `buf` for getdents64 (no allocation; usable while threads are
/// suspended).
pub fn for_each_dirent(fd: i32, buf: &mut [u8], mut f: impl FnMut(&[u8])) {
    loop {
        // SAFETY: getdents64 fills the caller's buffer.
        let got = unsafe {
            syscall3(
                crate::nr::GETDENTS64,
                fd as usize,
                buf.as_mut_ptr() as usize,
                buf.len(),
            )
        };
        if got <= 0 {
            return;
        }
        let mut off = 0usize;
        while off < got as usize {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let name = &buf[off + 19..off + reclen];
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            f(&name[..end]);
            off += reclen;
        }
    }
}

/// Parse a decimal directory entry name (pids, tids, fd numbers).
pub fn parse_decimal(name: &[u8]) -> Option<i32> {
    if name.is_empty() || name.len() > 9 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(name.iter().fold(0i32, |v, &c| v * 10 + (c - b'0') as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        let mut b = [0u8; 20];
        assert_eq!(fmt_u64(0, &mut b), b"0");
        assert_eq!(
            fmt_u64(18446744073709551615, &mut b),
            b"18446744073709551615"
        );
        let mut h = [0u8; 16];
        assert_eq!(fmt_hex(0x5e00_0000_0000, &mut h), b"5e0000000000");
    }

    #[test]
    fn decimal_names() {
        assert_eq!(parse_decimal(b"1234"), Some(1234));
        assert_eq!(parse_decimal(b"."), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"12a"), None);
    }

    #[test]
    fn raw_calls_match_libc_view() {
        assert!(getpid() > 0);
        assert!(gettid() > 0);
        assert!(is_err(-2));
        assert!(!is_err(5));
    }
}
