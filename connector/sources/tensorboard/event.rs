//! The protobuf messages of TensorBoard event files (`tensorflow.Event` and
//! what it holds), written by hand with only the fields runport reads;
//! prost skips the rest (graphs, run metadata, log messages).
//!
//! Field numbers are those of TensorFlow's `event.proto`, `summary.proto`,
//! `tensor.proto`, `tensor_shape.proto`, `types.proto` and TensorBoard's
//! `plugins/hparams/*.proto`. Oneofs are plain optional fields here (the
//! same bytes on the wire). The media and tensor fields of a summary value
//! are kept as raw bytes and decoded only when their value is built, so a
//! value's size is the size it has in the file.

use prost::Message;

use crate::value::Value;

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
    #[prost(message, optional, tag = "7")]
    pub session_log: Option<SessionLog>,
}

/// `tensorflow.SessionLog`.
#[derive(Clone, PartialEq, Message)]
pub struct SessionLog {
    /// `UNKNOWN` 0, `START` 1, `STOP` 2, `CHECKPOINT` 3.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

pub const SESSION_START: i32 = 1;

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: one tag's value at the event's step.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "7")]
    pub node_name: String,
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    /// `Summary.Image`, undecoded.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub image: Option<Vec<u8>>,
    /// `HistogramProto`, undecoded.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub histo: Option<Vec<u8>>,
    /// `Summary.Audio`, undecoded.
    #[prost(bytes = "vec", optional, tag = "6")]
    pub audio: Option<Vec<u8>>,
    /// `TensorProto`, undecoded.
    #[prost(bytes = "vec", optional, tag = "8")]
    pub tensor: Option<Vec<u8>>,
}

/// `tensorflow.SummaryMetadata`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow.Summary.Image`.
#[derive(Clone, PartialEq, Message)]
pub struct Image {
    #[prost(int32, tag = "1")]
    pub height: i32,
    #[prost(int32, tag = "2")]
    pub width: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// `tensorflow.Summary.Audio`.
#[derive(Clone, PartialEq, Message)]
pub struct Audio {
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_audio_string: Vec<u8>,
}

/// `tensorflow.HistogramProto` (the bucket limits are not read).
#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(double, tag = "3")]
    pub num: f64,
    #[prost(double, repeated, tag = "7")]
    pub bucket: Vec<f64>,
}

/// `tensorflow.TensorProto`: the fields a scalar can be in.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", tag = "4")]
    pub tensor_content: Vec<u8>,
    #[prost(int32, repeated, tag = "13")]
    pub half_val: Vec<i32>,
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
    #[prost(double, repeated, tag = "6")]
    pub double_val: Vec<f64>,
    #[prost(int32, repeated, tag = "7")]
    pub int_val: Vec<i32>,
    #[prost(int64, repeated, tag = "10")]
    pub int64_val: Vec<i64>,
    #[prost(bool, repeated, tag = "11")]
    pub bool_val: Vec<bool>,
    #[prost(uint32, repeated, tag = "16")]
    pub uint32_val: Vec<u32>,
    #[prost(uint64, repeated, tag = "17")]
    pub uint64_val: Vec<u64>,
}

/// `tensorflow.TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
    #[prost(bool, tag = "3")]
    pub unknown_rank: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Dim {
    #[prost(int64, tag = "1")]
    pub size: i64,
}

// `tensorflow.DataType` values of scalars runport reads as numbers.
const DT_FLOAT: i32 = 1;
const DT_DOUBLE: i32 = 2;
const DT_INT32: i32 = 3;
const DT_UINT8: i32 = 4;
const DT_INT16: i32 = 5;
const DT_INT8: i32 = 6;
const DT_INT64: i32 = 9;
const DT_BOOL: i32 = 10;
const DT_BFLOAT16: i32 = 14;
const DT_UINT16: i32 = 17;
const DT_HALF: i32 = 19;
const DT_UINT32: i32 = 22;
const DT_UINT64: i32 = 23;

