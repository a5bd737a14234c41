//! A futex lock that fork handlers can hold across `fork`.
//!
//! A std Mutex taken in a `pthread_atfork` prepare handler could not be
//! released in the child (its guard belongs to the prepare call). This lock
//! can: the prepare handler takes it, the parent releases it, and the child,
//! whose only thread is the one that held it, simply resets it. So a forked
//! child never inherits the library's state in mid-update.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering::*};

pub struct FLock<T> {
    /// 0 free, 1 locked, 2 locked with waiters.
    state: AtomicU32,
    v: UnsafeCell<T>,
}

// SAFETY: `v` is only reached with `state` held, which serialises all access.
unsafe impl<T: Send> Sync for FLock<T> {}

impl<T> FLock<T> {
    pub const fn new(v: T) -> FLock<T> {
        FLock {
            state: AtomicU32::new(0),
            v: UnsafeCell::new(v),
        }
    }
    fn acquire(&self) {
        if self.state.compare_exchange(0, 1, Acquire, Relaxed).is_ok() {
            return;
        }
        while self.state.swap(2, Acquire) != 0 {
            dmtcp_sys::futex_wait(&self.state, 2, 0);
        }
    }
    fn release(&self) {
        if self.state.swap(0, Release) == 2 {
            dmtcp_sys::futex_wake(&self.state, 1);
        }
    }
    /// Run `f` with the value, the lock held.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        self.acquire();
        // SAFETY: the lock is held, so this is the only reference.
        let r = f(unsafe { &mut *self.v.get() });
        self.release();
        r
    }
    /// Before `fork`: take the lock.
    pub fn fork_prepare(&self) {
        self.acquire();
    }
    /// After `fork`, in the parent: release it.
    pub fn fork_parent(&self) {
        self.release();
    }
    /// After `fork`, in the child (whose only thread holds it): reset it.
    pub fn fork_child(&self) {
        self.state.store(0, Release);
    }
}
