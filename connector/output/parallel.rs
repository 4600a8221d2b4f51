//! A Parquet file whose columns are encoded in parallel: each batch's columns
//! go to their column writers on rayon's pool, one column per task, and row
//! groups are closed in order on the calling thread. parquet's `ArrowWriter`
//! encodes one column after the other, and the history tables' encoding
//! (dictionaries, statistics, zstd) is the largest single cost of an export.
//!
//! Row groups are bounded as `ArrowWriter` bounds them: at most
//! `max_row_group_row_count` rows (batches are split), and closed once the
//! estimated encoded size reaches `max_row_group_bytes`.
//!
//! A `Utf8` column of the file may arrive as a run-end encoded array; it is
//! then written by [`RunLengthChunk`] (see [`super::runlength`]). Flat
//! `Int64`, `Float64` and timestamp columns are written by
//! [`PrimitiveChunk`] (see [`super::primitive`]).

use std::io::Write;

use arrow_array::ArrayRef;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use rayon::prelude::*;

use super::primitive::{PrimitiveChunk, is_direct};
use super::runlength::{RunLengthChunk, expand_to_strings, is_run_length_of, writes_codec};
use crate::ablation::{self, Component};

pub struct ParallelWriter<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    columns: Option<Vec<ArrowColumnWriter>>,
    /// Per leaf column of the row group: set when it bypasses the Arrow writer.
    direct: Vec<Option<Direct>>,
    buffered_rows: usize,
    max_rows: usize,
    max_bytes: usize,
    /// Per leaf column: whether [`RunLengthChunk`] may write it (its codec is
    /// one it writes); else run-length arrays are expanded for parquet's writer.
    run_length_leaves: Vec<bool>,
    /// The benchmark switch ([`crate::ablation`]): parquet's Arrow writer instead.
    without_page_encoders: bool,
}

