//! Coded terms for segments: TotalSegmentator's SNOMED CT mapping
//! (`data/totalseg/totalsegmentator_snomed_mapping.csv`, Apache-2.0, compiled in) and the
//! bundle's 104 structure names mapped onto it.

use std::collections::HashMap;
use std::sync::OnceLock;

/// A DICOM coded concept (Code Sequence Macro).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// CodingSchemeDesignator (`SCT`, `DCM`, ...).
    pub scheme: String,
    /// CodeValue.
    pub value: String,
    /// CodeMeaning.
    pub meaning: String,
}

impl Code {
    fn new(scheme: &str, value: &str, meaning: &str) -> Code {
        Code {
            scheme: scheme.into(),
            value: value.into(),
            meaning: meaning.into(),
        }
    }
}

/// The coded description of one structure, as a SEG segment carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCodes {
    /// The structure's name in the mapping (TotalSegmentator's name).
    pub structure: String,
    /// SegmentedPropertyCategoryCodeSequence.
    pub category: Code,
    /// SegmentedPropertyTypeCodeSequence.
    pub property_type: Code,
    /// SegmentedPropertyTypeModifierCodeSequence (left/right), when any.
    pub type_modifier: Option<Code>,
    /// AnatomicRegionSequence, when any.
    pub region: Option<Code>,
    /// AnatomicRegionModifierSequence, when any.
    pub region_modifier: Option<Code>,
    /// Recommended display colour, sRGB.
    pub rgb: [u8; 3],
}

/// The mapping table as shipped.
pub const MAPPING_CSV: &str =
    include_str!("../../../data/totalseg/totalsegmentator_snomed_mapping.csv");

/// Splits one CSV line into fields (`"..."` quoting with `""` escapes).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn code_at(f: &[String], at: usize) -> Option<Code> {
    let get = |i: usize| f.get(i).map(|s| s.trim()).unwrap_or("");
    (!get(at + 1).is_empty()).then(|| Code::new(get(at), get(at + 1), get(at + 2)))
}

fn parse_rgb(s: &str) -> [u8; 3] {
    let v: Vec<u8> = s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    match v[..] {
        [r, g, b] => [r, g, b],
        _ => [128, 174, 128],
    }
}

fn table() -> &'static HashMap<String, SegmentCodes> {
    static TABLE: OnceLock<HashMap<String, SegmentCodes>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut map = HashMap::new();
        for line in MAPPING_CSV.lines().skip(1) {
            let f = csv_fields(line.trim_end_matches('\r'));
            if f.len() < 17 || f[0].trim().is_empty() {
                continue;
            }
            let (Some(category), Some(property_type)) = (code_at(&f, 1), code_at(&f, 4)) else {
                continue;
            };
            let codes = SegmentCodes {
                structure: f[0].trim().to_string(),
                category,
                property_type,
                type_modifier: code_at(&f, 7),
                region: code_at(&f, 10),
                region_modifier: code_at(&f, 13),
                rgb: parse_rgb(&f[16]),
            };
            map.insert(codes.structure.clone(), codes);
        }
        map
    })
}

/// The coded description of a structure, by the bundle's (or TotalSegmentator's) name. The
/// bundle's 104 names (TotalSegmentator v1) all appear in the table as they are.
pub fn codes_for(name: &str) -> Option<&'static SegmentCodes> {
    table().get(name)
}

/// The description used for a name the mapping does not know: category "Anatomical
/// Structure", type "Anatomical structure" (SCT 91723000), a grey-green colour.
pub fn fallback_codes(name: &str) -> SegmentCodes {
    SegmentCodes {
        structure: name.to_string(),
        category: Code::new("SCT", "123037004", "Anatomical Structure"),
        property_type: Code::new("SCT", "91723000", "Anatomical structure"),
        type_modifier: None,
        region: None,
        region_modifier: None,
        rgb: [128, 174, 128],
    }
}

/// sRGB (0–255) to DICOM's scaled CIELab (RecommendedDisplayCIELabValue: L* 0–100 and a*, b*
/// -128–127 mapped onto 0–65535), through CIE XYZ with the D65 white point.
pub fn rgb_to_dicom_lab(rgb: [u8; 3]) -> [u16; 3] {
    let lin = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let (r, g, b) = (lin(rgb[0]), lin(rgb[1]), lin(rgb[2]));
    let x = 0.4124564 * r + 0.3575761 * g + 0.1804375 * b;
    let y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b;
    let z = 0.0193339 * r + 0.1191920 * g + 0.9503041 * b;
    let f = |t: f64| {
        if t > 216.0 / 24389.0 {
            t.cbrt()
        } else {
            (24389.0 / 27.0 * t + 16.0) / 116.0
        }
    };
    let (fx, fy, fz) = (f(x / 0.95047), f(y), f(z / 1.08883));
    let l = 116.0 * fy - 16.0;
    let a = 500.0 * (fx - fy);
    let bb = 200.0 * (fy - fz);
    let scale =
        |v: f64, lo: f64, hi: f64| ((v.clamp(lo, hi) - lo) / (hi - lo) * 65535.0).round() as u16;
    [
        scale(l, 0.0, 100.0),
        scale(a, -128.0, 127.0),
        scale(bb, -128.0, 127.0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_with_modifiers_and_colours() {
        let c = codes_for("adrenal_gland_left").unwrap();
        assert_eq!(c.property_type.value, "23451007");
        assert_eq!(c.type_modifier.as_ref().unwrap().meaning, "Left");
        assert_eq!(c.rgb, [241, 172, 34]);
        assert!(codes_for("no_such_structure").is_none());
        assert_eq!(csv_fields(r#"a,"1,2","""x""""#), vec!["a", "1,2", "\"x\""]);
    }

    #[test]
    fn lab_of_white_and_black() {
        assert_eq!(rgb_to_dicom_lab([255, 255, 255])[0], 65535);
        assert_eq!(rgb_to_dicom_lab([0, 0, 0]), [0, 32896, 32896]);
    }
}