impl TensorProto {
    /// The dimensions (empty for a scalar).
    pub fn dims(&self) -> Vec<i64> {
        self.tensor_shape.as_ref().map(|s| s.dim.iter().map(|d| d.size).collect()).unwrap_or_default()
    }

    /// The value of a scalar (no dimensions) of a number or bool type, as
    /// TensorBoard's `make_ndarray` reads it: from `tensor_content` when
    /// set, else from the one value of the type's field. `None` for any
    /// other tensor (or a malformed one).
    pub fn scalar(&self) -> Option<Value> {
        if self.tensor_shape.as_ref().is_some_and(|s| !s.dim.is_empty() || s.unknown_rank) {
            return None;
        }
        let c = self.tensor_content.as_slice();
        if !c.is_empty() {
            let int = |v: i64| Some(Value::Int(v));
            return match (self.dtype, c.len()) {
                (DT_FLOAT, 4) => Some(Value::Float(f32::from_le_bytes(c.try_into().ok()?) as f64)),
                (DT_DOUBLE, 8) => Some(Value::Float(f64::from_le_bytes(c.try_into().ok()?))),
                (DT_INT32, 4) => int(i32::from_le_bytes(c.try_into().ok()?) as i64),
                (DT_INT64, 8) => int(i64::from_le_bytes(c.try_into().ok()?)),
                (DT_INT16, 2) => int(i16::from_le_bytes(c.try_into().ok()?) as i64),
                (DT_UINT16, 2) => int(u16::from_le_bytes(c.try_into().ok()?) as i64),
                (DT_INT8, 1) => int(c[0] as i8 as i64),
                (DT_UINT8, 1) => int(c[0] as i64),
                (DT_UINT32, 4) => int(u32::from_le_bytes(c.try_into().ok()?) as i64),
                (DT_UINT64, 8) => Some(uint64(u64::from_le_bytes(c.try_into().ok()?))),
                (DT_BOOL, 1) => Some(Value::Bool(c[0] != 0)),
                (DT_HALF, 2) => {
                    Some(Value::Float(half::f16::from_bits(u16::from_le_bytes(c.try_into().ok()?)).to_f64()))
                }
                (DT_BFLOAT16, 2) => {
                    Some(Value::Float(half::bf16::from_bits(u16::from_le_bytes(c.try_into().ok()?)).to_f64()))
                }
                _ => None,
            };
        }
        fn one<T: Copy>(v: &[T]) -> Option<T> {
            if let [x] = v { Some(*x) } else { None }
        }
        match self.dtype {
            DT_FLOAT => one(&self.float_val).map(|f| Value::Float(f as f64)),
            DT_DOUBLE => one(&self.double_val).map(Value::Float),
            DT_INT32 | DT_INT16 | DT_INT8 | DT_UINT8 | DT_UINT16 => {
                one(&self.int_val).map(|i| Value::Int(narrow(self.dtype, i)))
            }
            DT_INT64 => one(&self.int64_val).map(Value::Int),
            DT_UINT32 => one(&self.uint32_val).map(|i| Value::Int(i as i64)),
            DT_UINT64 => one(&self.uint64_val).map(uint64),
            DT_BOOL => one(&self.bool_val).map(Value::Bool),
            // The 16 bits of the value, in an int32.
            DT_HALF => one(&self.half_val).map(|b| Value::Float(half::f16::from_bits(b as u16).to_f64())),
            DT_BFLOAT16 => one(&self.half_val).map(|b| Value::Float(half::bf16::from_bits(b as u16).to_f64())),
            _ => None,
        }
    }
}

/// An int32 field value as the narrower type reads it (numpy's cast).
fn narrow(dtype: i32, i: i32) -> i64 {
    match dtype {
        DT_INT16 => i as i16 as i64,
        DT_INT8 => i as i8 as i64,
        DT_UINT8 => i as u8 as i64,
        DT_UINT16 => i as u16 as i64,
        _ => i as i64,
    }
}