impl<W: Write + Send> ParallelWriter<W> {
    /// The file's metadata (the Arrow schema included) as `ArrowWriter` writes it.
    pub fn try_new(out: W, schema: SchemaRef, props: WriterProperties) -> Result<Self> {
        let max_rows = props.max_row_group_row_count().unwrap_or(usize::MAX).max(1);
        let max_bytes = props.max_row_group_bytes().unwrap_or(usize::MAX).max(1);
        let (writer, factory) = ArrowWriter::try_new(out, schema.clone(), Some(props))?.into_serialized_writer()?;
        let without_run_length = ablation::disabled(Component::RunLength);
        let run_length_leaves = writer
            .schema_descr()
            .columns()
            .iter()
            .map(|c| !without_run_length && writes_codec(writer.properties().compression(c.path())))
            .collect();
        let wide = schema.fields().len() > super::WIDE_TABLE_COLUMNS;
        Ok(ParallelWriter {
            writer,
            factory,
            schema,
            columns: None,
            direct: Vec::new(),
            buffered_rows: 0,
            max_rows,
            max_bytes,
            run_length_leaves,
            // The page encoders hold buffers per column until the row group
            // closes: for tables of very many columns (a runs table of
            // 100,000 config keys) parquet's writer alone holds less.
            without_page_encoders: ablation::disabled(Component::PageEncoders) || wide,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_columns() != self.schema.fields().len() {
            return Err(ParquetError::General(format!(
                "a batch of {} columns for a file of {}",
                batch.num_columns(),
                self.schema.fields().len()
            )));
        }
        let mut rest = batch.clone();
        while rest.num_rows() > 0 {
            if self.columns.is_none() {
                let index = self.writer.flushed_row_groups().len();
                let columns = self.factory.create_column_writers(index)?;
                self.direct = columns.iter().map(|_| None).collect();
                self.columns = Some(columns);
            }
            let take = rest.num_rows().min(self.max_rows - self.buffered_rows);
            let part = rest.slice(0, take);
            rest = rest.slice(take, rest.num_rows() - take);
            let mut work = Vec::new();
            for (field, array) in self.schema.fields().iter().zip(part.columns()) {
                let leaf = work.len();
                let run_length = is_run_length_of(array.data_type(), field.data_type());
                if run_length && !self.run_length_leaves.get(leaf).copied().unwrap_or(false) {
                    // A codec RunLengthChunk does not write: parquet's writer, from strings.
                    let strings = expand_to_strings(array.as_ref())?;
                    work.extend(compute_leaves(field, &strings)?.into_iter().map(Work::Arrow));
                } else if run_length {
                    let page_rows = self.writer.properties().data_page_row_count_limit();
                    let fresh = self.buffered_rows == 0;
                    match self.direct.get_mut(leaf) {
                        Some(Some(Direct::RunLength(c))) => c.write(array.as_ref())?,
                        Some(slot @ None) if fresh => {
                            let mut c = RunLengthChunk::new(page_rows);
                            c.write(array.as_ref())?;
                            *slot = Some(Direct::RunLength(c));
                        }
                        _ => return Err(mixed(field.name())),
                    }
                    work.push(Work::Done);
                } else if array.data_type() != field.data_type() {
                    return Err(ParquetError::General(format!(
                        "column {} of type {} for a file column of type {}",
                        field.name(),
                        array.data_type(),
                        field.data_type()
                    )));
                } else if !self.without_page_encoders && is_direct(field.data_type()) {
                    let slot = self.direct.get_mut(leaf).ok_or_else(|| leaf_count_error(leaf + 1, 0))?;
                    if slot.is_none() {
                        let descr = self.writer.schema_descr().column(leaf);
                        *slot = Some(Direct::Primitive(Box::new(PrimitiveChunk::new(
                            descr,
                            self.writer.properties().clone(),
                        )?)));
                    }
                    work.push(Work::Direct(array));
                } else {
                    if matches!(self.direct.get(leaf), Some(Some(Direct::RunLength(_)))) {
                        return Err(mixed(field.name()));
                    }
                    work.extend(compute_leaves(field, array)?.into_iter().map(Work::Arrow));
                }
            }
            let columns = self.columns.as_mut().expect("invariant: created above");
            if work.len() != columns.len() {
                return Err(leaf_count_error(work.len(), columns.len()));
            }
            columns.par_iter_mut().zip(self.direct.par_iter_mut()).zip(work.par_iter()).try_for_each(
                |((w, direct), work)| match (work, direct) {
                    (Work::Arrow(leaf), _) => w.write(leaf),
                    (Work::Direct(array), Some(Direct::Primitive(c))) => c.write(array.as_ref()),
                    (Work::Done, _) => Ok(()),
                    (Work::Direct(_), _) => Err(ParquetError::General("a primitive column without its writer".into())),
                },
            )?;
            self.buffered_rows += take;
            if self.buffered_rows >= self.max_rows || self.in_progress_size() >= self.max_bytes {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Closes the row group being written, if any; its columns' chunks are
    /// finished in parallel.
    pub fn flush(&mut self) -> Result<()> {
        let Some(columns) = self.columns.take() else { return Ok(()) };
        let direct = std::mem::take(&mut self.direct);
        if self.buffered_rows == 0 {
            return Ok(());
        }
        self.buffered_rows = 0;
        let descrs = self.writer.schema_descr().columns().to_vec();
        let props = self.writer.properties().clone();
        let chunks: Vec<Chunk> = columns
            .into_par_iter()
            .zip(direct.into_par_iter())
            .zip(descrs.into_par_iter())
            .map(|((w, direct), descr)| match direct {
                Some(Direct::RunLength(c)) => c.close(descr, &props).map(|(b, close)| Chunk::Encoded(b, close)),
                Some(Direct::Primitive(c)) => c.close().map(|(b, close)| Chunk::Encoded(b, close)),
                None => w.close().map(Chunk::Arrow),
            })
            .collect::<Result<_>>()?;
        let mut group = self.writer.next_row_group()?;
        for chunk in chunks {
            match chunk {
                Chunk::Arrow(c) => c.append_to_row_group(&mut group)?,
                Chunk::Encoded(bytes, close) => group.append_column(&bytes, close)?,
            }
        }
        group.close()?;
        Ok(())
    }

    /// Bytes written to the file so far.
    pub fn bytes_written(&self) -> usize {
        self.writer.bytes_written()
    }

    /// The estimated encoded size of the row group being written.
    pub fn in_progress_size(&self) -> usize {
        let arrow: usize = self.columns.iter().flatten().map(|w| w.get_estimated_total_bytes()).sum();
        let direct: usize = self
            .direct
            .iter()
            .flatten()
            .map(|d| match d {
                Direct::RunLength(c) => c.estimated_size(),
                Direct::Primitive(c) => c.estimated_size(),
            })
            .sum();
        arrow + direct
    }

    /// Writes the last row group and the footer; returns the output, flushed.
    pub fn close(mut self) -> Result<W> {
        self.flush()?;
        let mut out = self.writer.into_inner()?;
        out.flush()?;
        Ok(out)
    }
}

/// A leaf column of the row group that bypasses parquet's Arrow writer.
enum Direct {
    RunLength(RunLengthChunk),
    Primitive(Box<PrimitiveChunk>),
}

/// What a batch's leaf column needs written.
enum Work<'a> {
    Arrow(ArrowLeafColumn),
    Direct(&'a ArrayRef),
    /// Written already (run-length columns are cheap enough to do inline).
    Done,
}

/// A closed column chunk of the row group.
enum Chunk {
    Arrow(parquet::arrow::arrow_writer::ArrowColumnChunk),
    Encoded(Bytes, ColumnCloseResult),
}

fn mixed(column: &str) -> ParquetError {
    ParquetError::General(format!("column {column} mixes run-length and plain arrays in one row group"))
}

fn leaf_count_error(leaves: usize, writers: usize) -> ParquetError {
    ParquetError::General(format!("{leaves} leaf columns for {writers} column writers"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use bytes::Bytes;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::metadata::KeyValue;
    use std::sync::Arc;

    fn batch(schema: &SchemaRef, from: i64, n: i64) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values((from..from + n).map(|i| format!("run-{}", i / 700)))),
            Arc::new(Int64Array::from_iter_values(from..from + n)),
            Arc::new(Float64Array::from_iter((from..from + n).map(|i| (i % 3 != 0).then_some(i as f64 / 7.0)))),
        ];
        RecordBatch::try_new(Arc::clone(schema), cols).unwrap()
    }

    #[test]
    fn every_codec_is_written_as_asked() {
        use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
        let schema = Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("step", DataType::Int64, false),
            Field::new("value", DataType::Float64, true),
        ]));
        let input = batch(&schema, 0, 5000);
        for codec in [
            Compression::UNCOMPRESSED,
            Compression::ZSTD(ZstdLevel::try_new(3).unwrap()),
            Compression::SNAPPY,
            Compression::LZ4_RAW,
            Compression::GZIP(GzipLevel::default()),
            Compression::BROTLI(BrotliLevel::default()),
        ] {
            let props = WriterProperties::builder().set_compression(codec).set_dictionary_enabled(false).build();
            let mut out = Vec::new();
            let mut w = ParallelWriter::try_new(&mut out, Arc::clone(&schema), props).unwrap();
            w.write(&input).unwrap();
            w.close().unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(out)).unwrap();
            for c in reader.metadata().row_group(0).columns() {
                // The file does not record a level: compare the codecs alone.
                let kind = std::mem::discriminant;
                assert_eq!(kind(&c.compression()), kind(&codec), "{codec:?}, {}", c.column_path());
            }
            let got: Vec<RecordBatch> = reader.with_batch_size(5000).build().unwrap().map(|b| b.unwrap()).collect();
            assert_eq!(got, std::slice::from_ref(&input), "{codec:?}");
        }
    }

