//! `libdmtcp_ib.so`: the InfiniBand plugin of DMTCP-rs.
//!
//! Loaded by `dmtcp_launch --ib` after `libdmtcp.so`, it stands between a
//! verbs program and its `libibverbs.so.1`: every verbs object the program
//! gets is a shadow (context, PD, MR, completion channel, CQ, SRQ, QP, AH)
//! whose `ops` are the plugin's, so the inline verbs (`ibv_post_send`,
//! `ibv_post_recv`, `ibv_poll_cq`, `ibv_req_notify_cq`, `ibv_post_srq_recv`)
//! land here too. Ids the program sees (QP numbers, lkeys/rkeys, LIDs, GIDs)
//! stay those of the first run; at a checkpoint the plugin drains the
//! device into its own memory (which is in the image), at a restart it
//! re-creates every object on the new device, exchanges the new ids with
//! the peers through the coordinator's name service and reconnects the QPs.
//! It speaks only the public verbs API and the public plugin interface
//! (include/dmtcp.h), found at run time (`dlvsym`/`dlsym`).
//!
//! See docs/ib-plugin.md. `sys` holds the FFI lookups, `shadow` the
//! exported verbs, `ckpt` the checkpoint and restart work.

#![allow(clippy::missing_safety_doc)]

mod ffi {
    #![allow(
        non_camel_case_types,
        non_snake_case,
        non_upper_case_globals,
        dead_code,
        unsafe_op_in_unsafe_fn
    )]
    #![allow(clippy::all, clippy::undocumented_unsafe_blocks)]
    include!(concat!(env!("OUT_DIR"), "/verbs.rs"));
}

mod ckpt;
mod shadow;
mod sys;

use std::ffi::{c_char, c_int, c_void};

/// `DmtcpPluginDescriptor_t` of include/dmtcp.h.
#[repr(C)]
pub(crate) struct PluginDescriptor {
    api_version: *const c_char,
    dmtcp_version: *const c_char,
    name: *const c_char,
    author: *const c_char,
    email: *const c_char,
    description: *const c_char,
    event_hook: extern "C" fn(c_int, *mut c_void),
}

// Layout of the C struct: seven pointers.
const _: () = assert!(std::mem::size_of::<PluginDescriptor>() == 7 * 8);
const _: () = assert!(std::mem::offset_of!(PluginDescriptor, event_hook) == 6 * 8);

struct SyncDescr(PluginDescriptor);
// SAFETY: immutable static data (string literals and a function pointer).
unsafe impl Sync for SyncDescr {}

static DESCR: SyncDescr = SyncDescr(PluginDescriptor {
    api_version: c"1".as_ptr(),
    dmtcp_version: c"DMTCP-rs".as_ptr(),
    name: c"infiniband".as_ptr(),
    author: c"DMTCP-rs".as_ptr(),
    email: c"".as_ptr(),
    description: c"InfiniBand verbs: drain at checkpoint, rebuild and reconnect at restart"
        .as_ptr(),
    event_hook,
});

// Event numbers of DmtcpEvent_t.
const EV_PRESUSPEND: c_int = 3;
const EV_PRECHECKPOINT: c_int = 4;
const EV_RESUME: c_int = 5;
const EV_RESTART: c_int = 6;

extern "C" fn event_hook(ev: c_int, data: *mut c_void) {
    // DmtcpEventData_t: ckptInfo = { int isRestart; int generation; ... },
    // the round's generation for PRESUSPEND, PRECHECKPOINT, RESUME, RESTART.
    let generation = || {
        if data.is_null() {
            0
        } else {
            // SAFETY: the engine passes its event data (never NULL for
            // these events); generation is its second int.
            unsafe { *(data as *const c_int).add(1) }
        }
    };
    match ev {
        EV_PRESUSPEND => ckpt::presuspend(generation()),
        EV_PRECHECKPOINT => ckpt::precheckpoint(),
        EV_RESUME => ckpt::resume(),
        EV_RESTART => ckpt::restart(generation()),
        _ => {}
    }
}

extern "C" fn register() {
    if let Some(e) = sys::engine() {
        // SAFETY: a static descriptor of the C layout.
        unsafe { (e.register_plugin)(&DESCR.0) };
    }
}

#[used]
#[link_section = ".init_array"]
static REGISTER: extern "C" fn() = register;

/// A line to stderr when DMTCP_IB_DEBUG is set (restart details).
pub(crate) fn debug(f: impl FnOnce() -> String) {
    if std::env::var_os("DMTCP_IB_DEBUG").is_some_and(|v| !v.is_empty() && v != "0") {
        say(&f());
    }
}

/// One line to stderr, prefixed.
pub(crate) fn say(msg: &str) {
    let line = format!("dmtcp_ib: {msg}\n");
    sys::write_err(line.as_bytes());
}
