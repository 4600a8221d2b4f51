//! Flattening nested values into column paths, and typing columns across runs.
//!
//! The rules are the ones documented in `schemas/output/README.md`:
//! - segments are joined with `.`; inside a segment `\` is written `\\` and
//!   `.` is written `\.`, so a flat key `"a.b"` (`a\.b`) never collides with
//!   the nested path `a -> b` (`a.b`);
//! - objects are flattened unless they are empty or carry a `_type` key (W&B
//!   media and typed objects), which stay whole as JSON text, like lists;
//! - a column's type is the unification of its values' kinds ([`ColumnKind`]).

use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_schema::{DataType, Field};

use crate::value::{Value, write_float_json};

/// Appends one path segment, escaped, to `out`, after a `.` unless it is the first.
pub fn push_segment(out: &mut String, first: bool, segment: &str) {
    if !first {
        out.push('.');
    }
    for c in segment.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '.' => out.push_str("\\."),
            c => out.push(c),
        }
    }
}

/// The encoded path of a list of segments.
pub fn encode_path<S: AsRef<str>>(segments: &[S]) -> String {
    let mut out = String::new();
    for (i, s) in segments.iter().enumerate() {
        push_segment(&mut out, i == 0, s.as_ref());
    }
    out
}

/// Splits an encoded path back into its segments.
pub fn decode_path(path: &str) -> Vec<String> {
    let mut segments = vec![String::new()];
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    segments.last_mut().expect("invariant: never empty").push(next);
                }
            }
            '.' => segments.push(String::new()),
            c => segments.last_mut().expect("invariant: never empty").push(c),
        }
    }
    segments
}

/// Calls `emit(path, leaf)` for every leaf of `value`, whose own encoded
/// path is `prefix`.
pub fn flatten<'v>(prefix: &str, value: &'v Value, emit: &mut impl FnMut(&str, &'v Value)) {
    flatten_at(&mut prefix.to_string(), value, emit);
}

/// [`flatten`] with the path in one buffer, grown and cut back per level:
/// the work is linear in the paths' length however deep the value is.
pub fn flatten_at<'v>(path: &mut String, value: &'v Value, emit: &mut impl FnMut(&str, &'v Value)) {
    match value {
        Value::Object(fields) if !value.is_opaque_object() => {
            for (k, v) in fields {
                let len = path.len();
                push_segment(path, false, k);
                flatten_at(path, v, emit);
                path.truncate(len);
            }
        }
        leaf => emit(path, leaf),
    }
}

/// The kind of a leaf value, and of a column once unified over its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Null,
    Bool,
    Int,
    Float,
    Str,
    /// Different scalar kinds: written as text.
    Mixed,
    /// Lists and whole objects, with anything: written as JSON text.
    Json,
}

impl ColumnKind {
    pub fn of(v: &Value) -> ColumnKind {
        match v {
            Value::Null => ColumnKind::Null,
            Value::Bool(_) => ColumnKind::Bool,
            Value::Int(_) => ColumnKind::Int,
            Value::Float(_) => ColumnKind::Float,
            Value::Str(_) => ColumnKind::Str,
            Value::List(_) | Value::Object(_) => ColumnKind::Json,
        }
    }

    /// The widening rules: null is neutral, int and float make float, JSON
    /// absorbs everything, any other mixture is text.
    pub fn unify(self, other: ColumnKind) -> ColumnKind {
        use ColumnKind::*;
        match (self, other) {
            (Null, k) | (k, Null) => k,
            (a, b) if a == b => a,
            (Json, _) | (_, Json) => Json,
            (Int, Float) | (Float, Int) => Float,
            _ => Mixed,
        }
    }

    pub fn data_type(self) -> DataType {
        match self {
            ColumnKind::Bool => DataType::Boolean,
            ColumnKind::Int => DataType::Int64,
            ColumnKind::Float => DataType::Float64,
            ColumnKind::Null | ColumnKind::Str | ColumnKind::Mixed | ColumnKind::Json => DataType::Utf8,
        }
    }

