//! The error table: every variant of every library error answers its documented status, 500s
//! are terse to the client, and a datastore error answers the same whichever way it came.

use super::*;
use actix_web::body::MessageBody;
use std::path::PathBuf;
use std::sync::Arc;

fn io() -> std::io::Error {
    std::io::Error::other("disk on fire")
}

fn json_error() -> serde_json::Error {
    serde_json::from_str::<serde_json::Value>("{").unwrap_err()
}

/// Every `AppError` variant but `Engine` and `Datastore` (their own tables below).
fn app_errors() -> Vec<(AppError, u16)> {
    vec![
        (AppError::InvalidParams("x".into()), 422),
        (AppError::ModelNotFound("m".into()), 404),
        (AppError::StrategyNotFound("s".into()), 404),
        (AppError::MethodNotFound("m".into()), 404),
        (
            AppError::WeightsMissing {
                model: "m".into(),
                resolution: "highres",
                file: "model.pt",
                path: PathBuf::from("/b/models/model.pt"),
            },
            503,
        ),
        (AppError::BadImage("x".into()), 422),
        (AppError::BadLabel("x".into()), 422),
        (AppError::BadWeights("x".into()), 422),
        (AppError::Busy("full".into()), 429),
        (AppError::EngineUnavailable("stopped".into()), 503),
        (AppError::Cancelled, 499),
        (
            AppError::Bundle {
                path: PathBuf::from("/b"),
                message: "x".into(),
            },
            500,
        ),
        (AppError::Encode("x".into()), 500),
        (AppError::Task("x".into()), 500),
        (AppError::JobNotFound("j".into()), 404),
        (AppError::JobEnded("j".into()), 409),
        (
            AppError::JobFailed {
                detail: "gone".into(),
                cause: None,
            },
            500,
        ),
        (
            AppError::JobFailed {
                detail: "bad".into(),
                cause: Some(Arc::new(AppError::BadImage("bad".into()))),
            },
            422,
        ),
        (AppError::Io(io()), 500),
    ]
}

fn models_errors() -> Vec<(ModelsError, u16)> {
    use ferrolabel_imaging::ImagingError;
    vec![
        (ModelsError::Invalid("x".into()), 422),
        (
            ModelsError::Imaging(ImagingError::Unsupported("x".into())),
            422,
        ),
        (ModelsError::WeightsMissing("x".into()), 500),
        (ModelsError::WeightsMismatch("x".into()), 500),
        (
            ModelsError::Checkpoint(ferrolabel_checkpoint::CheckpointError::LegacyFormat),
            500,
        ),
        (ModelsError::Bundle("x".into()), 500),
        (ModelsError::Torch(tch::TchError::Torch("x".into())), 500),
        (ModelsError::Cancelled, 499),
        (
            ModelsError::Unavailable("the engine is shutting down".into()),
            503,
        ),
        (
            ModelsError::QueueFull {
                waiting: 2,
                limit: 2,
            },
            429,
        ),
        (ModelsError::Panicked("boom".into()), 500),
        (ModelsError::Io(io()), 500),
    ]
}

fn datastore_errors() -> Vec<(DatastoreError, u16)> {
    vec![
        (DatastoreError::NotFound("x".into()), 404),
        (DatastoreError::InvalidId("x".into()), 422),
        (DatastoreError::Invalid("x".into()), 422),
        (DatastoreError::Conflict("x".into()), 409),
        (
            DatastoreError::Io {
                path: PathBuf::from("/x"),
                source: io(),
            },
            500,
        ),
        (DatastoreError::Db(sqlx::Error::RowNotFound), 500),
        (
            DatastoreError::Migrate(sqlx::migrate::MigrateError::VersionMissing(1)),
            500,
        ),
        (DatastoreError::Json(json_error()), 500),
        (
            DatastoreError::MalformedJson {
                path: PathBuf::from("/x"),
                message: "x".into(),
            },
            500,
        ),
        (
            DatastoreError::Remote {
                status: 504,
                detail: "PACS timed out".into(),
            },
            504,
        ),
        (DatastoreError::Task("x".into()), 500),
        (DatastoreError::Storage("s3 down".into()), 502),
    ]
}

fn dicomweb_errors() -> Vec<(DicomWebError, u16)> {
    let url = || "http://pacs/x".to_string();
    vec![
        (DicomWebError::Config("x".into()), 500),
        (
            DicomWebError::Unreachable {
                url: url(),
                detail: "refused".into(),
            },
            502,
        ),
        (DicomWebError::Timeout { url: url() }, 504),
        (
            DicomWebError::Status {
                url: url(),
                status: 404,
                body: String::new(),
            },
            502,
        ),
        (
            DicomWebError::BadAnswer {
                url: url(),
                detail: "x".into(),
            },
            502,
        ),
        (
            DicomWebError::Rejected {
                url: url(),
                failed: 1,
                detail: "x".into(),
            },
            502,
        ),
        (
            DicomWebError::Series {
                series: "1.2".into(),
                source: ferrolabel_dicom::DicomError::NotCt {
                    modality: "MR".into(),
                },
            },
            422,
        ),
        (DicomWebError::Unsupported("frames".into()), 400),
        (
            DicomWebError::Io {
                context: "cache".into(),
                source: io(),
            },
            500,
        ),
    ]
}

