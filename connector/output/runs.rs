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
        "created_at" | "updated_at" | "start_time" | "end_time" => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        "runtime_s" => DataType::Float64,
        "exit_code" => DataType::Int64,
        "tags" => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        _ => DataType::Utf8,
    };
    Field::new(name, dt, name != "run_id" && name != "tags")
}

struct Row {
    identity: RunIdentity,
    /// Per group (in `RunsTable::groups` order): path → value.
    groups: Vec<Vec<(String, Value)>>,
}

/// Collects runs and builds the table.
pub struct RunsTable {
    identity_columns: Vec<String>,
    rows: Vec<Row>,
    /// Column groups in output order, with their columns' kinds.
    groups: Vec<(&'static str, BTreeMap<String, ColumnKind>)>,
}

impl RunsTable {
    /// `prefixes` are the source's column groups in output order (`config.`, `summary.`).
    pub fn new(identity_columns: &[String], prefixes: &[&'static str]) -> RunsTable {
        RunsTable {
            identity_columns: identity_columns.to_vec(),
            rows: Vec::new(),
            groups: prefixes.iter().map(|p| (*p, BTreeMap::new())).collect(),
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
        let mut groups = vec![Vec::new(); self.groups.len()];
        for (prefix, values) in std::mem::take(&mut run.groups) {
            let Some(g) = self.groups.iter().position(|(p, _)| *p == prefix) else { continue };
            let kinds = &mut self.groups[g].1;
            for (path, v) in &values {
                let k = kinds.entry(path.clone()).or_insert(ColumnKind::Null);
                *k = k.unify(ColumnKind::of(v));
            }
            groups[g] = values;
        }
        self.rows.push(Row { identity: std::mem::take(&mut run.identity), groups });
    }

    /// The schema the table will have with the runs pushed so far.
    pub fn schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self.identity_columns.iter().map(|c| identity_field(c)).collect();
        for (prefix, kinds) in &self.groups {
            for (p, k) in kinds {
                fields.push(k.field(&format!("{prefix}{p}")));
            }
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
        for (g, (_, kinds)) in self.groups.iter().enumerate() {
            // Index each row's values by path once per group.
            let indexed: Vec<BTreeMap<&str, &Value>> =
                self.rows.iter().map(|r| r.groups[g].iter().map(|(p, v)| (p.as_str(), v)).collect()).collect();
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
        "name" | "run_name" => text(&|i| i.name.as_deref()),
        "experiment_id" => text(&|i| i.experiment_id.as_deref()),
        "experiment_name" => text(&|i| i.experiment_name.as_deref()),
        "status" => text(&|i| i.status.as_deref()),
        "artifact_uri" => text(&|i| i.artifact_uri.as_deref()),
        "user_id" => text(&|i| i.user_id.as_deref()),
        "lifecycle_stage" => text(&|i| i.lifecycle_stage.as_deref()),
        "state" => text(&|i| i.state.as_deref()),
        "group" => text(&|i| i.group.as_deref()),
        "job_type" => text(&|i| i.job_type.as_deref()),
        "notes" => text(&|i| i.notes.as_deref()),
        "host" => text(&|i| i.host.as_deref()),
        "git_remote" => text(&|i| i.git_remote.as_deref()),
        "git_commit" => text(&|i| i.git_commit.as_deref()),
        "created_at" | "updated_at" | "start_time" | "end_time" => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
            for r in rows {
                let i = &r.identity;
                b.append_option(match name {
                    "created_at" => i.created_at,
                    "updated_at" => i.updated_at,
                    "start_time" => i.start_time,
                    _ => i.end_time,
                });
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
