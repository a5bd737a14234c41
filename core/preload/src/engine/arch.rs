//! x86_64 context switching primitives (the preload library's only assembly).
//!
//! A thread that is about to be checkpointed calls [`save_and_call`]: it
//! records the callee-saved registers, the stack pointer and the return
//! address in a [`Ctx`], then calls a function (which blocks while the image
//! is written) and returns 0. After a restart, [`jump_context`] (for the
//! main thread) or [`clone_into`] (for every other thread) resume execution
//! exactly as if that `save_and_call` had returned 1. Because the jump lands
//! on an ordinary function return, the compiler's view of the caller stays
//! valid (no `returns_twice` hazard as with setjmp).

/// Saved execution context. Offsets are used by the assembly below.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    /// Stack pointer after `save_and_call` returns.
    pub rsp: u64,
    /// Return address of `save_and_call`.
    pub rip: u64,
    pub mxcsr: u32,
    pub fpucw: u32,
}

const _: () = {
    assert!(core::mem::offset_of!(Ctx, rsp) == 48);
    assert!(core::mem::offset_of!(Ctx, rip) == 56);
    assert!(core::mem::offset_of!(Ctx, mxcsr) == 64);
    assert!(core::mem::offset_of!(Ctx, fpucw) == 68);
    assert!(core::mem::size_of::<Ctx>() == 72);
};

core::arch::global_asm!(
    // u64 dmtcp_save_and_call(Ctx *ctx, u64 (*f)(void *), void *arg)
    ".globl dmtcp_save_and_call",
    ".type dmtcp_save_and_call,@function",
    "dmtcp_save_and_call:",
    "mov [rdi], rbx",
    "mov [rdi+8], rbp",
    "mov [rdi+16], r12",
    "mov [rdi+24], r13",
    "mov [rdi+32], r14",
    "mov [rdi+40], r15",
    "lea rax, [rsp+8]",
    "mov [rdi+48], rax",
    "mov rax, [rsp]",
    "mov [rdi+56], rax",
    "stmxcsr [rdi+64]",
    "fnstcw [rdi+68]",
    "sub rsp, 8",
    "mov rdi, rdx",
    "call rsi",
    "add rsp, 8",
    "xor eax, eax",
    "ret",
    ".size dmtcp_save_and_call, .-dmtcp_save_and_call",
    // void dmtcp_jump_context(const Ctx *ctx)  -- never returns
    ".globl dmtcp_jump_context",
    ".type dmtcp_jump_context,@function",
    "dmtcp_jump_context:",
    "mov r9, rdi",
    // Shared tail: resume the context at r9 (also the new thread's path below).
    "dmtcp_resume_r9:",
    "ldmxcsr [r9+64]",
    "fldcw [r9+68]",
    "mov rbx, [r9]",
    "mov rbp, [r9+8]",
    "mov r12, [r9+16]",
    "mov r13, [r9+24]",
    "mov r14, [r9+32]",
    "mov r15, [r9+40]",
    "mov rsp, [r9+48]",
    "mov eax, 1",
    "jmp qword ptr [r9+56]",
    ".size dmtcp_jump_context, .-dmtcp_jump_context",
    // i64 dmtcp_clone_into(u64 flags, u64 tls, int *tidptr, const Ctx *ctx)
    // Parent: returns the child's tid or -errno. Child: resumes ctx.
    ".globl dmtcp_clone_into",
    ".type dmtcp_clone_into,@function",
    "dmtcp_clone_into:",
    "mov r9, rcx",
    "mov r8, rsi",
    "mov r10, rdx",
    "mov rsi, [r9+48]",
    "mov eax, 56",
    "syscall",
    "test rax, rax",
    "jz dmtcp_resume_r9",
    "ret",
    ".size dmtcp_clone_into, .-dmtcp_clone_into",
    // i64 dmtcp_clone3_into(const CloneArgs *args, u64 size, const Ctx *ctx)
    // Parent: returns the child's tid or -errno. Child: resumes ctx.
    ".globl dmtcp_clone3_into",
    ".type dmtcp_clone3_into,@function",
    "dmtcp_clone3_into:",
    "mov r9, rdx",
    "mov eax, 435",
    "syscall",
    "test rax, rax",
    "jz dmtcp_resume_r9",
    "ret",
    ".size dmtcp_clone3_into, .-dmtcp_clone3_into",
    // i64 dmtcp_clone_call(u64 flags, void *stack_top, u64 (*f)(void *), void *arg)
    // Parent: returns the child's tid or -errno. Child: on the new stack,
    // calls f(arg), then exits (the thread only). f and arg travel in r8
    // and r9, which clone(2) ignores without CLONE_SETTLS and preserves.
    ".globl dmtcp_clone_call",
    ".type dmtcp_clone_call,@function",
    "dmtcp_clone_call:",
    "mov r8, rdx",
    "mov r9, rcx",
    "xor edx, edx",
    "xor r10d, r10d",
    "mov eax, 56",
    "syscall",
    "test rax, rax",
    "jnz dmtcp_clone_call_parent",
    "xor ebp, ebp",
    "mov rdi, r9",
    "call r8",
    "xor edi, edi",
    "mov eax, 60",
    "syscall",
    "ud2",
    "dmtcp_clone_call_parent:",
    "ret",
    ".size dmtcp_clone_call, .-dmtcp_clone_call",
);

