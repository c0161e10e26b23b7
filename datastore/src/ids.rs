//! Image ids, label tags, file extensions and session ids.
//!
//! Ids and tags end up verbatim in file-system paths (`<studies>/<id><ext>`,
//! `<studies>/labels/<tag>/<id><ext>`), so every public operation validates them first. MONAI Label
//! itself does not, which lets `../` escape the studies folder; we refuse such names.

use crate::error::{DatastoreError, Result};

/// The most bytes an id or tag may have.
pub const MAX_ID_LEN: usize = 200;

/// The most bytes a file extension may have.
pub const MAX_EXT_LEN: usize = 32;

/// The label tag used when a request names none (or an empty one): user-approved ground truth.
pub const FINAL_TAG: &str = "final";

/// The label tag under which model predictions are saved.
pub const ORIGINAL_TAG: &str = "original";

/// Image extensions the startup scan recognises when none are configured.
pub const DEFAULT_EXTENSIONS: [&str; 3] = [".nii.gz", ".nii", ".nrrd"];

/// Extensions [`id_from_filename`] recognises, longest first; `.seg.nrrd` is stored as `.nrrd`.
const UPLOAD_EXTENSIONS: [(&str, &str); 4] = [
    (".seg.nrrd", ".nrrd"),
    (".nii.gz", ".nii.gz"),
    (".nii", ".nii"),
    (".nrrd", ".nrrd"),
];

/// Checks that `id` is safe to use as an image id (and so as a file name).
///
/// Rules: non-empty, at most [`MAX_ID_LEN`] bytes, no `/`, `\`, NUL or other control characters,
/// no leading `.`, and no `..` anywhere (which also rules out `.` and `..`).
pub fn validate_id(id: &str) -> Result<()> {
    check_name(id, "id")
}

/// Checks a label tag; the rules are those of [`validate_id`].
pub fn validate_tag(tag: &str) -> Result<()> {
    check_name(tag, "tag")
}

fn check_name(s: &str, what: &str) -> Result<()> {
    let bad = |why: &str| Err(DatastoreError::InvalidId(format!("{what} {s:?}: {why}")));
    if s.is_empty() {
        return bad("empty");
    }
    if s.len() > MAX_ID_LEN {
        return bad("too long");
    }
    if s.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        return bad("contains a path separator or control character");
    }
    if s.starts_with('.') {
        return bad("starts with '.'");
    }
    if s.contains("..") {
        return bad("contains '..'");
    }
    Ok(())
}

/// Maps an empty tag to [`FINAL_TAG`] and validates the result.
pub fn normalize_tag(tag: &str) -> Result<&str> {
    let tag = if tag.is_empty() { FINAL_TAG } else { tag };
    validate_tag(tag)?;
    Ok(tag)
}

/// Checks a file extension: empty, or `.` followed by at most [`MAX_EXT_LEN`] bytes without
/// separators, control characters or `..`.
pub fn validate_ext(ext: &str) -> Result<()> {
    if ext.is_empty() {
        return Ok(());
    }
    let ok = ext.starts_with('.')
        && ext.len() > 1
        && ext.len() <= MAX_EXT_LEN
        && !ext.contains("..")
        && !ext.chars().any(|c| c == '/' || c == '\\' || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(DatastoreError::Invalid(format!(
            "bad file extension {ext:?}"
        )))
    }
}

/// The last path component of a client-sent file name, splitting on both `/` and `\`.
pub fn basename(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

/// Splits an uploaded file name into `(id, ext)` following MONAI Label's upload rule.
///
/// The name is first reduced to its basename (clients send full local paths, POSIX or Windows).
/// The id is the basename with **all** suffixes removed (`case.001.nii.gz` → `case`); the extension
/// is a known one if the name ends with it (`.nii.gz`, `.nii`, `.nrrd`, and `.seg.nrrd`, which is
/// stored as `.nrrd`), otherwise all the suffixes (`scan.tar.gz` → `.tar.gz`). The result is not
/// validated; pass the id to [`validate_id`].
pub fn id_from_filename(name: &str) -> (String, String) {
    let base = basename(name);
    let lead = base.len() - base.trim_start_matches('.').len();
    let (id, suffixes) = match base[lead..].find('.') {
        Some(i) => base.split_at(lead + i),
        None => (base, ""),
    };
    let ext = UPLOAD_EXTENSIONS
        .iter()
        .find(|(pat, _)| base.len() > pat.len() && base.ends_with(pat))
        .map(|(_, stored)| *stored)
        .unwrap_or_else(|| suffixes.trim_end_matches('.'));
    (id.to_string(), ext.to_string())
}

/// The naming rule for uploaded files: the basename of the client's file name, and its known
/// extension (as [`id_from_filename`] finds it) when that is a valid one, else `""`. The server
/// names the temp file of every uploaded part with it.
pub fn upload_name(client_name: &str) -> (String, String) {
    let base = basename(client_name).to_string();
    let (_, ext) = id_from_filename(&base);
    let ext = if validate_ext(&ext).is_ok() {
        ext
    } else {
        String::new()
    };
    (base, ext)
}

/// Matches a file name found on disk against the configured extensions.
///
/// Returns `(id, ext)` for the longest extension the name ends with (the id is the name minus that
/// extension, so `1.2.840.nii.gz` → `1.2.840`), or `None` if none matches. Case-sensitive, like
/// MONAI Label's scan on Linux.
pub fn match_extension<'n, S: AsRef<str>>(
    name: &'n str,
    extensions: &[S],
) -> Option<(&'n str, &'n str)> {
    extensions
        .iter()
        .map(AsRef::as_ref)
        .filter(|ext| !ext.is_empty() && name.len() > ext.len() && name.ends_with(ext))
        .max_by_key(|ext| ext.len())
        .map(|ext| name.split_at(name.len() - ext.len()))
}

