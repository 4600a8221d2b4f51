//! The whole W&B file path for one run: arbitrary bytes written as a run's
//! `.wandb` file (behind a valid header when the first byte is odd), decoded
//! with `decode_run` under the select-everything plan, then turned into the
//! runs table and both history layouts. Decoding must not fail on damage
//! (only on I/O), and building the Arrow batches must not fail at all.

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use runport::output::history::{collect_kinds, long_batch, long_schema, wide_batch, wide_schema};
use runport::output::runs::RunsTable;
use runport::plan::{FetchPlan, HistoryLayout};
use runport::sources::wandb_files::{WANDB_IDENTITY_COLUMNS, WANDB_PREFIXES};
use runport::selection::Selection;
use runport::pipeline::HistorySink;
use runport::sources::wandb_files::decode::{RecordCounts, decode_run};
use runport::sources::wandb_files::log_reader::HEADER;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("runport-fuzz-{}.wandb", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let bytes = match data.split_first() {
        Some((&mode, body)) if mode & 1 == 1 => [&HEADER[..], body].concat(),
        _ => data.to_vec(),
    };
    let path = scratch();
    std::fs::write(path, &bytes).expect("scratch file is writable");
    let plan = FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS);
    let mut counts = RecordCounts::default();
    let Ok(mut run) = decode_run("fuzz", &[path], &plan, &mut counts, &mut HistorySink::whole()) else {
        return;
    };
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
    let mut runs = RunsTable::new(&plan.identity_columns, WANDB_PREFIXES);
    runs.push(&mut run);
    let table = runs.build().expect("runs table");
    assert_eq!(table.num_rows(), 1);
});
