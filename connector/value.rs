//! Values as tracking systems write them: JSON extended with bare `NaN`,
//! `Infinity` and `-Infinity`, with integers kept apart from floats.
//!
//! W&B writes every config, summary and history value as such text
//! (`value_json`); a logged `3.0` is written `3`, so "int" here means "written
//! without a fraction or exponent". Object keys keep their order.

use std::fmt::Write as _;

/// A parsed value. Integers that do not fit an `i64` are read as floats.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Object(Vec<(String, Value)>),
}

/// Why a value could not be parsed; `offset` is a byte offset into the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON value at byte {offset}: {reason}")]
pub struct ValueError {
    pub offset: usize,
    pub reason: &'static str,
}

/// Objects and lists deeper than this are rejected instead of overflowing the stack.
const MAX_DEPTH: usize = 256;

impl Value {
    /// Parses one value; surrounding whitespace is allowed, anything else after it is not.
    pub fn parse(text: &str) -> Result<Value, ValueError> {
        Value::parse_bytes(text.as_bytes())
    }

    /// [`Value::parse`] of text not yet checked to be UTF-8: strings in it
    /// are checked as they are read, so nothing else needs to be.
    pub fn parse_bytes(text: &[u8]) -> Result<Value, ValueError> {
        let mut p = Parser { s: text, pos: 0 };
        p.skip_ws();
        let v = p.value(0)?;
        p.skip_ws();
        if p.pos != p.s.len() {
            return Err(p.err("trailing characters"));
        }
        Ok(v)
    }

    /// A JSON object that should stay whole (W&B media and typed objects, empty objects).
    pub fn is_opaque_object(&self) -> bool {
        match self {
            Value::Object(fields) => fields.is_empty() || fields.iter().any(|(k, _)| k == "_type"),
            _ => false,
        }
    }

    /// The value as a number, when it is an int or a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Compact, valid JSON text; non-finite floats become the strings `"NaN"`,
    /// `"Infinity"`, `"-Infinity"` (as the W&B API writes them).
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    pub fn write_json(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(f) => write_float_json(*f, out),
            Value::Str(s) => write_json_string(s, out),
            Value::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            Value::Object(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_json_string(k, out);
                    out.push(':');
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }
}

/// Writes a float as a JSON number (shortest round-trip form), or a quoted
/// `NaN`/`Infinity`/`-Infinity`.
pub fn write_float_json(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("\"NaN\"");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "\"Infinity\"" } else { "\"-Infinity\"" });
    } else {
        let n = serde_json::Number::from_f64(f).expect("invariant: finite float is a JSON number");
        let _ = write!(out, "{n}");
    }
}