    /// The Arrow field for a column of this kind; JSON and mixed columns are
    /// marked in the field metadata (`runport.kind`).
    pub fn field(self, name: &str) -> Field {
        let field = Field::new(name, self.data_type(), true);
        match self {
            ColumnKind::Json => kind_metadata(field, "json"),
            ColumnKind::Mixed => kind_metadata(field, "mixed"),
            _ => field,
        }
    }
}

/// Marks a text column as JSON text or mixed scalars (`runport.kind`).
pub fn kind_metadata(field: Field, kind: &str) -> Field {
    let meta: std::collections::BTreeMap<String, String> = [("runport.kind".to_string(), kind.to_string())].into();
    field.with_metadata(meta)
}

/// Text for a value in a column of mixed scalars: strings as they are,
/// bools and numbers as JSON, non-finite floats as `NaN`/`Infinity`/`-Infinity`.
pub fn mixed_text(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        Value::Float(f) if f.is_nan() => "NaN".to_string(),
        Value::Float(f) if f.is_infinite() => if *f > 0.0 { "Infinity" } else { "-Infinity" }.to_string(),
        Value::Float(f) => {
            let mut s = String::new();
            write_float_json(*f, &mut s);
            s
        }
        other => other.to_json(),
    }
}

/// Builds one Arrow column of a given kind from values (None = null).
pub enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Text(StringBuilder, ColumnKind),
}

