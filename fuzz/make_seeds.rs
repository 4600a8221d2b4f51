//! Writes seed corpora for the fuzz targets:
//!
//!     cargo run --example make_seeds -- corpus
//!
//! creates `corpus/{log_reader,decode_run,value_parser,history_file}/seed-*`: small and
//! multi-block transaction logs built with `encode_log` (each once as a whole
//! file and once in the "behind a valid header" form, first byte 0x05), chunk
//! lists for `log_reader` (first byte 0x03), and JSON values for the value
//! parser; small exported history files (Parquet: zstd and plain, data pages
//! v1 and v2, dictionaries, nulls, several pages) for `history_file`. Real
//! `.wandb` files make good extra
//! seeds: copy them into the log_reader and decode_run folders.

use std::fs;
use std::path::Path;

use prost::Message;
use runport::sources::wandb_files::log_reader::{HEADER, encode_log};
use runport::sources::wandb_files::records::{
    GitRepoRecord, HistoryItem, HistoryRecord, HistoryStep, KeyedValue, RunExitRecord, RunRecord, StatsRecord,
    Timestamp, TypedValue, UpdateRecord,
};

/// A `Record` envelope: `num`, a uuid, then the payload in its oneof field.
fn envelope(num: i64, field: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    prost::encoding::int64::encode(1, &num, &mut buf);
    prost::encoding::bytes::encode(field, &payload.to_vec(), &mut buf);
    prost::encoding::string::encode(19, &format!("u-{num}"), &mut buf);
    buf
}

fn kv(path: &[&str], json: &str) -> KeyedValue {
    KeyedValue {
        key: if path.len() == 1 { path[0].to_string() } else { String::new() },
        nested_key: if path.len() > 1 { path.iter().map(|s| s.to_string()).collect() } else { vec![] },
        value_json: json.to_string(),
    }
}

fn item(path: &[&str], json: &str) -> HistoryItem {
    HistoryItem {
        key: String::new(),
        nested_key: path.iter().map(|s| s.to_string()).collect(),
        typed: None,
        value_json: json.to_string(),
    }
}

fn history(step: i64, extra: Vec<HistoryItem>) -> Vec<u8> {
    let mut items = vec![
        item(&["_step"], &step.to_string()),
        item(&["_timestamp"], &format!("{}", 1.7e9 + step as f64 * 0.25)),
        item(&["_runtime"], &format!("{}", step as f64 * 0.25)),
    ];
    items.extend(extra);
    HistoryRecord { item: items, step: Some(HistoryStep { num: step }) }.encode_to_vec()
}

