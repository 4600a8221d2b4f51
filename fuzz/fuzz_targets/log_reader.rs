//! Arbitrary bytes through the transaction log reader, the envelope peek and
//! the record decoders, and every JSON value found through `Value::parse`.
//!
//! History, config and summary records are decoded twice, by prost and by the
//! zero-copy readers of `wire` that runport uses for them; when both accept a
//! record they must find the same items (the zero-copy readers may accept
//! records prost rejects: they do not check the wire type of unknown fields).
//!
//! The first byte picks the mode:
//! * even: the input is read as it is, which is what the seeds (whole logs,
//!   starting with `:` = 0x3A) use;
//! * odd, bit 1 clear: the rest is read behind a valid header (so mutations
//!   are not all stopped by the header check), through a reader that returns
//!   short reads of a size taken from the first byte;
//! * odd, bit 1 set: the rest is a list of chunks `kind u8 | len u16 LE |
//!   payload`, written behind a valid header with correct checksums (which
//!   random mutations almost never produce), so that fragments, orphaned
//!   pieces and chunks across block ends are reached. A kind byte with its
//!   high bit set first pads with zeros to the next 32 KiB block.

#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use runport::sources::wandb_files::log_reader::{BLOCK_SIZE, HEADER, TransactionLogReader};
use runport::sources::wandb_files::records::{
    HistoryItem, HistoryRecord, KeyedValue, RecordType, RunExitRecord, RunRecord, StatsRecord, TypedValue,
    UpdateRecord, peek_record_type,
};
use runport::sources::wandb_files::wire::{ItemRef, RawValue, history_items, update_items};
use runport::value::Value;

/// Header first, then the payload, at most `step` bytes per read.
struct ShortReads<'a> {
    header: &'a [u8],
    body: &'a [u8],
    step: usize,
}

impl Read for ShortReads<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let src = if !self.header.is_empty() { &mut self.header } else { &mut self.body };
        let n = src.len().min(buf.len()).min(self.step);
        buf[..n].copy_from_slice(&src[..n]);
        *src = &src[n..];
        Ok(n)
    }
}

fn parse_json(text: &str) {
    if text.is_empty() {
        return;
    }
    if let Ok(v) = Value::parse(text) {
        // What runport writes back must parse again.
        let json = v.to_json();
        Value::parse(&json).expect("to_json output parses");
        let _ = v.is_opaque_object();
        let _ = v.as_f64();
    }
}

/// An item as the zero-copy reader sees it, built from the prost message.
fn expected<'a>(key: &'a str, nested_key: &'a [String], typed: Option<&'a TypedValue>, json: &'a str) -> ItemRef<'a> {
    let value = match typed {
        None => RawValue::Json(json),
        Some(TypedValue::None(_)) => RawValue::Null,
        Some(TypedValue::Boolean(b)) => RawValue::Bool(*b),
        Some(TypedValue::Integer(i)) => RawValue::Int(*i),
        Some(TypedValue::Number(f)) => RawValue::Number(*f),
        Some(TypedValue::Text(s)) => RawValue::Text(s),
        Some(TypedValue::Json(s)) => RawValue::Json(s),
    };
    ItemRef { key, nested_key: nested_key.iter().map(String::as_str).collect(), value }
}

fn same(a: &ItemRef<'_>, b: &ItemRef<'_>) -> bool {
    let value = match (a.value, b.value) {
        // NaN payloads compare by bits.
        (RawValue::Number(x), RawValue::Number(y)) => x.to_bits() == y.to_bits(),
        (x, y) => x == y,
    };
    value && a.key == b.key && a.nested_key == b.nested_key
}

/// Top-level occurrences of field `n` (prost merges repeated sub-messages).
fn occurrences(mut buf: &[u8], n: u32) -> usize {
    let ctx = prost::encoding::DecodeContext::default();
    let mut count = 0;
    while !buf.is_empty() {
        let Ok((field, wire)) = prost::encoding::decode_key(&mut buf) else { return count };
        count += usize::from(field == n);
        if prost::encoding::skip_field(wire, field, &mut buf, ctx.clone()).is_err() {
            return count;
        }
    }
    count
}

