//! The W&B GraphQL API source: `wandb://ENTITY/PROJECT`.
//!
//! - The listing asks for exactly the fields the plan needs ([`queries`]),
//!   `--per-page` runs a page; selecting `config.lr` costs the listing pages
//!   and nothing more.
//! - History is fetched only for runs whose `historyKeys` hold a selected key:
//!   the exported Parquet files (downloaded without credentials, read with
//!   only the selected columns) plus the live rows; `--samples N` asks for a
//!   sampled history instead; without `parquetHistory`, history pages.
//! - A run of any size takes bounded memory: a download, or the rows of
//!   history pages, past a history chunk go to a temporary file as they
//!   arrive ([`crate::sources::spooled`]); the CPU stage reads them back a
//!   batch or a row at a time and hands the history over in chunks.
//! - Every request goes through [`crate::http::Http`]: one retry policy,
//!   an adaptive number of requests in flight.

pub mod credentials;
mod events;
pub mod history;
pub mod listing;
pub mod queries;
mod source;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use crate::error::{Error, Result};
use crate::http::{BodySink, Http, HttpError, RetryPolicy, build_client};
use crate::pipeline::{HistorySink, HistoryTarget};
use crate::plan::FetchPlan;
use crate::plan::SYSTEM_PREFIX;
use crate::redact::redact;
use crate::remote::{Listing, ListingError, RemoteSource};
use crate::run::{HistoryMark, RunData, SystemSamples, seconds_to_micros};
use crate::sources::SyncMark;
use crate::sources::spooled::{Spool, Spooled};
use crate::value::Value;

use credentials::{ApiKey, KeySource, find_api_key};
use events::EventRow;
use history::HistoryBuilder;
use listing::{ListedRun, has_selected_history_key, parse_run_node, restore_non_finite};
pub use source::REGISTRATION;

use queries::{HISTORY_PAGE, ListingFields, PARQUET_HISTORY, SAMPLED_HISTORY, SYSTEM_EVENTS};

pub const DEFAULT_BASE_URL: &str = "https://api.wandb.ai";
pub const DEFAULT_PER_PAGE: usize = 500;
/// Rows a history page aims at, and the most it asks for: a page that
/// comes back with [`HISTORY_PAGE_SAMPLES`] rows may have been sampled.
const HISTORY_PAGE_ROWS: i64 = 10_000;
const HISTORY_PAGE_SAMPLES: i64 = 2 * HISTORY_PAGE_ROWS;

/// What the user asked for (validated, not yet connected).
#[derive(Debug, Clone)]
pub struct WandbApiOptions {
    pub entity: String,
    pub project: String,
    pub base_url: String,
    pub per_page: usize,
    pub filters: Option<String>,
    pub order: Option<String>,
    pub samples: Option<usize>,
    pub concurrency: usize,
}

impl WandbApiOptions {
    /// Parses `wandb://ENTITY/PROJECT`.
    pub fn parse_uri(uri: &str) -> Result<(String, String)> {
        let rest = uri.strip_prefix("wandb://").ok_or_else(|| Error::Usage(format!("not a wandb:// source: {uri}")))?;
        let mut parts = rest.trim_end_matches('/').split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(e), Some(p), None) if !e.is_empty() && !p.is_empty() => Ok((e.to_string(), p.to_string())),
            _ => Err(Error::Usage(format!("expected wandb://ENTITY/PROJECT, got {uri}"))),
        }
    }
}

/// A connected W&B API source.
pub struct WandbApi {
    pub opts: WandbApiOptions,
    pub http: Http,
    key: ApiKey,
    key_source: KeySource,
    graphql_url: reqwest::Url,
    host: String,
}

impl std::fmt::Debug for WandbApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WandbApi").field("opts", &self.opts).field("key_source", &self.key_source).finish()
    }
}

/// The user agent the official client's server gates some fields on.
pub fn user_agent() -> String {
    format!("W&B Public Client runport/{}", env!("CARGO_PKG_VERSION"))
}

