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

use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;

use crate::columns::ColumnKind;

use crate::output::history::{kinds_by_key, long_batch, wide_batch};
use crate::output::spill::{SpillDir, SpillWriter, SpilledHistory};
use crate::run::{RunData, RunHistory};

/// One run as read, with its history already encoded when asked.
pub struct ReadRun {
    pub data: RunData,
    pub history: EncodedHistory,
}

/// A run's history as the writer gets it.
pub enum EncodedHistory {
    /// Not asked for (or the run has none).
    None,
    /// The whole run in one batch (a run that fits in one chunk).
    Batch(RecordBatch),
    /// A run larger than one chunk, waiting in a spill file.
    Spilled(SpilledHistory),
    /// [`HistoryEncoding::Kinds`]: the kinds of the run's keys.
    Kinds(BTreeMap<String, ColumnKind>),
}

/// How history becomes Arrow: the long layout, or the wide one with its
/// column kinds; or only the kinds of the keys (the wide layout's first pass).
pub enum HistoryEncoding {
    Long(SchemaRef),
    Wide(SchemaRef, BTreeMap<String, ColumnKind>),
    Kinds,
}

impl HistoryEncoding {
    pub fn batch(&self, run_id: &str, h: &RunHistory) -> crate::error::Result<RecordBatch> {
        match self {
            HistoryEncoding::Long(s) => long_batch(s, run_id, h),
            HistoryEncoding::Wide(s, kinds) => wide_batch(s, kinds, run_id, h),
            HistoryEncoding::Kinds => Err(crate::error::Error::Internal("no batch for key kinds".into())),
        }
    }
}

/// What the readers do with history: the encoding, the size of a chunk, and
/// where runs larger than a chunk are spilled.
pub struct HistoryTarget {
    pub encoding: HistoryEncoding,
    /// A run's history is handed over in chunks of about this many bytes
    /// (as held by the source: rows, points, series).
    pub chunk_bytes: usize,
    /// Where runs larger than a chunk go, and downloads past a run's share
    /// of memory; `None` only for [`HistoryEncoding::Kinds`], which keeps no
    /// rows (downloads then go to anonymous temporary files).
    pub spill: Option<Arc<SpillDir>>,
}

impl HistoryTarget {
    /// Bytes of fetched answers (history files, pages) one run may hold in
    /// memory before they go to a temporary file: a quarter of a chunk, since
    /// a network source has many runs in flight (18 by default) and each
    /// holds its answers until it is decoded.
    pub fn answer_bytes(&self) -> usize {
        self.chunk_bytes / 4
    }
}

/// Bytes of a [`HistoryPoint`] as held, beyond its value's own heap data.
const POINT_BYTES: usize = std::mem::size_of::<crate::run::HistoryPoint>();
const ROW_BYTES: usize = std::mem::size_of::<crate::run::HistoryRow>();
/// Bytes of one value in the long layout's Arrow columns (step, timestamp,
/// runtime, value, the JSON offset, validity bits).
const LONG_VALUE_BYTES: usize = 4 * 8 + 4 + 1;

/// About how many bytes `h` takes: as held (rows, points, series) and once
/// encoded (every value a long row of its own, repeating its row's fields).
pub fn history_bytes(h: &RunHistory) -> usize {
    let series_values: usize = h.series.iter().map(|s| s.values.len()).sum();
    h.rows.len() * ROW_BYTES
        + h.points.len() * (POINT_BYTES + LONG_VALUE_BYTES)
        + h.series.iter().map(|s| s.values.get_buffer_memory_size()).sum::<usize>()
        + series_values * LONG_VALUE_BYTES
}

/// Where a source hands a run's history as it reads it: in chunks of whole
/// rows, so that no run is held whole, whatever its size.
///
/// A source builds its [`RunHistory`] as before and calls
/// [`HistorySink::flush_if_full`] between rows (never inside one: a row's
/// values must all be in one chunk). A flush takes the rows, points and
/// series out of the history and keeps its keys, so key ids stay valid: the
/// keys of a later chunk extend those of an earlier one. What is left when
/// the source returns is the last chunk.
pub struct HistorySink {
    target: Option<Arc<HistoryTarget>>,
    run_id: String,
    spill: Option<SpillThread>,
    /// [`HistoryEncoding::Kinds`]: the kinds so far, by key id.
    kinds: Vec<Option<ColumnKind>>,
    chunks: usize,
}

impl HistorySink {
    pub fn new(target: Option<Arc<HistoryTarget>>, run_id: &str) -> HistorySink {
        HistorySink { target, run_id: run_id.to_string(), spill: None, kinds: Vec::new(), chunks: 0 }
    }

    /// A sink that never takes a chunk: the run's history stays whole in
    /// its [`RunData`] (tests, and callers that want the whole history).
    pub fn whole() -> HistorySink {
        HistorySink::new(None, "")
    }

    /// Whether `h` holds a chunk's worth.
    pub fn is_full(&self, h: &RunHistory) -> bool {
        self.target.as_ref().is_some_and(|t| history_bytes(h) >= t.chunk_bytes)
    }

    /// Hands over `h` as one chunk when it holds a chunk's worth.
    pub fn flush_if_full(&mut self, h: &mut RunHistory) -> Result<(), String> {
        if self.is_full(h) { self.flush(h) } else { Ok(()) }
    }

