//! MLflow's REST API (`/api/2.0/mlflow/`): `runs/search` pages with a large
//! `max_results` ordered by start time (runs created during the export land
//! on later pages), then the selected metrics' histories, in parallel. Latest
//! metric values come from the listing.
//!
//! Histories: runs (in the run-id order they are read in) are grouped while
//! their expected points (latest step + 1, from the listing) stay under
//! [`BULK_BUDGET`], at most 100 runs. A group asks `ajax-api`'s
//! `metrics/get-history-bulk` once per key; that endpoint cuts its answer at
//! [`BULK_MAX`] rows across all runs, so an answer is used only when it holds
//! fewer rows than that (nothing was cut). Otherwise, for runs that are alone
//! in their group, or when the server lacks the endpoint,
//! `metrics/get-history` is asked per (run, key), paged. Bulk requests are
//! kept asked ahead of the runs being read (see `MlflowRest::ask_ahead`).
//!
//! A run's fetched points stay in memory up to one history chunk's worth
//! (all its keys together); past that, each page of `get-history` goes to a
//! temporary file in the spill folder as it arrives (see [`super::pages`]),
//! and the decode stage reads the file back point by point, flushing chunks
//! to the sink. Bulk answers hold fewer than [`BULK_MAX`] points and stay in
//! memory.
//!
//! Auth as the official client: `MLFLOW_TRACKING_USERNAME` and
//! `MLFLOW_TRACKING_PASSWORD` (Basic), or `MLFLOW_TRACKING_TOKEN` (Bearer).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value as Json, json};

use super::pages::{FetchBudget, FetchedSeries, HistoryPage, PagedSeries};
use super::{MetricHistoryBuilder, MetricPoint, MlflowRun, RunView, history_keys, parse_metric_value};
use crate::error::{Error, Result};
use crate::http::{Http, HttpError, RetryPolicy, build_client};
use crate::pipeline::{HistorySink, HistoryTarget};
use crate::plan::FetchPlan;
use crate::redact::redact;
use crate::remote::{Listing, ListingError, RemoteSource};
use crate::run::RunData;
use crate::sources::wandb_api::credentials::ApiKey;
use crate::value::Value;

/// Runs asked per `runs/search` page (the server allows up to 50,000).
pub const DEFAULT_MAX_RESULTS: usize = 10_000;
/// Points asked per `get-history` page.
const HISTORY_PAGE: usize = 25_000;
/// Rows `get-history-bulk` answers at most (the server's cap).
const BULK_MAX: usize = 25_000;
/// Expected points per bulk request, leaving room for estimates that are low.
const BULK_BUDGET: i64 = 20_000;
/// Runs per bulk request (the server's cap).
const BULK_RUNS: usize = 100;

#[derive(Debug, Clone)]
pub struct MlflowRestOptions {
    /// `http(s)://host:port[/prefix]`.
    pub base_url: String,
    /// `--experiment NAME|ID`; empty means every experiment in the view.
    pub experiments: Vec<String>,
    pub view: RunView,
    pub filter: Option<String>,
    pub max_results: usize,
    pub concurrency: usize,
}

#[derive(Clone)]
enum Auth {
    None,
    Basic(String, ApiKey),
    /// `http://USER:PASSWORD@HOST`: the tracking URI's own user info.
    UrlBasic(String, ApiKey),
    Bearer(ApiKey),
}

impl Auth {
    fn from_env() -> Auth {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        match (var("MLFLOW_TRACKING_USERNAME"), var("MLFLOW_TRACKING_PASSWORD"), var("MLFLOW_TRACKING_TOKEN")) {
            (Some(u), Some(p), _) => Auth::Basic(u, ApiKey::new(p)),
            (_, _, Some(t)) => Auth::Bearer(ApiKey::new(t)),
            _ => Auth::None,
        }
    }

    /// Takes the user info out of `url` (it would otherwise travel inside
    /// every URL shown in a message); it authenticates when the environment
    /// names no credentials, as the official client does.
    fn from_env_or_url(url: &mut reqwest::Url) -> Auth {
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let user = decode(url.username());
        let password = url.password().map(decode);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        match Auth::from_env() {
            Auth::None if !user.is_empty() || password.is_some() => {
                Auth::UrlBasic(user, ApiKey::new(password.unwrap_or_default()))
            }
            auth => auth,
        }
    }

