//! The pipeline of network sources: the whole listing (a few pages) → runs
//! sorted by id → per-run fetches (async, bounded by the HTTP limit) →
//! decoding and Arrow building (blocking pool) → the caller's consumer, in
//! run-id order.
//!
//! At most `window` runs are in flight or waiting for the consumer: a run's
//! slot is freed only once consumed, so memory stays flat however many runs
//! the source holds. The consumer runs on the calling thread.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use std::future::Future;

use crate::error::{Error, Result};
use crate::pipeline::{HistoryEncoding, ReadRun};
use crate::plan::FetchPlan;
use crate::run::RunData;

/// The outcome of a listing: each run, or its id and why it could not be
/// listed; and how the listing ended when it did not end normally.
pub type Listing<L> = (Vec<Result<L, (String, String)>>, Option<ListingError>);

/// A source read over the network: a listing, then one read per run.
pub trait RemoteSource: Send + Sync + 'static {
    /// A run as the listing gives it.
    type Listed: Send + 'static;

    /// The whole listing.
    fn list(self: Arc<Self>, plan: Arc<FetchPlan>) -> impl Future<Output = Listing<Self::Listed>> + Send;

    fn run_id(listed: &Self::Listed) -> &str;

    /// Everything the plan needs of one run (CPU work on the blocking pool).
    fn read(
        self: Arc<Self>,
        plan: Arc<FetchPlan>,
        listed: Self::Listed,
    ) -> impl Future<Output = Result<RunData, String>> + Send;
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

/// Lists and reads every run; calls `consume(label, result)` in listing order.
/// Returns how the listing ended.
pub fn read_runs<S: RemoteSource>(
    api: &Arc<S>,
    plan: &Arc<FetchPlan>,
    window: usize,
    encoding: Option<Arc<HistoryEncoding>>,
    mut consume: impl FnMut(&str, Result<ReadRun, String>) -> ControlFlow<()>,
) -> Result<Option<ListingError>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("runport-io")
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the I/O runtime: {e}")))?;
    let window = window.max(1);
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::channel::<Delivered>(window);
        let slots = Arc::new(Semaphore::new(window));
        let producer = tokio::spawn(produce(Arc::clone(api), Arc::clone(plan), encoding, tx, slots));
        let mut next = 0usize;
        let mut waiting: BTreeMap<usize, Delivered> = BTreeMap::new();
        let mut stopped = false;
        while let Some(d) = rx.recv().await {
            waiting.insert(d.0, d);
            while let Some((_, label, result, permit)) = waiting.remove(&next) {
                next += 1;
                let flow = consume(&label, result);
                drop(permit);
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
            Err(e) => Err(Error::Usage(format!("internal error in the listing task: {e}"))),
        }
    })
}

async fn produce<S: RemoteSource>(
    api: Arc<S>,
    plan: Arc<FetchPlan>,
    encoding: Option<Arc<HistoryEncoding>>,
    tx: mpsc::Sender<Delivered>,
    slots: Arc<Semaphore>,
) -> Option<ListingError> {
    let (mut listed, cut) = Arc::clone(&api).list(Arc::clone(&plan)).await;
    if let Some(ListingError::Unreadable(e)) = cut {
        return Some(ListingError::Unreadable(e));
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
        let tx = tx.clone();
        match listed {
            Err((id, error)) => {
                let _ = tx.send((i, id, Err(error), permit)).await;
            }
            Ok(listed) => {
                let (api, plan, encoding) = (Arc::clone(&api), Arc::clone(&plan), encoding.clone());
                tokio::spawn(async move {
                    let label = S::run_id(&listed).to_string();
                    let result = match api.read(plan, listed).await {
                        Ok(data) => tokio::task::spawn_blocking(move || ReadRun::encode(data, encoding.as_deref()))
                            .await
                            .unwrap_or_else(|e| Err(format!("internal error while encoding: {e}"))),
                        Err(e) => Err(e),
                    };
                    let _ = tx.send((i, label, result, permit)).await;
                });
            }
        }
    }
    cut
}
