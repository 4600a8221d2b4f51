//! The pipeline of network sources: the whole listing (a few pages) → runs
//! sorted by id → per-run fetches (async, bounded by the HTTP limit) →
//! decoding and Arrow building (rayon's pool, shared with the writer's
//! encoders) → the caller's consumer, in run-id order.
//!
//! At most `window` runs are in flight or waiting for the consumer: a run's
//! slot is freed only once consumed, so memory stays flat however many runs
//! the source holds. Fetched runs wait as the bytes the server sent; a run is
//! decoded only when it is among the next `decode_ahead` runs the consumer
//! will take, so at most that many decoded runs (the large form) exist at
//! once, and the run the consumer waits for is never kept from decoding. The
//! consumer runs on the calling thread.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use std::future::Future;

use crate::error::{Error, Result};
use crate::pipeline::{HistorySink, HistoryTarget, ReadRun, panic_text};
use crate::plan::FetchPlan;
use crate::run::RunData;

/// The outcome of a listing: each run, or its id and why it could not be
/// listed; and how the listing ended when it did not end normally.
pub type Listing<L> = (ListedRuns<L>, Option<ListingError>);

/// Each listed run, or its id and why it could not be listed.
pub type ListedRuns<L> = Vec<Result<L, (String, String)>>;

/// A source read over the network: a listing, then one read per run.
pub trait RemoteSource: Send + Sync + 'static {
    /// A run as the listing gives it.
    type Listed: Send + 'static;

    /// The whole listing.
    fn list(self: Arc<Self>, plan: Arc<FetchPlan>) -> impl Future<Output = Listing<Self::Listed>> + Send;

    /// A run as fetched, before decoding (the server's bytes).
    type Fetched: Send + 'static;

    fn run_id(listed: &Self::Listed) -> &str;

    /// `runport sync`: a listed run's change fingerprint, from the listing
    /// alone; `None` when the source cannot tell.
    fn fingerprint(_listed: &Self::Listed) -> Option<String> {
        None
    }

    /// `runport sync`: the table holds `listed`'s history up to `mark`;
    /// a source that can fetch only later steps notes it in `listed`.
    fn continue_history(_listed: &mut Self::Listed, _mark: crate::sources::SyncMark) {}

    /// Called with the runs about to be fetched (the whole listing, or the
    /// part a sync reads), before any fetch: plans requests that span runs.
    fn prepare(&self, _plan: &FetchPlan, _listed: &[&Self::Listed]) {}

    /// Every request the plan needs for one run. Answers larger than a
    /// history chunk (`target.chunk_bytes`) go to temporary files in
    /// `target.spill` (see [`crate::output::spill::SpillDir::temp_file`]),
    /// not memory.
    fn fetch(
        self: Arc<Self>,
        plan: Arc<FetchPlan>,
        listed: Self::Listed,
        target: Option<Arc<HistoryTarget>>,
    ) -> impl Future<Output = Result<Self::Fetched, String>> + Send;

    /// The CPU stage: the fetched run as [`RunData`] (runs on rayon's pool).
    /// It hands the run's history to `sink` in chunks (see [`HistorySink`]).
    fn decode(&self, plan: &FetchPlan, fetched: Self::Fetched, sink: &mut HistorySink) -> Result<RunData, String>;
}

/// One run's outcome, with its slot.
type Delivered = (usize, String, Result<ReadRun, String>, OwnedSemaphorePermit);

/// What went wrong with the listing itself.
#[derive(Debug)]
pub enum ListingError {
    /// The first page failed: the source cannot be read.
    Unreadable(String),
    /// A later page failed after retries: runs after it are missing.
    Cut { page: usize, error: String },
}

/// The runtime network sources run on (two I/O threads).
pub fn io_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("runport-io")
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the I/O runtime: {e}")))
}

/// Lists and reads every run (or, with `listing`, the runs of a listing
/// made before, on the same runtime); calls `consume(label, result)` in
/// run-id order. Returns how the listing ended.
#[allow(clippy::too_many_arguments)]
pub fn read_runs<S: RemoteSource>(
    rt: &tokio::runtime::Runtime,
    api: &Arc<S>,
    plan: &Arc<FetchPlan>,
    listing: Option<Listing<S::Listed>>,
    window: usize,
    decode_ahead: usize,
    target: Option<Arc<HistoryTarget>>,
    mut consume: impl FnMut(&str, Result<ReadRun, String>) -> ControlFlow<()>,
) -> Result<Option<ListingError>> {
    let window = window.max(1);
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::channel::<Delivered>(window);
        let slots = Arc::new(Semaphore::new(window));
        let (consumed_tx, consumed) = watch::channel(0usize);
        let order = Order { consumed, ahead: decode_ahead.max(1) };
        let producer = tokio::spawn(produce(Arc::clone(api), Arc::clone(plan), listing, target, tx, slots, order));
        let mut next = 0usize;
        let mut waiting: BTreeMap<usize, Delivered> = BTreeMap::new();
        let mut stopped = false;
        while let Some(d) = rx.recv().await {
            waiting.insert(d.0, d);
            while let Some((_, label, result, permit)) = waiting.remove(&next) {
                next += 1;
                let flow = consume(&label, result);
                drop(permit);
                consumed_tx.send_replace(next);
                if flow.is_break() {
                    stopped = true;
                    break;
                }
            }
            if stopped {
                break;
            }
        }
        if stopped {
            producer.abort();
            return Ok(None);
        }
        match producer.await {
            Ok(outcome) => Ok(outcome),
            Err(e) => Err(Error::Internal(format!("the listing task stopped: {e}"))),
        }
    })
}

