//! Object-store locations for `runport sync` tables: `s3://bucket/prefix`,
//! `gs://bucket/prefix`, `az://container/prefix` (and `abfss://`), through
//! the `object_store` crate that delta-rs uses. Credentials, regions and
//! endpoints come from each cloud's standard environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`;
//! `GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_APPLICATION_CREDENTIALS`;
//! `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, ...), never
//! from the command line, and are never printed.
//!
//! Files go up as streaming multipart uploads from local files (memory
//! stays flat whatever their size); an upload that fails is aborted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deltalake::logstore::{LogStore, LogStoreFactory, StorageConfig, default_logstore, logstore_factories};
use futures_util::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart};
use url::Url;

use crate::error::{Error, Result};

/// Where a sync's tables live.
pub enum Location {
    Local(PathBuf),
    Remote(Remote),
}

/// A folder of an object store.
#[derive(Clone)]
pub struct Remote {
    /// The folder's URL, ending with `/`.
    pub url: Url,
    /// The bucket's (container's) store: paths are from its root.
    pub store: Arc<dyn ObjectStore>,
    /// The folder inside the bucket.
    pub prefix: StorePath,
}

/// Schemes taken as object stores.
const SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "abfs", "abfss", "azure"];

/// Uploads at least this large go in parts of this size.
const PART_BYTES: usize = 8 << 20;

/// Every attempt of one object-store request ends within this (an
/// unreachable endpoint fails in that time).
const STORE_DEADLINE: Duration = Duration::from_secs(60);

/// How requests to object stores are retried: runport's retry policy (its
/// retries and backoff, as for the sources' requests), applied by the
/// object_store client, within [`STORE_DEADLINE`].
fn retry() -> RetryConfig {
    let policy = crate::http::RetryPolicy::default();
    RetryConfig {
        max_retries: policy.max_retries,
        retry_timeout: policy.deadline.min(STORE_DEADLINE),
        backoff: object_store::BackoffConfig {
            init_backoff: policy.min_delay,
            max_backoff: policy.max_delay,
            base: 2.0,
        },
    }
}

/// `text` as a location: a URL of an object store (or `file://`), else a path.
pub fn location(text: &str) -> Result<Location> {
    let Some((scheme, _)) = text.split_once("://") else { return Ok(Location::Local(PathBuf::from(text))) };
    let url = Url::parse(text).map_err(|e| Error::Usage(format!("{text}: not a URL: {e}")))?;
    if scheme == "file" {
        let path = url.to_file_path().map_err(|()| Error::Usage(format!("{text}: not a local file URL")))?;
        return Ok(Location::Local(path));
    }
    if !SCHEMES.contains(&scheme) {
        return Err(Error::Usage(format!(
            "{text}: unsupported scheme {scheme:?} (a path, file://, s3://, gs://, az:// or abfss://)"
        )));
    }
    let mut url = url;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    let shown = url.to_string();
    let failed = |e: object_store::Error| Error::Storage { location: shown.clone(), reason: e.to_string() };
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" | "s3a" => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(text)
                .with_retry(retry())
                .build()
                .map_err(failed)?,
        ),
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(text)
                .with_retry(retry())
                .build()
                .map_err(failed)?,
        ),
        _ => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(text)
                .with_retry(retry())
                .build()
                .map_err(failed)?,
        ),
    };
    let prefix = StorePath::from_url_path(url.path())
        .map_err(|e| Error::Usage(format!("{text}: not a folder of an object store: {e}")))?;
    register_log_stores();
    Ok(Location::Remote(Remote { url, store, prefix }))
}

/// delta-rs commits to these schemes through its default log store: a
/// commit is a conditional put of `_delta_log/N.json` (`If-None-Match: *`
/// on S3), which the stores here support.
fn register_log_stores() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let factories = logstore_factories();
        for scheme in SCHEMES {
            let url = Url::parse(&format!("{scheme}://")).expect("invariant: a scheme makes a URL");
            factories.insert(url, Arc::new(DefaultLogStores));
        }
    });
}

struct DefaultLogStores;