impl ColumnBuilder {
    pub fn new(kind: ColumnKind, capacity: usize) -> ColumnBuilder {
        match kind {
            ColumnKind::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(capacity)),
            ColumnKind::Int => ColumnBuilder::Int(Int64Builder::with_capacity(capacity)),
            ColumnKind::Float => ColumnBuilder::Float(Float64Builder::with_capacity(capacity)),
            k => ColumnBuilder::Text(StringBuilder::with_capacity(capacity, capacity * 8), k),
        }
    }

    /// Appends a value; the kind must have been unified with the value's kind.
    pub fn push(&mut self, v: Option<&Value>) {
        let v = match v {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        };
        match self {
            ColumnBuilder::Bool(b) => b.append_option(v.and_then(|v| match v {
                Value::Bool(x) => Some(*x),
                _ => None,
            })),
            ColumnBuilder::Int(b) => b.append_option(v.and_then(|v| match v {
                Value::Int(x) => Some(*x),
                _ => None,
            })),
            ColumnBuilder::Float(b) => b.append_option(v.and_then(Value::as_f64)),
            ColumnBuilder::Text(b, kind) => match v {
                None => b.append_null(),
                Some(v) => match kind {
                    ColumnKind::Json => b.append_value(v.to_json()),
                    ColumnKind::Mixed => b.append_value(mixed_text(v)),
                    _ => match v {
                        Value::Str(s) => b.append_value(s),
                        other => b.append_value(other.to_json()),
                    },
                },
            },
        }
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Int(b) => Arc::new(b.finish()),
            ColumnBuilder::Float(b) => Arc::new(b.finish()),
            ColumnBuilder::Text(b, _) => Arc::new(b.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Float64Array, StringArray};

    #[test]
    fn dotted_flat_keys_never_collide_with_nested_paths() {
        assert_eq!(encode_path(&["a.b"]), "a\\.b");
        assert_eq!(encode_path(&["a", "b"]), "a.b");
        assert_eq!(encode_path(&["a\\", "b"]), "a\\\\.b");
        assert_eq!(encode_path(&["train/loss", "héllo wörld"]), "train/loss.héllo wörld");
        for segs in [vec!["a.b"], vec!["a", "b"], vec!["x\\.y", "z"], vec!["", "."]] {
            assert_eq!(decode_path(&encode_path(&segs)), segs);
        }
    }

    #[test]
    fn flatten_keeps_media_lists_and_empty_objects_whole() {
        let v = Value::parse(
            r#"{"opt": {"lr": 0.1, "betas": [0.9, 0.99]}, "img": {"_type": "image-file", "path": "x.png"}, "e": {}, "a.b": 1}"#,
        )
        .unwrap();
        let mut got = Vec::new();
        flatten("config", &v, &mut |p, leaf| got.push((p.to_string(), leaf.to_json())));
        assert_eq!(
            got,
            vec![
                ("config.opt.lr".to_string(), "0.1".to_string()),
                ("config.opt.betas".to_string(), "[0.9,0.99]".to_string()),
                ("config.img".to_string(), r#"{"_type":"image-file","path":"x.png"}"#.to_string()),
                ("config.e".to_string(), "{}".to_string()),
                ("config.a\\.b".to_string(), "1".to_string()),
            ]
        );
    }

    #[test]
    fn unification_rules() {
        use ColumnKind::*;
        let cases = [
            (Null, Int, Int),
            (Int, Int, Int),
            (Int, Float, Float),
            (Float, Int, Float),
            (Bool, Int, Mixed),
            (Int, Str, Mixed),
            (Float, Str, Mixed),
            (Bool, Str, Mixed),
            (Str, Json, Json),
            (Int, Json, Json),
            (Mixed, Json, Json),
            (Mixed, Float, Mixed),
            (Null, Null, Null),
        ];
        for (a, b, want) in cases {
            assert_eq!(a.unify(b), want, "{a:?} + {b:?}");
            assert_eq!(b.unify(a), want, "{b:?} + {a:?}");
        }
        // Order of arrival never matters.
        let kinds = [Int, Float, Bool, Str, Json, Null];
        for a in kinds {
            for b in kinds {
                for c in kinds {
                    assert_eq!(a.unify(b).unify(c), a.unify(b.unify(c)));
                }
            }
        }
    }

    #[test]
    fn non_finite_floats_stay_floats_and_ints_widen() {
        let vals: Vec<Value> =
            ["1", "NaN", "Infinity", "-Infinity", "2.5"].iter().map(|t| Value::parse(t).unwrap()).collect();
        let kind = vals.iter().fold(ColumnKind::Null, |k, v| k.unify(ColumnKind::of(v)));
        assert_eq!(kind, ColumnKind::Float);
        let mut b = ColumnBuilder::new(kind, 5);
        for v in &vals {
            b.push(Some(v));
        }
        b.push(None);
        let arr = b.finish();
        let arr = arr.as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(arr.value(0), 1.0);
        assert!(arr.value(1).is_nan());
        assert_eq!(arr.value(2), f64::INFINITY);
        assert_eq!(arr.value(3), f64::NEG_INFINITY);
        assert!(arr.is_null(5));
    }

    #[test]
    fn mixed_and_json_columns_render_text() {
        let vals: Vec<Value> = ["true", "3", "\"x\"", "NaN", "0.5"].iter().map(|t| Value::parse(t).unwrap()).collect();
        let mut b = ColumnBuilder::new(ColumnKind::Mixed, 5);
        vals.iter().for_each(|v| b.push(Some(v)));
        let arr = b.finish();
        let arr = arr.as_any().downcast_ref::<StringArray>().unwrap();
        let got: Vec<&str> = arr.iter().map(|s| s.unwrap()).collect();
        assert_eq!(got, ["true", "3", "x", "NaN", "0.5"]);

        let mut b = ColumnBuilder::new(ColumnKind::Json, 2);
        b.push(Some(&Value::Str("x".into())));
        b.push(Some(&Value::parse("[1, NaN]").unwrap()));
        let arr = b.finish();
        let arr = arr.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(arr.value(0), "\"x\"");
        assert_eq!(arr.value(1), "[1,\"NaN\"]");
    }
}
