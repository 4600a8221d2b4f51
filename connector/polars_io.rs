//! Reading an export back as polars `LazyFrame`s (cargo feature `polars`).
//!
//! ```no_run
//! let runs = runport::polars_io::scan_runs("out/".as_ref())?.collect()?;
//! # Ok::<(), polars::prelude::PolarsError>(())
//! ```

use std::path::Path;

use polars::prelude::*;

/// `runs.parquet` of an export directory.
pub fn scan_runs(dir: &Path) -> PolarsResult<LazyFrame> {
    LazyFrame::scan_parquet(PlRefPath::try_from_path(&dir.join("runs.parquet"))?, ScanArgsParquet::default())
}

/// Every history part of an export directory, as one frame.
pub fn scan_history(dir: &Path) -> PolarsResult<LazyFrame> {
    LazyFrame::scan_parquet(
        PlRefPath::try_from_path(&dir.join("history").join("*.parquet"))?,
        ScanArgsParquet::default(),
    )
}
