//! Listing pages: run nodes as the API returns them, turned into runport's
//! identity, config and summary columns (the same as the local-files source
//! gives for the same run).
//!
//! API encodings: `config` is a JSON string `{key: {"value": v, "desc": ...}}`,
//! `summaryMetrics` a JSON string, `historyKeys` a JSON object
//! `{"lastStep": n, "keys": {key: {...}}}`; NaN and infinities arrive as the
//! strings `"NaN"`, `"Infinity"`, `"-Infinity"` and are read back as floats.

use crate::columns::{encode_path, flatten, push_segment};
use crate::plan::FetchPlan;
use crate::run::{IdentityValue, RunData, RunIdentity};
use crate::sources::SyncMark;
use crate::value::Value;

/// One listed run, with what the history stage needs.
#[derive(Debug, Clone)]
pub struct ListedRun {
    pub data: RunData,
    /// History key names as the API gives them (`nest.x`, `train/loss`).
    pub history_keys: Option<Vec<String>>,
    pub last_step: Option<i64>,
    pub history_line_count: Option<i64>,
    /// System-metric samples (`eventsLineCount`), when system metrics are selected.
    pub events_line_count: Option<i64>,
    /// `runport sync`: the last step and the history lines the table holds
    /// for this run; only later steps are fetched when the history grew by
    /// appending (see `WandbApi::fetch`).
    pub history_from: Option<SyncMark>,
}

