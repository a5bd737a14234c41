//! The exported symbols, each with rdma-core v44's version node.
//!
//! Rust cannot name a symbol version, so each export is a one-instruction
//! trampoline in assembly (`jmp` to the Rust function) carrying a `.symver`
//! directive; build.rs gives the linker the version nodes.
//!
//! Debian's binaries are linked with BIND_NOW, so every symbol they (and the
//! provider libraries perftest links, libmlx5 and libefa) import must exist,
//! including the private ones providers use. Those the device has no use for
//! are stubs that fail with EOPNOTSUPP and say so once on stderr.

use crate::{strings, verbs};

macro_rules! export {
    ($( $f:path => $name:literal @ $ver:literal ),* $(,)?) => {
        $(
            std::arch::global_asm!(
                concat!(".globl softib_x_", $name),
                concat!(".type softib_x_", $name, ",@function"),
                concat!("softib_x_", $name, ":"),
                "jmp {f}",
                concat!(".symver softib_x_", $name, ", ", $name, "@@", $ver),
                f = sym $f,
            );
        )*
    };
}

export! {
    verbs::get_device_list => "ibv_get_device_list" @ "IBVERBS_1.1",
    verbs::free_device_list => "ibv_free_device_list" @ "IBVERBS_1.1",
    verbs::get_device_name => "ibv_get_device_name" @ "IBVERBS_1.1",
    verbs::get_device_guid => "ibv_get_device_guid" @ "IBVERBS_1.1",
    verbs::get_device_index => "ibv_get_device_index" @ "IBVERBS_1.9",
    verbs::open_device => "ibv_open_device" @ "IBVERBS_1.1",
    verbs::close_device => "ibv_close_device" @ "IBVERBS_1.1",
    verbs::query_device => "ibv_query_device" @ "IBVERBS_1.1",
    verbs::query_port => "ibv_query_port" @ "IBVERBS_1.1",
    verbs::query_gid => "ibv_query_gid" @ "IBVERBS_1.1",
    verbs::query_gid_ex => "_ibv_query_gid_ex" @ "IBVERBS_1.11",
    verbs::query_gid_table => "_ibv_query_gid_table" @ "IBVERBS_1.11",
    verbs::query_gid_type => "ibv_query_gid_type" @ "IBVERBS_PRIVATE_34",
    verbs::query_pkey => "ibv_query_pkey" @ "IBVERBS_1.1",
    verbs::get_pkey_index => "ibv_get_pkey_index" @ "IBVERBS_1.5",
    verbs::alloc_pd => "ibv_alloc_pd" @ "IBVERBS_1.1",
    verbs::dealloc_pd => "ibv_dealloc_pd" @ "IBVERBS_1.1",
    verbs::reg_mr => "ibv_reg_mr" @ "IBVERBS_1.1",
    verbs::reg_mr_iova => "ibv_reg_mr_iova" @ "IBVERBS_1.7",
    verbs::reg_mr_iova2 => "ibv_reg_mr_iova2" @ "IBVERBS_1.8",
    verbs::dereg_mr => "ibv_dereg_mr" @ "IBVERBS_1.1",
    verbs::create_comp_channel => "ibv_create_comp_channel" @ "IBVERBS_1.0",
    verbs::destroy_comp_channel => "ibv_destroy_comp_channel" @ "IBVERBS_1.0",
    verbs::create_cq => "ibv_create_cq" @ "IBVERBS_1.1",
    verbs::destroy_cq => "ibv_destroy_cq" @ "IBVERBS_1.1",
    verbs::resize_cq => "ibv_resize_cq" @ "IBVERBS_1.1",
    verbs::get_cq_event => "ibv_get_cq_event" @ "IBVERBS_1.1",
    verbs::ack_cq_events => "ibv_ack_cq_events" @ "IBVERBS_1.1",
    verbs::get_async_event => "ibv_get_async_event" @ "IBVERBS_1.1",
    verbs::ack_async_event => "ibv_ack_async_event" @ "IBVERBS_1.1",
    verbs::create_srq => "ibv_create_srq" @ "IBVERBS_1.1",
    verbs::modify_srq => "ibv_modify_srq" @ "IBVERBS_1.1",
    verbs::query_srq => "ibv_query_srq" @ "IBVERBS_1.1",
    verbs::destroy_srq => "ibv_destroy_srq" @ "IBVERBS_1.1",
    verbs::create_qp => "ibv_create_qp" @ "IBVERBS_1.1",
    verbs::modify_qp => "ibv_modify_qp" @ "IBVERBS_1.1",
    verbs::query_qp => "ibv_query_qp" @ "IBVERBS_1.1",
    verbs::destroy_qp => "ibv_destroy_qp" @ "IBVERBS_1.1",
    verbs::create_ah => "ibv_create_ah" @ "IBVERBS_1.1",
    verbs::destroy_ah => "ibv_destroy_ah" @ "IBVERBS_1.1",
    verbs::init_ah_from_wc => "ibv_init_ah_from_wc" @ "IBVERBS_1.1",
    verbs::create_ah_from_wc => "ibv_create_ah_from_wc" @ "IBVERBS_1.1",
    strings::wc_status_str => "ibv_wc_status_str" @ "IBVERBS_1.1",
    strings::node_type_str => "ibv_node_type_str" @ "IBVERBS_1.1",
    strings::port_state_str => "ibv_port_state_str" @ "IBVERBS_1.1",
    strings::event_type_str => "ibv_event_type_str" @ "IBVERBS_1.1",
    strings::rate_to_mult => "ibv_rate_to_mult" @ "IBVERBS_1.0",
    strings::mult_to_ibv_rate => "mult_to_ibv_rate" @ "IBVERBS_1.0",
    strings::rate_to_mbps => "ibv_rate_to_mbps" @ "IBVERBS_1.1",
    strings::mbps_to_ibv_rate => "mbps_to_ibv_rate" @ "IBVERBS_1.1",
    get_sysfs_path => "ibv_get_sysfs_path" @ "IBVERBS_1.0",
    read_sysfs_file => "ibv_read_sysfs_file" @ "IBVERBS_1.0",
    fork_init => "ibv_fork_init" @ "IBVERBS_1.1",
    is_fork_initialized => "ibv_is_fork_initialized" @ "IBVERBS_1.13",
    ok_zero => "ibv_dontfork_range" @ "IBVERBS_1.1",
    ok_zero => "ibv_dofork_range" @ "IBVERBS_1.1",
    ok_zero => "ibv_query_qp_data_in_order" @ "IBVERBS_1.14",
    nothing => "ibv_copy_ah_attr_from_kern" @ "IBVERBS_1.1",
    nothing => "ibv_copy_path_rec_from_kern" @ "IBVERBS_1.0",
    nothing => "ibv_copy_path_rec_to_kern" @ "IBVERBS_1.0",
    nothing => "ibv_copy_qp_attr_from_kern" @ "IBVERBS_1.0",
    nothing => "verbs_register_driver_34" @ "IBVERBS_PRIVATE_34",
}

