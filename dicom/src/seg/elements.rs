//! Small constructors for data elements and code sequences.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::InMemDicomObject;

use super::codes::Code;

/// A text element (any string VR).
pub(crate) fn s(tag: Tag, vr: VR, value: &str) -> InMemElement {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

/// A multi-valued text element.
pub(crate) fn strs(tag: Tag, vr: VR, values: &[String]) -> InMemElement {
    DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(values.iter().cloned().collect()),
    )
}

/// A US element.
pub(crate) fn us(tag: Tag, values: &[u16]) -> InMemElement {
    DataElement::new(
        tag,
        VR::US,
        PrimitiveValue::U16(values.iter().copied().collect()),
    )
}

/// A UL element.
pub(crate) fn ul(tag: Tag, values: &[u32]) -> InMemElement {
    DataElement::new(
        tag,
        VR::UL,
        PrimitiveValue::U32(values.iter().copied().collect()),
    )
}

/// An AT element.
pub(crate) fn at(tag: Tag, value: Tag) -> InMemElement {
    DataElement::new(
        tag,
        VR::AT,
        PrimitiveValue::Tags(std::iter::once(value).collect()),
    )
}

/// A sequence element.
pub(crate) fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> InMemElement {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

/// A dataset of elements.
pub(crate) fn item(elements: Vec<InMemElement>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

/// A number as a Decimal String value (at most 16 characters).
pub(crate) fn ds(v: f64) -> String {
    let v = if v == 0.0 { 0.0 } else { v };
    for precision in (0..=10).rev() {
        let mut t = format!("{v:.precision$}");
        if t.contains('.') {
            t = t.trim_end_matches('0').trim_end_matches('.').to_string();
        }
        if t == "-0" {
            t = "0".into();
        }
        if t.len() <= 16 {
            return t;
        }
    }
    format!("{v:.6e}")
}

/// Several numbers as a multi-valued DS element.
pub(crate) fn ds_multi(tag: Tag, values: &[f64]) -> InMemElement {
    let v: Vec<String> = values.iter().map(|x| ds(*x)).collect();
    strs(tag, VR::DS, &v)
}

/// One code item (Code Sequence Macro).
pub(crate) fn code_item(code: &Code, extra: Vec<InMemElement>) -> InMemDicomObject {
    let mut elements = vec![
        s(tags::CODE_VALUE, VR::SH, &code.value),
        s(tags::CODING_SCHEME_DESIGNATOR, VR::SH, &code.scheme),
        s(tags::CODE_MEANING, VR::LO, &code.meaning),
    ];
    elements.extend(extra);
    item(elements)
}

/// A sequence of one code.
pub(crate) fn code_seq(tag: Tag, code: &Code) -> InMemElement {
    seq(tag, vec![code_item(code, Vec::new())])
}

/// A DICOM UID under the `2.25` root from a random UUID.
pub(crate) fn new_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit() {
        assert_eq!(ds(1.5), "1.5");
        assert_eq!(ds(-0.0), "0");
        assert_eq!(ds(-123.456_789_012_345_6), "-123.4567890123");
        assert!(ds(1.0e20).len() <= 16);
        assert!(new_uid().len() <= 64);
    }
}
