//! runport: export experiment-tracking runs into Parquet datasets.
//!
//! The cost of an export follows the selected columns: a [`selection::Selection`]
//! becomes a [`plan::FetchPlan`], sources read only what the plan needs, and
//! the [`output`] writers stream runs into `runs.parquet`,
//! `history/part-NNNNN.parquet` and (with `system.*` selected)
//! `system/part-NNNNN.parquet`. Start with [`export::export`].

pub mod ablation;
pub mod columns;
pub mod delta;
pub mod error;
pub mod export;
pub mod http;
pub mod objstore;
pub mod output;
pub mod pipeline;
pub mod plan;
#[cfg(feature = "polars")]
pub mod polars_io;
pub mod redact;
pub mod remote;
pub mod run;
pub mod selection;
pub mod sources;
pub mod sync;
pub mod value;

pub use error::{Error, Result};
pub use export::{ExportOptions, ExportSummary, export};
pub use plan::{FetchPlan, HistoryLayout};
pub use selection::Selection;
