//! The whole W&B file path for one run: arbitrary bytes written as a run's
//! `.wandb` file (behind a valid header when the first byte is odd), decoded
//! with `decode_run` under the select-everything plan, then turned into the
//! runs table and both history layouts. Decoding must not fail on damage
//! (only on I/O), and building the Arrow batches must not fail at all.

#![no_main]

#[path = "run_tables.rs"]
mod run_tables;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use run_tables::check_run_tables;
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
    check_run_tables(&plan, WANDB_PREFIXES, &mut run);
});
