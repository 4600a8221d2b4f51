//! `Value::parse` on arbitrary UTF-8 text. When the text parses, the JSON that
//! runport writes back for it must parse too, and writing is idempotent:
//! parse(to_json(v)) writes the same text again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runport::value::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(v) = Value::parse(text) else {
        return;
    };
    let json = v.to_json();
    let again = Value::parse(&json).unwrap_or_else(|e| panic!("to_json output does not parse: {e}: {json:?}"));
    assert_eq!(again.to_json(), json, "to_json is not idempotent");
    let _ = v.as_f64();
    let _ = v.is_opaque_object();
});
