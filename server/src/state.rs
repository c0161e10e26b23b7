//! [`AppState`]: what every handler shares (the app, the datastore, the session store, settings).

use std::sync::Arc;

use ferrolabel_apps::jobs::Scheduler;
use ferrolabel_apps::WholeBodyApp;
use ferrolabel_datastore::{Datastore, Sessions};

use crate::config::Settings;
use crate::error::ApiError;
use crate::multipart::UploadLimits;

/// Shared server state, handed to handlers as `web::Data<AppState>`.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The served app (models, strategies, engine).
    pub app: Arc<WholeBodyApp>,
    /// The job scheduler (batch inference, scoring, training, periodic sweeps).
    pub jobs: Scheduler,
    /// The studies datastore.
    pub datastore: Datastore,
    /// The session store; `None` when sessions are disabled.
    pub sessions: Option<Sessions>,
    /// Server settings.
    pub settings: Arc<Settings>,
    /// The PACS, when `--studies` is a DICOMweb URL (see [`crate::pacs`]).
    pub pacs: Option<Arc<crate::pacs::Pacs>>,
}

impl AppState {
    /// The limits of every uploaded body (`--max-upload-mb`; temp files in the settings'
    /// `tmp_dir`): one place for the datastore, session, infer and model uploads.
    pub fn upload_limits(&self) -> UploadLimits<'_> {
        UploadLimits {
            tmp_dir: &self.settings.tmp_dir,
            max_bytes: self.settings.max_upload_bytes,
        }
    }

    /// The session store, or the protocol's 406 when sessions are disabled.
    pub fn sessions(&self) -> Result<&Sessions, ApiError> {
        self.sessions.as_ref().ok_or_else(|| {
            ApiError::new(
                actix_web::http::StatusCode::NOT_ACCEPTABLE,
                "Session Feature is Not Enabled",
            )
        })
    }
}
