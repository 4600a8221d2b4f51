//! Criterion benchmarks of runport's two hot paths (see benches/README.md):
//!
//! * `transaction_log/*`: decode throughput of a W&B transaction log in MiB/s
//!   of log, for an in-memory log of what the W&B SDK writes per logged step
//!   (a history record with 10 float metrics plus `_step`, `_timestamp`,
//!   `_runtime`, and the two summary records that go with it), at several
//!   depths: framing and envelope only; plus protobuf and value parsing; and
//!   `decode_run`, the whole per-run decoder, reading the same log from a
//!   file, with every column selected and with `name,state` only.
//! * `history/*`: a 100,000-step × 10-key run history to Arrow (`long_batch`)
//!   and on to Parquet with runport's writer settings, in long rows per second.
//!
//! Run with `cargo bench --bench decode` (or `-- transaction_log` for one group).

use std::hint::black_box;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use prost::Message;

use runport::output::history::{long_batch, long_schema};
use runport::output::parallel::ParallelWriter;
use runport::output::{Provenance, history_writer_properties};
use runport::pipeline::HistorySink;
use runport::plan::{FetchPlan, HistoryLayout};
use runport::run::{HistoryPoint, HistoryRow, RunHistory};
use runport::selection::Selection;
use runport::sources::wandb_files::decode::{RecordCounts, decode_run};
use runport::sources::wandb_files::log_reader::{TransactionLogReader, encode_log};
use runport::sources::wandb_files::records::{
    HistoryItem, HistoryRecord, HistoryStep, KeyedValue, RecordType, UpdateRecord, peek_record_type,
};
use runport::sources::wandb_files::{WANDB_IDENTITY_COLUMNS, WANDB_PREFIXES};
use runport::value::Value;

/// Steps in the benchmark log (three records each, about 10 MB in all).
const LOG_STEPS: i64 = 10_000;
/// Float metrics logged at every step.
const KEYS: usize = 10;
/// Steps in the history benchmark (long rows = steps × keys).
const HISTORY_STEPS: usize = 100_000;

/// Deterministic floats in [0, 1) with 17 significant digits, like logged losses.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn item(key: &str, json: String) -> HistoryItem {
    HistoryItem { key: String::new(), nested_key: vec![key.to_string()], typed: None, value_json: json }
}

/// A `Record` envelope as the W&B SDK writes one: `num`, the payload in its
/// `record_type` field, a uuid, and a `control` message.
fn envelope(num: i64, field: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(payload.len() + 48);
    prost::encoding::int64::encode(1, &num, &mut buf);
    prost::encoding::bytes::encode(field, &payload.to_vec(), &mut buf);
    prost::encoding::bytes::encode(16, &vec![0x30, 0x01], &mut buf);
    prost::encoding::string::encode(19, &format!("{num:032x}"), &mut buf);
    buf
}

/// The records `run.log({...})` writes for each step, as the W&B SDK (0.31)
/// does: a history record with `_step`, `_timestamp`, `_runtime` and the
/// metrics, a summary record updating the same paths, and a summary record for
/// `_wandb.runtime`.
fn step_records(steps: i64) -> Vec<Vec<u8>> {
    let keys: Vec<String> = (0..KEYS).map(|k| format!("metric_{k:02}")).collect();
    let mut rnd = Lcg(42);
    let mut out = Vec::with_capacity(3 * steps as usize);
    for step in 0..steps {
        let mut items: Vec<HistoryItem> = keys.iter().map(|k| item(k, format!("{:?}", rnd.next()))).collect();
        items.push(item("_step", step.to_string()));
        items.push(item("_timestamp", format!("{:?}", 1_795_496_877.284472 + step as f64 * 0.0137)));
        items.push(item("_runtime", format!("{:?}", 2.5 + step as f64 * 0.0137)));
        let summary = UpdateRecord {
            update: items
                .iter()
                .map(|i| KeyedValue {
                    key: String::new(),
                    nested_key: i.nested_key.clone(),
                    value_json: i.value_json.clone(),
                })
                .collect(),
            remove: vec![],
        };
        let runtime = UpdateRecord {
            update: vec![KeyedValue {
                key: String::new(),
                nested_key: vec!["_wandb".into(), "runtime".into()],
                value_json: (step / 100).to_string(),
            }],
            remove: vec![],
        };
        let h = HistoryRecord { item: items, step: Some(HistoryStep { num: step }) };
        let num = 3 * step + 1;
        out.push(envelope(num, 2, &h.encode_to_vec()));
        out.push(envelope(num + 1, 3, &summary.encode_to_vec()));
        out.push(envelope(num + 2, 3, &runtime.encode_to_vec()));
    }
    out
}

fn parse_values<'a>(values: impl Iterator<Item = &'a str>) -> f64 {
    values.filter_map(|v| Value::parse(v).ok()).filter_map(|v| v.as_f64()).sum()
}