    /// Hands over `h`'s rows as one chunk (its keys stay).
    pub fn flush(&mut self, h: &mut RunHistory) -> Result<(), String> {
        let Some(target) = self.target.clone() else { return Ok(()) };
        if h.rows.is_empty() && h.points.is_empty() && h.series.is_empty() {
            return Ok(());
        }
        self.chunks += 1;
        if let HistoryEncoding::Kinds = target.encoding {
            self.add_kinds(h);
            h.rows.clear();
            h.points.clear();
            h.series.clear();
            return Ok(());
        }
        // The chunk goes to the spill thread; vectors it has emptied come
        // back for the next chunk.
        let spill = match &mut self.spill {
            Some(s) => s,
            None => self.spill.insert(SpillThread::start(Arc::clone(&target), &self.run_id)?),
        };
        let mut next = spill.spent.try_recv().unwrap_or_default();
        next.keys = h.keys.clone();
        let chunk = std::mem::replace(h, next);
        if spill.chunks.as_ref().is_some_and(|c| c.send(chunk).is_ok()) {
            return Ok(());
        }
        // The thread stopped on an error: it is the run's.
        self.spill.take().map_or(Ok(()), |s| s.join().map(|_| ()))
    }

    fn add_kinds(&mut self, chunk: &RunHistory) {
        let kinds = kinds_by_key(chunk);
        if self.kinds.len() < kinds.len() {
            self.kinds.resize(kinds.len(), None);
        }
        for (have, new) in self.kinds.iter_mut().zip(kinds) {
            if let Some(new) = new {
                *have = Some(have.unwrap_or(ColumnKind::Null).unify(new));
            }
        }
    }

    /// Completes the run: its history as the writer takes it (the last
    /// chunk is what is left in `data.history`).
    pub fn finish(mut self, mut data: RunData) -> Result<ReadRun, String> {
        let Some(target) = self.target.clone() else {
            return Ok(ReadRun { data, history: EncodedHistory::None });
        };
        let Some(mut h) = data.history.take() else {
            return Ok(ReadRun { data, history: EncodedHistory::None });
        };
        self.run_id.clone_from(&data.identity.run_id);
        let history = match &target.encoding {
            HistoryEncoding::Kinds => {
                self.flush(&mut h)?;
                let mut kinds = BTreeMap::new();
                for (key, kind) in h.keys.iter().zip(&self.kinds) {
                    if let Some(kind) = kind {
                        let k = kinds.entry(key.clone()).or_insert(ColumnKind::Null);
                        *k = k.unify(*kind);
                    }
                }
                EncodedHistory::Kinds(kinds)
            }
            _ if self.spill.is_none() => {
                EncodedHistory::Batch(target.encoding.batch(&data.identity.run_id, &h).map_err(|e| e.to_string())?)
            }
            _ => {
                self.flush(&mut h)?;
                let spill = self.spill.take().ok_or("the spill of the run stopped")?.join()?;
                EncodedHistory::Spilled(spill.finish(&self.run_id, h.keys).map_err(|e| e.to_string())?)
            }
        };
        Ok(ReadRun { data, history })
    }

    /// Chunks handed over so far.
    pub fn chunks(&self) -> usize {
        self.chunks
    }
}

/// A run's chunks being spilled on a thread of their own: the source reads
/// the next chunk while the last one is sorted and written. One chunk waits
/// at most, so a spilling run holds about three chunks.
struct SpillThread {
    chunks: Option<crossbeam_channel::Sender<RunHistory>>,
    /// Chunks written, their vectors emptied for reuse.
    spent: crossbeam_channel::Receiver<RunHistory>,
    thread: std::thread::JoinHandle<crate::error::Result<SpillWriter>>,
}

impl SpillThread {
    fn start(target: Arc<HistoryTarget>, run_id: &str) -> Result<SpillThread, String> {
        let dir = target
            .spill
            .clone()
            .ok_or_else(|| format!("run {run_id}: a history chunk to spill, and no spill folder"))?;
        let wide = match &target.encoding {
            HistoryEncoding::Wide(schema, _) => Some(Arc::clone(schema)),
            _ => None,
        };
        let mut writer = SpillWriter::create(&dir, wide.as_ref()).map_err(|e| e.to_string())?;
        let (tx, rx) = crossbeam_channel::bounded::<RunHistory>(1);
        let (spent_tx, spent) = crossbeam_channel::bounded::<RunHistory>(2);
        let run = run_id.to_string();
        let thread = std::thread::Builder::new()
            .name("runport-spill".into())
            .spawn(move || {
                for mut chunk in rx {
                    match &target.encoding {
                        HistoryEncoding::Long(_) => writer.write_long(&run, &chunk)?,
                        HistoryEncoding::Wide(schema, kinds) => {
                            writer.write_wide(&wide_batch(schema, kinds, &run, &chunk)?)?
                        }
                        HistoryEncoding::Kinds => {}
                    }
                    chunk.rows.clear();
                    chunk.points.clear();
                    chunk.series.clear();
                    let _ = spent_tx.try_send(chunk);
                }
                Ok(writer)
            })
            .map_err(|e| format!("run {run_id}: cannot start a thread to spill its history: {e}"))?;
        Ok(SpillThread { chunks: Some(tx), spent, thread })
    }

    /// Waits for the chunks sent to be written.
    fn join(mut self) -> Result<SpillWriter, String> {
        drop(self.chunks.take());
        match self.thread.join() {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(p) => std::panic::resume_unwind(p),
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
