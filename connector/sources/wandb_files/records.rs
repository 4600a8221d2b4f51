//! The protobuf messages of the W&B transaction log (package `wandb_internal`),
//! written by hand with only the fields runport uses; prost skips the rest.
//!
//! A `Record` is a envelope whose `record_type` oneof says what it holds.
//! [`peek_record_type`] finds that field without decoding anything else, so
//! record types the plan does not need are never decoded.

use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint};

/// The `Record.record_type` fields runport reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    History,
    Summary,
    Config,
    Stats,
    Run,
    Exit,
}

impl RecordType {
    fn from_field(n: u32) -> Option<RecordType> {
        Some(match n {
            2 => RecordType::History,
            3 => RecordType::Summary,
            5 => RecordType::Config,
            7 => RecordType::Stats,
            17 => RecordType::Run,
            18 => RecordType::Exit,
            _ => return None,
        })
    }
}

/// An envelope that is not valid protobuf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("record envelope: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("record envelope ends inside a field")]
    Truncated,
    #[error("record envelope holds a protobuf group")]
    Group,
    #[error("record holds a string that is not UTF-8")]
    NotUtf8,
    /// A key path deeper than [`MAX_KEY_DEPTH`]: no writer makes one, and
    /// the run cannot be trusted (it fails, see `decode_run`).
    #[error("a key is nested more than {MAX_KEY_DEPTH} levels deep")]
    KeyTooDeep,
    /// Row indices of a run's history are 32-bit.
    #[error("the run has more than {} history rows", u32::MAX)]
    TooManyRows,
}

/// The deepest key path (`nested_key` segments) a record may hold: as deep
/// as the JSON values runport parses. Deeper keys fail their run.
pub const MAX_KEY_DEPTH: usize = 256;

/// Finds the record type and its payload inside an encoded `Record`.
/// `Ok(None)` for record types runport does not read (output, telemetry, ...).
pub fn peek_record_type(mut buf: &[u8]) -> Result<Option<(RecordType, &[u8])>, EnvelopeError> {
    while !buf.is_empty() {
        let (field, wire) = decode_key(&mut buf)?;
        match wire {
            WireType::Varint => {
                decode_varint(&mut buf)?;
            }
            WireType::SixtyFourBit => buf = buf.get(8..).ok_or_else(truncated)?,
            WireType::ThirtyTwoBit => buf = buf.get(4..).ok_or_else(truncated)?,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf)?).map_err(|_| truncated())?;
                let payload = buf.get(..len).ok_or_else(truncated)?;
                if let Some(t) = RecordType::from_field(field) {
                    return Ok(Some((t, payload)));
                }
                buf = &buf[len..];
            }
            WireType::StartGroup | WireType::EndGroup => return Err(EnvelopeError::Group),
        }
    }
    Ok(None)
}

fn truncated() -> EnvelopeError {
    EnvelopeError::Truncated
}

#[derive(Clone, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct GitRepoRecord {
    #[prost(string, tag = "1")]
    pub remote_url: String,
    #[prost(string, tag = "2")]
    pub commit: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct RunRecord {
    #[prost(string, tag = "1")]
    pub run_id: String,
    #[prost(string, tag = "2")]
    pub entity: String,
    #[prost(string, tag = "3")]
    pub project: String,
    #[prost(message, optional, tag = "4")]
    pub config: Option<ConfigRecord>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<SummaryRecord>,
    #[prost(string, tag = "6")]
    pub run_group: String,
    #[prost(string, tag = "7")]
    pub job_type: String,
    #[prost(string, tag = "8")]
    pub display_name: String,
    #[prost(string, tag = "9")]
    pub notes: String,
    #[prost(string, repeated, tag = "10")]
    pub tags: Vec<String>,
    #[prost(string, tag = "13")]
    pub host: String,
    #[prost(message, optional, tag = "17")]
    pub start_time: Option<Timestamp>,
    #[prost(message, optional, tag = "21")]
    pub git: Option<GitRepoRecord>,
}

