//! A W&B API history file: arbitrary bytes as an exported Parquet file,
//! read by `HistoryBuilder::add_parquet` (parquet's footer and schema
//! readers, runport's page reader and zstd decompression, parquet's Arrow
//! decoders), then turned into the long history batch. Reading may fail on
//! damage; no panic may leave `add_parquet`, and a history it accepts must
//! become a batch. `add_parquet` turns a panic of parquet's decoders on a
//! damaged file into an error of the run (as in the `runport` binary), so
//! the target replaces libFuzzer's aborting panic hook with a silent one: a
//! panic that escapes still aborts (libfuzzer-sys aborts on any unwinding
//! out of the target). `tests/fixtures/history-*.parquet` are inputs it
//! found that parquet's reader panics on; unit tests keep them errors.

#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use runport::output::history::{long_batch, long_schema};
use runport::plan::{FetchPlan, HistoryLayout};
use runport::sources::wandb_files::WANDB_IDENTITY_COLUMNS;
use runport::selection::Selection;
use runport::sources::wandb_api::history::HistoryBuilder;

fn plan() -> &'static FetchPlan {
    static PLAN: OnceLock<FetchPlan> = OnceLock::new();
    PLAN.get_or_init(|| FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS))
}

fuzz_target!(init: { std::panic::set_hook(Box::new(|_| {})) }, |data: &[u8]| {
    let mut builder = HistoryBuilder::new(plan());
    if builder.add_parquet(Bytes::copy_from_slice(data)).is_ok() {
        let history = builder.finish();
        long_batch(&long_schema(), "run", &history).expect("an accepted history must become a long batch");
    }
});