pub fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, reason: &'static str) -> ValueError {
        ValueError { offset: self.pos, reason }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.s.get(self.pos) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, word: &[u8]) -> bool {
        if self.s[self.pos..].starts_with(word) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ValueError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        match self.s.get(self.pos) {
            None => Err(self.err("unexpected end")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.list(depth),
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b't') if self.eat(b"true") => Ok(Value::Bool(true)),
            Some(b'f') if self.eat(b"false") => Ok(Value::Bool(false)),
            Some(b'n') if self.eat(b"null") => Ok(Value::Null),
            Some(b'N') if self.eat(b"NaN") => Ok(Value::Float(f64::NAN)),
            Some(b'I') if self.eat(b"Infinity") => Ok(Value::Float(f64::INFINITY)),
            Some(b'-') if self.eat(b"-Infinity") => Ok(Value::Float(f64::NEG_INFINITY)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, ValueError> {
        self.pos += 1;
        let mut fields = Vec::new();
        self.skip_ws();
        if self.eat(b"}") {
            return Ok(Value::Object(fields));
        }
        loop {
            self.skip_ws();
            if self.s.get(self.pos) != Some(&b'"') {
                return Err(self.err("expected a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            if !self.eat(b":") {
                return Err(self.err("expected ':'"));
            }
            self.skip_ws();
            let v = self.value(depth + 1)?;
            fields.push((key, v));
            self.skip_ws();
            if self.eat(b",") {
                continue;
            }
            if self.eat(b"}") {
                return Ok(Value::Object(fields));
            }
            return Err(self.err("expected ',' or '}'"));
        }
    }

    fn list(&mut self, depth: usize) -> Result<Value, ValueError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.eat(b"]") {
            return Ok(Value::List(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            if self.eat(b",") {
                continue;
            }
            if self.eat(b"]") {
                return Ok(Value::List(items));
            }
            return Err(self.err("expected ',' or ']'"));
        }
    }

    fn number(&mut self) -> Result<Value, ValueError> {
        let start = self.pos;
        if self.s[self.pos] == b'-' {
            self.pos += 1;
        }
        let digits_start = self.pos;
        while let Some(b'0'..=b'9') = self.s.get(self.pos) {
            self.pos += 1;
        }
        if self.pos == digits_start {
            return Err(self.err("expected digits"));
        }
        let mut is_int = true;
        if self.s.get(self.pos) == Some(&b'.') {
            is_int = false;
            self.pos += 1;
            let frac = self.pos;
            while let Some(b'0'..=b'9') = self.s.get(self.pos) {
                self.pos += 1;
            }
            if self.pos == frac {
                return Err(self.err("expected digits after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.pos) {
            is_int = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.s.get(self.pos) {
                self.pos += 1;
            }
            let exp = self.pos;
            while let Some(b'0'..=b'9') = self.s.get(self.pos) {
                self.pos += 1;
            }
            if self.pos == exp {
                return Err(self.err("expected exponent digits"));
            }
        }
        // The slice holds only ASCII digits, signs, '.', 'e': always UTF-8.
        let text = std::str::from_utf8(&self.s[start..self.pos]).map_err(|_| self.err("bad number"))?;
        if let Some(i) = is_int.then(|| text.parse::<i64>().ok()).flatten() {
            return Ok(Value::Int(i));
        }
        text.parse::<f64>().map(Value::Float).map_err(|_| self.err("bad number"))
    }

    fn hex4(&mut self) -> Result<u32, ValueError> {
        let digits = self.s.get(self.pos..self.pos + 4).ok_or_else(|| self.err("short \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.err("bad \\u escape"))?;
        let v = u32::from_str_radix(text, 16).map_err(|_| self.err("bad \\u escape"))?;
        self.pos += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, ValueError> {
        self.pos += 1; // opening quote
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.pos) else {
                return Err(self.err("unterminated string"));
            };
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.pos) else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.pos += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) && self.s[self.pos..].starts_with(b"\\u") {
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if (0xDC00..0xE000).contains(&lo) {
                                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                } else {
                                    0xFFFD
                                }
                            } else {
                                hi
                            };
                            char::from_u32(code).unwrap_or('\u{FFFD}')
                        }
                        _ => return Err(self.err("bad escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_floats_and_non_finite() {
        assert_eq!(Value::parse("3").unwrap(), Value::Int(3));
        assert_eq!(Value::parse("-3").unwrap(), Value::Int(-3));
        assert_eq!(Value::parse("3.0").unwrap(), Value::Float(3.0));
        assert_eq!(Value::parse("1e3").unwrap(), Value::Float(1000.0));
        assert_eq!(Value::parse("1.795496877284472e+09").unwrap(), Value::Float(1.795496877284472e9));
        assert_eq!(Value::parse("99999999999999999999").unwrap(), Value::Float(1e20));
        assert!(matches!(Value::parse("NaN").unwrap(), Value::Float(f) if f.is_nan()));
        assert_eq!(Value::parse("Infinity").unwrap(), Value::Float(f64::INFINITY));
        assert_eq!(Value::parse(" -Infinity ").unwrap(), Value::Float(f64::NEG_INFINITY));
        let v = Value::parse("[NaN, Infinity, -Infinity, 1]").unwrap();
        assert_eq!(v.to_json(), r#"["NaN","Infinity","-Infinity",1]"#);
    }

    #[test]
    fn objects_keep_order_and_strings_unescape() {
        let v = Value::parse(r#"{"b": 1, "a": {"x": "h\u00e9\n\ud83d\ude00"}, "c": [true, false, null]}"#).unwrap();
        assert_eq!(v.to_json(), "{\"b\":1,\"a\":{\"x\":\"hé\\n😀\"},\"c\":[true,false,null]}");
        assert_eq!(Value::parse(r#""é/ü""#).unwrap(), Value::Str("é/ü".into()));
    }

    #[test]
    fn opaque_objects() {
        assert!(Value::parse(r#"{"_type": "histogram", "bins": [1]}"#).unwrap().is_opaque_object());
        assert!(Value::parse("{}").unwrap().is_opaque_object());
        assert!(!Value::parse(r#"{"a": 1}"#).unwrap().is_opaque_object());
        assert!(!Value::parse("[1]").unwrap().is_opaque_object());
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        for bad in [
            "",
            "{",
            "[1,",
            "\"abc",
            "tru",
            "01x",
            "-",
            "1.",
            "1e",
            "{\"a\" 1}",
            "[1 2]",
            "\"\\x\"",
            "\"\\u12\"",
            "nan",
            "1 2",
        ] {
            assert!(Value::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let deep = "[".repeat(10_000);
        assert!(Value::parse(&deep).is_err());
    }

    #[test]
    fn float_text_round_trips() {
        for f in [0.1, 1e300, -2.5e-8, 0.3333333333333333, 1.0] {
            let mut s = String::new();
            write_float_json(f, &mut s);
            assert_eq!(s.parse::<f64>().unwrap(), f);
        }
    }
}