impl WandbApi {
    pub fn connect(opts: WandbApiOptions) -> Result<WandbApi> {
        let base = reqwest::Url::parse(&opts.base_url)
            .map_err(|e| Error::Usage(format!("--base-url {}: {e}", redact(&opts.base_url))))?;
        let host = base.host_str().unwrap_or_default().to_string();
        let (key, key_source) = find_api_key(&host).ok_or_else(|| {
            Error::source(
                format!("wandb://{}/{}", opts.entity, opts.project),
                format!("no W&B API key for {host}: set WANDB_API_KEY or add a ~/.netrc entry for {host}"),
            )
        })?;
        let graphql_url = base.join("graphql").map_err(|e| Error::Usage(format!("--base-url: {e}")))?;
        let policy = RetryPolicy::default();
        let client = build_client(&user_agent(), policy.attempt_timeout).map_err(|e| Error::Internal(e.to_string()))?;
        let http = Http::new(client, policy, opts.concurrency.max(1));
        Ok(WandbApi { opts, http, key, key_source, graphql_url, host })
    }

    pub fn name(&self) -> String {
        format!("wandb://{}/{}", self.opts.entity, self.opts.project)
    }

    /// A GraphQL request with credentials; `what` names it in errors.
    pub async fn graphql(
        &self,
        what: &str,
        query: &str,
        variables: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let mut body = Vec::new();
        self.post_graphql(what, query, variables, &mut body).await?;
        let mut v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("{what}: the API answered with invalid JSON: {e}"))?;
        drop(body);
        let errors = v.get("errors").and_then(|e| e.as_array()).map_or_else(Vec::new, |errors| {
            errors.iter().map(|e| e.get("message").and_then(|m| m.as_str()).unwrap_or("error").to_string()).collect()
        });
        // Taken, not cloned: an answer can be large (a listing page of runs with their config).
        answer_data(what, errors, v.get_mut("data").map(serde_json::Value::take))
    }

    /// Sends a GraphQL request with credentials, its answer to `sink`.
    async fn post_graphql<S: BodySink>(
        &self,
        what: &str,
        query: &str,
        variables: serde_json::Value,
        sink: &mut S,
    ) -> Result<(), String> {
        let body = json!({"query": query, "variables": variables});
        self.http
            .send_to(
                what,
                |c| c.post(self.graphql_url.clone()).basic_auth("api", Some(self.key.expose())).json(&body),
                sink,
            )
            .await
            .map_err(|e| self.explain(e))?;
        Ok(())
    }

    /// Turns HTTP failures into messages that say what to check.
    fn explain(&self, e: HttpError) -> String {
        match e.status() {
            Some(401) => format!("W&B rejected the API key for {} (401); check {}", self.host, self.key_source),
            Some(403) => format!(
                "W&B refused access to {} (403); check that the key's user can read entity {:?}",
                self.name(),
                self.opts.entity
            ),
            Some(404) => format!("W&B answered 404 for {}; check the entity, the project and --base-url", self.name()),
            _ => e.to_string(),
        }
    }

    fn base_vars(&self) -> serde_json::Value {
        json!({"entity": self.opts.entity, "project": self.opts.project})
    }

    /// One listing page: the runs and the cursor of the next page.
    pub async fn list_page(
        &self,
        fields: &ListingFields,
        document: &str,
        cursor: Option<&str>,
        page: usize,
        plan: &FetchPlan,
    ) -> Result<(Vec<Result<ListedRun, (String, String)>>, Option<String>, Option<u64>), String> {
        let mut vars = self.base_vars();
        vars["cursor"] = cursor.map_or(serde_json::Value::Null, |c| c.into());
        vars["perPage"] = self.opts.per_page.into();
        vars["order"] = self.opts.order.clone().unwrap_or_else(|| "+created_at".into()).into();
        vars["filters"] = self.opts.filters.clone().map_or(serde_json::Value::Null, |f| f.into());
        if let (true, Some(keys)) = (fields.config, &fields.config_keys) {
            vars["configKeys"] = json!(keys);
        }
        if let (true, Some(keys)) = (fields.summary, &fields.summary_keys) {
            vars["summaryKeys"] = json!(keys);
        }
        let what = format!("listing page {page} of {}", self.name());
        let data = self.graphql(&what, document, vars).await?;
        let project = data.get("project").filter(|p| !p.is_null()).ok_or_else(|| {
            format!("project {}/{} not found; check the entity and project names", self.opts.entity, self.opts.project)
        })?;
        let total = project.get("runCount").and_then(|c| c.as_u64());
        let runs = project.get("runs").ok_or_else(|| format!("{what}: no runs field"))?;
        let edges = runs.get("edges").and_then(|e| e.as_array()).cloned().unwrap_or_default();
        let listed = edges
            .iter()
            .filter_map(|e| e.get("node"))
            .map(|node| {
                parse_run_node(node, plan, &self.opts.entity, &self.opts.project).map_err(|err| {
                    let id = node.get("name").and_then(|n| n.as_str()).unwrap_or("?").to_string();
                    (id, err)
                })
            })
            .collect();
        let info = runs.get("pageInfo");
        let has_next = info.and_then(|i| i.get("hasNextPage")).and_then(|h| h.as_bool()).unwrap_or(false);
        let next = info.and_then(|i| i.get("endCursor")).and_then(|c| c.as_str()).map(str::to_string);
        Ok((listed, if has_next { next } else { None }, total))
    }

    /// The project's run count (one small request), for `runport plan`.
    pub async fn run_count(&self) -> Result<u64, String> {
        let query = "query RunCount($project: String!, $entity: String!, $filters: JSONString) {\n  project(name: $project, entityName: $entity) {\n    runCount(filters: $filters)\n  }\n}";
        let mut vars = self.base_vars();
        vars["filters"] = self.opts.filters.clone().map_or(serde_json::Value::Null, |f| f.into());
        let data = self.graphql(&format!("run count of {}", self.name()), query, vars).await?;
        data.pointer("/project/runCount").and_then(|c| c.as_u64()).ok_or_else(|| {
            format!("project {}/{} not found; check the entity and project names", self.opts.entity, self.opts.project)
        })
    }

    /// What `runport plan` shows: the queries and the requests per stage.
    /// Sends one run-count request; reads no run.
    pub fn describe_plan(&self, plan: &FetchPlan) -> Result<serde_json::Value, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let count = rt.block_on(self.run_count())?;
        let fields = ListingFields::from_plan(plan);
        let pages = count.div_ceil(self.opts.per_page as u64).max(1);
        let history = if !plan.history {
            json!({"stage": "history", "requests": 0})
        } else if let Some(samples) = self.opts.samples {
            json!({"stage": "history", "query": SAMPLED_HISTORY, "samples": samples,
                   "requests_at_most": count, "only": "runs whose historyKeys hold a selected key"})
        } else {
            json!({"stage": "history", "query": PARQUET_HISTORY,
                   "requests_at_most": count, "plus": "one download per history file (no credentials)",
                   "only": "runs whose historyKeys hold a selected key"})
        };
        let system = if plan.system {
            json!({"stage": "system", "query": SYSTEM_EVENTS, "requests_at_most": count,
                   "only": "runs whose eventsLineCount is above 0"})
        } else {
            json!({"stage": "system", "requests": 0})
        };
        Ok(json!({
            "source_kind": "wandb-api",
            "base_url": redact(&self.opts.base_url),
            "runs": count,
            "per_page": self.opts.per_page,
            "concurrency": self.opts.concurrency,
            "stages": [
                {"stage": "listing", "requests": pages, "query": fields.document(), "fields": fields},
                history,
                system,
            ],
        }))
    }

    /// Whether the run needs a history request at all.
    pub fn needs_history(&self, plan: &FetchPlan, run: &ListedRun) -> bool {
        plan.history && run.history_keys.as_ref().is_none_or(|keys| has_selected_history_key(plan, keys))
    }

    /// Fetches a run's selected history: raw material for the CPU stage.
    /// What passes a chunk of `target` waits in temporary files.
    pub async fn fetch_history(
        &self,
        plan: &FetchPlan,
        run: &ListedRun,
        target: Option<&HistoryTarget>,
    ) -> Result<FetchedHistory, String> {
        let name = &run.data.identity.run_id;
        if let Some(samples) = self.opts.samples {
            return self.sampled(plan, run, samples, target).await;
        }
        let mut vars = self.base_vars();
        vars["name"] = name.clone().into();
        vars["liveKeys"] = json!(["_step"]);
        let what = format!("history of run {name}");
        let parquet = match self.graphql(&what, PARQUET_HISTORY, vars).await {
            Ok(data) => data.pointer("/project/run/parquetHistory").filter(|p| !p.is_null()).cloned(),
            Err(e) if e.contains("parquetHistory") || e.contains("Cannot query field") => None,
            Err(e) => return Err(e),
        };
        let Some(parquet) = parquet else {
            let mut rows = Spool::for_history(target, 0);
            self.pages(run, 0, &mut rows).await?;
            return Ok(FetchedHistory { files: Vec::new(), rows: finish(rows, &what)? });
        };
        let urls: Vec<String> = parquet
            .get("parquetUrls")
            .and_then(|u| u.as_array())
            .map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        // liveData holds the live rows' `_step` (the live keys) only: the rows
        // themselves are read with history pages from the first live step.
        let live = parquet.get("liveData").and_then(|l| l.as_array()).cloned().unwrap_or_default();
        let first_live = live
            .iter()
            .filter_map(|r| match r {
                serde_json::Value::String(s) => serde_json::from_str::<serde_json::Value>(s).ok(),
                other => Some(other.clone()),
            })
            .filter_map(|r| r.get("_step").and_then(|s| s.as_f64()))
            .map(|f| f as i64)
            .min();
        // The run's answers share one chunk of memory; the rest waits on disk.
        let mut files = Vec::with_capacity(urls.len());
        let mut held = 0;
        for (i, u) in urls.iter().enumerate() {
            let file = self.download(&format!("history file {} of run {name}", i + 1), u, target, held).await?;
            held += file.held();
            files.push(file);
        }
        let mut rows = Spool::for_history(target, held);
        if let Some(from) = first_live {
            self.pages(run, from, &mut rows).await?;
        }
        Ok(FetchedHistory { files, rows: finish(rows, &what)? })
    }

    /// A run's system metrics: its `events` stream, every sample of it
    /// (`samples` is the run's `eventsLineCount`; without one, a number no
    /// run reaches). A run the listing shows without samples costs no
    /// request. With fewer rows than the listing counted (a server that
    /// samples), the rows it gave, and a warning saying how many.
    pub async fn fetch_system(
        &self,
        plan: &FetchPlan,
        run: &ListedRun,
    ) -> Result<(SystemSamples, Option<String>), String> {
        let mut out = SystemSamples::new(plan.system_budget.clone());
        let listed = run.events_line_count;
        if listed == Some(0) {
            return Ok((out, None));
        }
        let name = &run.data.identity.run_id;
        let mut vars = self.base_vars();
        vars["name"] = name.clone().into();
        vars["samples"] = listed.unwrap_or(MAX_SYSTEM_SAMPLES).into();
        let what = format!("system metrics of run {name}");
        // The answer waits in memory up to a quarter of the run's share, as
        // history answers do (many runs are in flight), past it in a file.
        let mut body = match &plan.system_budget {
            Some(b) => Spool::new(b.bytes / 4, Some(Arc::clone(&b.spill))),
            None => Spool::new(usize::MAX, None),
        };
        self.post_graphql(&what, SYSTEM_EVENTS, vars, &mut body).await?;
        let mut take = |row: EventRow| -> Result<(), String> {
            let parsed = match row {
                EventRow::Text(s) => Value::parse(&s).map_err(|e| format!("a row is not JSON: {e}"))?,
                EventRow::Other(other) => Value::parse(&other.to_string()).map_err(|e| e.to_string())?,
            };
            let Value::Object(fields) = parsed else { return Err("a row is not an object".into()) };
            let timestamp = fields
                .iter()
                .find(|(k, _)| k == "_timestamp")
                .and_then(|(_, v)| restore_non_finite(v.clone()).as_f64())
                .and_then(seconds_to_micros);
            for (k, v) in fields {
                let Some(key) = k.strip_prefix(SYSTEM_PREFIX) else { continue };
                if plan.wants_system_key(key) {
                    out.push(key, timestamp, restore_non_finite(v).as_f64());
                }
            }
            Ok(())
        };
        let answer = match finish(body, &what)? {
            Spooled::Memory(bytes) => events::read_slice(&bytes, &mut take),
            Spooled::File { file, kept, .. } => {
                let read = events::read_from(std::io::BufReader::with_capacity(1 << 20, file), &mut take);
                drop(kept);
                read
            }
        }
        .map_err(|e| format!("{what}: {e}"))?;
        answer_data(&what, answer.errors, answer.data.then_some(()))?;
        let given = answer.rows;
        let short = listed
            .filter(|n| (given as i64) < *n)
            .map(|n| format!("{what}: the server gave {given} of the {n} samples it lists"));
        Ok((out, short))
    }

    /// `runport sync`: the history rows after the table's last step
    /// (`from.step`) alone, when the run grew by appending: the table's
    /// lines and the rows fetched add up to the lines listed (or more: the
    /// run went on logging since). Fewer (a resumed run that logged a step
    /// again, a rewound run): `None`, and the whole history is fetched.
    async fn appended_history(
        &self,
        run: &ListedRun,
        from: SyncMark,
        target: Option<&HistoryTarget>,
    ) -> Result<Option<FetchedHistory>, String> {
        let what = format!("history of run {} from step {}", run.data.identity.run_id, from.step + 1);
        let mut rows = Spool::for_history(target, 0);
        let fetched = self.pages(run, from.step + 1, &mut rows).await?;
        if run.history_line_count.is_none_or(|listed| from.lines + fetched < listed) {
            return Ok(None);
        }
        Ok(Some(FetchedHistory { files: Vec::new(), rows: finish(rows, &what)? }))
    }

    /// Downloads a history file, to a temporary file as it arrives when it
    /// passes what is left of a chunk of `target` (the run holds `held`
    /// bytes in memory already). No credentials: the URL may be another host.
    async fn download(
        &self,
        what: &str,
        url: &str,
        target: Option<&HistoryTarget>,
        held: u64,
    ) -> Result<Spooled, String> {
        let url = match reqwest::Url::parse(url) {
            Ok(u) => u,
            Err(_) => self.graphql_url.join(url).map_err(|e| format!("{what}: bad URL: {e}"))?,
        };
        let mut body = Spool::for_history(target, held);
        self.http.send_to(what, |c| c.get(url.clone()), &mut body).await.map_err(|e| e.to_string())?;
        finish(body, what)
    }

    /// A sampled history: one `sampledHistory` spec per selected key, each
    /// answer at most `samples` rows (the server's limit on an answer bounds
    /// it too), merged by step.
    async fn sampled(
        &self,
        plan: &FetchPlan,
        run: &ListedRun,
        samples: usize,
        target: Option<&HistoryTarget>,
    ) -> Result<FetchedHistory, String> {
        let name = &run.data.identity.run_id;
        let keys: Vec<String> = run
            .history_keys
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|k| !k.starts_with('_') && has_selected_history_key(plan, std::slice::from_ref(k)))
            .collect();
        if keys.is_empty() {
            return Ok(FetchedHistory::default());
        }
        // One spec per key: a spec only returns rows holding all its keys.
        let specs: Vec<String> =
            keys.iter().map(|k| json!({"keys": ["_step", k], "samples": samples}).to_string()).collect();
        let mut vars = self.base_vars();
        vars["name"] = name.clone().into();
        vars["specs"] = json!(specs);
        let what = format!("sampled history of run {name}");
        let data = self.graphql(&what, SAMPLED_HISTORY, vars).await?;
        let lists = data.pointer("/project/run/sampledHistory").and_then(|s| s.as_array()).cloned().unwrap_or_default();
        let mut by_step: BTreeMap<i64, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
        for list in lists {
            for row in list.as_array().into_iter().flatten() {
                let Some(obj) = row.as_object() else { continue };
                let Some(step) = obj.get("_step").and_then(|s| s.as_f64()) else { continue };
                by_step.entry(step as i64).or_default().extend(obj.clone());
            }
        }
        let mut rows = Spool::for_history(target, 0);
        for row in by_step.into_values() {
            rows.write_record(serde_json::Value::Object(row).to_string().as_bytes())
                .map_err(|e| keep_error(&what, &e))?;
        }
        Ok(FetchedHistory { files: Vec::new(), rows: finish(rows, &what)? })
    }

    /// History rows from step `from` to the run's last step, a page at a
    /// time, in requests in proportion to the rows, not to the step range
    /// (steps counted in tokens are sparse: a run may log step 0, 1e6, 2e6).
    /// Each row's text goes to `rows` as a record as its page arrives.
    ///
    /// A page asks for a step range and at most [`HISTORY_PAGE_SAMPLES`]
    /// rows; the server samples a range holding more, so a page that comes
    /// back full is never used: its range is halved and asked again. The
    /// next range is sized from the density of the last page (aiming at
    /// [`HISTORY_PAGE_ROWS`] rows; at most 8 times wider); the first page
    /// is sized from the listing's `historyLineCount` when the whole history
    /// is read, else spans everything left, so a small run takes one request. A
    /// single step holding a full page (only possible with repeated steps)
    /// cannot be read without sampling: the run fails.
    /// Fetches the history rows of steps `from` on, page by page, into
    /// `rows`; returns how many.
    async fn pages(&self, run: &ListedRun, from: i64, rows: &mut Spool) -> Result<i64, String> {
        let name = &run.data.identity.run_id;
        // Exclusive end: past the last step when the listing gave it.
        let end = run.last_step.map_or(i64::MAX / 2, |l| l.saturating_add(1));
        let mut min = from;
        let mut fetched = 0i64;
        let left = end.saturating_sub(min).max(1);
        let mut span = match run.history_line_count {
            Some(lines) if from == 0 && lines > HISTORY_PAGE_ROWS => {
                (i128::from(left) * i128::from(HISTORY_PAGE_ROWS) / i128::from(lines)).max(1) as i64
            }
            _ => left,
        };
        while min < end {
            let max = min.saturating_add(span).min(end);
            let mut vars = self.base_vars();
            vars["name"] = name.clone().into();
            vars["minStep"] = min.into();
            vars["maxStep"] = max.into();
            vars["samples"] = HISTORY_PAGE_SAMPLES.into();
            let what = format!("history page of steps {min}..{max} of run {name}");
            let data = self.graphql(&what, HISTORY_PAGE, vars).await?;
            let page = data.pointer("/project/run/history").and_then(|h| h.as_array()).map_or(&[][..], Vec::as_slice);
            let n = page.len() as i64;
            if n >= HISTORY_PAGE_SAMPLES {
                if max - min <= 1 {
                    return Err(format!("{what}: step {min} holds {n} rows or more, which the API gives only sampled"));
                }
                span = (max - min) / 2;
                continue;
            }
            fetched += n;
            for row in page {
                let written = match row {
                    serde_json::Value::String(text) => rows.write_record(text.as_bytes()),
                    other => rows.write_record(other.to_string().as_bytes()),
                };
                written.map_err(|e| keep_error(&what, &e))?;
            }
            let asked = max - min;
            min = max;
            span = if n == 0 {
                asked.saturating_mul(8)
            } else {
                let dense = i128::from(asked) * i128::from(HISTORY_PAGE_ROWS) / i128::from(n);
                dense.clamp(1, i128::from(asked.saturating_mul(8))) as i64
            };
        }
        Ok(fetched)
    }
}