extern "C" {
    fn dmtcp_save_and_call(
        ctx: *mut Ctx,
        f: extern "C" fn(*mut core::ffi::c_void) -> u64,
        arg: *mut core::ffi::c_void,
    ) -> u64;
    fn dmtcp_jump_context(ctx: *const Ctx) -> !;
    fn dmtcp_clone_into(flags: u64, tls: u64, tidptr: *mut i32, ctx: *const Ctx) -> i64;
    fn dmtcp_clone3_into(
        args: *const dmtcp_sys::restore::CloneArgs,
        size: usize,
        ctx: *const Ctx,
    ) -> i64;
    fn dmtcp_clone_call(
        flags: u64,
        stack_top: *mut u8,
        f: extern "C" fn(*mut core::ffi::c_void) -> u64,
        arg: *mut core::ffi::c_void,
    ) -> i64;
}

/// Start a bare thread (flags: `CLONE_VM | CLONE_THREAD | ...`, without
/// `CLONE_SETTLS`: it shares the caller's thread pointer) that runs
/// `f(arg)` on the stack ending at `stack_top` (16-byte aligned) and then
/// exits. Returns its tid or `-errno`.
///
/// # Safety
/// The stack must stay mapped while the thread runs; `f` must not unwind
/// and, sharing the caller's thread pointer, must not rely on
/// thread-local state (errno included: raw system calls only).
pub unsafe fn clone_call(
    flags: u64,
    stack_top: *mut u8,
    f: extern "C" fn(*mut core::ffi::c_void) -> u64,
    arg: *mut core::ffi::c_void,
) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { dmtcp_clone_call(flags, stack_top, f, arg) }
}

/// `fork` without the C library: a raw `clone` with no flags and no exit
/// signal (the parent gets no SIGCHLD, and a `wait` without `__WCLONE` or
/// `__WALL` never sees this child), and no fork handlers run. The child
/// returns 0 on a copy of the calling thread; the parent gets its pid or
/// `-errno`.
pub fn raw_fork() -> i64 {
    // SAFETY: clone with a null stack duplicates the address space
    // (copy-on-write) and continues both processes here, like fork(2).
    unsafe { dmtcp_sys::syscall6(dmtcp_sys::nr::CLONE, 0, 0, 0, 0, 0, 0) as i64 }
}

/// Save the calling thread's context into `ctx`, then run `f(arg)`.
/// Returns 0 when `f` returned, 1 when resumed from an image.
///
/// # Safety
/// `ctx` must stay valid (and be part of the checkpointed memory) for as
/// long as it may be resumed; `f` must not unwind.
pub unsafe fn save_and_call(
    ctx: *mut Ctx,
    f: extern "C" fn(*mut core::ffi::c_void) -> u64,
    arg: *mut core::ffi::c_void,
) -> u64 {
    // SAFETY: forwarded contract; the assembly follows the C ABI.
    unsafe { dmtcp_save_and_call(ctx, f, arg) }
}

/// Resume `ctx` on the calling thread, as a return of 1 from its `save_and_call`.
///
/// # Safety
/// `ctx` must have been filled by `save_and_call` in this (restored) address
/// space, with its stack intact, and the thread pointer must already be set.
pub unsafe fn jump_context(ctx: *const Ctx) -> ! {
    // SAFETY: forwarded contract.
    unsafe { dmtcp_jump_context(ctx) }
}

/// Create a thread (raw clone) that resumes `ctx` with thread pointer `tls`.
/// `tidptr` (may be null) receives the new tid and is cleared at thread exit,
/// as glibc expects of `struct pthread`'s tid field.
///
/// # Safety
/// As for [`jump_context`]; `flags` must describe a thread of this process.
pub unsafe fn clone_into(flags: u64, tls: u64, tidptr: *mut i32, ctx: *const Ctx) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { dmtcp_clone_into(flags, tls, tidptr, ctx) }
}

/// Create a thread with clone3 (`args` may ask for a given tid) that
/// resumes `ctx`. The kernel starts it on the stack `args` gives, which must
/// end at `ctx`'s stack pointer.
///
/// # Safety
/// As for [`clone_into`]; `args` must describe a thread of this process.
pub unsafe fn clone3_into(args: &dmtcp_sys::restore::CloneArgs, ctx: *const Ctx) -> i64 {
    // SAFETY: forwarded contract; the assembly follows the C ABI.
    unsafe {
        dmtcp_clone3_into(
            args,
            core::mem::size_of::<dmtcp_sys::restore::CloneArgs>(),
            ctx,
        )
    }
}

/// The variadic exec calls (execl, execlp, execle): glibc implements them
/// with internal calls the library cannot see, so they are defined here.
/// Each spills its five register arguments after `path` next to each other
/// and passes them, with the address of the arguments on the caller's
/// stack, to [`crate::engine::exec::exec_list`], which collects the NULL-terminated list
/// (x86-64 passes variadic pointers like fixed ones).
macro_rules! exec_list_fn {
    ($name:ident, $kind:literal) => {
        /// A variadic exec call: see [`exec_list_fn`].
        ///
        /// # Safety
        /// The contract of the C function of this name.
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                "push rbp",
                "mov rbp, rsp",
                "sub rsp, 48",
                "mov [rsp], rsi",
                "mov [rsp+8], rdx",
                "mov [rsp+16], rcx",
                "mov [rsp+24], r8",
                "mov [rsp+32], r9",
                "mov rsi, rsp",
                "lea rdx, [rbp+16]",
                concat!("mov ecx, ", $kind),
                "call {imp}",
                "leave",
                "ret",
                imp = sym crate::engine::exec::exec_list,
            )
        }
    };
}
exec_list_fn!(execl, 0);
exec_list_fn!(execlp, 1);
exec_list_fn!(execle, 2);
