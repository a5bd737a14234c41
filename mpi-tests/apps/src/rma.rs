//! One-sided communication through MPI's C interface (rsmpi 0.8 has no
//! window type): a window over a buffer of u64, fences, puts and gets.
//! With h5mpio.rs, the only unsafe code of the MPI programs.

use mpi::ffi;
use mpi::traits::AsRaw;

/// A window exposing `buf` to every rank of `world`; freed on drop.
pub struct Window<'a> {
    win: ffi::MPI_Win,
    _buf: core::marker::PhantomData<&'a mut [u64]>,
}

fn check(what: &str, rc: i32) {
    if rc != 0 {
        eprintln!("{what} failed with MPI error {rc}");
        std::process::exit(4);
    }
}

impl<'a> Window<'a> {
    /// Collective over `world`. `buf` stays borrowed (MPI writes into it
    /// behind our back between fences) until the window is dropped.
    pub fn new(world: &mpi::topology::SimpleCommunicator, buf: &'a mut [u64]) -> Window<'a> {
        let mut win = core::mem::MaybeUninit::<ffi::MPI_Win>::uninit();
        // SAFETY: `buf` is valid for buf.len() u64s and stays borrowed for
        // the window's life; the communicator handle is live; `win` is an
        // out-parameter.
        let rc = unsafe {
            ffi::MPI_Win_create(
                buf.as_mut_ptr() as *mut _,
                (buf.len() * 8) as ffi::MPI_Aint,
                8,
                ffi::RSMPI_INFO_NULL,
                world.as_raw(),
                win.as_mut_ptr(),
            )
        };
        check("MPI_Win_create", rc);
        Window {
            // SAFETY: MPI_Win_create succeeded, so it wrote the handle.
            win: unsafe { win.assume_init() },
            _buf: core::marker::PhantomData,
        }
    }

    /// `MPI_Win_fence`: ends one access epoch, starts the next.
    pub fn fence(&self) {
        // SAFETY: a live window.
        check("MPI_Win_fence", unsafe { ffi::MPI_Win_fence(0, self.win) });
    }

    /// Put `data` at index `at` of `target`'s buffer (inside an epoch).
    pub fn put(&self, data: &[u64], target: i32, at: usize) {
        // SAFETY: `data` stays alive until the next fence (the caller
        // fences before touching it); the datatype is u64.
        let rc = unsafe {
            ffi::MPI_Put(
                data.as_ptr() as *const _,
                data.len() as i32,
                ffi::RSMPI_UINT64_T,
                target,
                at as ffi::MPI_Aint,
                data.len() as i32,
                ffi::RSMPI_UINT64_T,
                self.win,
            )
        };
        check("MPI_Put", rc);
    }

    /// Get `out.len()` values from index `at` of `target`'s buffer.
    pub fn get(&self, out: &mut [u64], target: i32, at: usize) {
        // SAFETY: as for put; `out` is written by the next fence.
        let rc = unsafe {
            ffi::MPI_Get(
                out.as_mut_ptr() as *mut _,
                out.len() as i32,
                ffi::RSMPI_UINT64_T,
                target,
                at as ffi::MPI_Aint,
                out.len() as i32,
                ffi::RSMPI_UINT64_T,
                self.win,
            )
        };
        check("MPI_Get", rc);
    }
}

impl Drop for Window<'_> {
    fn drop(&mut self) {
        // SAFETY: a live window, freed once.
        unsafe { ffi::MPI_Win_free(&mut self.win) };
    }
}