/// Checks that a session id is a hyphenated UUID (the only form this crate hands out).
pub fn validate_session_id(id: &str) -> Result<()> {
    if id.len() == 36 && uuid::Uuid::try_parse(id).is_ok() {
        Ok(())
    } else {
        Err(DatastoreError::InvalidId(format!(
            "session id {id:?} is not a UUID"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_name_keeps_the_basename_and_a_valid_ext() {
        assert_eq!(
            upload_name(r"C:\Users\me\case.nii.gz"),
            ("case.nii.gz".to_string(), ".nii.gz".to_string())
        );
        assert_eq!(
            upload_name("/tmp/a.seg.nrrd"),
            ("a.seg.nrrd".to_string(), ".nrrd".to_string())
        );
        assert_eq!(upload_name("noext"), ("noext".to_string(), String::new()));
        assert_eq!(upload_name("x.a/b"), ("b".to_string(), String::new()));
        assert_eq!(
            upload_name("scan.bad\u{1}ext"),
            ("scan.bad\u{1}ext".to_string(), String::new())
        );
    }

    #[test]
    fn rejects_unsafe_ids() {
        for bad in [
            "", "../x", "a/b", "..", ".", "a\\b", "a\0b", "x..y", ".hidden", "a\nb", "tab\t",
        ] {
            assert!(
                matches!(validate_id(bad), Err(DatastoreError::InvalidId(_))),
                "{bad:?} accepted"
            );
            assert!(validate_tag(bad).is_err(), "tag {bad:?} accepted");
        }
        assert!(validate_id(&"a".repeat(201)).is_err());
        for good in [
            "spleen_3",
            "case.001",
            "1.2.840.113",
            "a b",
            "ü",
            &"a".repeat(200),
        ] {
            validate_id(good).unwrap();
        }
    }

    #[test]
    fn empty_tag_is_final() {
        assert_eq!(normalize_tag("").unwrap(), "final");
        assert_eq!(normalize_tag("original").unwrap(), "original");
        assert!(normalize_tag("../x").is_err());
    }

    #[test]
    fn upload_names() {
        let cases = [
            ("case.001.nii.gz", "case", ".nii.gz"),
            ("1.2.840.113.nii.gz", "1", ".nii.gz"),
            ("/tmp/abc/spleen_3.nii.gz", "spleen_3", ".nii.gz"),
            ("C:\\Users\\me\\scan.nrrd", "scan", ".nrrd"),
            ("x.seg.nrrd", "x", ".nrrd"),
            ("img.nii", "img", ".nii"),
            ("slice.dcm", "slice", ".dcm"),
            ("archive.tar.gz", "archive", ".tar.gz"),
            ("plain", "plain", ""),
        ];
        for (name, id, ext) in cases {
            assert_eq!(id_from_filename(name), (id.into(), ext.into()), "{name}");
        }
    }

    #[test]
    fn scan_names() {
        let exts = DEFAULT_EXTENSIONS;
        assert_eq!(
            match_extension("1.2.840.nii.gz", &exts),
            Some(("1.2.840", ".nii.gz"))
        );
        assert_eq!(
            match_extension("x.seg.nrrd", &exts),
            Some(("x.seg", ".nrrd"))
        );
        assert_eq!(match_extension("a.NII.GZ", &exts), None);
        assert_eq!(match_extension(".nii", &exts), None);
        assert_eq!(match_extension("datastore_v2.json", &exts), None);
    }

    #[test]
    fn extensions_and_sessions() {
        validate_ext("").unwrap();
        validate_ext(".nii.gz").unwrap();
        for bad in [".", "nii", "./x", ".a/b", ".a..b"] {
            assert!(validate_ext(bad).is_err(), "{bad:?}");
        }
        validate_session_id(&uuid::Uuid::new_v4().to_string()).unwrap();
        assert!(validate_session_id("../etc").is_err());
        assert!(validate_session_id(&uuid::Uuid::new_v4().simple().to_string()).is_err());
    }
}
