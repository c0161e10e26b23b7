//! Mapping a read segment onto a structure of the bundle: by its label, else by its codes.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::codes::{codes_for, Code};
use super::Structure;
use crate::attrs::{items, text};

pub(super) fn code_of(obj: &InMemDicomObject, tag: Tag) -> Option<Code> {
    let item = items(obj, tag).first()?;
    Some(Code {
        scheme: text(item, tags::CODING_SCHEME_DESIGNATOR).unwrap_or_default(),
        value: text(item, tags::CODE_VALUE)
            .or_else(|| text(item, tags::LONG_CODE_VALUE))
            .or_else(|| text(item, tags::URN_CODE_VALUE))?,
        meaning: text(item, tags::CODE_MEANING).unwrap_or_default(),
    })
}

/// Lower case, runs of anything but letters and digits as one `_`, trimmed of `_`:
/// `"Adrenal gland, left"` → `adrenal_gland_left`.
fn normalise(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

fn same_code(a: Option<&Code>, b: Option<&Code>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.value == b.value && a.scheme.eq_ignore_ascii_case(&b.scheme),
        _ => false,
    }
}

/// Maps a segment onto a structure: its SegmentLabel equal to a structure's name (exactly,
/// else after [`normalise`]), else its property type and type modifier codes equal to those
/// of exactly one structure in the SNOMED mapping.
pub(super) fn match_segment(
    label: &str,
    property_type: Option<&Code>,
    modifier: Option<&Code>,
    structures: &[Structure],
) -> (Option<u8>, &'static str) {
    if let Some(st) = structures.iter().find(|s| s.name == label) {
        return (Some(st.value), "label");
    }
    let wanted = normalise(label);
    if !wanted.is_empty() {
        if let Some(st) = structures.iter().find(|s| normalise(&s.name) == wanted) {
            return (Some(st.value), "label");
        }
    }
    if let Some(pt) = property_type {
        let hits: Vec<u8> = structures
            .iter()
            .filter(|s| {
                codes_for(&s.name).is_some_and(|c| {
                    same_code(Some(&c.property_type), Some(pt))
                        && same_code(c.type_modifier.as_ref(), modifier)
                })
            })
            .map(|s| s.value)
            .collect();
        if let [value] = hits[..] {
            return (Some(value), "codes");
        }
    }
    (None, "unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(value: u8, name: &str) -> Structure {
        Structure {
            value,
            name: name.into(),
        }
    }

    #[test]
    fn segments_match_by_label_then_codes() {
        let bundle = [st(1, "spleen"), st(3, "kidney_left"), st(2, "kidney_right")];
        assert_eq!(
            match_segment("spleen", None, None, &bundle),
            (Some(1), "label")
        );
        assert_eq!(
            match_segment("Kidney, Left", None, None, &bundle),
            (Some(3), "label")
        );
        let kidney = codes_for("kidney_left").unwrap();
        let (v, by) = match_segment(
            "Niere links",
            Some(&kidney.property_type),
            kidney.type_modifier.as_ref(),
            &bundle,
        );
        assert_eq!((v, by), (Some(3), "codes"));
        // the type without the modifier matches neither kidney
        assert_eq!(
            match_segment("Niere", Some(&kidney.property_type), None, &bundle),
            (None, "unknown")
        );
        assert_eq!(normalise("  Adrenal gland -- left "), "adrenal_gland_left");
    }
}
