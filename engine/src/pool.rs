//! A small spinning pool for the decode path's many short parallel products.
//!
//! Decoding one note of the official Medium model runs about a hundred matrix-vector
//! products one after another, each 1-8 MB of weights (a fifth of a millisecond or less), with
//! a few microseconds of serial work (norms, attention, the GRU cell) between them. rayon's
//! workers go to sleep in those gaps, and waking one is a futex call that costs more than the
//! gap on a virtual machine: `perf` put about a tenth of Medium's decode in the scheduler.
//! This pool's helper threads instead spin for [`SPIN`] after each job before they park, so
//! back-to-back products hand off in well under a microsecond, and an idle plugin still costs
//! no CPU.
//!
//! Work is split by an atomic task counter that the caller and the helpers draw from, so a
//! helper that is late (parked, or preempted by the host) only means the others do more. The
//! pool serves one caller at a time: a second caller (another plugin instance's inference
//! thread) is told it is busy and uses rayon instead. `CONTINUO_POOL=rayon` turns it off, for
//! comparisons.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a helper spins for the next job before it parks.
pub const SPIN: Duration = Duration::from_micros(250);

type Job = &'static (dyn Fn() + Sync);

struct Pool {
    /// Bumped for every job; a helper runs each job it sees at most once.
    epoch: AtomicUsize,
    /// The epoch whose job is finished by the caller: helpers arriving later skip it.
    closed: AtomicUsize,
    /// Helpers inside a job right now.
    active: AtomicUsize,
    /// Helpers parked (or about to park), so the caller knows to unpark them.
    sleepers: AtomicUsize,
    /// A caller owns the pool.
    busy: AtomicBool,
    panicked: AtomicBool,
    /// The current job: written by the owning caller before it bumps `epoch`.
    job: UnsafeCell<Option<Job>>,
    helpers: OnceLock<Vec<Thread>>,
}

// SAFETY: `job` is written only by the caller that holds `busy`, before the `epoch` bump
// (release) that publishes it, and read by helpers only after they see that epoch (acquire)
// and while they are counted in `active`, which the caller waits to drain before it returns
// or writes the next job.
unsafe impl Sync for Pool {}

fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<&'static Pool>> = OnceLock::new();
    *POOL.get_or_init(|| {
        if std::env::var("CONTINUO_POOL").is_ok_and(|v| v == "rayon") {
            return None;
        }
        let helpers = rayon::current_num_threads().saturating_sub(1);
        if helpers == 0 {
            return None;
        }
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            epoch: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(None),
            helpers: OnceLock::new(),
        }));
        let mut threads = Vec::with_capacity(helpers);
        for i in 0..helpers {
            let spawned = std::thread::Builder::new()
                .name(format!("continuo-decode-{i}"))
                .spawn(move || helper(pool));
            match spawned {
                Ok(handle) => threads.push(handle.thread().clone()),
                // No thread, no pool: rayon does the work.
                Err(_) if threads.is_empty() => return None,
                Err(_) => break,
            }
        }
        let _ = pool.helpers.set(threads);
        Some(pool)
    })
}

fn helper(pool: &'static Pool) {
    let mut seen = pool.epoch.load(Acquire);
    loop {
        let mut since = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            let e = pool.epoch.load(Acquire);
            if e != seen {
                break e;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || since.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            // No timeout: a parked helper runs no code until a job comes (as rayon's idle
            // workers), which matters to a host that unloads the plugin's library. No wakeup
            // is lost: either the caller's epoch bump comes before the load below, or our
            // `sleepers` increment comes before the caller's load of it and it unparks us
            // (an unpark before the park makes the park return at once).
            pool.sleepers.fetch_add(1, SeqCst);
            if pool.epoch.load(SeqCst) == seen {
                std::thread::park();
            }
            pool.sleepers.fetch_sub(1, SeqCst);
            since = Instant::now();
        };
        seen = epoch;
        pool.active.fetch_add(1, SeqCst);
        // Still the current job, and not finished: a helper that woke late skips it (and
        // sees the next epoch, if there is one, on its next round).
        if pool.epoch.load(SeqCst) == epoch && pool.closed.load(SeqCst) != epoch {
            // SAFETY: see `impl Sync for Pool`: the job read here (this epoch's, or a later
            // one's whose caller has closed it and is waiting on `active`) stays alive while
            // this helper is counted in `active`.
            if let Some(job) = unsafe { *pool.job.get() } {
                if catch_unwind(AssertUnwindSafe(job)).is_err() {
                    pool.panicked.store(true, SeqCst);
                }
            }
        }
        pool.active.fetch_sub(1, SeqCst);
    }
}

