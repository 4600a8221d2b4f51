//! The W&B API source behind the [`Source`] trait: `wandb://ENTITY/PROJECT`.

use super::{DEFAULT_BASE_URL, DEFAULT_PER_PAGE, WandbApi, WandbApiOptions, queries};
use crate::error::Result;
use crate::http::Http;
use crate::plan::FetchPlan;
use crate::redact::redact;
use crate::sources::read::{Network, NetworkSource};
use crate::sources::wandb_files::WANDB_COLUMNS;
use crate::sources::{BoxedConfig, Registration, RunColumns, Source, SourceConfig, SourceOption};

pub const REGISTRATION: Registration = Registration { parse };

fn parse(text: &str) -> Option<Result<BoxedConfig>> {
    if !text.starts_with("wandb://") {
        return None;
    }
    Some(
        WandbApiOptions::parse_uri(text)
            .map(|(entity, project)| Box::new(WandbApiConfig { entity, project }) as BoxedConfig),
    )
}

/// `wandb://ENTITY/PROJECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WandbApiConfig {
    pub entity: String,
    pub project: String,
}

impl SourceConfig for WandbApiConfig {
    fn kind(&self) -> &'static str {
        "wandb-api"
    }

    fn network(&self) -> bool {
        true
    }

    fn options(&self) -> &'static [&'static str] {
        &["--base-url", "--where", "--order", "--per-page", "--samples"]
    }

    fn columns(&self) -> &'static RunColumns {
        &WANDB_COLUMNS
    }

    fn open(&self, _source: &str, options: &[SourceOption], concurrency: usize) -> Result<Box<dyn Source>> {
        let mut opts = WandbApiOptions {
            entity: self.entity.clone(),
            project: self.project.clone(),
            base_url: String::new(),
            per_page: DEFAULT_PER_PAGE,
            filters: None,
            order: None,
            samples: None,
            concurrency,
        };
        let mut base_url = None;
        for o in options {
            match o {
                SourceOption::BaseUrl(u) => base_url = Some(u.clone()),
                SourceOption::Where(f) => opts.filters = Some(f.clone()),
                SourceOption::Order(o) => opts.order = Some(o.clone()),
                SourceOption::PerPage(n) => opts.per_page = (*n).max(1),
                SourceOption::Samples(n) => opts.samples = Some(*n),
                other => return Err(other.not_taken(self.kind(), self.options(), None)),
            }
        }
        opts.base_url = base_url
            .or_else(|| std::env::var("WANDB_BASE_URL").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        Ok(Box::new(Network::new(WandbApi::connect(opts)?)))
    }
}

impl NetworkSource for WandbApi {
    const PAGE_LABEL: &'static str = "listing page";

    fn name(&self) -> String {
        WandbApi::name(self)
    }

    fn http(&self) -> &Http {
        &self.http
    }

    fn describe_plan(&self, plan: &FetchPlan) -> Result<serde_json::Value, String> {
        WandbApi::describe_plan(self, plan)
    }

    fn manifest_plan(&self, plan: &FetchPlan) -> serde_json::Value {
        serde_json::json!({
            "source_kind": "wandb-api",
            "base_url": redact(&self.opts.base_url),
            "listing_fields": queries::ListingFields::from_plan(plan),
            "per_page": self.opts.per_page,
        })
    }
}
