//! A TensorBoard run from arbitrary bytes: written as the run's one event
//! file, decoded with `tensorboard::decode_run` under the select-everything
//! plan (both passes: framing, checksums, restarts; then the events, their
//! summaries, tensors, media and hparams), then turned into the runs table
//! and both history layouts. Damage must be passed over with warnings or
//! fail the run with an error, never panic; building the Arrow batches must
//! not fail at all.
//!
//! The first byte picks the mode:
//! * even: the rest is the file as it is;
//! * odd: the rest is a list of records `len u16 LE | payload`, framed with
//!   valid checksums (which random mutations almost never produce), so that
//!   the Event decoder and what follows it are reached.

#![no_main]

#[path = "run_tables.rs"]
mod run_tables;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use run_tables::check_run_tables;
use runport::pipeline::HistorySink;
use runport::plan::{FetchPlan, HistoryLayout};
use runport::selection::Selection;
use runport::sources::RecordCounts;
use runport::sources::tensorboard::record_reader::frame;
use runport::sources::tensorboard::{TENSORBOARD_COLUMNS, TENSORBOARD_IDENTITY_COLUMNS, TbRun, decode_run};

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("runport-fuzz-tb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir.join("events.out.tfevents.0.fuzz")
    })
}

/// The records described by `body`, framed with valid checksums.
fn framed(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let [a, b, rest @ ..] = body {
        let len = u16::from_le_bytes([*a, *b]) as usize;
        let (payload, rest) = rest.split_at(len.min(rest.len()));
        out.extend(frame(payload));
        body = rest;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let bytes = match data.split_first() {
        Some((&mode, body)) if mode & 1 == 1 => framed(body),
        Some((_, body)) => body.to_vec(),
        None => Vec::new(),
    };
    let path = scratch();
    std::fs::write(path, &bytes).expect("scratch file is writable");
    let run = TbRun { run_id: "fuzz".into(), files: vec![path.clone()], bytes: bytes.len() as u64 };
    let plan = FetchPlan::new(Selection::all(), HistoryLayout::Long, TENSORBOARD_IDENTITY_COLUMNS);
    let mut counts = RecordCounts::default();
    let Ok(mut run) = decode_run(&run, &plan, &mut counts, &mut HistorySink::whole()) else {
        return;
    };
    check_run_tables(&plan, TENSORBOARD_COLUMNS.groups, &mut run);
});
