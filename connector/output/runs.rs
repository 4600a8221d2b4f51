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
use crate::run::{IdentityColumn, IdentityKind, RunData, RunIdentity};
use crate::value::Value;

/// The Arrow field of an identity column.
pub fn identity_field(column: &IdentityColumn) -> Field {
    let dt = match column.kind {
        IdentityKind::Text => DataType::Utf8,
        IdentityKind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        IdentityKind::Float => DataType::Float64,
        IdentityKind::Int => DataType::Int64,
        IdentityKind::TextList => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
    };
    Field::new(column.name, dt, column.name != "run_id" && column.kind != IdentityKind::TextList)
}

struct Row {
    identity: RunIdentity,
    /// Per group (in `RunsTable::groups` order): path → value.
    groups: Vec<Vec<(String, Value)>>,
}

/// Collects runs and builds the table.
pub struct RunsTable {
    identity_columns: Vec<IdentityColumn>,
    rows: Vec<Row>,
    /// Column groups in output order, with their columns' kinds.
    groups: Vec<(&'static str, BTreeMap<String, ColumnKind>)>,
}

impl RunsTable {
    /// `prefixes` are the source's column groups in output order (`config.`, `summary.`).
    pub fn new(identity_columns: &[IdentityColumn], prefixes: &[&'static str]) -> RunsTable {
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
        let mut fields: Vec<Field> = self.identity_columns.iter().map(identity_field).collect();
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
            columns.push(identity_column(c, &self.rows)?);
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

/// One identity column over every row; a value of another kind than the
/// column declares is an error naming the column and the run.
fn identity_column(column: &IdentityColumn, rows: &[Row]) -> Result<ArrayRef> {
    let n = rows.len();
    let name = column.name;
    for r in rows {
        if let Some(v) = r.identity.get(name).filter(|v| v.kind() != column.kind) {
            let message = format!(
                "identity column {name} of run {} holds a {} value, the source declares {}",
                r.identity.run_id,
                v.kind().name(),
                column.kind.name()
            );
            return Err(Error::Arrow {
                what: "runs.parquet".into(),
                source: arrow_schema::ArrowError::InvalidArgumentError(message),
            });
        }
    }
    fn i(r: &Row) -> &RunIdentity {
        &r.identity
    }
    Ok(match column.kind {
        IdentityKind::Text => {
            let mut b = StringBuilder::with_capacity(n, n * 16);
            rows.iter().for_each(|r| b.append_option(i(r).text(name)));
            Arc::new(b.finish())
        }
        IdentityKind::Timestamp => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
            rows.iter().for_each(|r| b.append_option(i(r).timestamp(name)));
            Arc::new(b.finish())
        }
        IdentityKind::Float => {
            let mut b = Float64Builder::with_capacity(n);
            rows.iter().for_each(|r| b.append_option(i(r).float(name)));
            Arc::new(b.finish())
        }
        IdentityKind::Int => {
            let mut b = Int64Builder::with_capacity(n);
            rows.iter().for_each(|r| b.append_option(i(r).int(name)));
            Arc::new(b.finish())
        }
        IdentityKind::TextList => {
            let mut b =
                ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new("item", DataType::Utf8, true)));
            for r in rows {
                for t in i(r).list(name) {
                    b.values().append_value(t);
                }
                b.append(true);
            }
            Arc::new(b.finish())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::IdentityKind::{Text, TextList, Timestamp};

    const COLUMNS: &[IdentityColumn] = &[
        IdentityColumn::new("run_id", Text),
        IdentityColumn::new("started", Timestamp),
        IdentityColumn::new("labels", TextList),
    ];

    fn run(identity: RunIdentity) -> RunData {
        RunData { identity, ..Default::default() }
    }

    #[test]
    fn identity_columns_follow_their_declared_kinds() {
        let mut t = RunsTable::new(COLUMNS, &["params."]);
        t.push(&mut run(RunIdentity::new("b")
            .with_timestamp("started", Some(5))
            .with_list("labels", vec!["x".into()])));
        // A value for a column the source does not declare is not written.
        t.push(&mut run(RunIdentity::new("a").with_text("elsewhere", Some("ignored".into()))));
        let batch = t.build().unwrap();
        let names: Vec<_> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["run_id", "started", "labels"]);
        let schema = batch.schema();
        assert!(!schema.field(0).is_nullable() && schema.field(1).is_nullable() && !schema.field(2).is_nullable());
        let started =
            batch.column(1).as_any().downcast_ref::<arrow_array::TimestampMicrosecondArray>().expect("timestamps");
        assert_eq!(started.iter().collect::<Vec<_>>(), [None, Some(5)], "rows sorted by run id");
    }

    #[test]
    fn a_value_of_another_kind_is_an_error_naming_column_and_run() {
        let mut t = RunsTable::new(COLUMNS, &[]);
        t.push(&mut run(RunIdentity::new("r1").with_text("started", Some("yesterday".into()))));
        let err = t.build().unwrap_err().to_string();
        assert!(err.contains("started") && err.contains("r1") && err.contains("text"), "{err}");
    }
}
