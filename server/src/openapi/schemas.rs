//! The schema types of the OpenAPI description: the JSON answers the handlers build (with
//! `serde_json::json!`) and the form bodies they read, written down as types so that `utoipa`
//! can describe them. Objects that carry free-form info (image and label info, task requests)
//! allow extra properties, as the handlers pass those through.

#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Map, Value};
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// Every refused request: `{"detail": "<why>"}` (401 also carries `WWW-Authenticate: Bearer`,
/// 405 an `Allow` header).
#[derive(ToSchema)]
pub struct Detail {
    /// What went wrong, for a person to read.
    pub detail: String,
}

/// The JSON value `null` (what MONAI Label answers for info updates).
pub struct Null;

impl PartialSchema for Null {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::Null).into()
    }
}

impl ToSchema for Null {}

/// `{}`: done, nothing to report.
pub struct Empty;

impl PartialSchema for Empty {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
            .into()
    }
}

impl ToSchema for Empty {}

/// A free-form JSON object.
#[derive(ToSchema)]
#[schema(value_type = Object)]
pub struct AnyObject(Map<String, Value>);

/// `GET /info/`: the app, its models, trainers, strategies, scoring methods and a datastore
/// summary (the fields MONAI Label clients read; more may follow).
#[derive(ToSchema)]
pub struct Info {
    /// App name.
    pub name: String,
    /// App description.
    pub description: String,
    /// Server version.
    pub version: String,
    /// Every label name of the models.
    pub labels: Vec<String>,
    /// Models by name: `type`, `labels` (name → value), `dimension`, `description`, `config`.
    #[schema(value_type = Object)]
    pub models: Map<String, Value>,
    /// Trainers by name: `description`, `config`.
    #[schema(value_type = Object)]
    pub trainers: Map<String, Value>,
    /// Active-learning strategies by name.
    #[schema(value_type = Object)]
    pub strategies: Map<String, Value>,
    /// Scoring methods by name.
    #[schema(value_type = Object)]
    pub scoring: Map<String, Value>,
    /// Last training statistics per trainer.
    #[schema(value_type = Object)]
    pub train_stats: Map<String, Value>,
    /// The datastore summary of `GET /datastore/?output=stats`.
    pub datastore: DatastoreStats,
}

/// `GET /datastore/?output=stats`.
#[derive(ToSchema)]
pub struct DatastoreStats {
    /// Number of images.
    pub total: u64,
    /// Images with a `final` label.
    pub completed: u64,
    /// Number of labels per tag.
    pub label_tags: HashMap<String, u64>,
}

/// `GET /datastore/?output=all`: MONAI Label's datastore model.
#[derive(ToSchema)]
pub struct DatastoreAll {
    /// Dataset name.
    pub name: String,
    /// Dataset description.
    pub description: String,
    /// Images folder, relative to the studies folder.
    pub images_dir: String,
    /// Labels folder, relative to the images folder.
    pub labels_dir: String,
    /// Per image id: `{"image": {"ext", "info"}, "labels": {tag: {"ext", "info"}}}`.
    #[schema(value_type = Object)]
    pub objects: Map<String, Value>,
}

/// One training pair of `GET /datastore/?output=train`.
#[derive(ToSchema)]
pub struct TrainPair {
    /// Image file path.
    pub image: String,
    /// `final` label file path.
    pub label: String,
}

/// `GET /datastore/`: one of three shapes, chosen by `output`.
pub struct DatastoreListing;

impl PartialSchema for DatastoreListing {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "DatastoreStats",
            )))
            .item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "DatastoreAll",
            )))
            .item(Vec::<TrainPair>::schema())
            .into()
    }
}

impl ToSchema for DatastoreListing {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("DatastoreListing")
    }
}

/// An image was stored under this id.
#[derive(ToSchema)]
pub struct ImageSaved {
    /// The datastore id.
    pub image: String,
}

/// A label was stored.
#[derive(ToSchema)]
pub struct LabelSaved {
    /// The image id.
    pub image: String,
    /// The label id (the image id).
    pub label: String,
    /// With a DICOMweb datastore and tag `final`: the DICOM SEG's way to the PACS.
    #[schema(value_type = Option<Object>)]
    pub pacs: Option<Map<String, Value>>,
}

