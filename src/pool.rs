//! The thread pool of the CPU paths: one per process, so that a child created by `fork()`
//! (Python `multiprocessing`, DataLoader workers) gets a working pool of its own.
//!
//! A pool's worker threads do not survive `fork()`: a child that hands work to a pool it
//! inherited waits forever. Every parallel entry point of the library runs inside
//! [`install`], which looks up the pool of the current process id and starts a new one when
//! the id has changed. The inherited pool is left alone (its threads are gone and its locks
//! may be held); its memory is not freed. The lookup is lock-free, so a lock held by a parent
//! thread at the moment of the fork cannot block the child.

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use rayon::{ThreadPool, ThreadPoolBuilder};

struct Owned {
    pid: u32,
    pool: ThreadPool,
}

static POOL: AtomicPtr<Owned> = AtomicPtr::new(ptr::null_mut());

/// Runs `f` on this process's pool (rayon and faer parallelism inside `f` use it). Falls back
/// to running `f` on the calling thread when no pool can be started.
pub(crate) fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Some(p) => p.install(f),
        None => f(),
    }
}

fn pool() -> Option<&'static ThreadPool> {
    let pid = std::process::id();
    let seen = POOL.load(Ordering::Acquire);
    // SAFETY: non-null entries are leaked boxes, never freed.
    if let Some(owned) = unsafe { seen.as_ref() } {
        if owned.pid == pid {
            return Some(&owned.pool);
        }
    }
    let pool = ThreadPoolBuilder::new()
        .thread_name(|i| format!("gaussskip-{i}"))
        .build()
        .ok()?;
    let fresh = Box::into_raw(Box::new(Owned { pid, pool }));
    match POOL.compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: `fresh` was just leaked and is now published; it is never freed.
        Ok(_) => Some(unsafe { &(*fresh).pool }),
        Err(current) => {
            // Another thread of this process published its pool first: use that one.
            // SAFETY: `fresh` was never published; `current` is a leaked entry.
            drop(unsafe { Box::from_raw(fresh) });
            unsafe { current.as_ref() }.map(|o| &o.pool)
        }
    }
}
