//! The two ways a [`super::Source`] reads its runs into the pipeline: local
//! sources read each run on the CPU pool ([`crate::pipeline::for_each_run`]),
//! network sources go through the async pipeline ([`crate::remote`]). Both
//! hand runs over in run-id order and turn a panic into a failure of its run.

use std::sync::Arc;

use super::{ConsumeRun, RecordCounts, Source};
use crate::error::{Error, Result};
use crate::export::RunFailure;
use crate::http::{Http, HttpCounts};
use crate::pipeline::{HistorySink, HistoryTarget, for_each_run};
use crate::plan::FetchPlan;
use crate::remote::{self, ListingError, RemoteSource};
use crate::run::RunData;

/// A local source's runs, all known once it is opened.
pub trait LocalRuns: Send + Sync + 'static {
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of run `i` (its label in failures).
    fn run_id(&self, i: usize) -> &str;

    /// Reads run `i` with `plan`, counting the records it took, handing its
    /// history to `sink` in chunks (see [`HistorySink`]). `from`: where a
    /// table's history of the run stands; a source that can read only the
    /// later history does, and says so in the run's `history_mark`.
    fn read(
        &self,
        i: usize,
        plan: &FetchPlan,
        from: Option<&super::SyncMark>,
        counts: &mut RecordCounts,
        sink: &mut HistorySink,
    ) -> Result<RunData, String>;

    /// What `runport plan` shows and the manifest records (asks nothing).
    fn describe_plan(&self, plan: &FetchPlan) -> serde_json::Value;

    /// Run `i`'s change fingerprint, from what opening the source found
    /// (`runport sync`); `None`: the source has none.
    fn fingerprint(&self, _i: usize) -> Option<String> {
        None
    }
}

/// `[name, size, modification time in ns]` of a file, as fingerprints hold
/// it (0 for what cannot be read).
pub fn file_mark(name: &str, path: &std::path::Path) -> serde_json::Value {
    let meta = std::fs::metadata(path).ok();
    let mtime = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    serde_json::json!([name, meta.map_or(0, |m| m.len()), mtime])
}

/// [`file_mark`] of each of `files`, named by its file name.
pub fn file_marks(files: &[std::path::PathBuf]) -> Vec<serde_json::Value> {
    files
        .iter()
        .map(|f| file_mark(&f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), f))
        .collect()
}

/// A local source: its runs read on the CPU pool.
pub struct Local<L>(pub Arc<L>);

impl<L: LocalRuns> Source for Local<L> {
    fn describe_plan(&self, plan: &FetchPlan) -> Result<serde_json::Value> {
        Ok(self.0.describe_plan(plan))
    }

    fn manifest_plan(&self, plan: &FetchPlan) -> serde_json::Value {
        self.0.describe_plan(plan)
    }

    fn run_count(&self) -> Option<usize> {
        Some(self.0.len())
    }

    fn read_runs(
        &self,
        plan: &Arc<FetchPlan>,
        concurrency: usize,
        target: Option<Arc<HistoryTarget>>,
        consume: &mut ConsumeRun<'_>,
    ) -> Result<Option<RunFailure>> {
        read_local(&self.0, (0..self.0.len()).map(|i| (i, None)).collect(), plan, concurrency, target, consume);
        Ok(None)
    }

    fn fingerprints(&self, _plan: &Arc<FetchPlan>) -> Result<Option<Vec<(String, String)>>> {
        Ok((0..self.0.len())
            .map(|i| self.0.fingerprint(i).map(|f| (self.0.run_id(i).to_string(), f)))
            .collect::<Option<Vec<_>>>())
    }

    fn read_only(
        &self,
        plan: &Arc<FetchPlan>,
        concurrency: usize,
        target: Option<Arc<HistoryTarget>>,
        only: &std::collections::HashMap<String, Option<super::SyncMark>>,
        consume: &mut ConsumeRun<'_>,
    ) -> Result<Option<RunFailure>> {
        let indices =
            (0..self.0.len()).filter_map(|i| only.get(self.0.run_id(i)).map(|mark| (i, mark.clone()))).collect();
        read_local(&self.0, indices, plan, concurrency, target, consume);
        Ok(None)
    }
}

/// A network source: what the [`Source`] trait needs beyond [`RemoteSource`].
pub trait NetworkSource: RemoteSource {
    /// Names a failed listing page in failures (`listing page`, `runs/search page`).
    const PAGE_LABEL: &'static str;

    /// The source as errors name it.
    fn name(&self) -> String;

    /// Every request goes through this client (its counters are the source's).
    fn http(&self) -> &Http;

    /// What `runport plan` shows (may send a request, e.g. for a run count).
    fn describe_plan(&self, plan: &FetchPlan) -> Result<serde_json::Value, String>;

    /// The plan as recorded in the manifest (asks nothing).
    fn manifest_plan(&self, plan: &FetchPlan) -> serde_json::Value;
}

/// A network source: its runs read with the async pipeline, on one runtime
/// for the source's life (its HTTP connections belong to it).
pub struct Network<S: RemoteSource> {
    api: Arc<S>,
    rt: std::sync::OnceLock<tokio::runtime::Runtime>,
    /// The listing a sync took its fingerprints from, read from again.
    listed: std::sync::Mutex<Option<remote::ListedRuns<S::Listed>>>,
}

