//! Shared code of the fuzz targets: the server's byte-level form, params and JSON code and the
//! datastore's upload naming rule, compiled from their own source files (`#[path]`) so that the
//! targets exercise exactly what the server runs, without linking libtorch or SQLite.

#![allow(dead_code)]

/// `server/src/form.rs`: multipart and urlencoded bodies, params JSON objects.
#[path = "../../server/src/form.rs"]
pub mod form;

/// `server/src/pyjson.rs`: Python `json.dumps` layout for echoed params.
#[path = "../../server/src/pyjson.rs"]
pub mod pyjson;

/// `datastore/src/ids.rs`: ids, tags, upload names and extensions.
#[path = "../../datastore/src/ids.rs"]
pub mod ids;

/// The two variants of the datastore's error enum that `ids.rs` builds.
pub mod error {
    /// A subset of `ferrolabel_datastore::DatastoreError` with the same variant names.
    #[derive(Debug)]
    pub enum DatastoreError {
        /// An id, tag or session id that is unsafe or malformed.
        InvalidId(String),
        /// Any other invalid argument.
        Invalid(String),
    }

    /// `Result` with [`DatastoreError`].
    pub type Result<T> = std::result::Result<T, DatastoreError>;
}

/// The server's upload naming rule (`server/src/multipart.rs::upload_name`), over the real
/// `ids.rs`.
pub fn upload_name(client_name: &str) -> (String, String) {
    let base = ids::basename(client_name).to_string();
    let (_, ext) = ids::id_from_filename(&base);
    let ext = if ids::validate_ext(&ext).is_ok() {
        ext
    } else {
        String::new()
    };
    (base, ext)
}

/// The limits the server applies by default, with the voxel and size limits scaled down so
/// that an input which declares a huge (but within-limit) image cannot make one run allocate
/// gigabytes: everything larger is refused by the same checks the defaults go through.
pub fn fuzz_limits() -> ferrolabel_imaging::Limits {
    ferrolabel_imaging::Limits {
        max_voxels: 1 << 22,
        max_decompressed_bytes: 64 << 20,
        max_extension_bytes: 1 << 20,
        ..ferrolabel_imaging::Limits::default()
    }
}

/// Checks what every successful read must satisfy.
pub fn check_volume(v: &ferrolabel_imaging::Volume) {
    let [x, y, z] = v.dims;
    assert_eq!(v.data.len(), x * y * z, "voxel count differs from dims");
}
