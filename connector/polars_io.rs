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

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// The parquet crate's reading of a file: column names, rows, and the
    /// sum of a Float64 column.
    fn read(path: &Path, column: &str) -> (Vec<String>, usize, f64) {
        let f = std::fs::File::open(path).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
        let names = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
        let (mut rows, mut sum) = (0, 0.0);
        for b in builder.build().unwrap() {
            let b = b.unwrap();
            rows += b.num_rows();
            if let Some(c) = b.column_by_name(column) {
                let c = c.as_any().downcast_ref::<arrow_array::Float64Array>().unwrap();
                sum += c.iter().flatten().filter(|v| v.is_finite()).sum::<f64>();
            }
        }
        (names, rows, sum)
    }

    #[test]
    fn an_export_reads_back_as_lazy_frames() {
        let out = tempfile::tempdir().unwrap();
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/wandb");
        let summary = crate::export(&crate::ExportOptions::new(source, out.path())).unwrap();
        assert!(summary.runs > 0 && summary.failures.is_empty(), "{summary:?}");

        let runs = scan_runs(out.path()).unwrap().collect().unwrap();
        let (names, rows, _) = read(&out.path().join("runs.parquet"), "runtime_s");
        assert_eq!(runs.height(), rows);
        assert_eq!(runs.height(), summary.runs);
        let got: Vec<String> = runs.get_column_names().iter().map(|n| n.to_string()).collect();
        assert_eq!(got, names);

        let history = scan_history(out.path())
            .unwrap()
            .filter(col("value").is_finite())
            .select([len().alias("n"), col("value").sum()])
            .collect()
            .unwrap();
        let (mut want_rows, mut want_sum) = (0, 0.0);
        for e in std::fs::read_dir(out.path().join("history")).unwrap() {
            let (_, rows, sum) = read(&e.unwrap().path(), "value");
            want_rows += rows;
            want_sum += sum;
        }
        assert_eq!(want_rows as u64, summary.rows["history"]);
        let total = scan_history(out.path()).unwrap().select([len()]).collect().unwrap();
        assert_eq!(total.column("len").unwrap().u32().unwrap().get(0), Some(want_rows as u32));
        let sum = history.column("value").unwrap().f64().unwrap().get(0).unwrap();
        assert!((sum - want_sum).abs() <= 1e-9 * want_sum.abs().max(1.0), "{sum} vs {want_sum}");
        assert!(history.column("n").unwrap().u32().unwrap().get(0).unwrap() > 0);
    }
}