impl<S: NetworkSource> Network<S> {
    pub fn new(api: S) -> Network<S> {
        Network { api: Arc::new(api), rt: std::sync::OnceLock::new(), listed: std::sync::Mutex::new(None) }
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime> {
        if self.rt.get().is_none() {
            let _ = self.rt.set(remote::io_runtime()?);
        }
        Ok(self.rt.get().expect("invariant: just set"))
    }

    fn read(
        &self,
        plan: &Arc<FetchPlan>,
        listing: Option<remote::Listing<S::Listed>>,
        concurrency: usize,
        target: Option<Arc<HistoryTarget>>,
        consume: &mut ConsumeRun<'_>,
    ) -> Result<Option<RunFailure>> {
        // Runs in flight or waiting: enough to keep the requests busy, few
        // enough that memory stays flat (a run's history is held until written).
        let window = concurrency.max(4) + 2;
        // Decoded runs (several times the size of what the server sent)
        // waiting for the writer: one per core and one more.
        let decode_ahead = super::cpu_count() + 1;
        let outcome = remote::read_runs(
            self.runtime()?,
            &self.api,
            plan,
            listing,
            window,
            decode_ahead,
            target,
            |label, run| consume(label, run, RecordCounts::default()),
        )?;
        match outcome {
            None => Ok(None),
            Some(ListingError::Unreadable(e)) => Err(Error::source(self.api.name(), e)),
            Some(ListingError::Cut { page, error }) => Ok(Some(RunFailure {
                run: format!("{} {page} and later", S::PAGE_LABEL),
                stage: "listing".into(),
                error,
            })),
        }
    }
}

impl<S: RemoteSource> Drop for Network<S> {
    fn drop(&mut self) {
        // Not from within an async context: shut the runtime down in the background.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl<S: NetworkSource> Source for Network<S> {
    fn describe_plan(&self, plan: &FetchPlan) -> Result<serde_json::Value> {
        self.api.describe_plan(plan).map_err(|e| Error::source(self.api.name(), e))
    }

    fn manifest_plan(&self, plan: &FetchPlan) -> serde_json::Value {
        self.api.manifest_plan(plan)
    }

    fn run_count(&self) -> Option<usize> {
        None
    }

    fn http_counts(&self) -> Option<HttpCounts> {
        Some(self.api.http().stats.snapshot())
    }

    fn read_runs(
        &self,
        plan: &Arc<FetchPlan>,
        concurrency: usize,
        target: Option<Arc<HistoryTarget>>,
        consume: &mut ConsumeRun<'_>,
    ) -> Result<Option<RunFailure>> {
        self.read(plan, None, concurrency, target, consume)
    }

    /// The whole listing (a sync must see deletions), kept for
    /// [`Source::read_only`]. A listing cut short fails the sync: runs
    /// missing from it are not gone.
    fn fingerprints(&self, plan: &Arc<FetchPlan>) -> Result<Option<Vec<(String, String)>>> {
        let (listed, cut) = self.runtime()?.block_on(Arc::clone(&self.api).list(Arc::clone(plan)));
        match cut {
            None => {}
            Some(ListingError::Unreadable(e)) => return Err(Error::source(self.api.name(), e)),
            Some(ListingError::Cut { page, error }) => {
                return Err(Error::source(
                    self.api.name(),
                    format!("{} {page} failed, so the listing is incomplete: {error}", S::PAGE_LABEL),
                ));
            }
        }
        let mut out = Vec::with_capacity(listed.len());
        for r in &listed {
            out.push(match r {
                Ok(l) => match S::fingerprint(l) {
                    Some(f) => (S::run_id(l).to_string(), f),
                    None => return Ok(None),
                },
                // Listed but unreadable: read again (and failed, keeping the table's rows).
                Err((id, _)) => (id.clone(), String::new()),
            });
        }
        *self.listed.lock().unwrap_or_else(|e| e.into_inner()) = Some(listed);
        Ok(Some(out))
    }

    fn read_only(
        &self,
        plan: &Arc<FetchPlan>,
        concurrency: usize,
        target: Option<Arc<HistoryTarget>>,
        only: &std::collections::HashMap<String, Option<super::SyncMark>>,
        consume: &mut ConsumeRun<'_>,
    ) -> Result<Option<RunFailure>> {
        let listed = self.listed.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| {
            Error::Internal("read_only before fingerprints: the listing to read from is missing".into())
        })?;
        let kept = listed
            .into_iter()
            .filter(|r| match r {
                Ok(l) => only.contains_key(S::run_id(l)),
                Err((id, _)) => only.contains_key(id),
            })
            .map(|r| {
                r.map(|mut l| {
                    if let Some(Some(mark)) = only.get(S::run_id(&l)) {
                        S::continue_history(&mut l, mark.clone());
                    }
                    l
                })
            })
            .collect();
        self.read(plan, Some((kept, None)), concurrency, target, consume)
    }
}

/// Reads every run of a local source on `concurrency` CPU threads.
fn read_local<L: LocalRuns>(
    runs: &Arc<L>,
    indices: Vec<(usize, Option<super::SyncMark>)>,
    plan: &Arc<FetchPlan>,
    concurrency: usize,
    target: Option<Arc<HistoryTarget>>,
    consume: &mut ConsumeRun<'_>,
) {
    let (reader, plan) = (Arc::clone(runs), Arc::clone(plan));
    let indices = Arc::new(indices);
    let at = Arc::clone(&indices);
    let work = move |n: usize| {
        let (i, from) = &at[n];
        let mut counts = RecordCounts::default();
        let mut sink = HistorySink::new(target.clone(), reader.run_id(*i));
        let out = reader.read(*i, &plan, from.as_ref(), &mut counts, &mut sink).and_then(|data| sink.finish(data));
        (out, counts)
    };
    let workers = concurrency.max(1);
    for_each_run(indices.len(), workers, workers * 2, work, |n, out| match out {
        Ok((run, counts)) => consume(runs.run_id(indices[n].0), run, counts),
        Err(panic) => {
            consume(runs.run_id(indices[n].0), Err(format!("internal error: {panic}")), RecordCounts::default())
        }
    });
}