fn uint64(v: u64) -> Value {
    i64::try_from(v).map_or(Value::Float(v as f64), Value::Int)
}

/// The hparams plugin's name and tags.
pub const HPARAMS_PLUGIN: &str = "hparams";

/// `tensorboard.hparams.HParamsPluginData`.
#[derive(Clone, PartialEq, Message)]
pub struct HParamsPluginData {
    #[prost(message, optional, tag = "2")]
    pub experiment: Option<Experiment>,
    #[prost(message, optional, tag = "3")]
    pub session_start_info: Option<SessionStartInfo>,
}

/// `tensorboard.hparams.Experiment` (its metric infos).
#[derive(Clone, PartialEq, Message)]
pub struct Experiment {
    #[prost(message, repeated, tag = "5")]
    pub metric_infos: Vec<MetricInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricInfo {
    #[prost(message, optional, tag = "1")]
    pub name: Option<MetricName>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricName {
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(string, tag = "2")]
    pub tag: String,
}

impl MetricName {
    /// `group/tag`, or the tag alone when there is no group.
    pub fn path(&self) -> String {
        if self.group.is_empty() { self.tag.clone() } else { format!("{}/{}", self.group, self.tag) }
    }
}

/// `tensorboard.hparams.SessionStartInfo`.
#[derive(Clone, PartialEq, Message)]
pub struct SessionStartInfo {
    #[prost(btree_map = "string, message", tag = "1")]
    pub hparams: std::collections::BTreeMap<String, ProtoValue>,
}

/// `google.protobuf.Value`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoValue {
    #[prost(int32, optional, tag = "1")]
    pub null_value: Option<i32>,
    #[prost(double, optional, tag = "2")]
    pub number_value: Option<f64>,
    #[prost(string, optional, tag = "3")]
    pub string_value: Option<String>,
    #[prost(bool, optional, tag = "4")]
    pub bool_value: Option<bool>,
    #[prost(message, optional, tag = "5")]
    pub struct_value: Option<ProtoStruct>,
    #[prost(message, optional, tag = "6")]
    pub list_value: Option<ProtoList>,
}

/// `google.protobuf.Struct`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoStruct {
    #[prost(btree_map = "string, message", tag = "1")]
    pub fields: std::collections::BTreeMap<String, ProtoValue>,
}

/// `google.protobuf.ListValue`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoList {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<ProtoValue>,
}

impl ProtoValue {
    /// As a runport value: numbers are floats (the protobuf has only doubles).
    pub fn to_value(&self, depth: usize) -> Value {
        if depth > 64 {
            return Value::Null;
        }
        if let Some(n) = self.number_value {
            Value::Float(n)
        } else if let Some(s) = &self.string_value {
            Value::Str(s.clone())
        } else if let Some(b) = self.bool_value {
            Value::Bool(b)
        } else if let Some(s) = &self.struct_value {
            Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), v.to_value(depth + 1))).collect())
        } else if let Some(l) = &self.list_value {
            Value::List(l.values.iter().map(|v| v.to_value(depth + 1)).collect())
        } else {
            Value::Null
        }
    }
}

