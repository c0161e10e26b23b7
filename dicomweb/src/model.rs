//! The DICOM JSON model (PS3.18 F.2) of QIDO-RS answers, read with `serde_json`.

use serde_json::Value;

/// Tags read from QIDO-RS and metadata answers (`GGGGEEEE`).
pub mod tag {
    /// StudyInstanceUID.
    pub const STUDY_INSTANCE_UID: &str = "0020000D";
    /// SeriesInstanceUID.
    pub const SERIES_INSTANCE_UID: &str = "0020000E";
    /// SOPInstanceUID.
    pub const SOP_INSTANCE_UID: &str = "00080018";
    /// PatientID.
    pub const PATIENT_ID: &str = "00100020";
    /// Modality.
    pub const MODALITY: &str = "00080060";
    /// SeriesDescription.
    pub const SERIES_DESCRIPTION: &str = "0008103E";
    /// SeriesNumber.
    pub const SERIES_NUMBER: &str = "00200011";
    /// NumberOfSeriesRelatedInstances.
    pub const NUMBER_OF_SERIES_RELATED_INSTANCES: &str = "00201209";
    /// ReferencedSeriesSequence.
    pub const REFERENCED_SERIES_SEQUENCE: &str = "00081115";
    /// FailedSOPSequence (STOW-RS answer).
    pub const FAILED_SOP_SEQUENCE: &str = "00081198";
    /// ReferencedSOPSequence (STOW-RS answer).
    pub const REFERENCED_SOP_SEQUENCE: &str = "00081199";
    /// ReferencedSOPInstanceUID.
    pub const REFERENCED_SOP_INSTANCE_UID: &str = "00081155";
    /// FailureReason.
    pub const FAILURE_REASON: &str = "00081197";
}

/// The values of attribute `tag` of a DICOM JSON dataset (empty when absent).
pub fn values<'a>(ds: &'a Value, tag: &str) -> &'a [Value] {
    ds.get(tag)
        .and_then(|a| a.get("Value"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The first value of `tag` as text: strings as they are, numbers printed, person names'
/// `Alphabetic` group; `None` when absent or empty.
pub fn first_string(ds: &Value, tag: &str) -> Option<String> {
    let s = match values(ds, tag).first()? {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => o.get("Alphabetic")?.as_str()?.to_string(),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

/// The first value of `tag` as an integer (IS values come as numbers or strings).
pub fn first_int(ds: &Value, tag: &str) -> Option<i64> {
    match values(ds, tag).first()? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// One series as QIDO-RS lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesSummary {
    /// SeriesInstanceUID (an image's id in the datastore).
    pub series_instance_uid: String,
    /// StudyInstanceUID (needed to retrieve or store).
    pub study_instance_uid: String,
    /// PatientID, when the PACS returns it.
    pub patient_id: Option<String>,
    /// Modality.
    pub modality: Option<String>,
    /// NumberOfSeriesRelatedInstances, when the PACS returns it.
    pub number_of_instances: Option<u32>,
    /// SeriesDescription.
    pub description: Option<String>,
    /// SeriesNumber.
    pub series_number: Option<i64>,
}

impl SeriesSummary {
    /// Reads one QIDO-RS series result; `None` when it lacks its study or series UID.
    pub fn from_json(ds: &Value) -> Option<SeriesSummary> {
        Some(SeriesSummary {
            series_instance_uid: first_string(ds, tag::SERIES_INSTANCE_UID)?,
            study_instance_uid: first_string(ds, tag::STUDY_INSTANCE_UID)?,
            patient_id: first_string(ds, tag::PATIENT_ID),
            modality: first_string(ds, tag::MODALITY),
            number_of_instances: first_int(ds, tag::NUMBER_OF_SERIES_RELATED_INSTANCES)
                .and_then(|n| u32::try_from(n).ok()),
            description: first_string(ds, tag::SERIES_DESCRIPTION),
            series_number: first_int(ds, tag::SERIES_NUMBER),
        })
    }
}

/// A SEG series and the series it segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegSeries {
    /// The SEG series as listed.
    pub series: SeriesSummary,
    /// SeriesInstanceUIDs in its instances' ReferencedSeriesSequence.
    pub referenced_series: Vec<String>,
    /// SOPInstanceUIDs of its instances.
    pub instances: Vec<String>,
}

/// The SeriesInstanceUIDs of `ds`'s ReferencedSeriesSequence.
pub fn referenced_series(ds: &Value) -> Vec<String> {
    values(ds, tag::REFERENCED_SERIES_SEQUENCE)
        .iter()
        .filter_map(|item| first_string(item, tag::SERIES_INSTANCE_UID))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_json_model() {
        let ds: Value = serde_json::from_str(
            r#"{"0020000E":{"vr":"UI","Value":["1.2.3"]},"0020000D":{"vr":"UI","Value":["1.2"]},
                "00201209":{"vr":"IS","Value":[20]},"00100010":{"vr":"PN","Value":[{"Alphabetic":"A^B"}]},
                "00200011":{"vr":"IS","Value":["7"]},"0008103E":{"vr":"LO"},
                "00081115":{"vr":"SQ","Value":[{"0020000E":{"vr":"UI","Value":["9.9"]}}]}}"#,
        )
        .unwrap();
        let s = SeriesSummary::from_json(&ds).unwrap();
        assert_eq!(s.series_instance_uid, "1.2.3");
        assert_eq!(s.number_of_instances, Some(20));
        assert_eq!(s.series_number, Some(7));
        assert_eq!(s.description, None);
        assert_eq!(first_string(&ds, "00100010").as_deref(), Some("A^B"));
        assert_eq!(referenced_series(&ds), vec!["9.9".to_string()]);
        assert!(SeriesSummary::from_json(&serde_json::json!({})).is_none());
    }
}