/// `ibv_get_sysfs_path`: `SYSFS_PATH` or /sys, as rdma-core.
extern "C" fn get_sysfs_path() -> *const std::ffi::c_char {
    static PATH: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();
    PATH.get_or_init(|| std::ffi::CString::new(verbs::sysfs_path()).unwrap_or_default())
        .as_ptr()
}

/// `ibv_read_sysfs_file(dir, file, buf, size)`: reads a file below a sysfs
/// directory, without the trailing newline; -1 if it cannot.
unsafe extern "C" fn read_sysfs_file(
    dir: *const std::ffi::c_char,
    file: *const std::ffi::c_char,
    buf: *mut std::ffi::c_char,
    size: usize,
) -> i32 {
    if dir.is_null() || file.is_null() || buf.is_null() || size == 0 {
        return -1;
    }
    // SAFETY: C strings from the caller.
    let (d, f) = unsafe {
        (
            std::ffi::CStr::from_ptr(dir),
            std::ffi::CStr::from_ptr(file),
        )
    };
    let path = std::path::Path::new(std::ffi::OsStr::from_encoded_bytes_unchecked_safe(d))
        .join(std::ffi::OsStr::from_encoded_bytes_unchecked_safe(f));
    let Ok(mut data) = std::fs::read(path) else {
        return -1;
    };
    data.truncate(size - 1);
    let n = data.len();
    // SAFETY: buf holds size bytes; we write n + 1 <= size.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
        if n > 0 && *buf.add(n - 1) == b'\n' as std::ffi::c_char {
            *buf.add(n - 1) = 0;
        }
    }
    n as i32
}

trait FromCStr {
    fn from_encoded_bytes_unchecked_safe(c: &std::ffi::CStr) -> &std::ffi::OsStr;
}

impl FromCStr for std::ffi::OsStr {
    fn from_encoded_bytes_unchecked_safe(c: &std::ffi::CStr) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(c.to_bytes())
    }
}

extern "C" fn fork_init() -> i32 {
    0
}

/// IBV_FORK_UNNEEDED: the device pins nothing.
extern "C" fn is_fork_initialized() -> i32 {
    2
}