/// A grown run's new lines are fetched alone when at most 1/APPEND_SHARE of its lines.
const APPEND_SHARE: i64 = 10;

/// `events(samples:)` for a run the listing gave no `eventsLineCount`.
const MAX_SYSTEM_SAMPLES: i64 = 1_000_000;

impl RemoteSource for WandbApi {
    type Listed = ListedRun;
    type Fetched = (RunData, FetchedHistory);

    async fn list(self: Arc<Self>, plan: Arc<FetchPlan>) -> Listing<ListedRun> {
        let fields = ListingFields::from_plan(&plan);
        let document = fields.document();
        let mut cursor: Option<String> = None;
        let mut listed = Vec::new();
        for page in 1.. {
            match self.list_page(&fields, &document, cursor.as_deref(), page, &plan).await {
                Ok((runs, next, _total)) => {
                    listed.extend(runs);
                    match next {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
                Err(error) if page == 1 => return (listed, Some(ListingError::Unreadable(error))),
                Err(error) => return (listed, Some(ListingError::Cut { page, error })),
            }
        }
        (listed, None)
    }

    fn run_id(listed: &ListedRun) -> &str {
        &listed.data.identity.run_id
    }

    fn fingerprint(listed: &ListedRun) -> Option<String> {
        Some(listed.fingerprint())
    }

    /// A run whose listing shows more steps and more lines than the table
    /// holds may have grown by appending: its later steps are fetched
    /// alone, with history pages (checked when they arrive, see
    /// [`WandbApi::appended_history`]), when they are at most a tenth of
    /// its lines. More than that, the run's exported Parquet files cost
    /// fewer bytes than pages of JSON rows (about a tenth a row): the whole
    /// history is fetched.
    fn continue_history(listed: &mut ListedRun, mark: SyncMark) {
        let grew = listed.last_step.is_some_and(|s| s > mark.step)
            && listed.history_line_count.is_some_and(|l| l > mark.lines && (l - mark.lines) * APPEND_SHARE <= l);
        listed.history_from = grew.then_some(mark);
    }

    async fn fetch(
        self: Arc<Self>,
        plan: Arc<FetchPlan>,
        listed: ListedRun,
        target: Option<Arc<HistoryTarget>>,
    ) -> Result<(RunData, FetchedHistory), String> {
        let mut mark = HistoryMark { from_step: None, lines: listed.history_line_count, ..Default::default() };
        let (system, short) = if plan.system {
            let (samples, short) = self.fetch_system(&plan, &listed).await?;
            (Some(samples), short)
        } else {
            (None, None)
        };
        let fetched = if self.needs_history(&plan, &listed) {
            let appended = match (listed.history_from.clone(), self.opts.samples) {
                (Some(from), None) => self.appended_history(&listed, from, target.as_deref()).await?,
                _ => None,
            };
            match appended {
                Some(rows) => {
                    mark.from_step = listed.history_from.map(|m| m.step + 1);
                    rows
                }
                None => self.fetch_history(&plan, &listed, target.as_deref()).await?,
            }
        } else {
            // No history request for this run; an empty history when history was asked.
            FetchedHistory::default()
        };
        let mut data = listed.data;
        data.history_mark = Some(mark);
        data.system = system;
        data.warnings.extend(short);
        Ok((data, fetched))
    }

    fn decode(
        &self,
        plan: &FetchPlan,
        (mut data, fetched): (RunData, FetchedHistory),
        sink: &mut HistorySink,
    ) -> Result<RunData, String> {
        if plan.history {
            fetched.decode(plan, &mut data, sink)?;
        }
        Ok(data)
    }
}

/// A run's history as fetched: Parquet files and the texts of JSON rows
/// (records), each in memory or in a temporary file.
#[derive(Default)]
pub struct FetchedHistory {
    pub files: Vec<Spooled>,
    pub rows: Spooled,
}

impl FetchedHistory {
    /// CPU stage: decodes the files (selected columns only, a batch at a
    /// time), then the rows, handing the history to `sink` in chunks; the
    /// last chunk is left in `run.history`. A temporary file is removed as
    /// soon as it is read.
    pub fn decode(self, plan: &FetchPlan, run: &mut RunData, sink: &mut HistorySink) -> Result<(), String> {
        let mut b = HistoryBuilder::new(plan);
        for f in self.files {
            match f {
                Spooled::Memory(bytes) => b.add_parquet(bytes, sink)?,
                Spooled::File { file, kept, .. } => {
                    let added = b.add_parquet(file, sink)?;
                    drop(kept);
                    added
                }
            };
        }
        let mut rows = self.rows.records();
        while let Some(row) = rows.next_record().map_err(|e| format!("history rows: cannot read them back: {e}"))? {
            if b.add_live_row(row) {
                sink.flush_if_full(b.history_mut())?;
            }
        }
        run.history = Some(b.finish());
        Ok(())
    }
}

/// What a spool holds, or an error naming the request.
fn finish(spool: Spool, what: &str) -> Result<Spooled, String> {
    spool.finish().map_err(|e| keep_error(what, &e))
}

fn keep_error(what: &str, e: &std::io::Error) -> String {
    format!("{what}: cannot keep the answer in a temporary file: {e}")
}

/// The `data` of a GraphQL answer; an error naming the request if the
/// answer has `errors` (their messages) or no `data`.
fn answer_data<T>(what: &str, errors: Vec<String>, data: Option<T>) -> Result<T, String> {
    if !errors.is_empty() {
        return Err(format!("{what}: the API answered with errors: {}", errors.join("; ")));
    }
    data.ok_or_else(|| format!("{what}: the API answered without data"))
}