    fn apply(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::None => r,
            Auth::Basic(u, p) | Auth::UrlBasic(u, p) => r.basic_auth(u, Some(p.expose())),
            Auth::Bearer(t) => r.bearer_auth(t.expose()),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Auth::None => {
                "no credentials were sent; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
            }
            Auth::Basic(..) => "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
            Auth::UrlBasic(..) => "check the user name and password in the tracking URI",
            Auth::Bearer(_) => "check MLFLOW_TRACKING_TOKEN",
        }
    }
}

/// A connected MLflow tracking server.
pub struct MlflowRest {
    pub opts: MlflowRestOptions,
    pub http: Http,
    auth: Auth,
    api: reqwest::Url,
    ajax: reqwest::Url,
    host: String,
    /// Bulk history groups (set before the first fetch).
    groups: OnceLock<Groups>,
    /// The points each listed run's histories are expected to hold.
    expected: std::sync::Mutex<HashMap<String, i64>>,
    /// Set when the server lacks `get-history-bulk`.
    no_bulk: AtomicBool,
}

/// The bulk groups in reading order, and each grouped run's group.
#[derive(Default)]
struct Groups {
    list: Vec<Arc<BulkGroup>>,
    of_run: HashMap<String, usize>,
    /// The furthest group whose runs are being read.
    reading: AtomicUsize,
}

/// Runs whose histories are asked together, one bulk request per key.
struct BulkGroup {
    /// Per metric key: the runs of the group that have it, and the answer.
    keys: HashMap<String, Arc<KeyBatch>>,
    /// Whether its requests were started ahead of its runs.
    prefetched: AtomicBool,
}

/// Points per run of one bulk answer; each run takes its own out.
type BulkAnswer = Mutex<HashMap<String, Vec<MetricPoint>>>;

struct KeyBatch {
    run_ids: Vec<String>,
    /// Points per run once asked; `None` when the answer cannot be used.
    answer: tokio::sync::OnceCell<Option<BulkAnswer>>,
}

/// An experiment: id, name, lifecycle stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Experiment {
    pub id: String,
    pub name: String,
    pub lifecycle_stage: String,
}

