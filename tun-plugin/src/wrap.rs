//! The one function the plugin interposes: `ioctl`. Requests other than
//! the tun ones ('T', 200..=227) and vhost-net's backend pass straight to
//! libc's at the cost of one comparison. Tun settings the kernel cannot be
//! asked for later (owner, group, link type, offloads, filters, carrier,
//! queue detaching) are recorded after the kernel accepted them; reading
//! the program's argument is done here, the bookkeeping in `state`.

use crate::state::{self, Setting};
use crate::sys;
use std::ffi::{c_int, c_ulong, c_void};

/// `_IOW(0xAF, 0x30, struct vhost_vring_file)`: VHOST_NET_SET_BACKEND.
const VHOST_NET_SET_BACKEND: c_ulong = 0x4008_af30;

/// # Safety
/// As libc's `ioctl`: `arg` is what the request expects.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
    let ty = (req >> 8) & 0xff;
    let nr = req & 0xff;
    if ty == b'T' as c_ulong && nr >= 200 {
        // SAFETY: forwarded as the program passed it.
        return unsafe { tun_ioctl(fd, req, arg) };
    }
    if req == VHOST_NET_SET_BACKEND {
        crate::say_once(
            &state::VHOST_SAID,
            "vhost-net is not supported under checkpointing (the kernel would carry the tap \
             device's packets where no checkpoint sees them); refused with EOPNOTSUPP: run \
             without vhost (QEMU: -netdev tap,...,vhost=off) or launch with --disable-tun-plugin \
             and do not checkpoint",
        );
        sys::set_errno(libc::EOPNOTSUPP);
        return -1;
    }
    // SAFETY: forwarded as the program passed it.
    unsafe { sys::real_ioctl(fd, req, arg) }
}

/// A tun request: refused, or passed on and then recorded.
///
/// # Safety
/// As `ioctl`.
unsafe fn tun_ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
    if req == libc::TUNSETSTEERINGEBPF || req == libc::TUNSETFILTEREBPF {
        // SAFETY: these requests take a pointer to an int (a BPF program fd, -1 to detach).
        if !arg.is_null() && unsafe { sys::read_int(arg) } >= 0 {
            crate::say_once(
                &state::EBPF_SAID,
                "eBPF steering and filter programs on tun devices are not supported under \
                 checkpointing (refused with EOPNOTSUPP)",
            );
            sys::set_errno(libc::EOPNOTSUPP);
            return -1;
        }
    }
    const RECORDED: [c_ulong; 9] = [
        libc::TUNSETOWNER,
        libc::TUNSETGROUP,
        libc::TUNSETLINK,
        libc::TUNSETOFFLOAD,
        libc::TUNSETTXFILTER,
        libc::TUNATTACHFILTER,
        libc::TUNDETACHFILTER,
        libc::TUNSETCARRIER,
        libc::TUNSETQUEUE,
    ];
    if !RECORDED.contains(&req) {
        // SAFETY: forwarded as the program passed it.
        return unsafe { sys::real_ioctl(fd, req, arg) };
    }
    let _hold = state::Hold::new();
    // Detaching a queue: its device's name must be read before.
    let before = (req == libc::TUNSETQUEUE)
        .then(|| state::name_of(fd))
        .flatten();
    // SAFETY: forwarded as the program passed it.
    let r = unsafe { sys::real_ioctl(fd, req, arg) };
    if r < 0 {
        return r;
    }
    let errno = sys::errno();
    let s = match req {
        libc::TUNSETOWNER => Some(Setting::Owner(arg as c_ulong)),
        libc::TUNSETGROUP => Some(Setting::Group(arg as c_ulong)),
        libc::TUNSETLINK => Some(Setting::Link(arg as c_ulong)),
        libc::TUNSETOFFLOAD => Some(Setting::Offload(arg as c_ulong)),
        libc::TUNSETTXFILTER => {
            // SAFETY: a struct tun_filter {u16 flags; u16 count; u8 addr[count][6]}
            // the kernel just read.
            let head = unsafe { sys::read_bytes(arg, 4) };
            let count = u16::from_ne_bytes([head[2], head[3]]) as usize;
            // SAFETY: as above, with its addresses.
            Some(Setting::TxFilter(unsafe {
                sys::read_bytes(arg, 4 + 6 * count)
            }))
        }
        // SAFETY: a struct sock_fprog the kernel just accepted.
        libc::TUNATTACHFILTER => Some(Setting::Filter(Some(unsafe { sys::read_fprog(arg) }))),
        libc::TUNDETACHFILTER => Some(Setting::Filter(None)),
        // SAFETY: a pointer to an int.
        libc::TUNSETCARRIER => Some(Setting::Carrier(unsafe { sys::read_int(arg) })),
        libc::TUNSETQUEUE => {
            // SAFETY: a struct ifreq; only its flags are read.
            let b = unsafe { sys::read_bytes(arg, sys::IFREQ_SIZE) };
            Some(Setting::Queue(i16::from_ne_bytes([b[16], b[17]]), before))
        }
        _ => None,
    };
    if let Some(s) = s {
        state::record(fd, s);
    }
    sys::set_errno(errno);
    r
}