/// A model weights file: checksum and modification time.
#[derive(ToSchema)]
pub struct ModelChecksum {
    /// `SHA256:<hex>`.
    #[schema(pattern = "^SHA256:[0-9a-f]{64}$")]
    pub checksum: String,
    /// Modification time, seconds since the epoch.
    pub modified_time: u64,
}

/// `PUT /model/{model}`: the new weights file and the model version it became.
#[derive(ToSchema)]
pub struct ModelUpload {
    /// `SHA256:<hex>`.
    #[schema(pattern = "^SHA256:[0-9a-f]{64}$")]
    pub checksum: String,
    /// Modification time, seconds since the epoch.
    pub modified_time: u64,
    /// The version (new, or an earlier one with the same content), now active.
    pub version: crate::routes::model::ModelVersionView,
}

/// `GET /model/versions/{model}`.
#[derive(ToSchema)]
pub struct ModelVersions {
    /// The model.
    pub model: String,
    /// The resolution listed.
    pub highres: bool,
    /// The active version (`null`: no weights file).
    pub active: Option<i64>,
    /// `model_versions_keep`: files kept besides the best and the active one (0: all).
    pub keep: u64,
    /// Newest first.
    pub versions: Vec<crate::routes::model::ModelVersionView>,
}

/// A session: where its image is and when it expires.
#[derive(ToSchema)]
pub struct SessionInfo {
    /// Session id.
    pub name: String,
    /// Its image (file or folder) on the server.
    pub image: String,
}

/// `PUT /session/`.
#[derive(ToSchema)]
pub struct SessionCreated {
    /// The new session's id.
    pub session_id: String,
    /// Its info.
    pub session_info: SessionInfo,
}

/// A task object (training, batch inference, scoring or a periodic job): MONAI Label's fields
/// (`id`, `status`, `request`, `start_ts`, `details`, `result`) plus ferrolabel's (`kind`,
/// `state`, `position`, `attempts`, `history`, `estimate`, ...).
#[derive(ToSchema)]
pub struct Task {
    /// Task id.
    pub id: String,
    /// `SUBMITTED`, `RUNNING`, `DONE`, `ERROR` or `STOPPED`.
    pub status: String,
    /// `train`, `batch_infer`, `scoring` or `periodic`.
    pub kind: String,
    /// `queued`, `running`, `done`, `error` or `stopped`.
    pub state: String,
}

/// A stopped task, or `null` when none ran.
pub struct TaskOrNull;

impl PartialSchema for TaskOrNull {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Task")))
            .item(Null::schema())
            .into()
    }
}

impl ToSchema for TaskOrNull {}

/// One task, or every task of the kind (`all=true`).
pub struct TaskOrList;

impl PartialSchema for TaskOrList {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Task")))
            .item(Vec::<Task>::schema())
            .into()
    }
}

impl ToSchema for TaskOrList {}

/// `POST /train/` and `POST /scoring/` (deprecated forms): per trainer or method,
/// `{"result": ..., "detail": null}`.
#[derive(ToSchema)]
#[schema(value_type = Object)]
pub struct PerName(Map<String, Value>);

/// `GET /auth/`.
#[derive(ToSchema)]
pub struct AuthInfo {
    /// Always `true` (the route exists only with auth on).
    pub enabled: bool,
    /// The client id clients send.
    pub client_id: String,
    /// The realm.
    pub realm: String,
}

/// `POST /auth/token` form.
#[derive(ToSchema)]
pub struct LoginForm {
    /// User name.
    pub username: String,
    /// Password.
    #[schema(format = Password)]
    pub password: String,
    /// Optional; `password` when given.
    pub grant_type: Option<String>,
}

/// `POST /auth/token`.
#[derive(ToSchema)]
pub struct Token {
    /// The bearer token.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
}

/// `GET /auth/token/valid`: who the token belongs to.
#[derive(ToSchema)]
pub struct WhoAmI {
    /// User name.
    pub username: String,
    /// E-mail.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Roles.
    pub roles: Vec<String>,
}