fn transaction_log(c: &mut Criterion) {
    let records = step_records(LOG_STEPS);
    let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let log = encode_log(&refs);

    let mut g = c.benchmark_group("transaction_log");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(log.len() as u64));

    // Framing, checksums and the envelope peek, nothing decoded.
    g.bench_function("read_peek", |b| {
        b.iter(|| {
            let mut r = TransactionLogReader::new(black_box(log.as_slice())).unwrap();
            let mut n = 0usize;
            while let Some(rec) = r.next_record().unwrap() {
                if let Ok(Some((RecordType::History, payload))) = peek_record_type(rec) {
                    n += payload.len();
                }
            }
            n
        })
    });

    // Plus the protobuf decode of every history and summary record and the
    // parse of every value in them.
    g.bench_function("read_peek_decode", |b| {
        b.iter(|| {
            let mut r = TransactionLogReader::new(black_box(log.as_slice())).unwrap();
            let mut sum = 0.0;
            while let Some(rec) = r.next_record().unwrap() {
                match peek_record_type(rec) {
                    Ok(Some((RecordType::History, payload))) => {
                        let h = HistoryRecord::decode(payload).unwrap();
                        sum += parse_values(h.item.iter().map(|i| i.value_json.as_str()));
                    }
                    Ok(Some((RecordType::Summary, payload))) => {
                        let u = UpdateRecord::decode(payload).unwrap();
                        sum += parse_values(u.update.iter().map(|i| i.value_json.as_str()));
                    }
                    _ => {}
                }
            }
            sum
        })
    });

    // The whole per-run decoder (history rows, interned keys) from a file.
    let mut file = tempfile::Builder::new().suffix(".wandb").tempfile().unwrap();
    file.write_all(&log).unwrap();
    file.flush().unwrap();
    let all = FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS);
    g.bench_function("decode_run", |b| {
        b.iter(|| {
            let mut counts = RecordCounts::default();
            let run = decode_run("bench", &[file.path()], &all, &mut counts, &mut HistorySink::whole()).unwrap();
            assert_eq!(counts.decoded_history, LOG_STEPS as u64);
            run.history.map(|h| h.points.len())
        })
    });

    // `--select name,state`: only the envelopes are looked at.
    let sel = Selection::parse("name,state", WANDB_IDENTITY_COLUMNS, WANDB_PREFIXES).unwrap();
    let name_state = FetchPlan::new(sel, HistoryLayout::Long, WANDB_IDENTITY_COLUMNS);
    g.bench_function("decode_run_name_state", |b| {
        b.iter(|| {
            let mut counts = RecordCounts::default();
            let run = decode_run("bench", &[file.path()], &name_state, &mut counts, &mut HistorySink::whole()).unwrap();
            assert_eq!(counts.decoded_history, 0);
            run.identity.text("state").map(str::to_string)
        })
    });
    g.finish();
}

/// A run history of `steps` rows, each with `KEYS` float values.
fn run_history(steps: usize) -> RunHistory {
    let mut rnd = Lcg(7);
    let mut h = RunHistory { keys: (0..KEYS).map(|k| format!("metric_{k:02}")).collect(), ..RunHistory::default() };
    for step in 0..steps {
        h.rows.push(HistoryRow {
            step: step as i64,
            timestamp: Some(1_795_496_877_284_472 + step as i64 * 13_700),
            runtime_s: Some(2.5 + step as f64 * 0.0137),
        });
        for key in 0..KEYS {
            h.points.push(HistoryPoint { row: step as u32, key: key as u32, value: Value::Float(rnd.next()) });
        }
    }
    h
}

fn history(c: &mut Criterion) {
    let h = run_history(HISTORY_STEPS);
    let schema = long_schema();
    let prov = Provenance { source: "bench".into(), source_kind: "wandb-files".into(), selection: "*".into() };
    // The same settings as the export's history table.
    let props = history_writer_properties(&prov, true);
    let run_id = "bench-00000";

    let mut g = c.benchmark_group("history");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        // A few iterations per sample at most: each one takes a sizeable fraction of a second.
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(h.points.len() as u64));

    g.bench_function("long_batch", |b| b.iter(|| long_batch(&schema, run_id, black_box(&h)).unwrap().num_rows()));

    g.bench_function("long_batch_parquet", |b| {
        let mut buf = Vec::with_capacity(16 << 20);
        b.iter(|| {
            buf.clear();
            let batch = long_batch(&schema, run_id, black_box(&h)).unwrap();
            let mut w = ParallelWriter::try_new(&mut buf, Arc::clone(&schema), props.clone()).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            buf.len()
        })
    });
    g.finish();
}

criterion_group!(benches, transaction_log, history);
criterion_main!(benches);
