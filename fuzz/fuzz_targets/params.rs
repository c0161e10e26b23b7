//! Params JSON handling: the `params` form field (and JSON bodies) through the server's
//! `parse_json_object`, then echoed back in Python's `json.dumps` layout as `/infer` answers
//! do, and the ids/tags/file names that params and query strings carry through the
//! datastore's validators.
//!
//! Invariants: no panic; blank text is `{}`; an accepted object echoes as ASCII-only JSON that
//! parses back to the same object; a name the validators accept is safe as a path component.
#![no_main]

use ferrolabel_datastore::ids::{self, upload_name};
use ferrolabel_forms::{parse_json_object, python_json};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_json_object(text, "form field \"params\"") {
        Ok(map) => {
            if text.trim().is_empty() {
                assert!(map.is_empty());
            }
            let value = Value::Object(map);
            let echoed = python_json(&value);
            assert!(echoed.is_ascii(), "json.dumps layout escapes non-ASCII");
            let back: Value = serde_json::from_slice(&echoed).expect("our JSON parses");
            assert_eq!(back, value, "echoed params differ");
            for (k, v) in value.as_object().expect("an object") {
                if let Some(s) = v.as_str() {
                    check_name(s);
                }
                check_name(k);
            }
        }
        Err(message) => assert!(message.starts_with("form field \"params\"")),
    }
    check_name(text);
});

fn check_name(s: &str) {
    for ok in [ids::validate_id(s).is_ok(), ids::validate_tag(s).is_ok()] {
        if ok {
            assert!(!s.is_empty() && !s.contains('/') && !s.contains('\\') && !s.contains(".."));
            assert!(!s.starts_with('.') && !s.contains('\0'));
        }
    }
    let _ = ids::normalize_tag(s);
    let _ = ids::validate_session_id(s);
    let (base, ext) = upload_name(s);
    assert!(!base.contains('/') && !base.contains('\\'));
    assert!(ids::validate_ext(&ext).is_ok());
    let (id, _) = ids::id_from_filename(s);
    assert!(!id.contains('/') && !id.contains('\\'));
}
