//! The output dataset: a directory of Parquet files and `_manifest.json`.
//!
//! An export is written into a staging folder beside the dataset folder and
//! made visible in one atomic step by [`DatasetDir::commit`] (see
//! [`dataset`]). See `schemas/output/README.md`.

pub mod dataset;
pub mod history;
pub mod pages;
pub mod parallel;
pub mod primitive;
pub mod runlength;
pub mod runs;
pub mod spill;
pub mod spool;
pub mod system;

use std::sync::Arc;

use self::parallel::ParallelWriter;
use self::spool::Spool;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::Serialize;

pub use self::dataset::{DatasetDir, FileEntry, MANIFEST, TempFile};
use crate::error::{Error, Result};

/// Row groups close at this many encoded bytes (or rows, below).
pub const ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;
pub const ROW_GROUP_ROWS: usize = 1024 * 1024;
/// A history part closes after this many bytes written.
pub const PART_BYTES: usize = 256 * 1024 * 1024;
/// Tables with more columns than this are compressed with Snappy, not zstd:
/// parquet's zstd codec holds a compression and a decompression context per
/// column writer, all alive until the row group closes (tens of KiB each,
/// gigabytes for a runs table with 100,000 config keys); and their row groups
/// are written a block of columns at a time ([`parallel::ParallelWriter`]).
pub const WIDE_TABLE_COLUMNS: usize = 512;

/// Encodings of the history's row columns: steps and timestamps ascend
/// (delta-encoded to a few bits a row), floats are split by byte, which
/// zstd compresses better than plain doubles.
pub const HISTORY_ROW_ENCODINGS: [(&str, Encoding); 3] = [
    ("step", Encoding::DELTA_BINARY_PACKED),
    ("timestamp", Encoding::DELTA_BINARY_PACKED),
    ("runtime_s", Encoding::BYTE_STREAM_SPLIT),
];

/// Where the data came from, written into every file's key-value metadata.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub source: String,
    pub source_kind: String,
    pub selection: String,
}

/// Writer settings shared by every table: zstd, page statistics, byte-bounded
/// row groups, dictionaries only for the named columns, the given encodings
/// for others, provenance metadata.
pub fn writer_properties(
    prov: &Provenance,
    table: &str,
    dictionary_columns: &[&str],
    encodings: &[(&str, Encoding)],
) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("invariant: zstd level 1 is valid")))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_dictionary_enabled(false)
        .set_key_value_metadata(Some(vec![
            KeyValue::new("runport.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            KeyValue::new("runport.source".to_string(), prov.source.clone()),
            KeyValue::new("runport.source_kind".to_string(), prov.source_kind.clone()),
            KeyValue::new("runport.selection".to_string(), prov.selection.clone()),
            KeyValue::new("runport.table".to_string(), table.to_string()),
        ]));
    for c in dictionary_columns {
        b = b.set_column_dictionary_enabled(ColumnPath::from(*c), true);
    }
    for (c, e) in encodings {
        b = b.set_column_encoding(ColumnPath::from(*c), *e);
    }
    b.build()
}

/// Settings of the history table: `run_id` and `key` dictionary-encoded,
/// [`HISTORY_ROW_ENCODINGS`], and in the long layout the float `value`
/// split by byte.
pub fn history_writer_properties(prov: &Provenance, long_layout: bool) -> WriterProperties {
    let mut encodings = HISTORY_ROW_ENCODINGS.to_vec();
    if long_layout {
        encodings.push(("value", Encoding::BYTE_STREAM_SPLIT));
    }
    writer_properties(prov, "history", &["run_id", "key"], &encodings)
}

/// Writes one table as one or more Parquet parts (`part-NNNNN.parquet` when
/// `parted`), starting a new part after [`PART_BYTES`].
pub struct TableWriter {
    schema: SchemaRef,
    props: WriterProperties,
    /// `runs.parquet`, or `history/part-` for parted tables.
    name: String,
    parted: bool,
    current: Option<(ParallelWriter<Spool>, TempFile)>,
    done: Vec<TempFile>,
    pub rows: u64,
}

