//! The run pipeline: reads runs on a bounded CPU pool and hands them to one
//! consumer in run order, with at most `window` runs in flight or waiting.
//!
//! The consumer (the writers) runs on the calling thread, never on a pool
//! thread, and the next read is started when a result is consumed: no pool
//! thread ever blocks waiting for work queued behind it, and memory is bounded
//! by `window` runs however many runs there are.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::columns::ColumnKind;

use crate::output::history::{long_batch, wide_batch};
use crate::run::{RunData, RunHistory};

/// One run as read, with its history already encoded when asked.
pub struct ReadRun {
    pub data: RunData,
    pub batch: Option<RecordBatch>,
}

impl ReadRun {
    /// Turns the run's history into its Arrow batch when `encoding` is given.
    pub fn encode(mut data: RunData, encoding: Option<&HistoryEncoding>) -> Result<ReadRun, String> {
        let batch = match (encoding, data.history.take()) {
            (Some(enc), Some(h)) => Some(enc.batch(&data.identity.run_id, &h).map_err(|e| e.to_string())?),
            (None, h) => {
                data.history = h;
                None
            }
            (Some(_), None) => None,
        };
        Ok(ReadRun { data, batch })
    }
}

/// How history becomes Arrow: the long layout, or the wide one with its column kinds.
pub enum HistoryEncoding {
    Long(SchemaRef),
    Wide(SchemaRef, BTreeMap<String, ColumnKind>),
}

impl HistoryEncoding {
    pub fn schema(&self) -> &SchemaRef {
        match self {
            HistoryEncoding::Long(s) | HistoryEncoding::Wide(s, _) => s,
        }
    }

    pub fn batch(&self, run_id: &str, h: &RunHistory) -> crate::error::Result<RecordBatch> {
        match self {
            HistoryEncoding::Long(s) => long_batch(s, run_id, h),
            HistoryEncoding::Wide(s, kinds) => wide_batch(s, kinds, run_id, h),
        }
    }
}

/// What a read produced, or the message of a panic inside it.
pub type TaskResult<T> = Result<T, String>;

/// Runs `work(i)` for `i in 0..n` on `workers` threads and calls
/// `consume(i, result)` in increasing `i`. `consume` may stop early by
/// returning `ControlFlow::Break`; reads already started finish in the
/// background and are discarded.
pub fn for_each_run<T, W, C>(n: usize, workers: usize, window: usize, work: W, mut consume: C)
where
    T: Send + 'static,
    W: Fn(usize) -> T + Send + Sync + 'static,
    C: FnMut(usize, TaskResult<T>) -> ControlFlow<()>,
{
    if n == 0 {
        return;
    }
    let workers = workers.max(1);
    let window = window.max(workers);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("runport-read-{i}"))
        .build()
        .expect("invariant: a thread pool of a few threads can be built");
    let work = Arc::new(work);
    let (tx, rx) = crossbeam_channel::bounded::<(usize, TaskResult<T>)>(window);
    let spawn = |i: usize| {
        let work = Arc::clone(&work);
        let tx = tx.clone();
        pool.spawn(move || {
            let out = catch_unwind(AssertUnwindSafe(|| work(i))).map_err(|p| panic_text(&*p));
            // The consumer may have stopped; the result is then dropped.
            let _ = tx.send((i, out));
        });
    };
    let mut next_spawn = 0;
    while next_spawn < n.min(window) {
        spawn(next_spawn);
        next_spawn += 1;
    }
    let mut next_emit = 0;
    let mut waiting: BTreeMap<usize, TaskResult<T>> = BTreeMap::new();
    while next_emit < n {
        let Ok((i, out)) = rx.recv() else { return };
        waiting.insert(i, out);
        while let Some(out) = waiting.remove(&next_emit) {
            if consume(next_emit, out).is_break() {
                return;
            }
            next_emit += 1;
            if next_spawn < n {
                spawn(next_spawn);
                next_spawn += 1;
            }
        }
    }
}

thread_local! {
    /// Calls of [`catch_third_party`] this thread is inside.
    static THIRD_PARTY: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs third-party decoding code that may panic on damaged input
/// (parquet's reader and decoders); a panic there becomes `Err(message)`.
/// Only for third-party code: a panic of runport's own code is a bug of
/// runport, and turning it into an error about the data would hide it.
pub fn catch_third_party<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            THIRD_PARTY.with(|d| d.set(d.get() - 1));
        }
    }
    THIRD_PARTY.with(|d| d.set(d.get() + 1));
    let _depth = Depth;
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_text(&*p))
}

/// Whether this thread runs inside [`catch_third_party`], whose panics
/// become errors: a panic hook (a fuzz target's) may stay quiet there and
/// must treat every other panic as a failure.
pub fn in_third_party_code() -> bool {
    THIRD_PARTY.with(|d| d.get() > 0)
}

/// The message of a caught panic.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn third_party_panics_become_errors_inside_the_guard_only() {
        assert!(!in_third_party_code());
        let e = catch_third_party(|| -> u32 {
            assert!(in_third_party_code());
            panic!("decoder")
        });
        assert_eq!(e, Err("decoder".to_string()));
        assert!(!in_third_party_code(), "the guard is left after a panic");
        assert_eq!(catch_third_party(|| catch_third_party(|| 7)), Ok(Ok(7)));
        assert!(!in_third_party_code());
    }

    #[test]
    fn results_arrive_in_order_with_bounded_window() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let (f, m) = (Arc::clone(&in_flight), Arc::clone(&max_seen));
        let mut got = Vec::new();
        for_each_run(
            50,
            2,
            4,
            move |i| {
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                // Later runs finish first sometimes.
                std::thread::sleep(std::time::Duration::from_micros(((50 - i) % 7) as u64 * 200));
                i * 10
            },
            |i, r| {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                got.push((i, r.unwrap()));
                ControlFlow::Continue(())
            },
        );
        assert_eq!(got, (0..50).map(|i| (i, i * 10)).collect::<Vec<_>>());
        assert!(max_seen.load(Ordering::SeqCst) <= 4, "window exceeded: {}", max_seen.load(Ordering::SeqCst));
    }

    #[test]
    fn panics_become_errors_and_break_stops() {
        let mut seen = Vec::new();
        for_each_run(
            10,
            2,
            2,
            |i| {
                if i == 3 {
                    panic!("boom at {i}");
                }
                i
            },
            |i, r| {
                seen.push((i, r.clone()));
                if r.is_err() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            },
        );
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[3], (3, Err("boom at 3".to_string())));
    }
}