impl LogStoreFactory for DefaultLogStores {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(prefixed_store, root_store, location, options))
    }
}

impl Remote {
    /// The sub-folder `name`.
    pub fn join(&self, name: &str) -> Remote {
        let url = self.url.join(&format!("{name}/")).expect("invariant: a folder name joins a folder URL");
        Remote { url, store: Arc::clone(&self.store), prefix: self.prefix.clone().join(name) }
    }

    /// The object of `rel` (a path relative to the folder).
    pub fn object(&self, rel: &str) -> StorePath {
        rel.split('/').filter(|part| !part.is_empty()).fold(self.prefix.clone(), |p, part| p.join(part))
    }

    fn error(&self, e: object_store::Error) -> Error {
        Error::Storage { location: self.url.to_string(), reason: e.to_string() }
    }

    /// Whether anything lies under `rel/`.
    pub async fn has_folder(&self, rel: &str) -> Result<bool> {
        let mut list = self.store.list(Some(&self.object(rel)));
        match list.next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(self.error(e)),
        }
    }

    /// Checks that the folder can be listed (the bucket exists, the
    /// credentials are taken).
    pub async fn check(&self) -> Result<()> {
        self.store.list_with_delimiter(Some(&self.prefix)).await.map(|_| ()).map_err(|e| self.error(e))
    }

    /// Uploads the local file `local` as `rel`: in parts when large, the
    /// upload aborted when a part fails.
    pub async fn upload(&self, local: &Path, rel: &str) -> Result<()> {
        use tokio::io::AsyncReadExt;
        let path = self.object(rel);
        let mut file = tokio::fs::File::open(local).await.map_err(|e| Error::write(local.display(), e))?;
        let len = file.metadata().await.map_err(|e| Error::write(local.display(), e))?.len();
        if len < PART_BYTES as u64 {
            let mut bytes = Vec::with_capacity(len as usize);
            file.read_to_end(&mut bytes).await.map_err(|e| Error::write(local.display(), e))?;
            self.store.put(&path, bytes.into()).await.map_err(|e| self.error(e))?;
            return Ok(());
        }
        let upload = self.store.put_multipart(&path).await.map_err(|e| self.error(e))?;
        let mut write = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; 1 << 20];
        let sent: std::result::Result<(), Error> = async {
            loop {
                let n = file.read(&mut buf).await.map_err(|e| Error::write(local.display(), e))?;
                if n == 0 {
                    return Ok(());
                }
                // At most two parts in flight: memory stays flat.
                write.wait_for_capacity(2).await.map_err(|e| self.error(e))?;
                write.write(&buf[..n]);
            }
        }
        .await;
        match sent {
            Ok(()) => write.finish().await.map(|_| ()).map_err(|e| self.error(e)),
            Err(e) => {
                let _ = write.abort().await;
                Err(e)
            }
        }
    }

    /// Downloads `rel` into the local file `local`, streamed.
    pub async fn download(&self, rel: &str, local: &Path) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let got = self.store.get(&self.object(rel)).await.map_err(|e| self.error(e))?;
        if let Some(dir) = local.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| Error::write(dir.display(), e))?;
        }
        let mut file = tokio::fs::File::create(local).await.map_err(|e| Error::write(local.display(), e))?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.error(e))?;
            file.write_all(&chunk).await.map_err(|e| Error::write(local.display(), e))?;
        }
        file.flush().await.map_err(|e| Error::write(local.display(), e))
    }

    /// The objects directly in the folder (not below), with their last
    /// modification times, as relative names.
    pub async fn list_files(&self) -> Result<Vec<(String, std::time::SystemTime)>> {
        let listed = self.store.list_with_delimiter(Some(&self.prefix)).await.map_err(|e| self.error(e))?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|o| {
                let name = o.location.filename()?.to_string();
                Some((name, std::time::SystemTime::from(o.last_modified)))
            })
            .collect())
    }

    pub async fn delete(&self, rel: &str) -> Result<()> {
        self.store.delete(&self.object(rel)).await.map_err(|e| self.error(e))
    }
}
