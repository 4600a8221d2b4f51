//! A W&B API history file: arbitrary bytes as an exported Parquet file,
//! read by `HistoryBuilder::add_parquet` (parquet's footer and schema
//! readers, runport's chunk and row-count checks, parquet's page reader and
//! Arrow decoders), then turned into the long history batch. Reading may fail on
//! damage; no panic may leave `add_parquet`, and a history it accepts must
//! become a batch. `add_parquet` turns a panic of parquet's reader on a
//! damaged file into an error of the run (as in the `runport` binary); the
//! target keeps libFuzzer's aborting panic hook for every other panic and
//! silences it only inside that guard (`in_third_party_code`), so that a
//! panic of runport's own code (its checks, `add_batch`, the long batch) is a
//! finding. `tests/fixtures/history-*.parquet` are inputs it
//! found that parquet's reader panics on; unit tests keep them errors.

#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use runport::output::history::{long_batch, long_schema};
use runport::plan::{FetchPlan, HistoryLayout};
use runport::sources::wandb_files::WANDB_IDENTITY_COLUMNS;
use runport::selection::Selection;
use runport::pipeline::HistorySink;
use runport::sources::wandb_api::history::HistoryBuilder;

fn plan() -> &'static FetchPlan {
    static PLAN: OnceLock<FetchPlan> = OnceLock::new();
    PLAN.get_or_init(|| FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS))
}

fn quiet_inside_parquet() {
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !runport::pipeline::in_third_party_code() {
            abort(info);
        }
    }));
}

fuzz_target!(init: quiet_inside_parquet(), |data: &[u8]| {
    let mut builder = HistoryBuilder::new(plan());
    if builder.add_parquet(Bytes::copy_from_slice(data), &mut HistorySink::whole()).is_ok() {
        let history = builder.finish();
        long_batch(&long_schema(), "run", &history).expect("an accepted history must become a long batch");
    }
});