/// The value of one summary value as a history value: a number (or bool)
/// for scalars, else a JSON descriptor `{"_type", "plugin", "size", ...}`
/// of what it holds (never its bytes). `plugin` is the tag's plugin (from
/// the first metadata of the tag). `None`: the value holds nothing
/// TensorBoard reads (or only metadata).
pub fn history_value(v: &SummaryValue, plugin: &str) -> Option<Value> {
    let int = |n: usize| Value::Int(n as i64);
    let descriptor = |kind: &str, plugin: &str, size: usize, more: Vec<(String, Value)>| {
        let mut fields = vec![
            ("_type".into(), Value::Str(kind.into())),
            ("plugin".into(), Value::Str(plugin.into())),
            ("size".into(), int(size)),
        ];
        fields.extend(more);
        Value::Object(fields)
    };
    if let Some(f) = v.simple_value {
        return Some(Value::Float(f as f64));
    }
    if let Some(bytes) = &v.image {
        let image = Image::decode(bytes.as_slice()).unwrap_or_default();
        return Some(descriptor(
            "image",
            "images",
            image.encoded_image_string.len(),
            vec![("width".into(), Value::Int(image.width as i64)), ("height".into(), Value::Int(image.height as i64))],
        ));
    }
    if let Some(bytes) = &v.histo {
        let h = Histogram::decode(bytes.as_slice()).unwrap_or_default();
        return Some(descriptor(
            "histogram",
            "histograms",
            h.bucket.len(),
            vec![("count".into(), Value::Float(h.num))],
        ));
    }
    if let Some(bytes) = &v.audio {
        let a = Audio::decode(bytes.as_slice()).unwrap_or_default();
        return Some(descriptor("audio", "audio", a.encoded_audio_string.len(), Vec::new()));
    }
    if let Some(bytes) = &v.tensor {
        let t = TensorProto::decode(bytes.as_slice()).unwrap_or_default();
        if let Some(x) = t.scalar() {
            return Some(x);
        }
        let shape = Value::List(t.dims().into_iter().map(Value::Int).collect());
        return Some(descriptor("tensor", plugin, bytes.len(), vec![("shape".into(), shape)]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dtype: i32, f: impl FnOnce(&mut TensorProto)) -> TensorProto {
        let mut t = TensorProto { dtype, ..Default::default() };
        f(&mut t);
        t
    }

    #[test]
    fn scalar_tensors_of_every_number_type() {
        assert_eq!(tensor(DT_FLOAT, |t| t.float_val = vec![0.5]).scalar(), Some(Value::Float(0.5)));
        assert_eq!(tensor(DT_DOUBLE, |t| t.double_val = vec![0.1]).scalar(), Some(Value::Float(0.1)));
        assert_eq!(tensor(DT_INT8, |t| t.int_val = vec![255]).scalar(), Some(Value::Int(-1)));
        assert_eq!(tensor(DT_INT64, |t| t.int64_val = vec![-7]).scalar(), Some(Value::Int(-7)));
        assert_eq!(tensor(DT_UINT64, |t| t.uint64_val = vec![u64::MAX]).scalar(), Some(Value::Float(u64::MAX as f64)));
        // 1.5 as f16 is 0x3e00; as bf16 0x3fc0.
        assert_eq!(tensor(DT_HALF, |t| t.half_val = vec![0x3e00]).scalar(), Some(Value::Float(1.5)));
        assert_eq!(tensor(DT_BFLOAT16, |t| t.half_val = vec![0x3fc0]).scalar(), Some(Value::Float(1.5)));
        assert_eq!(
            tensor(DT_FLOAT, |t| t.tensor_content = 2.25f32.to_le_bytes().to_vec()).scalar(),
            Some(Value::Float(2.25))
        );
        assert_eq!(tensor(DT_BOOL, |t| t.bool_val = vec![true]).scalar(), Some(Value::Bool(true)));
        // Not scalars: two values, a dimension, a string, content of the wrong size.
        assert_eq!(tensor(DT_FLOAT, |t| t.float_val = vec![1.0, 2.0]).scalar(), None);
        let dims = TensorShape { dim: vec![Dim { size: 1 }], unknown_rank: false };
        assert_eq!(tensor(DT_FLOAT, |t| (t.float_val, t.tensor_shape) = (vec![1.0], Some(dims))).scalar(), None);
        assert_eq!(tensor(7, |_| {}).scalar(), None);
        assert_eq!(tensor(DT_DOUBLE, |t| t.tensor_content = vec![0; 4]).scalar(), None);
    }
}