/// Closes the job and waits for the helpers in it, also when the caller's part unwinds.
struct Close<'a> {
    pool: &'a Pool,
    epoch: usize,
}

impl Drop for Close<'_> {
    fn drop(&mut self) {
        self.pool.closed.store(self.epoch, SeqCst);
        while self.pool.active.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        // SAFETY: we own the pool (`busy`) and no helper is inside the job any more.
        unsafe { *self.pool.job.get() = None };
        self.pool.busy.store(false, Release);
    }
}

/// Runs `task(i)` for every `i` in `0..count`, each exactly once, on the calling thread and
/// the pool's helpers. Returns `false`, having run nothing, when there is no pool or another
/// caller has it; the caller then splits the work some other way.
///
/// # Panics
/// If a task panics (the calling thread's own tasks unwind as usual; a helper's panic is
/// raised here after every helper has left the job).
pub fn run(count: usize, task: &(dyn Fn(usize) + Sync)) -> bool {
    let Some(pool) = pool() else {
        return false;
    };
    if pool
        .busy
        .compare_exchange(false, true, Acquire, Relaxed)
        .is_err()
    {
        return false;
    }
    pool.panicked.store(false, SeqCst);
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Relaxed);
        if i >= count {
            break;
        }
        task(i);
    };
    let work: &(dyn Fn() + Sync) = &work;
    // SAFETY: the job is used only until `Close` has drained `active`, before `work` (and
    // `next`, `task`) go out of scope: `close` is dropped first, on return or unwind.
    let job: Job = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), Job>(work) };
    // SAFETY: we own the pool and no helper is in a job (the last caller drained them).
    unsafe { *pool.job.get() = Some(job) };
    let epoch = pool.epoch.fetch_add(1, SeqCst) + 1;
    if pool.sleepers.load(SeqCst) > 0 {
        for t in pool.helpers.get().into_iter().flatten() {
            t.unpark();
        }
    }
    {
        let _close = Close { pool, epoch };
        work();
    }
    if pool.panicked.swap(false, SeqCst) {
        panic!("a decode task panicked on a pool thread");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_exactly_once_from_several_callers_at_once() {
        let counts: Vec<AtomicU32> = (0..5000).map(|_| AtomicU32::new(0)).collect();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for round in 0..200 {
                        let n = 1 + (round * 37) % counts.len();
                        let task = |i: usize| {
                            counts[i].fetch_add(1, Relaxed);
                        };
                        if !run(n, &task) {
                            (0..n).for_each(task);
                        }
                    }
                });
            }
        });
        let expected: Vec<u32> = (0..counts.len())
            .map(|i| {
                3 * (0..200)
                    .filter(|round| i < 1 + (round * 37) % counts.len())
                    .count() as u32
            })
            .collect();
        let got: Vec<u32> = counts.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_task_that_panics_is_raised_in_the_caller_and_the_pool_still_works() {
        let r = catch_unwind(|| {
            run(64, &|i| {
                if i == 40 {
                    panic!("task 40");
                }
            })
        });
        assert!(
            r.is_err() || !run(1, &|_| {}),
            "the panic reached the caller"
        );
        let sum = AtomicUsize::new(0);
        let task = |i: usize| {
            sum.fetch_add(i, Relaxed);
        };
        if !run(100, &task) {
            (0..100).for_each(task);
        }
        assert_eq!(sum.load(Relaxed), 4950);
    }
}
