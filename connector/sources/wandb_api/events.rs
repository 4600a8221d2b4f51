//! A run's `events` answer (its system metrics), read row by row as it is
//! parsed: the answer is tens of MB of JSON for a long run, and neither it
//! nor a tree of it is held, only the row being read.
//!
//! The answer is `{"data": {"project": {"run": {"events": [ROW, ...]}}}}`,
//! or `{"errors": [{"message": ...}], ...}`; each ROW is one sample as a
//! JSON text (a string), as the official client reads it. A `project`,
//! `run` or `events` that is null or missing gives no rows.

use std::fmt;
use std::io::Read;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One element of `events`: the SDK's rows are JSON texts; anything else
/// is taken as the row itself.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum EventRow {
    Text(String),
    Other(serde_json::Value),
}

/// What reading an answer found besides its rows.
#[derive(Debug, Default, PartialEq)]
pub struct EventsAnswer {
    /// Rows handed over.
    pub rows: usize,
    /// The GraphQL errors' messages, if the answer has any.
    pub errors: Vec<String>,
    /// Whether the answer has `data` (null counts as none).
    pub data: bool,
}

/// Reads the answer in `bytes`, handing each row to `row` as it is parsed.
pub fn read_slice(bytes: &[u8], row: &mut dyn FnMut(EventRow) -> Result<(), String>) -> Result<EventsAnswer, String> {
    read(serde_json::Deserializer::from_slice(bytes), row)
}

/// [`read_slice`] of an answer in a file (or any reader).
pub fn read_from(
    reader: impl Read,
    row: &mut dyn FnMut(EventRow) -> Result<(), String>,
) -> Result<EventsAnswer, String> {
    read(serde_json::Deserializer::from_reader(reader), row)
}

/// The whole answer from `d`, nothing after it.
fn read<'de, R: serde_json::de::Read<'de>>(
    mut d: serde_json::Deserializer<R>,
    row: &mut dyn FnMut(EventRow) -> Result<(), String>,
) -> Result<EventsAnswer, String> {
    let answer = Answer { row }.deserialize(&mut d).map_err(|e| e.to_string())?;
    d.end().map_err(|e| e.to_string())?;
    Ok(answer)
}

/// The whole answer: `data` followed down to the rows, `errors` kept.
struct Answer<'f> {
    row: &'f mut dyn FnMut(EventRow) -> Result<(), String>,
}

#[derive(Deserialize)]
struct GraphqlError {
    message: Option<String>,
}

impl<'de> DeserializeSeed<'de> for Answer<'_> {
    type Value = EventsAnswer;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<EventsAnswer, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Answer<'_> {
    type Value = EventsAnswer;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a GraphQL answer (an object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventsAnswer, A::Error> {
        let mut answer = EventsAnswer::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "data" => {
                    let mut rows = 0;
                    answer.data = map.next_value_seed(Below { path: PATH, row: &mut *self.row, rows: &mut rows })?;
                    answer.rows += rows;
                }
                "errors" => {
                    let errors: Option<Vec<GraphqlError>> = map.next_value()?;
                    answer
                        .errors
                        .extend(errors.into_iter().flatten().map(|e| e.message.unwrap_or_else(|| "error".to_string())));
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(answer)
    }
}

/// From `data` to the rows.
const PATH: &[&str] = &["project", "run", "events"];

/// A value at some depth of `data`: `path` leads from it to the rows.
/// Gives whether the value was there (not null).
struct Below<'p, 'f> {
    path: &'p [&'p str],
    row: &'f mut dyn FnMut(EventRow) -> Result<(), String>,
    rows: &'f mut usize,
}

impl<'de> DeserializeSeed<'de> for Below<'_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Below<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.path.first() {
            Some(key) => write!(f, "null or an object with {key:?}"),
            None => f.write_str("null or a list of rows"),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
        };
        let Below { row, rows, .. } = self;
        while let Some(key) = map.next_key::<String>()? {
            if key == *first {
                map.next_value_seed(Below { path: rest, row: &mut *row, rows: &mut *rows })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(true)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        if !self.path.is_empty() {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        while let Some(r) = seq.next_element::<EventRow>()? {
            *self.rows += 1;
            (self.row)(r).map_err(de::Error::custom)?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of(text: &str) -> (Result<EventsAnswer, String>, Vec<String>) {
        let mut seen = Vec::new();
        let mut keep = |r: EventRow| {
            seen.push(match r {
                EventRow::Text(s) => s,
                EventRow::Other(v) => format!("other:{v}"),
            });
            Ok(())
        };
        let from_slice = read_slice(text.as_bytes(), &mut keep);
        let mut again = Vec::new();
        let from_reader = read_from(text.as_bytes(), &mut |r: EventRow| {
            again.push(match r {
                EventRow::Text(s) => s,
                EventRow::Other(v) => format!("other:{v}"),
            });
            Ok(())
        });
        // (Errors may place the fault one column apart.)
        assert_eq!(from_slice.as_ref().ok(), from_reader.as_ref().ok(), "{text}");
        assert_eq!(from_slice.is_ok(), from_reader.is_ok(), "{text}");
        assert_eq!(seen, again, "{text}");
        (from_slice, seen)
    }

    #[test]
    fn rows_are_handed_over_in_order_whatever_else_the_answer_holds() {
        let text = r#"{"extensions": {"x": [1, {"events": ["no"]}]},
            "data": {"project": {"name": "p", "run": {"id": "r", "events": ["{\"a\": 1}", {"b": 2}, "{}"],
            "more": {"events": ["not these"]}}}}}"#;
        let (answer, rows) = rows_of(text);
        assert_eq!(answer.unwrap(), EventsAnswer { rows: 3, errors: Vec::new(), data: true });
        assert_eq!(rows, [r#"{"a": 1}"#, r#"other:{"b":2}"#, "{}"]);
    }

    #[test]
    fn null_or_missing_levels_give_no_rows_and_errors_are_kept() {
        for text in [
            r#"{"data": {"project": null}}"#,
            r#"{"data": {"project": {"run": null}}}"#,
            r#"{"data": {"project": {"run": {"events": null}}}}"#,
            r#"{"data": {"project": {"run": {}}}}"#,
        ] {
            let (answer, rows) = rows_of(text);
            assert_eq!(answer.unwrap(), EventsAnswer { rows: 0, errors: Vec::new(), data: true }, "{text}");
            assert!(rows.is_empty());
        }
        let (answer, _) = rows_of(r#"{"errors": [{"message": "run not found"}, {}], "data": null}"#);
        let answer = answer.unwrap();
        assert_eq!(
            (answer.errors.as_slice(), answer.data),
            (["run not found".to_string(), "error".into()].as_slice(), false)
        );
    }

    #[test]
    fn damage_is_an_error_and_a_rows_error_stops_the_reading() {
        for text in [
            r#"{"data": {"project": {"run": {"events": ["{}", "#,
            r#"{"data": {"project": {"run": {"events": {"a": 1}}}}}"#,
            r#"{"data": {"project": {"run": {"events": ["{}"]}}}} trailing"#,
            r#"[]"#,
        ] {
            let (answer, _) = rows_of(text);
            assert!(answer.is_err(), "{text}");
        }
        let mut n = 0;
        let e = read_slice(br#"{"data": {"project": {"run": {"events": ["1", "2", "3"]}}}}"#, &mut |_| {
            n += 1;
            if n == 2 { Err("the second row is bad".into()) } else { Ok(()) }
        })
        .unwrap_err();
        assert!(e.contains("the second row is bad"), "{e}");
        assert_eq!(n, 2);
    }
}
