//! Zero-copy readers for the two hot record types: `HistoryRecord` (one per
//! logged step) and `ConfigRecord`/`SummaryRecord` (the SDK writes summary
//! updates at every step). They borrow strings from the record instead of
//! allocating a message per record; everything else goes through prost.
//!
//! Field numbers as in `records.rs`; unknown fields are skipped.

use smallvec::SmallVec;

use super::records::{EnvelopeError, MAX_KEY_DEPTH};

/// A value as the writer put it: the typed oneof, or `value_json` text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawValue<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Number(f64),
    Text(&'a str),
    Json(&'a str),
}

/// One history, config or summary item, borrowed from its record.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRef<'a> {
    pub key: &'a str,
    pub nested_key: Vec<&'a str>,
    pub value: RawValue<'a>,
}

impl<'a> ItemRef<'a> {
    /// The path: `nested_key` when the writer filled it, else `[key]`.
    pub fn path(&self) -> &[&'a str] {
        if self.nested_key.is_empty() { std::slice::from_ref(&self.key) } else { &self.nested_key }
    }
}

fn varint(buf: &mut &[u8]) -> Result<u64, EnvelopeError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first().ok_or(EnvelopeError::Truncated)?;
        *buf = rest;
        v |= u64::from(b & 0x7F) << (7 * i);
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(EnvelopeError::Truncated)
}

/// Reads the next field: `(number, wire type)`.
fn key(buf: &mut &[u8]) -> Result<(u32, u8), EnvelopeError> {
    let k = varint(buf)?;
    Ok(((k >> 3) as u32, (k & 7) as u8))
}

fn bytes<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], EnvelopeError> {
    let len = usize::try_from(varint(buf)?).map_err(|_| EnvelopeError::Truncated)?;
    if buf.len() < len {
        return Err(EnvelopeError::Truncated);
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

fn skip(buf: &mut &[u8], wire: u8) -> Result<(), EnvelopeError> {
    match wire {
        0 => {
            varint(buf)?;
        }
        1 => *buf = buf.get(8..).ok_or(EnvelopeError::Truncated)?,
        2 => {
            bytes(buf)?;
        }
        5 => *buf = buf.get(4..).ok_or(EnvelopeError::Truncated)?,
        _ => return Err(EnvelopeError::Group),
    }
    Ok(())
}

/// A value as the writer put it, with text not yet checked to be UTF-8.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawBytes<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Number(f64),
    Text(&'a [u8]),
    Json(&'a [u8]),
}

impl<'a> From<RawValue<'a>> for RawBytes<'a> {
    fn from(v: RawValue<'a>) -> Self {
        match v {
            RawValue::Null => RawBytes::Null,
            RawValue::Bool(b) => RawBytes::Bool(b),
            RawValue::Int(i) => RawBytes::Int(i),
            RawValue::Number(f) => RawBytes::Number(f),
            RawValue::Text(s) => RawBytes::Text(s.as_bytes()),
            RawValue::Json(s) => RawBytes::Json(s.as_bytes()),
        }
    }
}

/// One item as raw bytes: what the decoder's hot path compares and copies
/// without validating text it has seen before.
#[derive(Debug, Clone, PartialEq)]
pub struct RawItem<'a> {
    pub key: &'a [u8],
    pub nested_key: SmallVec<[&'a [u8]; 2]>,
    pub value: RawBytes<'a>,
}

impl<'a> RawItem<'a> {
    /// The path: `nested_key` when the writer filled it, else `[key]`.
    pub fn path(&self) -> &[&'a [u8]] {
        if self.nested_key.is_empty() { std::slice::from_ref(&self.key) } else { &self.nested_key }
    }

    /// The single path segment, when the path has exactly one.
    pub fn single_segment(&self) -> Option<&'a [u8]> {
        match self.path() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The item with its text checked to be UTF-8.
    pub fn validate(&self) -> Result<ItemRef<'a>, EnvelopeError> {
        let text = |b: &'a [u8]| std::str::from_utf8(b).map_err(|_| EnvelopeError::NotUtf8);
        let nested_key = self.nested_key.iter().map(|b| text(b)).collect::<Result<Vec<_>, _>>()?;
        let value = match self.value {
            RawBytes::Null => RawValue::Null,
            RawBytes::Bool(b) => RawValue::Bool(b),
            RawBytes::Int(i) => RawValue::Int(i),
            RawBytes::Number(f) => RawValue::Number(f),
            RawBytes::Text(b) => RawValue::Text(text(b)?),
            RawBytes::Json(b) => RawValue::Json(text(b)?),
        };
        Ok(ItemRef { key: text(self.key)?, nested_key, value })
    }
}

fn raw_item(mut buf: &[u8], typed: bool) -> Result<RawItem<'_>, EnvelopeError> {
    let mut out = RawItem { key: b"", nested_key: SmallVec::new(), value: RawBytes::Json(b"") };
    let mut have_typed = false;
    while !buf.is_empty() {
        let (field, wire) = key(&mut buf)?;
        match (field, wire) {
            (1, 2) => out.key = bytes(&mut buf)?,
            (2, 2) if out.nested_key.len() >= MAX_KEY_DEPTH => return Err(EnvelopeError::KeyTooDeep),
            (2, 2) => out.nested_key.push(bytes(&mut buf)?),
            (16, 2) if !have_typed => out.value = RawBytes::Json(bytes(&mut buf)?),
            (3, 0) if typed => {
                varint(&mut buf)?;
                out.value = RawBytes::Null;
                have_typed = true;
            }
            (4, 0) if typed => {
                out.value = RawBytes::Bool(varint(&mut buf)? != 0);
                have_typed = true;
            }
            (5, 0) if typed => {
                let z = varint(&mut buf)?;
                out.value = RawBytes::Int(((z >> 1) as i64) ^ -((z & 1) as i64));
                have_typed = true;
            }
            (6, 1) if typed => {
                let b: [u8; 8] = buf.get(..8).ok_or(EnvelopeError::Truncated)?.try_into().expect("invariant: 8 bytes");
                buf = &buf[8..];
                out.value = RawBytes::Number(f64::from_le_bytes(b));
                have_typed = true;
            }
            (7, 2) if typed => {
                out.value = RawBytes::Text(bytes(&mut buf)?);
                have_typed = true;
            }
            (8, 2) if typed => {
                out.value = RawBytes::Json(bytes(&mut buf)?);
                have_typed = true;
            }
            (_, w) => skip(&mut buf, w)?,
        }
    }
    Ok(out)
}