    #[test]
    fn row_groups_are_bounded_and_the_file_reads_back() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("step", DataType::Int64, false),
            Field::new("value", DataType::Float64, true),
        ]));
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(1000))
            .set_key_value_metadata(Some(vec![KeyValue::new("k".to_string(), "v".to_string())]))
            .build();
        let mut out = Vec::new();
        let mut w = ParallelWriter::try_new(&mut out, Arc::clone(&schema), props).unwrap();
        let batches = [batch(&schema, 0, 1700), batch(&schema, 1700, 10), batch(&schema, 1710, 790)];
        for b in &batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();

        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(out)).unwrap();
        let meta = reader.metadata().clone();
        let sizes: Vec<i64> = meta.row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        let kv = meta.file_metadata().key_value_metadata().unwrap();
        assert!(kv.iter().any(|e| e.key == "k") && kv.iter().any(|e| e.key == "ARROW:schema"));
        assert_eq!(reader.schema().fields(), schema.fields());
        let got: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        let rows = |bs: &[RecordBatch]| -> Vec<(String, i64, Option<f64>)> {
            bs.iter()
                .flat_map(|b| {
                    let r = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                    let s = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                    let v = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
                    (0..b.num_rows())
                        .map(|i| (r.value(i).to_string(), s.value(i), v.is_valid(i).then(|| v.value(i))))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        assert_eq!(rows(&got), rows(&batches));
    }
}