impl TableWriter {
    pub fn new(schema: SchemaRef, props: WriterProperties, name: &str, parted: bool) -> TableWriter {
        let props = if schema.fields().len() > WIDE_TABLE_COLUMNS {
            props.into_builder().set_compression(Compression::SNAPPY).build()
        } else {
            props
        };
        TableWriter { schema, props, name: name.to_string(), parted, current: None, done: Vec::new(), rows: 0 }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn write(&mut self, dataset: &DatasetDir, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.current.is_none() {
            let rel =
                if self.parted { format!("{}{:05}.parquet", self.name, self.done.len()) } else { self.name.clone() };
            let (file, tmp) = dataset.create(&rel)?;
            let spool = Spool::new(file).map_err(|e| Error::write(tmp.tmp.display(), e))?;
            let writer = ParallelWriter::try_new(spool, Arc::clone(&self.schema), self.props.clone())
                .map_err(|e| Error::Parquet { path: rel.clone(), source: e })?;
            self.current = Some((writer, tmp));
        }
        let (writer, tmp) = self.current.as_mut().expect("invariant: a part is open");
        writer.write(batch).map_err(|e| Error::Parquet { path: tmp.rel.clone(), source: e })?;
        tmp.rows += batch.num_rows() as u64;
        self.rows += batch.num_rows() as u64;
        if self.parted && writer.bytes_written() + writer.in_progress_size() >= PART_BYTES {
            self.close_part()?;
        }
        Ok(())
    }

    fn close_part(&mut self) -> Result<()> {
        if let Some((writer, mut tmp)) = self.current.take() {
            let spool = writer.close().map_err(|e| Error::Parquet { path: tmp.rel.clone(), source: e })?;
            let file = spool.finish().map_err(|e| Error::write(tmp.tmp.display(), e))?;
            tmp.bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
            self.done.push(tmp);
        }
        Ok(())
    }

    /// Closes the last part; returns the files (empty when nothing was written,
    /// except for an unparted table, which is always written).
    pub fn finish(mut self, dataset: &DatasetDir) -> Result<Vec<TempFile>> {
        if !self.parted && self.current.is_none() && self.done.is_empty() {
            let (file, tmp) = dataset.create(&self.name)?;
            let spool = Spool::new(file).map_err(|e| Error::write(tmp.tmp.display(), e))?;
            let writer = ParallelWriter::try_new(spool, Arc::clone(&self.schema), self.props.clone())
                .map_err(|e| Error::Parquet { path: self.name.clone(), source: e })?;
            self.current = Some((writer, tmp));
        }
        self.close_part()?;
        Ok(std::mem::take(&mut self.done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Float64Array};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// A table of very many columns is written with Snappy and parquet's own
    /// column writers (see [`WIDE_TABLE_COLUMNS`]), and reads back whole.
    #[test]
    fn very_wide_tables_are_written_with_snappy_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = DatasetDir::open(&dir.path().join("out")).unwrap();
        let prov = Provenance { source: "s".into(), source_kind: "k".into(), selection: "*".into() };
        for columns in [WIDE_TABLE_COLUMNS, WIDE_TABLE_COLUMNS + 1] {
            let fields: Vec<Field> =
                (0..columns).map(|i| Field::new(format!("config.k{i}"), DataType::Float64, true)).collect();
            let schema = Arc::new(Schema::new(fields));
            let arrays: Vec<ArrayRef> = (0..columns)
                .map(|i| Arc::new(Float64Array::from(vec![Some(i as f64), None, Some(0.5)])) as ArrayRef)
                .collect();
            let batch = RecordBatch::try_new(Arc::clone(&schema), arrays).unwrap();
            let name = format!("t{columns}.parquet");
            let mut w = TableWriter::new(schema, writer_properties(&prov, "runs", &[], &[]), &name, false);
            w.write(&dataset, &batch).unwrap();
            let files = w.finish(&dataset).unwrap();
            let file = std::fs::File::open(&files[0].tmp).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
            let codec = reader.metadata().row_group(0).column(0).compression();
            let want = if columns > WIDE_TABLE_COLUMNS {
                Compression::SNAPPY
            } else {
                Compression::ZSTD(ZstdLevel::default())
            };
            assert_eq!(std::mem::discriminant(&codec), std::mem::discriminant(&want), "{columns} columns: {codec:?}");
            let back: Vec<RecordBatch> = reader.build().unwrap().collect::<std::result::Result<_, _>>().unwrap();
            assert_eq!(back, vec![batch], "{columns} columns");
        }
    }
}