/// The multipart (or urlencoded) body of `POST /infer/{model}`.
#[derive(ToSchema)]
pub struct InferForm {
    /// A JSON object: the model's params (`image` may name the input; scribbles models need
    /// more, see docs/scribbles.md).
    pub params: Option<String>,
    /// An input image to use instead of a datastore image (never stored).
    #[schema(value_type = Option<String>, format = Binary)]
    pub file: Option<Vec<u8>>,
    /// Scribbles models only: the scribbles volume.
    #[schema(value_type = Option<String>, format = Binary)]
    pub label: Option<Vec<u8>>,
}

/// The multipart body of an image upload.
#[derive(ToSchema)]
pub struct ImageForm {
    /// The image: NIfTI-1 (`.nii`, `.nii.gz`), NRRD, a zip of a DICOM series or one DICOM file
    /// (several `file`/`files` parts for a series).
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
    /// More DICOM files of the same series.
    #[schema(value_type = Option<Vec<String>>, format = Binary)]
    pub files: Option<Vec<Vec<u8>>>,
    /// A JSON object: the image info (`client_id`, `series` to pick one DICOM series, ...).
    pub params: Option<String>,
}

/// The multipart body of `PUT /datastore/label`.
#[derive(ToSchema)]
pub struct LabelForm {
    /// The label map on the image's grid (NIfTI-1 or NRRD).
    #[schema(value_type = String, format = Binary)]
    pub label: Vec<u8>,
    /// A JSON object: the label info (`client_id` names the author without auth).
    pub params: Option<String>,
}

/// The form body of `PUT /datastore/image/info` and `PUT /datastore/label/info`.
#[derive(ToSchema)]
pub struct InfoForm {
    /// A JSON object merged (shallowly) over the stored info.
    pub info: String,
}

/// The form body of `PUT /datastore/updatelabelinfo`.
#[derive(ToSchema)]
pub struct ParamsForm {
    /// A JSON object merged (shallowly) over the stored label info.
    pub params: String,
}

/// The multipart body of `PUT /session/`.
#[derive(ToSchema)]
pub struct SessionForm {
    /// One image file, a DICOM series (a zip or many DICOM files), or several files (a folder).
    #[schema(value_type = Vec<String>, format = Binary)]
    pub files: Vec<Vec<u8>>,
    /// A DICOM series instance UID, to pick one series of several.
    pub series: Option<String>,
}

/// The multipart body of `PUT /model/{model}`.
#[derive(ToSchema)]
pub struct WeightsForm {
    /// A TorchScript/state-dict `.pt` or a `.safetensors` file (by its name) for the network.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// `output` of `GET /datastore/`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum DatastoreOutput {
    /// Counts (the default).
    Stats,
    /// MONAI Label's datastore model.
    All,
    /// Image/label path pairs of the `final` labels.
    Train,
}

/// `output` of `POST /infer/{model}`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum InferOutput {
    /// The label file.
    Image,
    /// The result params.
    Json,
    /// Both, as `multipart/form-data` (the default).
    All,
    /// A DICOM SEG on the input's DICOM source.
    DicomSeg,
}

/// `seg_type` of a DICOM SEG answer.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum SegType {
    /// One binary segment per structure.
    Binary,
    /// One labelmap segmentation.
    Labelmap,
}

/// `format` of `GET /datastore/label`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum LabelFormat {
    /// The stored file (the default).
    Label,
    /// A DICOM SEG on the image's DICOM source.
    DicomSeg,
}

/// `images` of `POST /batch/infer/{model}`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum BatchImages {
    /// Every image (the default).
    All,
    /// Images with a `final` label.
    Labeled,
    /// Images without one.
    Unlabeled,
}

/// `kind` of `GET /tasks/`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum TaskKind {
    /// Training.
    Train,
    /// Batch inference.
    BatchInfer,
    /// Scoring.
    Scoring,
    /// Periodic jobs.
    Periodic,
}

/// `state` of `GET /tasks/`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting.
    Queued,
    /// Running.
    Running,
    /// Ended well.
    Done,
    /// Failed.
    Error,
    /// Stopped.
    Stopped,
}
