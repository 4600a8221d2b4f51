//! The planner: a [`Selection`] and the history layout become a [`FetchPlan`],
//! which says which columns are built and what each source stage must read.
//! Sources refine it into their own stages (records to decode, requests to
//! send); `runport plan` prints it without reading any run.

use serde::Serialize;

use crate::run::{IdentityColumn, SystemBudget};
use crate::selection::Selection;

/// The prefix of system-metric columns in `--select` (`system.gpu.*`).
pub const SYSTEM_PREFIX: &str = "system.";

/// How history is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryLayout {
    /// One row per (run, step, key).
    Long,
    /// One row per (run, step), one column per key.
    Wide,
    /// No history.
    None,
}

impl HistoryLayout {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryLayout::Long => "long",
            HistoryLayout::Wide => "wide",
            HistoryLayout::None => "none",
        }
    }
}

/// What an export builds, derived from the selection alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FetchPlan {
    #[serde(serialize_with = "display")]
    pub selection: Selection,
    pub history_layout: HistoryLayout,
    /// Identity columns to write, in output order; `run_id` is always there.
    #[serde(serialize_with = "column_names")]
    pub identity_columns: Vec<IdentityColumn>,
    /// Whether any `config.` column can be selected.
    pub config: bool,
    /// Whether any `summary.` column can be selected.
    pub summary: bool,
    /// Whether history is read at all.
    pub history: bool,
    /// Whether system metrics are read: only when a `--select` item starts
    /// with `system.` (they are not part of the default selection).
    pub system: bool,
    /// Where a run's system samples go past their share of memory; set by
    /// `export` and `sync` once their spill folder exists (`None`: every
    /// run's samples are held until it is written).
    #[serde(skip)]
    pub system_budget: Option<SystemBudget>,
}

fn column_names<S: serde::Serializer>(columns: &[IdentityColumn], ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_seq(columns.iter().map(|c| c.name))
}

fn display<S: serde::Serializer>(s: &Selection, ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_str(s)
}

impl FetchPlan {
    pub fn new(selection: Selection, history_layout: HistoryLayout, identity_columns: &[IdentityColumn]) -> FetchPlan {
        let identity_columns =
            identity_columns.iter().filter(|c| c.name == "run_id" || selection.matches(c.name)).copied().collect();
        FetchPlan {
            config: selection.wants_prefix("config."),
            summary: selection.wants_prefix("summary."),
            history: history_layout != HistoryLayout::None && selection.wants_prefix("history."),
            system: selection.patterns().iter().any(|p| p.as_str().starts_with(SYSTEM_PREFIX)),
            identity_columns,
            selection,
            history_layout,
            system_budget: None,
        }
    }

    /// The plan with `budget` for each run's system samples.
    pub fn with_system_budget(&self, budget: SystemBudget) -> FetchPlan {
        FetchPlan { system_budget: Some(budget), ..self.clone() }
    }

    pub fn wants_identity(&self, column: &str) -> bool {
        self.identity_columns.iter().any(|c| c.name == column)
    }

    /// Whether the history key (an encoded path) is selected.
    pub fn wants_history_key(&self, key: &str) -> bool {
        if !self.history {
            return false;
        }
        if self.selection.is_all() {
            return true;
        }
        let mut column = String::with_capacity(8 + key.len());
        column.push_str("history.");
        column.push_str(key);
        self.selection.matches(&column)
    }

    /// Whether the system-metric key (as the source names it: `gpu.0.gpu`) is selected.
    pub fn wants_system_key(&self, key: &str) -> bool {
        self.system && self.selection.matches(&format!("{SYSTEM_PREFIX}{key}"))
    }

    /// Whether `config.<path>` / `summary.<path>` is selected (`prefix` with its dot).
    pub fn wants_column(&self, prefix: &str, path: &str) -> bool {
        if self.selection.is_all() {
            return true;
        }
        let mut column = String::with_capacity(prefix.len() + path.len());
        column.push_str(prefix);
        column.push_str(path);
        self.selection.matches(&column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::wandb_files::{WANDB_IDENTITY_COLUMNS, WANDB_PREFIXES};

    fn plan(select: &str, layout: HistoryLayout) -> FetchPlan {
        let sel = Selection::parse(select, WANDB_IDENTITY_COLUMNS, WANDB_PREFIXES).unwrap();
        FetchPlan::new(sel, layout, WANDB_IDENTITY_COLUMNS)
    }

    #[test]
    fn name_and_state_need_nothing_else() {
        let p = plan("name,state", HistoryLayout::Long);
        assert_eq!(p.identity_columns.iter().map(|c| c.name).collect::<Vec<_>>(), ["run_id", "name", "state"]);
        assert!(!p.config && !p.summary && !p.history);
    }

    #[test]
    fn history_keys_follow_the_selection() {
        let p = plan("name,history.loss,history.train/*", HistoryLayout::Long);
        assert!(p.history && !p.config);
        assert!(p.wants_history_key("loss"));
        assert!(p.wants_history_key("train/acc"));
        assert!(!p.wants_history_key("acc"));
        let none = plan("name,history.loss", HistoryLayout::None);
        assert!(!none.history);
        assert!(!none.wants_history_key("loss"));
    }

    #[test]
    fn default_plan_reads_everything() {
        let p = FetchPlan::new(Selection::all(), HistoryLayout::Wide, WANDB_IDENTITY_COLUMNS);
        assert_eq!(p.identity_columns.len(), WANDB_IDENTITY_COLUMNS.len());
        assert!(p.config && p.summary && p.history);
        assert!(p.wants_column("config.", "a\\.b"));
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"selection\":\"*\""), "{json}");
        assert!(json.contains("\"history_layout\":\"wide\""), "{json}");
    }
}
