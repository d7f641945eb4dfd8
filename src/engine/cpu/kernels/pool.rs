//! The engine's persistent thread pool. One `run` is one dispatch: the
//! calling thread and every worker claim task indices from one atomic
//! counter until none are left, then the call returns. Workers wait for the
//! next dispatch by spinning briefly (dispatches of one forward pass follow
//! each other within microseconds) and then sleep on a condition variable,
//! so an idle engine uses no CPU.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(200);

type Task = dyn Fn(usize) + Sync;

/// The current dispatch, as workers read it.
struct Dispatch {
    /// The task body, with its lifetime erased (see `ThreadPool::run`).
    task: *const Task,
    /// Number of task indices.
    count: usize,
}

struct Shared {
    /// Bumped once per dispatch; workers watch it.
    generation: AtomicU64,
    /// The dispatch of the current generation.
    dispatch: Mutex<Option<Dispatch>>,
    /// Next task index to claim.
    next: AtomicUsize,
    /// Workers that have not yet finished the current dispatch.
    busy: AtomicUsize,
    /// Workers asleep or about to sleep.
    sleepers: AtomicUsize,
    /// Wakes sleeping workers.
    wake_lock: Mutex<()>,
    wake: Condvar,
    /// Set when the pool is dropped.
    shutdown: AtomicBool,
    /// The first panic of a task on a worker, re-raised by `run`.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: the raw task pointer is only dereferenced while `run` keeps the
// closure it points to alive (it waits for `busy == 0` before returning),
// and the closure is `Sync`.
unsafe impl Send for Dispatch {}

/// A fixed set of compute threads.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises dispatches from several callers.
    dispatching: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `threads` compute threads in all: the caller of `run` is
    /// one of them, so `threads - 1` workers are started.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            dispatch: Mutex::new(None),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            wake_lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            panic: Mutex::new(None),
        });
        let mut pool = Self {
            shared,
            workers: Vec::new(),
            dispatching: Mutex::new(()),
        };
        for index in 1..threads {
            let shared = Arc::clone(&pool.shared);
            // On failure, dropping `pool` stops the workers already started.
            let handle = std::thread::Builder::new()
                .name(format!("concierge-cpu-{index}"))
                .spawn(move || worker(&shared))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Compute threads, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `task(i)` for every `i < count`, spread over all threads, and
    /// returns when all calls have finished. A panic in a task is re-raised
    /// here after every thread has stopped using `task`.
    pub fn run(&self, count: usize, task: &(dyn Fn(usize) + Sync)) {
        if count == 0 {
            return;
        }
        if self.workers.is_empty() || count == 1 {
            for index in 0..count {
                task(index);
            }
            return;
        }
        let _serial = self
            .dispatching
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let shared = &*self.shared;
        // SAFETY: the lifetime of `task` is erased so workers can hold the
        // pointer; this function does not return (nor unwind) before every
        // worker has decremented `busy`, after which none reads it again
        // until the next dispatch replaces it.
        let borrowed: *const (dyn Fn(usize) + Sync + '_) = task;
        let erased: *const Task = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const Task>(borrowed)
        };
        *lock(&shared.dispatch) = Some(Dispatch {
            task: erased,
            count,
        });
        shared.next.store(0, Ordering::SeqCst);
        shared.busy.store(self.workers.len(), Ordering::SeqCst);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&shared.wake_lock);
            shared.wake.notify_all();
        }
        let own = catch_unwind(AssertUnwindSafe(|| claim_tasks(shared, task, count)));
        let mut spins = 0u32;
        while shared.busy.load(Ordering::Acquire) > 0 {
            spins = spins.saturating_add(1);
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *lock(&shared.dispatch) = None;
        if let Err(panic) = own {
            resume_unwind(panic);
        }
        if let Some(panic) = lock(&shared.panic).take() {
            resume_unwind(panic);
        }
    }

    /// Calls `task(i, &mut items[i])` for every item, in parallel.
    pub fn for_each_mut<T: Send>(&self, items: &mut [T], task: &(dyn Fn(usize, &mut T) + Sync)) {
        struct Items<T>(*mut T, usize);
        // SAFETY: each index is claimed by exactly one task, so no two
        // threads touch the same item; `run` returns before `items` is
        // released.
        unsafe impl<T: Send> Sync for Items<T> {}
        let shared_items = Items(items.as_mut_ptr(), items.len());
        let shared_items = &shared_items;
        self.run(items.len(), &move |index| {
            assert!(index < shared_items.1);
            // SAFETY: `index` is in bounds and claimed by this task alone.
            let item = unsafe { &mut *shared_items.0.add(index) };
            task(index, item);
        });
    }

    /// Splits `out` into consecutive chunks of `chunk` elements (the last may
    /// be shorter) and calls `task(chunk_index, chunk)` for each, in parallel.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        out: &mut [T],
        chunk: usize,
        task: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let mut chunks: Vec<&mut [T]> = out.chunks_mut(chunk.max(1)).collect();
        self.for_each_mut(&mut chunks, &|index, slice| task(index, slice));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn claim_tasks(shared: &Shared, task: &(dyn Fn(usize) + Sync + '_), count: usize) {
    loop {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        if index >= count {
            return;
        }
        task(index);
    }
}

fn worker(shared: &Shared) {
    // Generation 0 is the pool's start: a dispatch made before this thread
    // first runs is still seen as new.
    let mut seen = 0;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            if shared.generation.load(Ordering::SeqCst) != seen
                || shared.shutdown.load(Ordering::SeqCst)
            {
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && started.elapsed() > SPIN_BEFORE_SLEEP {
                shared.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut guard = lock(&shared.wake_lock);
                while shared.generation.load(Ordering::SeqCst) == seen
                    && !shared.shutdown.load(Ordering::SeqCst)
                {
                    guard = shared
                        .wake
                        .wait(guard)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                drop(guard);
                shared.sleepers.fetch_sub(1, Ordering::SeqCst);
                break;
            }
            std::hint::spin_loop();
        }
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        seen = shared.generation.load(Ordering::SeqCst);
        let dispatch = lock(&shared.dispatch)
            .as_ref()
            .map(|dispatch| (dispatch.task, dispatch.count));
        if let Some((task, count)) = dispatch {
            // SAFETY: `run` keeps the closure alive until `busy` reaches 0,
            // which this worker signals only after its last call below.
            let task: &Task = unsafe { &*task };
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| claim_tasks(shared, task, count)))
            {
                lock(&shared.panic).get_or_insert(panic);
            }
        }
        shared.busy.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _guard = lock(&self.shared.wake_lock);
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_dispatches() {
        let pool = ThreadPool::new(3).unwrap();
        for count in [0, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                pool.run(count, &|index| {
                    hits[index].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|hit| hit.load(Ordering::Relaxed) == 50));
        }
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = ThreadPool::new(2).unwrap();
        let total = AtomicUsize::new(0);
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(5));
            pool.run(16, &|index| {
                total.fetch_add(index, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 3 * (0..16).sum::<usize>());
    }

    #[test]
    fn a_panicking_task_is_reraised_and_the_pool_still_works() {
        let pool = ThreadPool::new(2).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|index| assert!(index != 5, "task five fails"));
        }));
        assert!(result.is_err());
        let mut values = vec![0usize; 9];
        pool.for_each_chunk_mut(&mut values, 2, &|chunk, slice| {
            for value in slice.iter_mut() {
                *value = chunk + 1;
            }
        });
        assert_eq!(values, vec![1, 1, 2, 2, 3, 3, 4, 4, 5]);
    }
}
