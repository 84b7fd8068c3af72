//! The thread pool of the CPU paths: one per process, so that a child created by `fork()`
//! (Python `multiprocessing`, DataLoader workers) gets a working pool of its own.
//!
//! A pool's worker threads do not survive `fork()`: a child that hands work to a pool it
//! inherited waits forever. Every parallel entry point of the library runs inside
//! [`install`], which looks up the pool of the current process id and starts a new one when
//! the id has changed. The inherited pool is left alone (its threads are gone and its locks
//! may be held); its memory is not freed. The lookup is lock-free, so a lock held by a parent
//! thread at the moment of the fork cannot block the child.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;

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

/// Runs `work(i)` once for every `i` in `0..n`, on the calling thread and on the pool's other
/// threads, and returns when all are done. Unlike [`install`], the calling thread starts at
/// once, the pool's threads take indices as they wake, and the caller never waits for a thread
/// that has not started: waking a sleeping thread costs tens of microseconds on a virtual
/// machine, the whole of a short call. Which thread runs which index varies from call to
/// call, so `work` must not let the result depend on it. A panic in `work` is raised again on
/// the calling thread once every taken index is done.
pub(crate) fn share(n: usize, work: impl Fn(usize) + Sync) {
    let Some(p) = pool().filter(|_| n > 1) else {
        (0..n).for_each(work);
        return;
    };
    let state = Arc::new(Shared {
        n,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    });
    let work: &(dyn Fn(usize) + Sync) = &work;
    // SAFETY (of the helpers' use of `work`): a helper calls `work` only for an index it has
    // taken below `n`, and this function returns only after every such call has finished
    // (`done == n`); a helper that starts later takes an index >= n and never touches `work`.
    let erased = WorkPtr(unsafe {
        std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
            work,
        )
    });
    for _ in 1..p.current_num_threads().min(n) {
        let state = Arc::clone(&state);
        p.spawn(move || {
            let erased = erased;
            // SAFETY: see above; `take` dereferences the pointer only after taking an index.
            state.take(|i| unsafe { (*erased.0)(i) });
        });
    }
    state.take(work);
    let mut spins = 0u32;
    while state.done.load(Ordering::Acquire) < n {
        // The remaining indices are running on other threads: each is a short piece of work.
        if spins < 1 << 12 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    if state.panicked.load(Ordering::Relaxed) {
        panic!("a thread of the pool panicked in a shared call");
    }
}

/// The progress of one [`share`] call.
struct Shared {
    n: usize,
    /// Next index to take.
    next: AtomicUsize,
    /// Indices finished.
    done: AtomicUsize,
    panicked: AtomicBool,
}

impl Shared {
    /// Takes and runs indices until none is left.
    fn take(&self, work: impl Fn(usize)) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            if catch_unwind(AssertUnwindSafe(|| work(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// `share`'s work, its lifetime erased for the pool's `'static` jobs.
#[derive(Clone, Copy)]
struct WorkPtr(*const (dyn Fn(usize) + Sync));
// SAFETY: the pointee is `Sync`; see `share` for its lifetime.
unsafe impl Send for WorkPtr {}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every index runs exactly once, from the calling thread and from inside the pool.
    #[test]
    fn share_runs_every_index_once() {
        for n in [0, 1, 2, 3, 7, 64, 1000] {
            let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            share(n, |i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "n {n}"
            );
            install(|| {
                share(n, |i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                })
            });
            assert!(
                counts.iter().all(|c| c.load(Ordering::Relaxed) == 2),
                "n {n} in pool"
            );
        }
    }

    /// A panic in the work reaches the caller after every taken index has finished, and the
    /// pool stays usable.
    #[test]
    fn share_raises_a_panic_after_the_work_is_done() {
        let finished = AtomicUsize::new(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            share(64, |i| {
                if i == 5 {
                    panic!("index 5");
                }
                std::thread::sleep(std::time::Duration::from_micros(50));
                finished.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(caught.is_err());
        assert_eq!(finished.load(Ordering::Relaxed), 63);
        let again = AtomicUsize::new(0);
        share(16, |_| {
            again.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(again.load(Ordering::Relaxed), 16);
    }
}