impl MlflowRest {
    pub fn connect(opts: MlflowRestOptions) -> Result<MlflowRest> {
        let mut base = reqwest::Url::parse(&opts.base_url)
            .map_err(|e| Error::Usage(format!("MLflow tracking URI {}: {e}", redact(&opts.base_url))))?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let auth = Auth::from_env_or_url(&mut base);
        let api = base.join("api/2.0/mlflow/").map_err(|e| Error::Usage(e.to_string()))?;
        let ajax = base.join("ajax-api/2.0/mlflow/").map_err(|e| Error::Usage(e.to_string()))?;
        let host = base.host_str().unwrap_or_default().to_string();
        let policy = RetryPolicy::default();
        let client = build_client(&format!("runport/{}", env!("CARGO_PKG_VERSION")), policy.attempt_timeout)
            .map_err(Error::Internal)?;
        let http = Http::new(client, policy, opts.concurrency.max(1));
        Ok(MlflowRest {
            opts,
            http,
            auth,
            api,
            ajax,
            host,
            groups: OnceLock::new(),
            expected: Default::default(),
            no_bulk: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> String {
        redact(&format!("mlflow+{}", self.opts.base_url))
    }

    fn explain(&self, e: HttpError) -> String {
        match e.status() {
            Some(401) => format!("MLflow rejected the credentials for {} (401); {}", self.host, self.auth.describe()),
            Some(403) => format!("MLflow refused access on {} (403); {}", self.host, self.auth.describe()),
            _ => e.to_string(),
        }
    }

    /// A GET (`body` None, `query` pairs) or POST (`body`) to an endpoint under `/api/2.0/mlflow/`.
    async fn call(
        &self,
        what: &str,
        endpoint: &str,
        query: &[(&str, String)],
        body: Option<&Json>,
    ) -> Result<Json, String> {
        let body = self.call_raw(&self.api, what, endpoint, query, body).await.map_err(|(_, e)| e)?;
        if body.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{what}: the server answered with invalid JSON: {e}"))
    }

    /// The body of a request to `endpoint` under `base`; on failure, the
    /// HTTP status when there was one, and the error.
    async fn call_raw(
        &self,
        base: &reqwest::Url,
        what: &str,
        endpoint: &str,
        query: &[(&str, String)],
        body: Option<&Json>,
    ) -> Result<bytes::Bytes, (Option<u16>, String)> {
        let mut url = base.join(endpoint).map_err(|e| (None, format!("{what}: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let resp = self
            .http
            .send(what, |c| {
                let r = match body {
                    Some(b) => c.post(url.clone()).json(b),
                    None => c.get(url.clone()),
                };
                self.auth.apply(r)
            })
            .await
            .map_err(|e| (e.status(), self.explain(e)))?;
        Ok(resp.body)
    }

    /// Every experiment (all lifecycle stages), to name runs' experiments and
    /// resolve `--experiment`.
    pub async fn experiments(&self) -> Result<Vec<Experiment>, String> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut body = json!({"max_results": 1000, "view_type": "ALL"});
            if let Some(t) = &token {
                body["page_token"] = t.clone().into();
            }
            let page = self.call("experiment list", "experiments/search", &[], Some(&body)).await?;
            for e in page.get("experiments").and_then(|e| e.as_array()).into_iter().flatten() {
                out.push(Experiment {
                    id: e.get("experiment_id").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
                    name: e.get("name").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
                    lifecycle_stage: e.get("lifecycle_stage").and_then(|v| v.as_str()).unwrap_or("active").to_string(),
                });
            }
            match page.get("next_page_token").and_then(|t| t.as_str()).filter(|t| !t.is_empty()) {
                Some(t) if token.as_deref() != Some(t) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The experiment ids to list: `--experiment` names or ids, else every
    /// experiment whose lifecycle stage the view includes.
    fn select_experiments(&self, all: &[Experiment]) -> Result<Vec<String>, String> {
        if self.opts.experiments.is_empty() {
            return Ok(all
                .iter()
                .filter(|e| self.opts.view.includes(&e.lifecycle_stage))
                .map(|e| e.id.clone())
                .collect());
        }
        self.opts
            .experiments
            .iter()
            .map(|wanted| {
                all.iter()
                    .find(|e| &e.name == wanted)
                    .or_else(|| all.iter().find(|e| &e.id == wanted))
                    .map(|e| e.id.clone())
                    .ok_or_else(|| {
                        format!("no experiment named or numbered {wanted:?} on {}", redact(&self.opts.base_url))
                    })
            })
            .collect()
    }

    /// The runs, the points each run's histories are expected to hold
    /// (latest step + 1), and how the listing ended.
    async fn list_runs(&self) -> (Vec<MlflowRun>, HashMap<String, i64>, Option<ListingError>) {
        let experiments = match self.experiments().await {
            Ok(e) => e,
            Err(e) => return (Vec::new(), HashMap::new(), Some(ListingError::Unreadable(e))),
        };
        let ids = match self.select_experiments(&experiments) {
            Ok(ids) => ids,
            Err(e) => return (Vec::new(), HashMap::new(), Some(ListingError::Unreadable(e))),
        };
        let names: HashMap<&str, &str> = experiments.iter().map(|e| (e.id.as_str(), e.name.as_str())).collect();
        let mut runs = Vec::new();
        let mut expected = HashMap::new();
        if ids.is_empty() {
            return (runs, expected, None);
        }
        let mut token: Option<String> = None;
        for page in 1.. {
            let mut body = json!({
                "experiment_ids": ids,
                "run_view_type": self.opts.view.api_name(),
                "max_results": self.opts.max_results,
                "order_by": ["attributes.start_time ASC"],
            });
            if let Some(f) = &self.opts.filter {
                body["filter"] = f.clone().into();
            }
            if let Some(t) = &token {
                body["page_token"] = t.clone().into();
            }
            let what = format!("runs/search page {page}");
            let resp = match self.call(&what, "runs/search", &[], Some(&body)).await {
                Ok(r) => r,
                Err(error) => return (runs, expected, Some(ListingError::Cut { page, error })),
            };
            for r in resp.get("runs").and_then(|r| r.as_array()).into_iter().flatten() {
                let run = parse_run(r, &names);
                expected.insert(run.run_id.clone(), expected_points(r));
                runs.push(run);
            }
            match resp.get("next_page_token").and_then(|t| t.as_str()).filter(|t| !t.is_empty()) {
                Some(t) if token.as_deref() != Some(t) => token = Some(t.to_string()),
                _ => break,
            }
        }
        (runs, expected, None)
    }

    /// Groups the listed runs for bulk history requests (see the module
    /// documentation), in run-id order.
    fn plan_groups(&self, plan: &FetchPlan, runs: &[&MlflowRun], expected: &HashMap<String, i64>) {
        let mut order: Vec<&MlflowRun> =
            runs.iter().copied().filter(|r| !history_keys(plan, super::names(&r.metrics)).is_empty()).collect();
        order.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        let mut groups = Groups::default();
        let mut members: Vec<&MlflowRun> = Vec::new();
        let mut points = 0i64;
        let mut close = |members: &mut Vec<&MlflowRun>| {
            if members.len() > 1 {
                let mut keys: HashMap<String, KeyBatch> = HashMap::new();
                for r in members.iter() {
                    for k in history_keys(plan, super::names(&r.metrics)) {
                        keys.entry(k)
                            .or_insert_with(|| KeyBatch { run_ids: Vec::new(), answer: Default::default() })
                            .run_ids
                            .push(r.run_id.clone());
                    }
                }
                let keys = keys.into_iter().map(|(k, b)| (k, Arc::new(b))).collect();
                for r in members.iter() {
                    groups.of_run.insert(r.run_id.clone(), groups.list.len());
                }
                groups.list.push(Arc::new(BulkGroup { keys, prefetched: AtomicBool::new(false) }));
            }
            members.clear();
        };
        for r in order {
            let n = expected.get(&r.run_id).copied().unwrap_or(BULK_BUDGET);
            if !members.is_empty() && (points + n > BULK_BUDGET || members.len() == BULK_RUNS) {
                close(&mut members);
                points = 0;
            }
            members.push(r);
            points += n;
        }
        close(&mut members);
        let _ = self.groups.set(groups);
    }

    /// Notes that `run_id`'s group is being read and asks ahead (see [`Self::ask_ahead`]).
    fn prefetch_next_groups(self: &Arc<Self>, run_id: &str) {
        let Some(groups) = self.groups.get() else { return };
        let Some(&at) = groups.of_run.get(run_id) else { return };
        groups.reading.fetch_max(at, Ordering::Relaxed);
        self.ask_ahead();
    }

    /// Starts the bulk requests of the group being read and of the groups
    /// after it until `--concurrency` of them are unanswered (in flight or
    /// waiting for the limit); each answer asks again. So the server always
    /// has as many requests as the limit allows, whether or not the writer
    /// is still waiting for an earlier group (a server process whose
    /// connections find no request waiting idles). Answers held ahead are
    /// bounded: at most three times `--concurrency` requests (each within
    /// the groups' row budget) past the group being read. A failed request
    /// is asked again by the run that needs it.
    fn ask_ahead(self: &Arc<Self>) {
        let Some(groups) = self.groups.get() else { return };
        let at = groups.reading.load(Ordering::Relaxed);
        let (mut unanswered, mut ahead) = (0, 0);
        for next in groups.list.iter().skip(at) {
            if unanswered >= self.opts.concurrency || ahead >= 3 * self.opts.concurrency {
                break;
            }
            let batches: Vec<_> = next.keys.iter().filter(|(_, b)| b.run_ids.len() > 1).collect();
            ahead += batches.len();
            unanswered += batches.iter().filter(|(_, b)| !b.answer.initialized()).count();
            if next.prefetched.swap(true, Ordering::Relaxed) {
                continue;
            }
            for (key, batch) in batches {
                let (api, key, batch) = (Arc::clone(self), key.clone(), Arc::clone(batch));
                tokio::spawn(async move {
                    let _ = batch.answer.get_or_try_init(|| api.ask_bulk(&key, &batch.run_ids)).await;
                    api.ask_ahead();
                });
            }
        }
    }

    /// A metric's history from its run's bulk group; `None` when it must be
    /// asked on its own.
    async fn bulk_history(&self, run_id: &str, key: &str) -> Result<Option<Vec<MetricPoint>>, String> {
        let Some(groups) = self.groups.get() else { return Ok(None) };
        let group = groups.of_run.get(run_id).and_then(|g| groups.list.get(*g));
        let Some(batch) = group.and_then(|g| g.keys.get(key)) else {
            return Ok(None);
        };
        if batch.run_ids.len() < 2 {
            return Ok(None);
        }
        let answer = batch.answer.get_or_try_init(|| self.ask_bulk(key, &batch.run_ids)).await?;
        Ok(answer.as_ref().map(|a| a.lock().expect("invariant: not poisoned").remove(run_id).unwrap_or_default()))
    }

    /// One `get-history-bulk` request: points per run, or `None` when the
    /// answer may have been cut or the server lacks the endpoint.
    async fn ask_bulk(&self, key: &str, run_ids: &[String]) -> Result<Option<BulkAnswer>, String> {
        if self.no_bulk.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut q: Vec<(&str, String)> = run_ids.iter().map(|id| ("run_id", id.clone())).collect();
        q.push(("metric_key", key.to_string()));
        q.push(("max_results", BULK_MAX.to_string()));
        let what = format!(
            "history of metric {key:?} of {} runs ({} to {})",
            run_ids.len(),
            run_ids[0],
            run_ids[run_ids.len() - 1]
        );
        let body = match self.call_raw(&self.ajax, &what, "metrics/get-history-bulk", &q, None).await {
            Ok(b) => b,
            Err((Some(400 | 404 | 405 | 501), e)) => {
                tracing::info!(error = %e, "get-history-bulk unavailable; asking get-history per run and key");
                self.no_bulk.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            Err((_, e)) => return Err(e),
        };
        let points = parse_bulk(&body).map_err(|e| format!("{what}: {e}"))?;
        if points.len() >= BULK_MAX {
            tracing::debug!(request = %what, "bulk answer may be cut; asking per run");
            return Ok(None);
        }
        let mut per_run: HashMap<String, Vec<MetricPoint>> = HashMap::new();
        for (run_id, p) in points {
            per_run.entry(run_id).or_default().push(p);
        }
        Ok(Some(Mutex::new(per_run)))
    }

    /// A metric's full history, paged (servers that ignore paging answer at
    /// once); pages past the run's in-memory budget go to a temporary file.
    async fn metric_history(&self, run_id: &str, key: &str, budget: &FetchBudget) -> Result<FetchedSeries, String> {
        let what = format!("history of metric {key:?} of run {run_id}");
        let mut series = PagedSeries::new(budget, &what);
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![
                ("run_id", run_id.to_string()),
                ("metric_key", key.to_string()),
                ("max_results", HISTORY_PAGE.to_string()),
            ];
            if let Some(t) = &token {
                q.push(("page_token", t.clone()));
            }
            let body = self.call_raw(&self.api, &what, "metrics/get-history", &q, None).await.map_err(|(_, e)| e)?;
            let page: HistoryPage = if body.is_empty() {
                HistoryPage::default()
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| format!("{what}: the server answered with invalid JSON: {e}"))?
            };
            drop(body);
            series.add(page.metrics.into_iter().map(|p| p.0).collect())?;
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) if token.as_deref() != Some(t.as_str()) => token = Some(t),
                _ => break,
            }
        }
        series.finish()
    }
}

fn metric_value(v: &Json) -> Option<f64> {
    match v {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => parse_metric_value(s),
        _ => None,
    }
}

fn int(v: Option<&Json>) -> Option<i64> {
    match v? {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The points a run's selected histories are expected to hold: its largest
/// latest step + 1 (steps usually count from 0); 1 when it has no metrics.
fn expected_points(r: &Json) -> i64 {
    let metrics = r.get("data").and_then(|d| d.get("metrics")).and_then(|m| m.as_array());
    metrics.into_iter().flatten().filter_map(|m| int(m.get("step"))).max().map_or(1, |s| s.max(0).saturating_add(1))
}

/// A `get-history-bulk` answer: `{"metrics": [{key, value, timestamp, step,
/// run_id}]}`. The endpoint writes NaN as a bare `NaN`, which is not JSON, so
/// it is read with runport's own value parser.
fn parse_bulk(body: &[u8]) -> Result<Vec<(String, MetricPoint)>, String> {
    if body.trim_ascii().is_empty() {
        return Ok(Vec::new());
    }
    let v = Value::parse_bytes(body).map_err(|e| format!("the server answered with invalid JSON: {e}"))?;
    let field = |fields: &[(String, Value)], k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Value::Object(top) = v else { return Err("the answer is not an object".into()) };
    let metrics = match field(&top, "metrics") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::List(items)) => items,
        Some(_) => return Err("`metrics` is not a list".into()),
    };
    let as_int = |v: Option<Value>| match v {
        Some(Value::Int(i)) => Some(i),
        Some(Value::Float(f)) if f.fract() == 0.0 => Some(f as i64),
        Some(Value::Str(s)) => s.parse().ok(),
        _ => None,
    };
    metrics
        .into_iter()
        .map(|m| {
            let Value::Object(m) = m else { return Err("a point is not an object".to_string()) };
            let run_id = match field(&m, "run_id") {
                Some(Value::Str(s)) => s,
                _ => return Err("a point has no run_id".to_string()),
            };
            let value = match field(&m, "value") {
                Some(Value::Float(f)) => f,
                Some(Value::Int(i)) => i as f64,
                Some(Value::Str(s)) => parse_metric_value(&s).ok_or_else(|| format!("unreadable value {s:?}"))?,
                other => return Err(format!("unreadable value {other:?}")),
            };
            let point = MetricPoint {
                value,
                timestamp_ms: as_int(field(&m, "timestamp")).unwrap_or(0),
                step: as_int(field(&m, "step")).unwrap_or(0),
            };
            Ok((run_id, point))
        })
        .collect()
}

fn pairs(v: Option<&Json>) -> Vec<(String, String)> {
    v.and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let k = p.get("key")?.as_str()?.to_string();
            let v = p.get("value").and_then(|v| v.as_str()).unwrap_or_default().to_string();
            Some((k, v))
        })
        .collect()
}

/// A `runs/search` run as an [`MlflowRun`].
pub fn parse_run(r: &Json, experiment_names: &HashMap<&str, &str>) -> MlflowRun {
    let info = r.get("info").cloned().unwrap_or_default();
    let data = r.get("data").cloned().unwrap_or_default();
    let s = |k: &str| info.get(k).and_then(|v| v.as_str()).filter(|v| !v.is_empty()).map(str::to_string);
    let experiment_id = s("experiment_id").unwrap_or_default();
    MlflowRun {
        run_id: s("run_id").or_else(|| s("run_uuid")).unwrap_or_default(),
        experiment_name: experiment_names.get(experiment_id.as_str()).map(|n| n.to_string()),
        experiment_id,
        run_name: s("run_name"),
        user_id: s("user_id"),
        status: s("status"),
        start_time_ms: int(info.get("start_time")),
        end_time_ms: int(info.get("end_time")),
        artifact_uri: s("artifact_uri"),
        lifecycle_stage: s("lifecycle_stage"),
        metrics: data
            .get("metrics")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
            .filter_map(|m| Some((m.get("key")?.as_str()?.to_string(), metric_value(m.get("value")?)?)))
            .collect(),
        latest_marks: data
            .get("metrics")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some((m.get("key")?.as_str()?.to_string(), int(m.get("step")).unwrap_or(0), int(m.get("timestamp"))?))
            })
            .collect(),
        params: pairs(data.get("params")),
        tags: pairs(data.get("tags")),
    }
}

