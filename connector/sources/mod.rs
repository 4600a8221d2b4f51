//! Sources: where runs come from. One module per source.

pub mod mlflow;
pub mod wandb_api;
pub mod wandb_files;

use std::path::PathBuf;

use crate::error::{Error, Result};

/// A parsed SOURCE argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A `wandb/` folder, a run folder or a `.wandb` file.
    WandbFiles(PathBuf),
    /// `wandb://ENTITY/PROJECT`.
    WandbApi { entity: String, project: String },
    /// An MLflow tracking server: its `http(s)://` base URL.
    MlflowRest(String),
    /// `sqlite:///.../mlflow.db`, read directly.
    MlflowSqlite(PathBuf),
    /// A `mlruns/` FileStore folder, read directly.
    MlflowFiles(PathBuf),
}

impl SourceSpec {
    /// Reads the SOURCE argument. URL schemes other sources will take are
    /// recognised and refused with a clear message for now.
    pub fn parse(text: &str) -> Result<SourceSpec> {
        if text.is_empty() {
            return Err(Error::Usage("SOURCE is empty".into()));
        }
        if text.starts_with("wandb://") {
            let (entity, project) = wandb_api::WandbApiOptions::parse_uri(text)?;
            return Ok(SourceSpec::WandbApi { entity, project });
        }
        if let Some(url) = text.strip_prefix("mlflow+") {
            if url.starts_with("http://") || url.starts_with("https://") {
                return Ok(SourceSpec::MlflowRest(url.to_string()));
            }
            return Err(Error::Usage(format!(
                "expected mlflow+http://HOST:PORT or mlflow+https://..., got {}",
                crate::redact::redact(text)
            )));
        }
        if text == "mlflow" {
            let uri = std::env::var("MLFLOW_TRACKING_URI")
                .map_err(|_| Error::Usage("SOURCE `mlflow` reads MLFLOW_TRACKING_URI, which is not set".to_string()))?;
            if uri.starts_with("http://") || uri.starts_with("https://") {
                return Ok(SourceSpec::MlflowRest(uri));
            }
            return SourceSpec::parse(&uri);
        }
        if text.starts_with("sqlite:") {
            return mlflow::sqlite::path_of(text).map(SourceSpec::MlflowSqlite).ok_or_else(|| {
                Error::Usage(format!(
                    "expected sqlite:///relative/mlflow.db or sqlite:////absolute/mlflow.db, got {text}"
                ))
            });
        }
        if let Some(rest) = text.strip_prefix("file:") {
            return Ok(SourceSpec::MlflowFiles(PathBuf::from(rest.trim_start_matches("//"))));
        }
        let path = PathBuf::from(text);
        if mlflow::filestore::is_filestore(&path) {
            return Ok(SourceSpec::MlflowFiles(path));
        }
        Ok(SourceSpec::WandbFiles(path))
    }
}
