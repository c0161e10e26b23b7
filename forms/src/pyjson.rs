//! JSON in the layout of Python's `json.dumps`, which MONAI Label clients see in every answer
//! that echoes params back.

use serde::Serialize;

/// Serialises like Python's `json.dumps(value)`.
pub fn python_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // serialising a Value into a Vec cannot fail
    let _ = value.serialize(&mut ser);
    out
}

/// Python's `json.dumps` layout: `", "` and `": "` separators, non-ASCII escaped as `\uXXXX`.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_layout() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"a": [1,2], "é": "x😀", "b": {"c": null}}"#).unwrap();
        assert_eq!(
            String::from_utf8(python_json(&v)).unwrap(),
            r#"{"a": [1, 2], "\u00e9": "x\ud83d\ude00", "b": {"c": null}}"#
        );
    }
}