impl RemoteSource for MlflowRest {
    type Listed = MlflowRun;
    type Fetched = (MlflowRun, Vec<(String, FetchedSeries)>);

    async fn list(self: Arc<Self>, _plan: Arc<FetchPlan>) -> Listing<MlflowRun> {
        let (runs, expected, cut) = self.list_runs().await;
        *self.expected.lock().unwrap_or_else(|e| e.into_inner()) = expected;
        (runs.into_iter().map(Ok).collect(), cut)
    }

    fn run_id(listed: &MlflowRun) -> &str {
        &listed.run_id
    }

    fn fingerprint(listed: &MlflowRun) -> Option<String> {
        Some(listed.fingerprint(Vec::new()))
    }

    fn prepare(&self, plan: &FetchPlan, listed: &[&MlflowRun]) {
        let expected = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        self.plan_groups(plan, listed, &expected);
    }

    async fn fetch(
        self: Arc<Self>,
        plan: Arc<FetchPlan>,
        run: MlflowRun,
        target: Option<Arc<HistoryTarget>>,
    ) -> Result<Self::Fetched, String> {
        let mut named = Vec::new();
        if plan.history {
            self.prefetch_next_groups(&run.run_id);
            let keys = history_keys(&plan, super::names(&run.metrics));
            let budget = FetchBudget::new(target.as_deref());
            let fetches = keys.iter().map(|k| async {
                match self.bulk_history(&run.run_id, k).await? {
                    Some(points) => Ok(FetchedSeries::Memory(points)),
                    None => self.metric_history(&run.run_id, k, &budget).await,
                }
            });
            let series = futures_util::future::try_join_all(fetches).await?;
            named = keys.into_iter().zip(series).collect();
        }
        Ok((run, named))
    }