/// A run's place in the consumer's order: every listed run is delivered
/// exactly once, as read or as failed. When the task holding it ends without
/// sending (a panic in a fetch, a task that was dropped), the drop delivers
/// the run as failed, so the consumer never waits for it and never skips it.
struct Delivery {
    i: usize,
    label: String,
    slot: Option<(OwnedSemaphorePermit, mpsc::Sender<Delivered>)>,
}

impl Delivery {
    fn new(i: usize, label: String, permit: OwnedSemaphorePermit, tx: mpsc::Sender<Delivered>) -> Delivery {
        Delivery { i, label, slot: Some((permit, tx)) }
    }

    async fn send(mut self, result: Result<ReadRun, String>) {
        if let Some((permit, tx)) = self.slot.take() {
            let _ = tx.send((self.i, std::mem::take(&mut self.label), result, permit)).await;
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some((permit, tx)) = self.slot.take() {
            // The channel holds as many messages as there are slots, and this
            // one's slot is held here, so there is room.
            let error = "internal error: the run's fetch stopped without an answer (a panic; see stderr)".to_string();
            let _ = tx.try_send((self.i, std::mem::take(&mut self.label), Err(error), permit));
        }
    }
}

/// Ordered admission to the decoding stage: run `i` decodes once fewer than
/// `ahead` runs before it are still to be consumed.
#[derive(Clone)]
struct Order {
    consumed: watch::Receiver<usize>,
    ahead: usize,
}

impl Order {
    /// Waits until run `i` may decode; `false` when the consumer has stopped.
    async fn admit(mut self, i: usize) -> bool {
        let ahead = self.ahead;
        self.consumed.wait_for(|&n| i < n + ahead).await.is_ok()
    }
}

async fn produce<S: RemoteSource>(
    api: Arc<S>,
    plan: Arc<FetchPlan>,
    listing: Option<Listing<S::Listed>>,
    target: Option<Arc<HistoryTarget>>,
    tx: mpsc::Sender<Delivered>,
    slots: Arc<Semaphore>,
    order: Order,
) -> Option<ListingError> {
    let (mut listed, cut) = match listing {
        Some(listing) => listing,
        None => Arc::clone(&api).list(Arc::clone(&plan)).await,
    };
    if let Some(ListingError::Unreadable(e)) = cut {
        return Some(ListingError::Unreadable(e));
    }
    {
        let ready: Vec<&S::Listed> = listed.iter().filter_map(|r| r.as_ref().ok()).collect();
        api.prepare(&plan, &ready);
    }
    // Runs are read in run-id order, the order of the dataset's files.
    listed.sort_by(|a, b| {
        let id = |r: &Result<S::Listed, (String, String)>| match r {
            Ok(l) => S::run_id(l).to_string(),
            Err((id, _)) => id.clone(),
        };
        id(a).cmp(&id(b))
    });
    for (i, listed) in listed.into_iter().enumerate() {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return cut };
        match listed {
            Err((id, error)) => Delivery::new(i, id, permit, tx.clone()).send(Err(error)).await,
            Ok(listed) => {
                let (api, plan, target, order) = (Arc::clone(&api), Arc::clone(&plan), target.clone(), order.clone());
                let run_id = S::run_id(&listed).to_string();
                let delivery = Delivery::new(i, run_id.clone(), permit, tx.clone());
                tokio::spawn(async move {
                    let result = match Arc::clone(&api).fetch(Arc::clone(&plan), listed, target.clone()).await {
                        Ok(fetched) => {
                            if !order.admit(i).await {
                                return;
                            }
                            // On rayon's pool, the writer's encoders' too: the
                            // CPU-bound threads are as many as the cores.
                            let (done, decoded) = tokio::sync::oneshot::channel();
                            rayon::spawn(move || {
                                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    let mut sink = HistorySink::new(target, &run_id);
                                    api.decode(&plan, fetched, &mut sink).and_then(|data| sink.finish(data))
                                }));
                                let _ = done.send(result.unwrap_or_else(|panic| {
                                    Err(format!("internal error while decoding: {}", panic_text(&*panic)))
                                }));
                            });
                            decoded.await.unwrap_or_else(|_| Err("internal error: the decoder stopped".into()))
                        }
                        Err(e) => Err(e),
                    };
                    delivery.send(result).await;
                });
            }
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::HistoryLayout;
    use crate::run::RunIdentity;
    use crate::selection::Selection;
    use crate::sources::wandb_files::WANDB_IDENTITY_COLUMNS;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Runs whose fetches finish in reverse order (the last run first).
    struct Reversed {
        runs: usize,
        /// Decoded runs not consumed yet, and the most seen at once.
        live: Mutex<(usize, usize)>,
    }

    impl RemoteSource for Reversed {
        type Listed = usize;
        type Fetched = usize;

        async fn list(self: Arc<Self>, _plan: Arc<FetchPlan>) -> Listing<usize> {
            ((0..self.runs).map(Ok).collect(), None)
        }

        fn run_id(listed: &usize) -> &str {
            ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"][*listed]
        }

        async fn fetch(
            self: Arc<Self>,
            _plan: Arc<FetchPlan>,
            i: usize,
            _target: Option<Arc<HistoryTarget>>,
        ) -> Result<usize, String> {
            tokio::time::sleep(Duration::from_millis(10 * (self.runs - i) as u64)).await;
            Ok(i)
        }

        fn decode(&self, _plan: &FetchPlan, i: usize, _sink: &mut HistorySink) -> Result<RunData, String> {
            let mut live = self.live.lock().unwrap();
            live.0 += 1;
            live.1 = live.1.max(live.0);
            let identity = RunIdentity::new(Self::run_id(&i));
            Ok(RunData { identity, ..Default::default() })
        }
    }

    #[test]
    fn runs_arrive_in_order_and_decoding_stays_just_ahead_of_the_consumer() {
        let plan = Arc::new(FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS));
        for ahead in [1, 3] {
            let api = Arc::new(Reversed { runs: 10, live: Mutex::new((0, 0)) });
            let mut seen = Vec::new();
            let rt = io_runtime().unwrap();
            let outcome = read_runs(&rt, &api, &plan, None, 10, ahead, None, |label, run| {
                assert_eq!(run.unwrap().data.identity.run_id, label);
                seen.push(label.to_string());
                api.live.lock().unwrap().0 -= 1;
                ControlFlow::Continue(())
            })
            .unwrap();
            assert!(outcome.is_none());
            assert_eq!(seen, (0..10).map(|i| format!("r{i}")).collect::<Vec<_>>());
            // All ten are fetched before the first one: without ordered
            // admission all ten would be decoded at once.
            let most = api.live.lock().unwrap().1;
            assert!(most <= ahead, "{most} decoded runs waited at once with decode_ahead {ahead}");
        }
    }

    /// Runs 2 and 7 panic while fetching, run 5 while decoding.
    struct Panicky;

    impl RemoteSource for Panicky {
        type Listed = usize;
        type Fetched = usize;

        async fn list(self: Arc<Self>, _plan: Arc<FetchPlan>) -> Listing<usize> {
            ((0..10).map(Ok).collect(), None)
        }

        fn run_id(listed: &usize) -> &str {
            Reversed::run_id(listed)
        }

        async fn fetch(
            self: Arc<Self>,
            _plan: Arc<FetchPlan>,
            i: usize,
            _target: Option<Arc<HistoryTarget>>,
        ) -> Result<usize, String> {
            tokio::task::yield_now().await;
            assert!(i != 2 && i != 7, "injected fetch panic in run {i}");
            Ok(i)
        }

        fn decode(&self, _plan: &FetchPlan, i: usize, _sink: &mut HistorySink) -> Result<RunData, String> {
            assert!(i != 5, "injected decode panic in run {i}");
            Ok(RunData { identity: RunIdentity::new(Self::run_id(&i)), ..Default::default() })
        }
    }

    #[test]
    fn a_panicking_fetch_or_decode_fails_its_run_and_no_run_goes_missing() {
        let plan = Arc::new(FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS));
        for window in [1, 3, 16] {
            let mut seen = Vec::new();
            let rt = io_runtime().unwrap();
            let outcome = read_runs(&rt, &Arc::new(Panicky), &plan, None, window, 2, None, |label, run| {
                seen.push((label.to_string(), run.err()));
                ControlFlow::Continue(())
            })
            .unwrap();
            assert!(outcome.is_none());
            let labels: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
            let want: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
            assert_eq!(labels, want, "window {window}");
            for (i, (label, error)) in seen.iter().enumerate() {
                match i {
                    2 | 7 => {
                        assert!(error.as_deref().is_some_and(|e| e.contains("internal error")), "{label}: {error:?}")
                    }
                    5 => assert!(error.as_deref().is_some_and(|e| e.contains("injected decode panic")), "{error:?}"),
                    _ => assert!(error.is_none(), "{label}: {error:?}"),
                }
            }
        }
    }
}
