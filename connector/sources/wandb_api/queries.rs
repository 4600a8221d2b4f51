//! GraphQL documents, generated from the plan: the listing asks for exactly
//! the run fields the selected columns need. The documents' shape lives in
//! `schemas/wandb/*.graphql`.

use serde::Serialize;

use crate::columns::decode_path;
use crate::plan::FetchPlan;

const RUNS_TEMPLATE: &str = include_str!("../../../schemas/wandb/runs.graphql");
pub const PARQUET_HISTORY: &str = include_str!("../../../schemas/wandb/parquet_history.graphql");
pub const HISTORY_PAGE: &str = include_str!("../../../schemas/wandb/history_page.graphql");
pub const SAMPLED_HISTORY: &str = include_str!("../../../schemas/wandb/sampled_history.graphql");
pub const SYSTEM_EVENTS: &str = include_str!("../../../schemas/wandb/system_events.graphql");

/// What the listing query asks for, derived from the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListingFields {
    /// Run fields, in query order.
    pub fields: Vec<String>,
    /// `config(keys:)`: `None` asks for the whole config (or none, see `config`).
    pub config_keys: Option<Vec<String>>,
    pub summary_keys: Option<Vec<String>>,
    pub config: bool,
    pub summary: bool,
    pub history_keys: bool,
}

/// Top-level keys to project server-side for the literal column names under
/// `prefix`, or `None` when a glob needs the whole object.
fn top_level_keys(plan: &FetchPlan, prefix: &str) -> Option<Vec<String>> {
    let names = plan.selection.literal_keys(prefix)?;
    let mut keys: Vec<String> = Vec::new();
    for n in names {
        let first = decode_path(&n).into_iter().next().unwrap_or_default();
        if !keys.contains(&first) {
            keys.push(first);
        }
    }
    Some(keys)
}

impl ListingFields {
    pub fn from_plan(plan: &FetchPlan) -> ListingFields {
        let id = |c: &str| plan.wants_identity(c);
        let mut fields = vec!["name".to_string()];
        for (column, field) in [
            ("name", "displayName"),
            ("state", "state"),
            ("created_at", "createdAt"),
            ("updated_at", "heartbeatAt"),
            ("group", "group"),
            ("job_type", "jobType"),
            ("tags", "tags"),
            ("notes", "notes"),
            ("host", "host"),
            ("git_commit", "commit"),
        ] {
            if id(column) && !fields.iter().any(|f| f == field) {
                fields.push(field.to_string());
            }
        }
        let config_keys = if plan.config { top_level_keys(plan, "config.") } else { None };
        let mut summary_keys = if plan.summary { top_level_keys(plan, "summary.") } else { None };
        // runtime_s comes from the summary's `_runtime`.
        let summary_for_runtime = id("runtime_s");
        if summary_for_runtime {
            if let Some(keys) = summary_keys.as_mut() {
                if !keys.iter().any(|k| k == "_runtime") {
                    keys.push("_runtime".to_string());
                }
            } else if !plan.summary {
                summary_keys = Some(vec!["_runtime".to_string()]);
            }
        }
        let config = plan.config && config_keys.as_ref().is_none_or(|k| !k.is_empty());
        let summary = (plan.summary || summary_for_runtime) && summary_keys.as_ref().is_none_or(|k| !k.is_empty());
        if config {
            fields.push(if config_keys.is_some() { "config(keys: $configKeys)".into() } else { "config".into() });
        }
        if summary {
            fields.push(if summary_keys.is_some() {
                "summaryMetrics(keys: $summaryKeys)".into()
            } else {
                "summaryMetrics".into()
            });
        }
        if plan.history {
            fields.push("historyKeys".into());
            fields.push("historyLineCount".into());
        }
        if plan.system {
            fields.push("eventsLineCount".into());
        }
        ListingFields { fields, config_keys, summary_keys, config, summary, history_keys: plan.history }
    }

    /// The listing document.
    pub fn document(&self) -> String {
        let mut vars = String::new();
        if self.config && self.config_keys.is_some() {
            vars.push_str(", $configKeys: [String!]");
        }
        if self.summary && self.summary_keys.is_some() {
            vars.push_str(", $summaryKeys: [String!]");
        }
        let body: String =
            RUNS_TEMPLATE.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
        body.replace("__VARIABLES__", &vars).replace("__RUN_FIELDS__", &self.fields.join("\n          "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::HistoryLayout;
    use crate::selection::Selection;
    use crate::sources::wandb_files::{WANDB_IDENTITY_COLUMNS, WANDB_PREFIXES};

    fn fields(select: Option<&str>) -> ListingFields {
        let sel = select
            .map_or_else(Selection::all, |s| Selection::parse(s, WANDB_IDENTITY_COLUMNS, WANDB_PREFIXES).unwrap());
        ListingFields::from_plan(&FetchPlan::new(sel, HistoryLayout::Long, WANDB_IDENTITY_COLUMNS))
    }

    #[test]
    fn listing_only_asks_for_what_is_selected() {
        let f = fields(Some("name,state"));
        assert_eq!(f.fields, ["name", "displayName", "state"]);
        let doc = f.document();
        assert!(!doc.contains("config") && !doc.contains("summaryMetrics") && !doc.contains("historyKeys"), "{doc}");
        assert!(doc.contains("query Runs("), "{doc}");
    }

    #[test]
    fn literal_keys_are_projected_server_side() {
        let f = fields(Some("name,config.lr,config.opt.beta,summary.loss"));
        assert_eq!(f.config_keys, Some(vec!["lr".to_string(), "opt".to_string()]));
        assert_eq!(f.summary_keys, Some(vec!["loss".to_string()]));
        let doc = f.document();
        assert!(doc.contains("config(keys: $configKeys)") && doc.contains("$configKeys: [String!]"), "{doc}");
        assert!(doc.contains("summaryMetrics(keys: $summaryKeys)"), "{doc}");
        // A dotted flat key is one top-level key.
        assert_eq!(fields(Some("config.a\\.b")).config_keys, Some(vec!["a.b".to_string()]));
    }

    #[test]
    fn globs_fetch_whole_objects_and_history_needs_history_keys() {
        let f = fields(Some("config.*,history.loss"));
        assert_eq!(f.config_keys, None);
        assert!(f.config && !f.summary && f.history_keys);
        let doc = f.document();
        assert!(doc.contains("\n          config\n") && doc.contains("historyKeys"), "{doc}");
        let all = fields(None);
        assert!(all.fields.contains(&"summaryMetrics".to_string()) && all.fields.contains(&"createdAt".to_string()));
    }
}
