//! MONAI Label's `datastore_v2.json` model: parsing and rendering.
//!
//! Schema (MONAI Label's `LocalDatastoreModel`): top-level keys in the order `name`,
//! `description`, `images_dir`, `labels_dir`, `objects`; each object is
//! `{"image": {"ext", "info"}, "labels": {<tag>: {"ext", "info"}}}`. Missing keys take MONAI
//! Label's defaults (`ext` = `""`, `info` = `{}`, `labels` = `{}`). Written with an indent of 2.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{DatastoreError, Result};

/// Dataset name written into a new `datastore_v2.json`.
pub const DEFAULT_NAME: &str = "new-dataset";

/// Dataset description written into a new `datastore_v2.json`.
pub const DEFAULT_DESCRIPTION: &str = "New Dataset";

/// One `{"ext", "info"}` pair.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub ext: String,
    pub info: Map<String, Value>,
}

/// One object: an image and its labels, in file order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Object {
    pub id: String,
    pub image: Entry,
    pub labels: Vec<(String, Entry)>,
}

/// A parsed `datastore_v2.json`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Model {
    pub name: String,
    pub description: String,
    pub images_dir: String,
    pub labels_dir: String,
    pub objects: Vec<Object>,
}

/// Parses the text of a `datastore_v2.json` found at `path` (used in error messages).
///
/// Python's `json.dumps` writes `NaN`/`Infinity` for non-finite floats (e.g. a failed Dice
/// score); those tokens become `null` rather than failing the whole import.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Model> {
    let bad = |message: String| DatastoreError::MalformedJson {
        path: path.to_path_buf(),
        message,
    };
    let root: Value =
        serde_json::from_str(&replace_non_finite(text)).map_err(|e| bad(e.to_string()))?;
    let root = root
        .as_object()
        .ok_or_else(|| bad("top level is not an object".into()))?;
    let string = |key: &str, default: &str| -> Result<String> {
        match root.get(key) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(bad(format!("{key:?} is not a string"))),
        }
    };
    let mut model = Model {
        name: string("name", DEFAULT_NAME)?,
        description: string("description", DEFAULT_DESCRIPTION)?,
        images_dir: string("images_dir", ".")?,
        labels_dir: string("labels_dir", "labels")?,
        objects: Vec::new(),
    };
    let objects = match root.get("objects") {
        None | Some(Value::Null) => return Ok(model),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(bad("\"objects\" is not an object".into())),
    };
    for (id, obj) in objects {
        let obj = obj
            .as_object()
            .ok_or_else(|| bad(format!("object {id:?} is not an object")))?;
        let image = match obj.get("image") {
            Some(v) => entry(v).map_err(|m| bad(format!("object {id:?} image: {m}")))?,
            None => return Err(bad(format!("object {id:?} has no \"image\""))),
        };
        let mut labels = Vec::new();
        match obj.get("labels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(l)) => {
                for (tag, v) in l {
                    let e =
                        entry(v).map_err(|m| bad(format!("object {id:?} label {tag:?}: {m}")))?;
                    labels.push((tag.clone(), e));
                }
            }
            Some(_) => return Err(bad(format!("object {id:?} \"labels\" is not an object"))),
        }
        model.objects.push(Object {
            id: id.clone(),
            image,
            labels,
        });
    }
    Ok(model)
}

fn entry(v: &Value) -> std::result::Result<Entry, String> {
    let o = v.as_object().ok_or("not an object")?;
    let ext = match o.get("ext") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("\"ext\" is not a string".into()),
    };
    let info = match o.get("info") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("\"info\" is not an object".into()),
    };
    Ok(Entry { ext, info })
}

/// Builds the JSON value of a model (the `GET /datastore/?output=all` body).
pub(crate) fn render(name: &str, description: &str, objects: Vec<Object>) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), name.into());
    out.insert("description".into(), description.into());
    out.insert("images_dir".into(), ".".into());
    out.insert("labels_dir".into(), "labels".into());
    let mut objs = Map::new();
    for o in objects {
        let mut labels = Map::new();
        for (tag, e) in o.labels {
            labels.insert(tag, entry_value(e));
        }
        let mut obj = Map::new();
        obj.insert("image".into(), entry_value(o.image));
        obj.insert("labels".into(), Value::Object(labels));
        objs.insert(o.id, Value::Object(obj));
    }
    out.insert("objects".into(), Value::Object(objs));
    Value::Object(out)
}

fn entry_value(e: Entry) -> Value {
    let mut m = Map::new();
    m.insert("ext".into(), e.ext.into());
    m.insert("info".into(), Value::Object(e.info));
    Value::Object(m)
}

/// Serialises a model as MONAI Label does: pretty-printed with an indent of 2.
pub(crate) fn to_bytes(model: &Value) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(model)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Replaces the bare tokens `NaN`, `Infinity` and `-Infinity` (outside strings) with `null`.
fn replace_non_finite(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("NaN") && !text.contains("Infinity") {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if c == '\\' {
                let n = rest.chars().take(2).map(char::len_utf8).sum();
                out.push_str(&rest[..n]);
                rest = &rest[n..];
                continue;
            }
            if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(tok) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push_str("null");
            rest = &rest[tok.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_render_round_trip() {
        let text = r#"{"name":"ds","description":"d","images_dir":".","labels_dir":"labels",
            "objects":{"b":{"image":{"ext":".nii.gz","info":{"ts":1,"dice":NaN,"note":"NaN \"x\""}},
                            "labels":{"final":{"ext":".nrrd","info":{"model":"m"}}}},
                       "a":{"image":{"ext":".nii"}}}}"#;
        let m = parse(Path::new("x.json"), text).unwrap();
        assert_eq!(m.objects[0].id, "b", "file order kept");
        assert_eq!(m.objects[0].image.info["dice"], Value::Null);
        assert_eq!(m.objects[0].image.info["note"], "NaN \"x\"");
        assert_eq!(m.objects[0].labels[0].0, "final");
        assert!(m.objects[1].labels.is_empty());
        let v = render(&m.name, &m.description, m.objects.clone());
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            ["name", "description", "images_dir", "labels_dir", "objects"]
        );
        let text2 = String::from_utf8(to_bytes(&v).unwrap()).unwrap();
        assert!(text2.contains("\n  \"name\": \"ds\""));
        assert_eq!(parse(Path::new("y"), &text2).unwrap(), m);
    }

    #[test]
    fn malformed_names_the_file() {
        for text in ["{", "[]", r#"{"objects": 3}"#, r#"{"objects": {"a": {}}}"#] {
            let err = parse(Path::new("/s/datastore_v2.json"), text).unwrap_err();
            assert!(err.to_string().contains("/s/datastore_v2.json"), "{err}");
        }
    }
}
