//! `runs.parquet`: identity columns, then typed `config.*` and `summary.*`.
//!
//! Column types depend on every run's values, so the table is held until the
//! last run is in (one flattened row per run; history never passes here).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::columns::{ColumnBuilder, ColumnKind};
use crate::error::{Error, Result};
use crate::run::{RunData, RunIdentity};
use crate::value::Value;

/// The Arrow type of an identity column.
pub fn identity_field(name: &str) -> Field {
    let dt = match name {
        "created_at" | "updated_at" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        "runtime_s" => DataType::Float64,
        "exit_code" => DataType::Int64,
        "tags" => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        _ => DataType::Utf8,
    };
    Field::new(name, dt, name != "run_id" && name != "tags")
}

struct Row {
    identity: RunIdentity,
    config: Vec<(String, Value)>,
    summary: Vec<(String, Value)>,
}

/// Collects runs and builds the table.
pub struct RunsTable {
    identity_columns: Vec<String>,
    rows: Vec<Row>,
    config_kinds: BTreeMap<String, ColumnKind>,
    summary_kinds: BTreeMap<String, ColumnKind>,
}

impl RunsTable {
    pub fn new(identity_columns: &[String]) -> RunsTable {
        RunsTable {
            identity_columns: identity_columns.to_vec(),
            rows: Vec::new(),
            config_kinds: BTreeMap::new(),
            summary_kinds: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds a run (its history is not kept).
    pub fn push(&mut self, run: &mut RunData) {
        for (path, v) in &run.config {
            let k = self.config_kinds.entry(path.clone()).or_insert(ColumnKind::Null);
            *k = k.unify(ColumnKind::of(v));
        }
        for (path, v) in &run.summary {
            let k = self.summary_kinds.entry(path.clone()).or_insert(ColumnKind::Null);
            *k = k.unify(ColumnKind::of(v));
        }
        self.rows.push(Row {
            identity: std::mem::take(&mut run.identity),
            config: std::mem::take(&mut run.config),
            summary: std::mem::take(&mut run.summary),
        });
    }

    /// The schema the table will have with the runs pushed so far.
    pub fn schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self.identity_columns.iter().map(|c| identity_field(c)).collect();
        for (p, k) in &self.config_kinds {
            fields.push(k.field(&format!("config.{p}")));
        }
        for (p, k) in &self.summary_kinds {
            fields.push(k.field(&format!("summary.{p}")));
        }
        Arc::new(Schema::new(fields))
    }

    /// Builds the table, rows sorted by run id.
    pub fn build(mut self) -> Result<RecordBatch> {
        let schema = self.schema();
        self.rows.sort_by(|a, b| a.identity.run_id.cmp(&b.identity.run_id));
        let n = self.rows.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for c in &self.identity_columns {
            columns.push(identity_column(c, &self.rows));
        }
        for (prefix_config, kinds) in [(true, &self.config_kinds), (false, &self.summary_kinds)] {
            // Index each row's values by path once per table part.
            let indexed: Vec<BTreeMap<&str, &Value>> = self
                .rows
                .iter()
                .map(|r| {
                    let vals = if prefix_config { &r.config } else { &r.summary };
                    vals.iter().map(|(p, v)| (p.as_str(), v)).collect()
                })
                .collect();
            for (path, kind) in kinds {
                let mut b = ColumnBuilder::new(*kind, n);
                for row in &indexed {
                    b.push(row.get(path.as_str()).copied());
                }
                columns.push(b.finish());
            }
        }
        RecordBatch::try_new(schema, columns).map_err(|e| Error::Arrow { what: "runs.parquet".into(), source: e })
    }
}

fn identity_column(name: &str, rows: &[Row]) -> ArrayRef {
    let n = rows.len();
    let text = |f: &dyn Fn(&RunIdentity) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        for r in rows {
            b.append_option(f(&r.identity));
        }
        Arc::new(b.finish())
    };
    match name {
        "source" => text(&|i| Some(i.source.as_str())),
        "entity" => text(&|i| i.entity.as_deref()),
        "project" => text(&|i| i.project.as_deref()),
        "run_id" => text(&|i| Some(i.run_id.as_str())),
        "name" => text(&|i| i.name.as_deref()),
        "state" => text(&|i| i.state.as_deref()),
        "group" => text(&|i| i.group.as_deref()),
        "job_type" => text(&|i| i.job_type.as_deref()),
        "notes" => text(&|i| i.notes.as_deref()),
        "host" => text(&|i| i.host.as_deref()),
        "git_remote" => text(&|i| i.git_remote.as_deref()),
        "git_commit" => text(&|i| i.git_commit.as_deref()),
        "created_at" | "updated_at" => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
            for r in rows {
                b.append_option(if name == "created_at" { r.identity.created_at } else { r.identity.updated_at });
            }
            Arc::new(b.finish())
        }
        "runtime_s" => {
            let mut b = Float64Builder::with_capacity(n);
            rows.iter().for_each(|r| b.append_option(r.identity.runtime_s));
            Arc::new(b.finish())
        }
        "exit_code" => {
            let mut b = Int64Builder::with_capacity(n);
            rows.iter().for_each(|r| b.append_option(r.identity.exit_code));
            Arc::new(b.finish())
        }
        "tags" => {
            let mut b =
                ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new("item", DataType::Utf8, true)));
            for r in rows {
                for t in &r.identity.tags {
                    b.values().append_value(t);
                }
                b.append(true);
            }
            Arc::new(b.finish())
        }
        other => unreachable!("invariant: identity columns come from a fixed list, not {other:?}"),
    }
}