extern "C" fn ok_zero() -> i32 {
    0
}

extern "C" fn nothing() {}

macro_rules! stubs {
    ($( $id:ident @ $ver:literal => $ret:expr ),* $(,)?) => {
        mod stub_fns {
            use super::{EOP, NULL};
            $(
                #[allow(non_snake_case)]
                pub(super) extern "C" fn $id() -> usize {
                    static ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                    crate::unsupported(stringify!($id), &ONCE);
                    crate::set_errno(libc::EOPNOTSUPP);
                    $ret
                }
            )*
        }
        $(
            std::arch::global_asm!(
                concat!(".globl softib_x_", stringify!($id)),
                concat!(".type softib_x_", stringify!($id), ",@function"),
                concat!("softib_x_", stringify!($id), ":"),
                "jmp {f}",
                concat!(".symver softib_x_", stringify!($id), ", ", stringify!($id), "@@", $ver),
                f = sym stub_fns::$id,
            );
        )*
    };
}

/// Returned by stubs of verbs that return an errno.
const EOP: usize = libc::EOPNOTSUPP as usize;
/// Returned by stubs of verbs that return a pointer (NULL, errno set).
const NULL: usize = 0;

stubs! {
    ibv_attach_mcast @ "IBVERBS_1.1" => EOP,
    ibv_detach_mcast @ "IBVERBS_1.1" => EOP,
    ibv_rereg_mr @ "IBVERBS_1.1" => EOP,
    ibv_resolve_eth_l2_from_gid @ "IBVERBS_1.1" => EOP,
    ibv_qp_to_qp_ex @ "IBVERBS_1.6" => NULL,
    ibv_import_device @ "IBVERBS_1.10" => NULL,
    ibv_import_mr @ "IBVERBS_1.10" => NULL,
    ibv_import_pd @ "IBVERBS_1.10" => NULL,
    ibv_query_ece @ "IBVERBS_1.10" => EOP,
    ibv_set_ece @ "IBVERBS_1.10" => EOP,
    ibv_unimport_mr @ "IBVERBS_1.10" => NULL,
    ibv_unimport_pd @ "IBVERBS_1.10" => NULL,
    ibv_reg_dmabuf_mr @ "IBVERBS_1.12" => NULL,
    ibv_import_dm @ "IBVERBS_1.13" => NULL,
    ibv_unimport_dm @ "IBVERBS_1.13" => NULL,
    __ioctl_final_num_attrs @ "IBVERBS_PRIVATE_34" => EOP,
    __verbs_log @ "IBVERBS_PRIVATE_34" => NULL,
    _verbs_init_and_alloc_context @ "IBVERBS_PRIVATE_34" => NULL,
    execute_ioctl @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_advise_mr @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_alloc_dm @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_alloc_mw @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_alloc_pd @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_attach_mcast @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_close_xrcd @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_create_ah @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_create_counters @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_create_cq @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_create_cq_ex @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_create_flow @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_create_flow_action_esp @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_create_qp @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_create_qp_ex @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_create_qp_ex2 @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_create_rwq_ind_table @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_create_srq @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_create_srq_ex @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_create_wq @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_dealloc_mw @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_dealloc_pd @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_dereg_mr @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_destroy_ah @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_destroy_counters @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_destroy_cq @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_destroy_flow @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_destroy_flow_action @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_destroy_qp @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_destroy_rwq_ind_table @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_destroy_srq @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_destroy_wq @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_detach_mcast @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_free_dm @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_get_context @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_modify_cq @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_modify_flow_action_esp @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_modify_qp @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_modify_qp_ex @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_modify_srq @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_modify_wq @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_open_qp @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_open_xrcd @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_poll_cq @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_post_recv @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_post_send @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_post_srq_recv @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_query_context @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_query_device_any @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_query_mr @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_query_port @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_query_qp @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_query_srq @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_read_counters @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_reg_dm_mr @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_reg_dmabuf_mr @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_reg_mr @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_req_notify_cq @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_rereg_mr @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_cmd_resize_cq @ "IBVERBS_PRIVATE_34" => EOP,
    ibv_read_ibdev_sysfs_file @ "IBVERBS_PRIVATE_34" => EOP,
    verbs_allow_disassociate_destroy @ "IBVERBS_PRIVATE_34" => NULL,
    verbs_init_cq @ "IBVERBS_PRIVATE_34" => NULL,
    verbs_open_device @ "IBVERBS_PRIVATE_34" => NULL,
    verbs_set_ops @ "IBVERBS_PRIVATE_34" => NULL,
    verbs_uninit_context @ "IBVERBS_PRIVATE_34" => NULL,
}