/// Calls `f` for every item of a `HistoryRecord`, text unchecked; returns its
/// `step.num` when the record has a step.
pub fn history_items_raw<'a>(mut buf: &'a [u8], mut f: impl FnMut(RawItem<'a>)) -> Result<Option<i64>, EnvelopeError> {
    let mut step = None;
    while !buf.is_empty() {
        let (field, wire) = key(&mut buf)?;
        match (field, wire) {
            (1, 2) => f(raw_item(bytes(&mut buf)?, true)?),
            (2, 2) => {
                let mut s = bytes(&mut buf)?;
                let mut num = 0i64;
                while !s.is_empty() {
                    match key(&mut s)? {
                        (1, 0) => num = varint(&mut s)? as i64,
                        (_, w) => skip(&mut s, w)?,
                    }
                }
                step = Some(num);
            }
            (_, w) => skip(&mut buf, w)?,
        }
    }
    Ok(step)
}

/// Calls `f(is_removal, item)` for every update and removal of a
/// `ConfigRecord` or `SummaryRecord`, in record order, text unchecked.
pub fn update_items_raw<'a>(mut buf: &'a [u8], mut f: impl FnMut(bool, RawItem<'a>)) -> Result<(), EnvelopeError> {
    while !buf.is_empty() {
        let (field, wire) = key(&mut buf)?;
        match (field, wire) {
            (1, 2) => f(false, raw_item(bytes(&mut buf)?, false)?),
            (2, 2) => f(true, raw_item(bytes(&mut buf)?, false)?),
            (_, w) => skip(&mut buf, w)?,
        }
    }
    Ok(())
}