    fn decode(
        &self,
        plan: &FetchPlan,
        (run, mut named): Self::Fetched,
        sink: &mut HistorySink,
    ) -> Result<RunData, String> {
        let run_id = run.run_id.clone();
        let mut data = run.into_run_data(plan);
        if plan.history {
            named.sort_by(|a, b| a.0.cmp(&b.0));
            let mut history = MetricHistoryBuilder::new(sink);
            for (key, series) in named {
                history.start_key(&key)?;
                series.read_into(&format!("history of metric {key:?} of run {run_id}"), &mut history)?;
            }
            data.history = Some(history.finish());
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_answers_with_bare_nan() {
        // As mlflow 3.17's server writes it: NaN bare, infinities clamped.
        let body = br#"{"metrics":[{"key":"x","run_id":"a1","step":0,"timestamp":1,"value":NaN},{"key":"x","run_id":"a1","step":1,"timestamp":2,"value":1.7976931348623157e+308},{"key":"x","run_id":"b2","step":2,"timestamp":3,"value":1.5}]}"#;
        let got = parse_bulk(body).unwrap();
        assert_eq!(got.len(), 3);
        assert!(got[0].1.value.is_nan() && got[0].0 == "a1");
        assert_eq!(got[1].1, MetricPoint { value: f64::MAX, timestamp_ms: 2, step: 1 });
        assert_eq!((got[2].0.as_str(), got[2].1.step, got[2].1.timestamp_ms), ("b2", 2, 3));
        assert!(parse_bulk(b"{}").unwrap().is_empty() && parse_bulk(b"").unwrap().is_empty());
        assert!(parse_bulk(br#"{"metrics":[{"key":"x","step":0,"value":1}]}"#).unwrap_err().contains("run_id"));
        assert!(parse_bulk(b"<html>").is_err());
    }

    #[test]
    fn search_runs_json_becomes_a_run() {
        let r = json!({
            "info": {"run_id": "abc", "experiment_id": "1", "run_name": "r", "status": "FINISHED",
                     "start_time": 1700000000000_i64, "artifact_uri": "mlflow-artifacts:/1/abc", "lifecycle_stage": "active"},
            "data": {"metrics": [{"key": "loss", "value": "NaN", "timestamp": 1, "step": 2},
                                 {"key": "big", "value": 1.7976931348623157e308, "timestamp": 1, "step": 2}],
                     "params": [{"key": "lr", "value": "0.1"}],
                     "tags": [{"key": "mlflow.runName", "value": "r"}]}
        });
        let names: HashMap<&str, &str> = [("1", "exp")].into();
        let run = parse_run(&r, &names);
        assert_eq!(run.run_id, "abc");
        assert_eq!(run.experiment_name.as_deref(), Some("exp"));
        assert_eq!(run.end_time_ms, None);
        assert!(run.metrics[0].1.is_nan());
        assert_eq!(run.metrics[1].1, f64::MAX);
        assert_eq!(run.params, [("lr".to_string(), "0.1".to_string())]);
        // An empty answer is an empty run, not an error.
        assert_eq!(parse_run(&json!({}), &names).run_id, "");
    }
}
