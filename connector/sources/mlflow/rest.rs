//! MLflow's REST API (`/api/2.0/mlflow/`): `runs/search` pages with a large
//! `max_results` ordered by start time (runs created during the export land
//! on later pages), then `metrics/get-history` per (run, selected key), paged
//! and in parallel. Latest metric values come from the listing.
//!
//! Auth as the official client: `MLFLOW_TRACKING_USERNAME` and
//! `MLFLOW_TRACKING_PASSWORD` (Basic), or `MLFLOW_TRACKING_TOKEN` (Bearer).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value as Json, json};

use super::{MetricPoint, MlflowRun, RunView, history_from_series, history_keys, parse_metric_value};
use crate::error::{Error, Result};
use crate::http::{Http, HttpError, RetryPolicy, build_client};
use crate::plan::FetchPlan;
use crate::remote::{Listing, ListingError, RemoteSource};
use crate::run::RunData;
use crate::sources::wandb_api::credentials::ApiKey;

/// Runs asked per `runs/search` page (the server allows up to 50,000).
pub const DEFAULT_MAX_RESULTS: usize = 10_000;
/// Points asked per `get-history` page.
const HISTORY_PAGE: usize = 25_000;

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

    fn apply(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::None => r,
            Auth::Basic(u, p) => r.basic_auth(u, Some(p.expose())),
            Auth::Bearer(t) => r.bearer_auth(t.expose()),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Auth::None => {
                "no credentials were sent; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
            }
            Auth::Basic(..) => "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
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
    host: String,
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
            .map_err(|e| Error::Usage(format!("MLflow tracking URI {}: {e}", opts.base_url)))?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let api = base.join("api/2.0/mlflow/").map_err(|e| Error::Usage(e.to_string()))?;
        let host = base.host_str().unwrap_or_default().to_string();
        let policy = RetryPolicy::default();
        let client = build_client(&format!("runport/{}", env!("CARGO_PKG_VERSION")), policy.attempt_timeout)
            .map_err(Error::Usage)?;
        let http = Http::new(client, policy, opts.concurrency.max(1));
        Ok(MlflowRest { opts, http, auth: Auth::from_env(), api, host })
    }

    pub fn name(&self) -> String {
        format!("mlflow+{}", self.opts.base_url)
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
        let mut url = self.api.join(endpoint).map_err(|e| format!("{what}: {e}"))?;
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
            .map_err(|e| self.explain(e))?;
        if resp.body.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(&resp.body).map_err(|e| format!("{what}: the server answered with invalid JSON: {e}"))
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
                    .ok_or_else(|| format!("no experiment named or numbered {wanted:?} on {}", self.opts.base_url))
            })
            .collect()
    }

    async fn list_runs(&self) -> (Vec<MlflowRun>, Option<ListingError>) {
        let experiments = match self.experiments().await {
            Ok(e) => e,
            Err(e) => return (Vec::new(), Some(ListingError::Unreadable(e))),
        };
        let ids = match self.select_experiments(&experiments) {
            Ok(ids) => ids,
            Err(e) => return (Vec::new(), Some(ListingError::Unreadable(e))),
        };
        let names: HashMap<&str, &str> = experiments.iter().map(|e| (e.id.as_str(), e.name.as_str())).collect();
        let mut runs = Vec::new();
        if ids.is_empty() {
            return (runs, None);
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
                Err(error) => return (runs, Some(ListingError::Cut { page, error })),
            };
            for r in resp.get("runs").and_then(|r| r.as_array()).into_iter().flatten() {
                runs.push(parse_run(r, &names));
            }
            match resp.get("next_page_token").and_then(|t| t.as_str()).filter(|t| !t.is_empty()) {
                Some(t) if token.as_deref() != Some(t) => token = Some(t.to_string()),
                _ => break,
            }
        }
        (runs, None)
    }

    /// A metric's full history, paged (servers that ignore paging answer at once).
    async fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<MetricPoint>, String> {
        let mut out = Vec::new();
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
            let what = format!("history of metric {key:?} of run {run_id}");
            let resp = self.call(&what, "metrics/get-history", &q, None).await?;
            for m in resp.get("metrics").and_then(|m| m.as_array()).into_iter().flatten() {
                out.push(metric_point(m).ok_or_else(|| format!("{what}: unreadable point {m}"))?);
            }
            match resp.get("next_page_token").and_then(|t| t.as_str()).filter(|t| !t.is_empty()) {
                Some(t) if token.as_deref() != Some(t) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
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

fn metric_point(m: &Json) -> Option<MetricPoint> {
    Some(MetricPoint {
        value: metric_value(m.get("value")?)?,
        timestamp_ms: int(m.get("timestamp")).unwrap_or(0),
        step: int(m.get("step")).unwrap_or(0),
    })
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
        params: pairs(data.get("params")),
        tags: pairs(data.get("tags")),
    }
}

impl RemoteSource for MlflowRest {
    type Listed = MlflowRun;
    type Fetched = (MlflowRun, Vec<(String, Vec<MetricPoint>)>);

    async fn list(self: Arc<Self>, _plan: Arc<FetchPlan>) -> Listing<MlflowRun> {
        let (runs, cut) = self.list_runs().await;
        (runs.into_iter().map(Ok).collect(), cut)
    }

    fn run_id(listed: &MlflowRun) -> &str {
        &listed.run_id
    }

    async fn fetch(self: Arc<Self>, plan: Arc<FetchPlan>, run: MlflowRun) -> Result<Self::Fetched, String> {
        let mut named = Vec::new();
        if plan.history {
            let keys = history_keys(&plan, &run.metrics);
            let fetches = keys.iter().map(|k| self.metric_history(&run.run_id, k));
            let series = futures_util::future::try_join_all(fetches).await?;
            named = keys.into_iter().zip(series).collect();
        }
        Ok((run, named))
    }

    fn decode(&self, plan: &FetchPlan, (run, mut named): Self::Fetched) -> Result<RunData, String> {
        let mut data = run.into_run_data(plan);
        if plan.history {
            named.sort_by(|a, b| a.0.cmp(&b.0));
            data.history = Some(history_from_series(named));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