fn history(payload: &[u8]) {
    let prost = HistoryRecord::decode(payload).ok();
    if let Some(h) = &prost {
        for item in &h.item {
            parse_json(&item.value_json);
            if let Some(TypedValue::Json(s) | TypedValue::Text(s)) = &item.typed {
                parse_json(s);
            }
        }
    }
    let mut items = Vec::new();
    let wire = history_items(payload, |i| items.push(i));
    for i in &items {
        let _ = i.path();
        if let RawValue::Json(s) | RawValue::Text(s) = i.value {
            parse_json(s);
        }
    }
    if let (Some(h), Ok(step)) = (&prost, wire) {
        let want: Vec<ItemRef<'_>> = h
            .item
            .iter()
            .map(|HistoryItem { key, nested_key, typed, value_json }| {
                expected(key, nested_key, typed.as_ref(), value_json)
            })
            .collect();
        assert_eq!(want.len(), items.len(), "history item count: prost {want:?}, wire {items:?}");
        for (w, i) in want.iter().zip(&items) {
            assert!(same(w, i), "history item: prost {w:?}, wire {i:?}");
        }
        assert_eq!(h.step.is_some(), step.is_some(), "history step presence");
        if occurrences(payload, 2) == 1 {
            assert_eq!(h.step.as_ref().map(|s| s.num), step, "history step");
        }
    }
}

fn keyed(items: &[KeyedValue]) {
    for kv in items {
        parse_json(&kv.value_json);
    }
}

fn update(payload: &[u8]) {
    let prost = UpdateRecord::decode(payload).ok();
    if let Some(u) = &prost {
        keyed(&u.update);
        keyed(&u.remove);
    }
    let mut items = Vec::new();
    let wire = update_items(payload, |removal, i| items.push((removal, i)));
    if let (Some(u), Ok(())) = (&prost, wire) {
        // Record order interleaves updates and removals: compare each list in order.
        for (removal, list) in [(false, &u.update), (true, &u.remove)] {
            let want: Vec<ItemRef<'_>> =
                list.iter().map(|kv| expected(&kv.key, &kv.nested_key, None, &kv.value_json)).collect();
            let got: Vec<&ItemRef<'_>> = items.iter().filter(|(r, _)| *r == removal).map(|(_, i)| i).collect();
            assert_eq!(want.len(), got.len(), "update items (removal {removal}): prost {want:?}, wire {got:?}");
            for (w, i) in want.iter().zip(got) {
                assert!(same(w, i), "update item: prost {w:?}, wire {i:?}");
            }
        }
    }
}

fn record(t: RecordType, payload: &[u8]) {
    match t {
        RecordType::History => history(payload),
        RecordType::Summary | RecordType::Config => update(payload),
        RecordType::Run => {
            if let Ok(r) = RunRecord::decode(payload) {
                for u in [&r.config, &r.summary].into_iter().flatten() {
                    keyed(&u.update);
                    keyed(&u.remove);
                }
            }
        }
        RecordType::Stats => {
            let _ = StatsRecord::decode(payload);
        }
        RecordType::Exit => {
            let _ = RunExitRecord::decode(payload);
        }
    }
}

fn read_log(r: impl Read, len: usize) {
    let Ok(mut reader) = TransactionLogReader::new(r) else {
        return;
    };
    loop {
        match reader.next_record() {
            Ok(Some(rec)) => {
                assert!(rec.len() <= len, "a record longer than the input");
                if let Ok(Some((t, payload))) = peek_record_type(rec) {
                    record(t, payload);
                }
            }
            Ok(None) => break,
            Err(e) => panic!("in-memory reads do not fail: {e}"),
        }
    }
    assert!(reader.bytes_read() as usize <= len);
    for w in reader.warnings() {
        assert!((w.offset as usize) <= len, "warning offset past the end: {w}");
    }
}

/// A log of the chunks described by `body`, with valid checksums.
fn chunked_log(mut body: &[u8]) -> Vec<u8> {
    let mut out = HEADER.to_vec();
    while let [kind, rest @ ..] = body {
        if kind & 0x80 != 0 {
            let left = BLOCK_SIZE - out.len() % BLOCK_SIZE;
            out.resize(out.len() + left, 0);
        }
        let kind = kind & 0x7F;
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as usize, rest),
            _ => (0, &[][..]),
        };
        let (payload, rest) = rest.split_at(len.min(rest.len()));
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[kind]);
        hasher.update(payload);
        out.extend_from_slice(&hasher.finalize().to_le_bytes());
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.push(kind);
        out.extend_from_slice(payload);
        body = rest;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((&mode, body)) if mode & 3 == 3 => {
            let log = chunked_log(body);
            read_log(log.as_slice(), log.len());
        }
        Some((&mode, body)) if mode & 1 == 1 => {
            let step = 1 + (mode as usize >> 1) * 509;
            let r = ShortReads { header: &HEADER, body, step };
            read_log(r, HEADER.len() + body.len());
        }
        _ => read_log(data, data.len()),
    }
});