/// Calls `f` for every item of a `HistoryRecord`; returns its `step.num`
/// when the record has a step.
pub fn history_items<'a>(buf: &'a [u8], mut f: impl FnMut(ItemRef<'a>)) -> Result<Option<i64>, EnvelopeError> {
    let mut items = Vec::new();
    let step = history_items_raw(buf, |i| items.push(i))?;
    for i in &items {
        f(i.validate()?);
    }
    Ok(step)
}

/// Calls `f(is_removal, item)` for every update and removal of a
/// `ConfigRecord` or `SummaryRecord`, in record order.
pub fn update_items<'a>(buf: &'a [u8], mut f: impl FnMut(bool, ItemRef<'a>)) -> Result<(), EnvelopeError> {
    let mut items = Vec::new();
    update_items_raw(buf, |removal, i| items.push((removal, i)))?;
    for (removal, i) in &items {
        f(*removal, i.validate()?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::records::{HistoryItem, HistoryRecord, HistoryStep, KeyedValue, TypedValue, UpdateRecord};
    use super::*;
    use prost::Message;

    #[test]
    fn history_matches_prost() {
        let rec = HistoryRecord {
            item: vec![
                HistoryItem {
                    key: "".into(),
                    nested_key: vec!["nest".into(), "x".into()],
                    typed: None,
                    value_json: "1.5".into(),
                },
                HistoryItem {
                    key: "loss".into(),
                    nested_key: vec![],
                    typed: Some(TypedValue::Integer(-7)),
                    value_json: String::new(),
                },
                HistoryItem {
                    key: "d".into(),
                    nested_key: vec![],
                    typed: Some(TypedValue::Number(0.25)),
                    value_json: String::new(),
                },
                HistoryItem {
                    key: "t".into(),
                    nested_key: vec![],
                    typed: Some(TypedValue::Text("hé".into())),
                    value_json: String::new(),
                },
                HistoryItem {
                    key: "n".into(),
                    nested_key: vec![],
                    typed: Some(TypedValue::None(0)),
                    value_json: String::new(),
                },
                HistoryItem {
                    key: "b".into(),
                    nested_key: vec![],
                    typed: Some(TypedValue::Boolean(true)),
                    value_json: String::new(),
                },
            ],
            step: Some(HistoryStep { num: 42 }),
        };
        let bytes = rec.encode_to_vec();
        let mut got = Vec::new();
        let step = history_items(&bytes, |i| got.push((i.path().to_vec(), i.value))).unwrap();
        assert_eq!(step, Some(42));
        assert_eq!(
            got,
            vec![
                (vec!["nest", "x"], RawValue::Json("1.5")),
                (vec!["loss"], RawValue::Int(-7)),
                (vec!["d"], RawValue::Number(0.25)),
                (vec!["t"], RawValue::Text("hé")),
                (vec!["n"], RawValue::Null),
                (vec!["b"], RawValue::Bool(true)),
            ]
        );
        // A record without a step message.
        let no_step = HistoryRecord { item: vec![], step: None }.encode_to_vec();
        assert_eq!(history_items(&no_step, |_| {}).unwrap(), None);
    }

    #[test]
    fn updates_and_removals_in_order() {
        let rec = UpdateRecord {
            update: vec![KeyedValue { key: "a".into(), nested_key: vec![], value_json: "1".into() }],
            remove: vec![KeyedValue { key: "b".into(), nested_key: vec![], value_json: String::new() }],
        };
        let bytes = rec.encode_to_vec();
        let mut got = Vec::new();
        update_items(&bytes, |rm, i| got.push((rm, i.key, i.value))).unwrap();
        assert_eq!(got, vec![(false, "a", RawValue::Json("1")), (true, "b", RawValue::Json(""))]);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let rec = HistoryRecord {
            item: vec![HistoryItem { key: "loss".into(), nested_key: vec![], typed: None, value_json: "1".into() }],
            step: Some(HistoryStep { num: 1 }),
        }
        .encode_to_vec();
        for cut in 0..rec.len() {
            let _ = history_items(&rec[..cut], |_| {});
            let _ = update_items(&rec[..cut], |_, _| {});
        }
        assert!(history_items(&[0x0A, 0x05, 0x0A, 0x02, 0xFF, 0xFE, 0x00], |_| {}).is_err(), "invalid UTF-8 key");
    }
}