/// A config or summary item: a path and a JSON value.
#[derive(Clone, PartialEq, Message)]
pub struct KeyedValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, repeated, tag = "2")]
    pub nested_key: Vec<String>,
    #[prost(string, tag = "16")]
    pub value_json: String,
}

/// `ConfigRecord` and `SummaryRecord` share this shape.
#[derive(Clone, PartialEq, Message)]
pub struct UpdateRecord {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<KeyedValue>,
    #[prost(message, repeated, tag = "2")]
    pub remove: Vec<KeyedValue>,
}

pub type ConfigRecord = UpdateRecord;
pub type SummaryRecord = UpdateRecord;

#[derive(Clone, PartialEq, Message)]
pub struct HistoryStep {
    #[prost(int64, tag = "1")]
    pub num: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct HistoryRecord {
    #[prost(message, repeated, tag = "1")]
    pub item: Vec<HistoryItem>,
    #[prost(message, optional, tag = "2")]
    pub step: Option<HistoryStep>,
}

#[derive(Clone, PartialEq, Message)]
pub struct HistoryItem {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, repeated, tag = "2")]
    pub nested_key: Vec<String>,
    #[prost(oneof = "TypedValue", tags = "3, 4, 5, 6, 7, 8")]
    pub typed: Option<TypedValue>,
    #[prost(string, tag = "16")]
    pub value_json: String,
}

/// The typed value newer writers may set instead of `value_json`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum TypedValue {
    #[prost(int32, tag = "3")]
    None(i32),
    #[prost(bool, tag = "4")]
    Boolean(bool),
    #[prost(sint64, tag = "5")]
    Integer(i64),
    #[prost(double, tag = "6")]
    Number(f64),
    #[prost(string, tag = "7")]
    Text(String),
    #[prost(string, tag = "8")]
    Json(String),
}

#[derive(Clone, PartialEq, Message)]
pub struct StatsRecord {
    #[prost(message, optional, tag = "2")]
    pub timestamp: Option<Timestamp>,
}

/// A `StatsRecord` with its items (system metrics), when they are selected.
#[derive(Clone, PartialEq, Message)]
pub struct StatsSamples {
    #[prost(message, optional, tag = "2")]
    pub timestamp: Option<Timestamp>,
    #[prost(message, repeated, tag = "3")]
    pub item: Vec<StatsItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct StatsItem {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "16")]
    pub value_json: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct RunExitRecord {
    #[prost(int32, tag = "1")]
    pub exit_code: i32,
    #[prost(int32, tag = "2")]
    pub runtime: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(field: u32, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        // num = 7 (varint), a uuid string, then the record type.
        prost::encoding::int64::encode(1, &7, &mut buf);
        prost::encoding::string::encode(19, &"u-1".to_string(), &mut buf);
        prost::encoding::bytes::encode(field, &payload.to_vec(), &mut buf);
        buf
    }

    #[test]
    fn peeks_the_record_type_without_decoding_the_rest() {
        let hist = HistoryRecord { item: vec![], step: Some(HistoryStep { num: 3 }) }.encode_to_vec();
        let rec = envelope(2, &hist);
        let (t, payload) = peek_record_type(&rec).unwrap().unwrap();
        assert_eq!(t, RecordType::History);
        assert_eq!(HistoryRecord::decode(payload).unwrap().step.unwrap().num, 3);
        // Telemetry (11) is not read.
        assert_eq!(peek_record_type(&envelope(11, b"x")).unwrap(), None);
    }

    #[test]
    fn truncated_envelope_is_an_error() {
        let rec = envelope(17, &[1, 2, 3, 4, 5]);
        assert!(peek_record_type(&rec[..rec.len() - 2]).is_err());
    }

    #[test]
    fn typed_history_values_decode() {
        let item = HistoryItem {
            key: "loss".into(),
            nested_key: vec![],
            typed: Some(TypedValue::Integer(-5)),
            value_json: String::new(),
        };
        let back = HistoryItem::decode(item.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.typed, Some(TypedValue::Integer(-5)));
    }
}