fn small_run() -> Vec<Vec<u8>> {
    let run = RunRecord {
        run_id: "abc123".into(),
        entity: "e".into(),
        project: "p".into(),
        config: Some(UpdateRecord {
            update: vec![
                kv(&["lr"], "0.1"),
                kv(&["nested"], r#"{"a": 1, "b": [1, 2], "c": {"d": "x"}}"#),
                kv(&["a.b"], "3"),
                kv(&["_wandb"], r#"{"value": {"cli_version": "0.31.0"}}"#),
            ],
            remove: vec![],
        }),
        summary: None,
        run_group: "g".into(),
        job_type: "train".into(),
        display_name: "disp".into(),
        notes: "hello".into(),
        tags: vec!["x".into(), "y".into()],
        host: "h".into(),
        start_time: Some(Timestamp { seconds: 1_700_000_000, nanos: 5 }),
        git: Some(GitRepoRecord { remote_url: "https://example.com/r.git".into(), commit: "deadbeef".into() }),
    };
    let mut recs = vec![envelope(1, 17, &run.encode_to_vec())];
    recs.push(envelope(
        2,
        5,
        &UpdateRecord { update: vec![kv(&["later"], r#""yes""#)], remove: vec![kv(&["lr"], "")] }.encode_to_vec(),
    ));
    for i in 0..5i64 {
        let mut extra = vec![
            item(&["loss"], &format!("{}", 1.0 / (i + 1) as f64)),
            item(&["acc"], &i.to_string()),
            item(&["s"], r#""str""#),
            item(&["nest", "x"], &i.to_string()),
            item(&["a.b"], if i == 2 { "NaN" } else { "Infinity" }),
            item(&["img"], r#"{"_type": "image-file", "path": "media/a.png"}"#),
        ];
        extra.push(HistoryItem {
            key: "typed".into(),
            nested_key: vec![],
            typed: Some(if i % 2 == 0 {
                TypedValue::Number(i as f64 * 0.5)
            } else {
                TypedValue::Json("[1, null, true]".into())
            }),
            value_json: String::new(),
        });
        recs.push(envelope(3 + i, 2, &history(i * 2, extra)));
    }
    recs.push(envelope(
        9,
        7,
        &StatsRecord { timestamp: Some(Timestamp { seconds: 1_700_000_010, nanos: 0 }) }.encode_to_vec(),
    ));
    // A telemetry record (type 11), which runport skips.
    recs.push(envelope(10, 11, b"\x08\x01"));
    recs.push(envelope(
        11,
        3,
        &UpdateRecord {
            update: vec![kv(&["extra"], "5"), kv(&["best", "loss"], "0.2")],
            remove: vec![kv(&["acc"], "")],
        }
        .encode_to_vec(),
    ));
    recs.push(envelope(12, 18, &RunExitRecord { exit_code: 0, runtime: 10 }.encode_to_vec()));
    recs
}

/// Enough history to span several 32 KiB blocks, plus one record larger than a block.
fn multi_block_run() -> Vec<Vec<u8>> {
    let mut recs = small_run();
    for i in 0..120i64 {
        let extra =
            (0..10).map(|k| item(&[&format!("metric_{k:02}")], &format!("{}", (i * 10 + k) as f64 / 7.0))).collect();
        recs.push(envelope(100 + i, 2, &history(100 + i, extra)));
    }
    let big = "x".repeat(40_000);
    recs.push(envelope(
        1000,
        3,
        &UpdateRecord { update: vec![kv(&["big"], &format!("\"{big}\""))], remove: vec![] }.encode_to_vec(),
    ));
    recs
}

fn write_log(dir: &Path, name: &str, recs: &[Vec<u8>]) {
    let refs: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
    let log = encode_log(&refs);
    fs::write(dir.join(format!("seed-{name}")), &log).unwrap();
    // The same log in the "behind a valid header" form of the targets
    // (0x05: odd, bit 1 clear; `log_reader` reads it 1019 bytes at a time).
    let mut behind = vec![0x05];
    behind.extend_from_slice(&log[HEADER.len()..]);
    fs::write(dir.join(format!("seed-{name}-behind-header")), &behind).unwrap();
}

/// A chunk of `log_reader`'s chunk-list form: kind byte and payload.
type Chunk<'a> = (u8, &'a [u8]);

/// `log_reader`'s chunk-list form (first byte 0x03): `kind | len u16 LE | payload`,
/// a kind with the high bit set starting a new block.
fn chunk_list(chunks: &[Chunk<'_>]) -> Vec<u8> {
    let mut out = vec![0x03];
    for (kind, payload) in chunks {
        out.push(*kind);
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.extend_from_slice(payload);
    }
    out
}

fn main() {
    let root = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let root = Path::new(&root);
    for target in ["log_reader", "decode_run"] {
        let dir = root.join(target);
        fs::create_dir_all(&dir).unwrap();
        write_log(&dir, "empty", &[]);
        write_log(&dir, "small", &small_run());
        if target == "log_reader" {
            write_log(&dir, "multi-block", &multi_block_run());
            let recs = small_run();
            let (a, b) = recs[2].split_at(recs[2].len() / 2);
            let (b, c) = b.split_at(b.len() / 2);
            let lists: [(&str, Vec<Chunk<'_>>); 3] = [
                // A record in three pieces, then one whole.
                ("fragments", vec![(2, a), (3, b), (4, c), (1, &recs[3])]),
                // A piece without its first, a first without its last.
                ("orphans", vec![(4, c), (3, b), (1, &recs[3]), (2, a), (1, &recs[4])]),
                // A record split over a block end, an unknown chunk type.
                ("blocks", vec![(1, &recs[0]), (2, a), (0x80 | 4, c), (5, b), (0x80 | 1, &recs[1])]),
            ];
            for (name, chunks) in lists {
                fs::write(dir.join(format!("seed-chunks-{name}")), chunk_list(&chunks)).unwrap();
            }
        } else {
            // decode_run writes a file per input: keep its seeds small.
            let mut recs = small_run();
            recs.truncate(8);
            write_log(&dir, "partial", &recs);
        }
    }
    let dir = root.join("value_parser");
    fs::create_dir_all(&dir).unwrap();
    let values = [
        "0",
        "-12",
        "3.5e-7",
        "1.795496877284472e+09",
        "99999999999999999999",
        "NaN",
        "-Infinity",
        "true",
        "null",
        r#""h\u00e9\n\ud83d\ude00 \"q\" \/""#,
        r#"{"_type": "histogram", "bins": [0, 0.5, 1], "values": [3, 4]}"#,
        r#"[1, [2, [3, {"a": {}}]], [], "x"]"#,
        r#" { "b" : 1 , "a" : [ NaN , Infinity ] } "#,
    ];
    for (i, v) in values.iter().enumerate() {
        fs::write(dir.join(format!("seed-{i:02}")), v).unwrap();
    }
    history_files(&root.join("history_file"));
    event_files(&root.join("event_file"));
    println!("seeds written under {}", root.display());
}

/// Wide history files as the W&B server exports them: `_step`,
/// `_timestamp`, `_runtime` and a few keys, some with nulls.
fn history_files(dir: &Path) {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::{WriterProperties, WriterVersion};

    fs::create_dir_all(dir).unwrap();
    let n = 40i64;
    let batch = RecordBatch::try_from_iter([
        ("_step", Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef),
        ("_timestamp", Arc::new(Float64Array::from_iter_values((0..n).map(|i| 1.7e9 + i as f64))) as ArrayRef),
        ("_runtime", Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64 / 4.0))) as ArrayRef),
        ("loss", Arc::new(Float64Array::from_iter((0..n).map(|i| (i % 3 != 1).then_some(1.0 / (i + 1) as f64)))) as ArrayRef),
        ("acc", Arc::new(Float64Array::from_iter_values((0..n).map(|i| (i % 4) as f64))) as ArrayRef),
    ])
    .unwrap();
    let zstd = Compression::ZSTD(ZstdLevel::try_new(1).unwrap());
    let configs = [
        ("zstd-v1", WriterProperties::builder().set_compression(zstd).build()),
        ("zstd-v2", WriterProperties::builder().set_compression(zstd).set_writer_version(WriterVersion::PARQUET_2_0).build()),
        ("plain-v1", WriterProperties::builder().set_compression(Compression::UNCOMPRESSED).build()),
        (
            "zstd-small-pages",
            WriterProperties::builder()
                .set_compression(zstd)
                .set_dictionary_enabled(false)
                .set_data_page_row_count_limit(8)
                .set_write_batch_size(4)
                .set_max_row_group_row_count(Some(25))
                .build(),
        ),
    ];
    for (name, props) in configs {
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        fs::write(dir.join(format!("seed-{name}.parquet")), out).unwrap();
    }
}

/// TensorBoard event files as tensorboardX writes them (file version,
/// scalars, an image, a scalar tensor with plugin metadata, a text tensor,
/// hparams, a restart), whole (first byte 0x00) and as the target's record
/// list (first byte 0x01).
fn event_files(dir: &Path) {
    use runport::sources::tensorboard::event::{
        Event, HParamsPluginData, PluginData, ProtoValue, SessionLog, SessionStartInfo, Summary, SummaryMetadata,
        SummaryValue, TensorProto,
    };
    use runport::sources::tensorboard::record_reader::frame;
    fs::create_dir_all(dir).unwrap();
    let ev = |step: i64, f: &dyn Fn(&mut Event)| {
        let mut e = Event { wall_time: 1.7e9 + step as f64, step, ..Default::default() };
        f(&mut e);
        e.encode_to_vec()
    };
    let value = |tag: &str, f: &dyn Fn(&mut SummaryValue)| {
        let mut v = SummaryValue { tag: tag.into(), ..Default::default() };
        f(&mut v);
        v
    };
    let meta = |plugin: &str, content: Vec<u8>| {
        Some(SummaryMetadata { plugin_data: Some(PluginData { plugin_name: plugin.into(), content }) })
    };
    let hparams = HParamsPluginData {
        experiment: None,
        session_start_info: Some(SessionStartInfo {
            hparams: [("lr".to_string(), ProtoValue { number_value: Some(0.1), ..Default::default() })].into(),
        }),
    };
    let scalar_tensor = TensorProto { dtype: 1, float_val: vec![0.5], ..Default::default() };
    let text = TensorProto { dtype: 7, ..Default::default() };
    let records = vec![
        ev(0, &|e| e.file_version = Some("brain.Event:2".into())),
        ev(1, &|e| e.summary = Some(Summary { value: vec![value("loss", &|v| v.simple_value = Some(0.25))] })),
        ev(2, &|e| {
            e.summary = Some(Summary {
                value: vec![
                    value("acc", &|v| {
                        v.tensor = Some(scalar_tensor.encode_to_vec());
                        v.metadata = meta("scalars", vec![]);
                    }),
                    value("note", &|v| {
                        v.tensor = Some(text.encode_to_vec());
                        v.metadata = meta("text", vec![]);
                    }),
                    value("img", &|v| v.image = Some(vec![8, 2, 16, 3, 34, 4, 1, 2, 3, 4])),
                ],
            })
        }),
        ev(0, &|e| {
            e.summary = Some(Summary {
                value: vec![value("_hparams_/session_start_info", &|v| {
                    v.metadata = meta("hparams", hparams.encode_to_vec())
                })],
            })
        }),
        ev(1, &|e| e.session_log = Some(SessionLog { status: 1 })),
        ev(1, &|e| e.summary = Some(Summary { value: vec![value("loss", &|v| v.simple_value = Some(f32::NAN))] })),
    ];
    let mut file = vec![0x00];
    let mut list = vec![0x01];
    for r in &records {
        file.extend(frame(r));
        list.extend_from_slice(&(r.len() as u16).to_le_bytes());
        list.extend_from_slice(r);
    }
    fs::write(dir.join("seed-file"), &file).unwrap();
    fs::write(dir.join("seed-records"), &list).unwrap();
}
