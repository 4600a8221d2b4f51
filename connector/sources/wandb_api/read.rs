//! The API pipeline: listing pages (sequential, cursor-paged) → history
//! fetches (async, bounded by the HTTP limit) → decoding and Arrow building
//! (blocking pool) → the caller's consumer, in listing order.
//!
//! At most `window` runs are in flight or waiting for the consumer: a run's
//! slot is freed only once consumed, so memory stays flat however many runs
//! the project holds. The consumer runs on the calling thread.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::WandbApi;
use super::queries::ListingFields;
use crate::error::{Error, Result};
use crate::pipeline::{HistoryEncoding, ReadRun};
use crate::plan::FetchPlan;

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
pub fn read_runs(
    api: &Arc<WandbApi>,
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

async fn produce(
    api: Arc<WandbApi>,
    plan: Arc<FetchPlan>,
    encoding: Option<Arc<HistoryEncoding>>,
    tx: mpsc::Sender<Delivered>,
    slots: Arc<Semaphore>,
) -> Option<ListingError> {
    let fields = ListingFields::from_plan(&plan);
    let document = fields.document();
    // The whole listing first (a few requests): runs are then read in
    // run-id order, the order of the dataset's files.
    let mut cursor: Option<String> = None;
    let mut page = 1usize;
    let mut listed = Vec::new();
    let mut cut = None;
    loop {
        match api.list_page(&fields, &document, cursor.as_deref(), page, &plan).await {
            Ok((runs, next, _total)) => {
                listed.extend(runs);
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            Err(error) if page == 1 => return Some(ListingError::Unreadable(error)),
            Err(error) => {
                cut = Some(ListingError::Cut { page, error });
                break;
            }
        }
        page += 1;
    }
    let id_of = |r: &Result<super::listing::ListedRun, (String, String)>| match r {
        Ok(l) => l.data.identity.run_id.clone(),
        Err((id, _)) => id.clone(),
    };
    listed.sort_by_key(id_of);
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
                    let label = listed.data.identity.run_id.clone();
                    let result = read_one(&api, &plan, encoding, listed).await;
                    let _ = tx.send((i, label, result, permit)).await;
                });
            }
        }
    }
    cut
}

async fn read_one(
    api: &WandbApi,
    plan: &Arc<FetchPlan>,
    encoding: Option<Arc<HistoryEncoding>>,
    listed: super::listing::ListedRun,
) -> Result<ReadRun, String> {
    if !api.needs_history(plan, &listed) {
        // No history request for this run; an empty history when history was asked.
        let mut data = listed.data;
        if plan.history {
            data.history = Some(Default::default());
        }
        return ReadRun::encode(data, encoding.as_deref());
    }
    let fetched = api.fetch_history(plan, &listed).await?;
    let plan = Arc::clone(plan);
    let mut data = listed.data;
    tokio::task::spawn_blocking(move || {
        fetched.decode(&plan, &mut data)?;
        ReadRun::encode(data, encoding.as_deref())
    })
    .await
    .map_err(|e| format!("internal error while decoding history: {e}"))?
}