/// The JSON body a client reads.
fn body(e: &ApiError) -> serde_json::Value {
    let bytes = e.error_response().into_body().try_into_bytes().unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn every_app_error_has_its_status() {
    for (e, want) in app_errors() {
        let shown = e.to_string();
        assert_eq!(app_status(&e).as_u16(), want, "{shown}");
        assert_eq!(ApiError::from(e).status().as_u16(), want, "{shown}");
    }
}

#[test]
fn every_engine_error_has_its_status() {
    for (e, want) in models_errors() {
        assert_eq!(models_status(&e).as_u16(), want, "{e}");
    }
}

#[test]
fn every_datastore_error_has_its_status_whichever_way_it_comes() {
    for (e, want) in datastore_errors() {
        assert_eq!(datastore_status(&e).as_u16(), want, "{e}");
    }
    // directly from a route, or through an app task: the same status and detail
    let direct = datastore_errors()
        .into_iter()
        .map(|(e, _)| ApiError::from(e));
    let via_app = datastore_errors()
        .into_iter()
        .map(|(e, _)| ApiError::from(AppError::Datastore(e)));
    for ((a, b), (_, want)) in direct.zip(via_app).zip(datastore_errors()) {
        assert_eq!(a.status().as_u16(), want, "{a}");
        assert_eq!((a.status(), body(&a)), (b.status(), body(&b)), "{a}");
    }
    let conflict = ApiError::from(DatastoreError::Conflict("image x exists".into()));
    assert_eq!(conflict.detail(), "image x exists");
    let missing = ApiError::from(DatastoreError::NotFound("image x".into()));
    assert_eq!(missing.detail(), "not found: image x");
}

#[test]
fn every_dicomweb_error_has_its_status() {
    for (e, want) in dicomweb_errors() {
        assert_eq!(dicomweb_status(&e).as_u16(), want, "{e}");
        assert_eq!(ApiError::from(e).status().as_u16(), want);
    }
}

#[test]
fn a_stopped_engine_is_503_and_a_full_queue_429() {
    let stopped = ApiError::from(AppError::from(ModelsError::Unavailable(
        "the engine is shutting down".into(),
    )));
    assert_eq!(stopped.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body(&stopped)["detail"],
        "inference engine unavailable: the engine is shutting down"
    );
    let full = ApiError::from(AppError::from(ModelsError::QueueFull {
        waiting: 2,
        limit: 2,
    }));
    assert_eq!(full.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body(&full)["detail"],
        "server busy: 2 inference jobs are already waiting (limit 2)"
    );
    // a crashed job is the server's fault
    let crashed = ApiError::from(AppError::from(ModelsError::Panicked("boom".into())));
    assert_eq!(crashed.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[test]
fn a_500_tells_the_client_nothing_and_the_log_everything() {
    let errors: Vec<ApiError> = vec![
        AppError::Io(io()).into(),
        DatastoreError::Db(sqlx::Error::RowNotFound).into(),
        DicomWebError::Config("bad url".into()).into(),
        io().into(),
        ApiError::internal("secret path /srv/data"),
        AppError::from(ModelsError::Panicked("boom".into())).into(),
    ];
    for e in errors {
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body(&e),
            serde_json::json!({"detail": INTERNAL_DETAIL}),
            "{e}"
        );
        assert!(
            !e.to_string().ends_with(INTERNAL_DETAIL),
            "the cause is kept: {e}"
        );
    }
    // other statuses keep their detail
    let e = ApiError::from(AppError::ModelNotFound("m".into()));
    assert_eq!(body(&e)["detail"], "model \"m\" not found");
}

#[test]
fn the_logged_chain_names_each_cause_once() {
    let e = DatastoreError::Io {
        path: PathBuf::from("/x"),
        source: io(),
    };
    assert_eq!(error_chain(&e), "I/O error at /x: disk on fire");
    let e = DicomWebError::Series {
        series: "1.2".into(),
        source: ferrolabel_dicom::DicomError::NotCt {
            modality: "MR".into(),
        },
    };
    assert_eq!(
        error_chain(&e),
        "series 1.2: modality MR is not supported (only CT series are accepted)"
    );
}

#[test]
fn every_form_error_has_its_status() {
    let cases = [
        (
            FormError::BadRequest("malformed multipart body".into()),
            400,
            "malformed multipart body",
        ),
        (
            FormError::Unprocessable("params: not an object".into()),
            422,
            "params: not an object",
        ),
        (
            FormError::TooLarge { max_bytes: 3 << 20 },
            413,
            "request body larger than the upload limit of 3 MiB (--max-upload-mb)",
        ),
        (FormError::Io(io()), 500, INTERNAL_DETAIL),
    ];
    for (e, want, detail) in cases {
        assert_eq!(form_status(&e).as_u16(), want, "{e}");
        let a = ApiError::from(e);
        assert_eq!(
            (a.status().as_u16(), body(&a)["detail"].as_str()),
            (want, Some(detail))
        );
    }
}