impl ListedRun {
    /// `runport sync`'s change fingerprint: a digest of everything the
    /// listing gave for the selection (state, heartbeat, the projected
    /// config and summary values, and with history `historyLineCount` and
    /// the history keys with the last step). A run that logs, finishes,
    /// resumes or is edited changes at least one of them.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut part = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        part(self.data.identity.run_id.as_bytes());
        for (column, value) in self.data.identity.values() {
            part(column.as_bytes());
            part(identity_text(value).as_bytes());
        }
        for (prefix, cols) in &self.data.groups {
            part(prefix.as_bytes());
            for (path, value) in cols {
                part(path.as_bytes());
                part(value.to_json().as_bytes());
            }
        }
        part(format!("{:?} {:?}", self.history_line_count, self.last_step).as_bytes());
        for k in self.history_keys.iter().flatten() {
            part(k.as_bytes());
        }
        if let Some(n) = self.events_line_count {
            part(format!("events {n}").as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// An identity value as fingerprint text (stable across versions).
fn identity_text(v: &IdentityValue) -> String {
    match v {
        IdentityValue::Text(t) => format!("t{t}"),
        IdentityValue::Timestamp(t) => format!("s{t}"),
        IdentityValue::Float(f) => format!("f{}", f.to_bits()),
        IdentityValue::Int(i) => format!("i{i}"),
        IdentityValue::TextList(l) => format!("l{}", serde_json::Value::from(l.clone())),
    }
}

/// The JSON of a field that the API sends either as a JSON string or inline.
fn json_field(node: &serde_json::Value, field: &str) -> Result<Option<Value>, String> {
    match node.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => {
            Value::parse(s).map(Some).map_err(|e| format!("field {field} is not valid JSON: {e}"))
        }
        Some(other) => Value::parse(&other.to_string()).map(Some).map_err(|e| format!("field {field}: {e}")),
    }
}

/// `"NaN"`, `"Infinity"`, `"-Infinity"` strings back to floats, everywhere in a value.
pub fn restore_non_finite(v: Value) -> Value {
    match v {
        Value::Str(s) => match s.as_str() {
            "NaN" => Value::Float(f64::NAN),
            "Infinity" => Value::Float(f64::INFINITY),
            "-Infinity" => Value::Float(f64::NEG_INFINITY),
            _ => Value::Str(s),
        },
        Value::List(items) => Value::List(items.into_iter().map(restore_non_finite).collect()),
        Value::Object(fields) => Value::Object(fields.into_iter().map(|(k, v)| (k, restore_non_finite(v))).collect()),
        other => other,
    }
}

fn text(node: &serde_json::Value, field: &str) -> Option<String> {
    node.get(field).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(str::to_string)
}

/// `2024-01-02T03:04:05[.ffffff][Z|±hh:mm]` (UTC when no offset) to microseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let with_zone =
        if s.ends_with('Z') || s.rfind(['+', '-']).is_some_and(|i| i > 10) { s.to_string() } else { format!("{s}Z") };
    chrono::DateTime::parse_from_rfc3339(&with_zone).ok().map(|t| t.timestamp_micros())
}

/// Flattens the top-level entries of an object under `prefix` (`config.` or
/// `summary.`), skipping `_wandb`, keeping what the plan selects.
fn flatten_object(obj: Value, prefix: &str, unwrap_value: bool, plan: &FetchPlan, out: &mut Vec<(String, Value)>) {
    let Value::Object(fields) = obj else { return };
    for (k, v) in fields {
        if k == "_wandb" {
            continue;
        }
        let v = match v {
            Value::Object(inner) if unwrap_value && inner.iter().any(|(ik, _)| ik == "value") => {
                inner.into_iter().find(|(ik, _)| ik == "value").map(|(_, v)| v).unwrap_or(Value::Null)
            }
            other => other,
        };
        let v = restore_non_finite(v);
        let mut path = String::new();
        push_segment(&mut path, true, &k);
        flatten(&path, &v, &mut |p, leaf| {
            if plan.wants_column(prefix, p) {
                out.push((p.to_string(), leaf.clone()));
            }
        });
    }
}

/// A run node of the listing as runport's run.
pub fn parse_run_node(
    node: &serde_json::Value,
    plan: &FetchPlan,
    entity: &str,
    project: &str,
) -> Result<ListedRun, String> {
    let run_id = text(node, "name").ok_or("run node without a name")?;
    let summary = json_field(node, "summaryMetrics")?;
    let runtime_s = match &summary {
        Some(Value::Object(f)) => {
            f.iter().find(|(k, _)| k == "_runtime").and_then(|(_, v)| restore_non_finite(v.clone()).as_f64())
        }
        _ => None,
    };
    let tags = node
        .get("tags")
        .and_then(|t| t.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let identity = RunIdentity::new(run_id.clone())
        .with_text("source", Some("wandb".into()))
        .with_text("entity", Some(entity.to_string()))
        .with_text("project", Some(project.to_string()))
        .with_text("name", text(node, "displayName"))
        .with_text("state", text(node, "state"))
        .with_timestamp("created_at", text(node, "createdAt").as_deref().and_then(parse_time))
        .with_timestamp("updated_at", text(node, "heartbeatAt").as_deref().and_then(parse_time))
        .with_float("runtime_s", runtime_s)
        .with_text("group", text(node, "group"))
        .with_text("job_type", text(node, "jobType"))
        .with_list("tags", tags)
        .with_text("notes", text(node, "notes"))
        .with_text("host", text(node, "host"))
        .with_text("git_commit", text(node, "commit"));
    let mut config = Vec::new();
    if let Some(c) = if plan.config { json_field(node, "config")? } else { None } {
        flatten_object(c, "config.", true, plan, &mut config);
    }
    let mut summary_cols = Vec::new();
    if let Some(s) = summary.filter(|_| plan.summary) {
        flatten_object(s, "summary.", false, plan, &mut summary_cols);
    }
    let (history_keys, last_step) = match json_field(node, "historyKeys")? {
        Some(Value::Object(fields)) => {
            let last = fields.iter().find(|(k, _)| k == "lastStep").and_then(|(_, v)| v.as_f64()).map(|f| f as i64);
            let keys = fields
                .iter()
                .find(|(k, _)| k == "keys")
                .map(|(_, v)| match v {
                    Value::Object(ks) => ks.iter().map(|(k, _)| k.clone()).collect(),
                    _ => Vec::new(),
                })
                .unwrap_or_default();
            (Some(keys), last)
        }
        _ => (None, None),
    };
    Ok(ListedRun {
        data: RunData {
            identity,
            groups: vec![("config.", config), ("summary.", summary_cols)],
            history: None,
            warnings: Vec::new(),
            system: None,
            history_mark: None,
        },
        history_keys,
        last_step,
        history_line_count: node.get("historyLineCount").and_then(|v| v.as_i64()),
        events_line_count: node.get("eventsLineCount").and_then(|v| v.as_i64()),
        history_from: None,
    })
}

/// Whether a run with these API history keys has any selected key. A key
/// name is matched both as one flat key and as a dotted path, since the API
/// joins nested keys with dots.
pub fn has_selected_history_key(plan: &FetchPlan, keys: &[String]) -> bool {
    keys.iter()
        .filter(|k| !matches!(k.as_str(), "_step" | "_timestamp" | "_runtime"))
        .any(|k| plan.wants_history_key(&encode_path(&[k.as_str()])) || plan.wants_history_key(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::HistoryLayout;
    use crate::selection::Selection;
    use crate::sources::wandb_files::{WANDB_IDENTITY_COLUMNS, WANDB_PREFIXES};

    fn plan(select: Option<&str>) -> FetchPlan {
        let sel = select
            .map_or_else(Selection::all, |s| Selection::parse(s, WANDB_IDENTITY_COLUMNS, WANDB_PREFIXES).unwrap());
        FetchPlan::new(sel, HistoryLayout::Long, WANDB_IDENTITY_COLUMNS)
    }

    #[test]
    fn run_nodes_become_runs() {
        let node = serde_json::json!({
            "name": "abc", "displayName": "my run", "state": "finished",
            "createdAt": "2024-01-02T03:04:05.250000", "heartbeatAt": "2024-01-02T04:00:00",
            "tags": ["a", "b"], "group": "", "jobType": "train",
            "config": r#"{"_wandb": {"value": {}}, "opt": {"value": {"lr": 0.1}, "desc": null}, "a.b": {"value": "NaN"}}"#,
            "summaryMetrics": r#"{"loss": "Infinity", "_runtime": 12.5, "img": {"_type": "image-file", "path": "x"}}"#,
            "historyKeys": {"lastStep": 99, "keys": {"loss": {"typeCounts": []}, "nest.x": {}}},
            "historyLineCount": 100
        });
        let r = parse_run_node(&node, &plan(None), "ent", "proj").unwrap();
        let i = &r.data.identity;
        assert_eq!((i.run_id.as_str(), i.text("name"), i.text("group")), ("abc", Some("my run"), None));
        assert_eq!(i.timestamp("created_at"), Some(1_704_164_645_250_000));
        assert_eq!(i.float("runtime_s"), Some(12.5));
        let config: Vec<(String, String)> =
            r.data.group("config.").iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
        assert_eq!(config, [("opt.lr".to_string(), "0.1".to_string()), ("a\\.b".to_string(), "\"NaN\"".to_string())]);
        assert!(matches!(r.data.group("config.")[1].1, Value::Float(f) if f.is_nan()));
        assert_eq!(r.data.group("summary.")[0], ("loss".to_string(), Value::Float(f64::INFINITY)));
        assert_eq!(r.data.group("summary.")[2].0, "img", "media stay whole");
        assert_eq!(r.history_keys.as_deref(), Some(&["loss".to_string(), "nest.x".to_string()][..]));
        assert_eq!((r.last_step, r.history_line_count), (Some(99), Some(100)));
    }

    #[test]
    fn history_key_selection_matches_flat_and_dotted_names() {
        let keys = vec!["_step".to_string(), "nest.x".to_string(), "train/loss".to_string()];
        assert!(has_selected_history_key(&plan(Some("history.nest.x")), &keys));
        assert!(has_selected_history_key(&plan(Some("history.train/*")), &keys));
        assert!(!has_selected_history_key(&plan(Some("history.acc")), &keys));
        assert!(!has_selected_history_key(&plan(Some("history._step")), &keys));
        assert!(!has_selected_history_key(&plan(Some("name")), &keys));
    }

    #[test]
    fn times_with_and_without_zones() {
        assert_eq!(parse_time("1970-01-01T00:00:01"), Some(1_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(parse_time("1970-01-01T01:00:01+01:00"), Some(1_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:01.5"), Some(1_500_000));
        assert_eq!(parse_time("yesterday"), None);
    }
}
