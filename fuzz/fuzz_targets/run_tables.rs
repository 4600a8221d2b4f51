//! What the whole-run targets (`decode_run`, `event_file`) check of a run a
//! source read: its history's points refer to its rows and keys, it becomes
//! a long and a wide batch of the right sizes, and the runs table takes it.

use std::collections::BTreeMap;

use runport::output::history::{collect_kinds, long_batch, long_schema, wide_batch, wide_schema};
use runport::output::runs::RunsTable;
use runport::plan::FetchPlan;
use runport::run::RunData;

pub fn check_run_tables(plan: &FetchPlan, groups: &'static [&'static str], run: &mut RunData) {
    if let Some(h) = &run.history {
        for p in &h.points {
            assert!((p.row as usize) < h.rows.len() && (p.key as usize) < h.keys.len());
        }
        let batch = long_batch(&long_schema(), "fuzz", h).expect("long history batch");
        assert_eq!(batch.num_rows(), h.points.len());
        let mut kinds = BTreeMap::new();
        collect_kinds(h, &mut kinds);
        let schema = wide_schema(&kinds);
        let wide = wide_batch(&schema, &kinds, "fuzz", h).expect("wide history batch");
        assert_eq!(wide.num_rows(), h.rows.len());
    }
    let mut runs = RunsTable::new(&plan.identity_columns, groups);
    runs.push(run);
    let table = runs.build().expect("runs table");
    assert_eq!(table.num_rows(), 1);
}
