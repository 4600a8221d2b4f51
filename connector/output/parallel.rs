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
use std::sync::Arc;

use arrow_schema::{Schema, SchemaRef};
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
    /// Tables of more than [`super::WIDE_TABLE_COLUMNS`] columns: the row
    /// group's batches, held until it is written a block of columns at a time.
    wide: Option<Vec<RecordBatch>>,
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
            wide: wide.then(Vec::new),
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
        if self.wide.is_some() {
            // Held as the file's types: run-length columns become strings.
            let columns = self
                .schema
                .fields()
                .iter()
                .zip(rest.columns())
                .map(|(field, array)| {
                    if is_run_length_of(array.data_type(), field.data_type()) {
                        expand_to_strings(array.as_ref())
                    } else if array.data_type() != field.data_type() {
                        Err(ParquetError::General(format!(
                            "column {} of type {} for a file column of type {}",
                            field.name(),
                            array.data_type(),
                            field.data_type()
                        )))
                    } else {
                        Ok(Arc::clone(array))
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            rest = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
            while rest.num_rows() > 0 {
                let take = rest.num_rows().min(self.max_rows - self.buffered_rows);
                self.wide.as_mut().expect("invariant: wide").push(rest.slice(0, take));
                rest = rest.slice(take, rest.num_rows() - take);
                self.buffered_rows += take;
                if self.buffered_rows >= self.max_rows || self.in_progress_size() >= self.max_bytes {
                    self.flush()?;
                }
            }
            return Ok(());
        }
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
        if self.wide.is_some() {
            return self.flush_wide();
        }
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

    /// Writes the held batches as one row group, [`WIDE_BLOCK_COLUMNS`]
    /// columns at a time: parquet's column writers take a few KiB each until
    /// their chunk is closed, too much for 100,000 columns at once. Each
    /// block's writers come from a writer of the block's columns alone, whose
    /// column chunks are those of the file's columns.
    fn flush_wide(&mut self) -> Result<()> {
        let batches = std::mem::take(self.wide.as_mut().expect("invariant: wide"));
        if batches.is_empty() {
            return Ok(());
        }
        self.buffered_rows = 0;
        let batch = arrow_select::concat::concat_batches(&self.schema, &batches)?;
        drop(batches);
        let props = WriterProperties::clone(self.writer.properties());
        let mut group = self.writer.next_row_group()?;
        let fields = self.schema.fields();
        for start in (0..fields.len()).step_by(WIDE_BLOCK_COLUMNS) {
            let end = (start + WIDE_BLOCK_COLUMNS).min(fields.len());
            let block = Arc::new(Schema::new(fields[start..end].to_vec()));
            let (_, factory) = ArrowWriter::try_new(std::io::sink(), Arc::clone(&block), Some(props.clone()))?
                .into_serialized_writer()?;
            let mut writers = factory.create_column_writers(0)?;
            let mut leaves = Vec::new();
            for (field, array) in block.fields().iter().zip(&batch.columns()[start..end]) {
                leaves.extend(compute_leaves(field, array)?);
            }
            if leaves.len() != writers.len() {
                return Err(leaf_count_error(leaves.len(), writers.len()));
            }
            writers.par_iter_mut().zip(leaves.par_iter()).try_for_each(|(w, leaf)| w.write(leaf))?;
            drop(leaves);
            let chunks = writers.into_par_iter().map(|w| w.close()).collect::<Result<Vec<_>>>()?;
            for chunk in chunks {
                chunk.append_to_row_group(&mut group)?;
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
        if let Some(batches) = &self.wide {
            return batches.iter().map(RecordBatch::get_array_memory_size).sum();
        }
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

/// Columns of a very wide table written at a time ([`ParallelWriter::flush_wide`]).
const WIDE_BLOCK_COLUMNS: usize = 256;

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
    fn very_wide_tables_are_written_a_block_of_columns_at_a_time() {
        use arrow_array::builder::{ListBuilder, StringBuilder};
        // Blocks of WIDE_BLOCK_COLUMNS, the last one partial; a list column
        // and run-length `run_id` among them; three row groups.
        let n = 2 * WIDE_BLOCK_COLUMNS + 37;
        let mut fields = vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("tags", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), true),
        ];
        fields.extend((2..n).map(|i| match i % 3 {
            0 => Field::new(format!("c{i}"), DataType::Int64, true),
            1 => Field::new(format!("c{i}"), DataType::Float64, true),
            _ => Field::new(format!("c{i}"), DataType::Utf8, true),
        }));
        let schema = Arc::new(Schema::new(fields));
        assert!(n > crate::output::WIDE_TABLE_COLUMNS);
        let make = |from: usize, rows: usize, run_length: bool| {
            let ids: Vec<String> = (from..from + rows).map(|r| format!("run-{r}")).collect();
            let mut columns: Vec<ArrayRef> = vec![if run_length {
                let mut b = crate::output::runlength::RunsBuilder::default();
                for id in &ids {
                    b.push(id, 1);
                }
                b.finish()
            } else {
                Arc::new(StringArray::from(ids.clone()))
            }];
            let mut tags = ListBuilder::new(StringBuilder::new());
            for r in from..from + rows {
                for t in 0..r % 3 {
                    tags.values().append_value(format!("t{t}"));
                }
                tags.append(r % 4 != 1);
            }
            columns.push(Arc::new(tags.finish()));
            for i in 2..n {
                let valid = |r: usize| !(r + i).is_multiple_of(5);
                columns.push(match i % 3 {
                    0 => {
                        Arc::new(Int64Array::from_iter((from..from + rows).map(|r| valid(r).then_some((r * i) as i64))))
                    }
                    1 => Arc::new(Float64Array::from_iter(
                        (from..from + rows).map(|r| valid(r).then_some(r as f64 / (i + 1) as f64)),
                    )),
                    _ => Arc::new(StringArray::from_iter(
                        (from..from + rows).map(|r| valid(r).then(|| format!("{r}:{i}"))),
                    )),
                });
            }
            columns
        };
        let plain = |from, rows| RecordBatch::try_new(Arc::clone(&schema), make(from, rows, false)).unwrap();
        let run_length_schema = Arc::new(Schema::new(
            std::iter::once(Arc::new(Field::new("run_id", crate::output::runlength::run_length_type(), false)))
                .chain(schema.fields().iter().skip(1).cloned())
                .collect::<Vec<_>>(),
        ));
        let props = WriterProperties::builder().set_max_row_group_row_count(Some(40)).build();
        let mut out = Vec::new();
        let mut w = ParallelWriter::try_new(&mut out, Arc::clone(&schema), props).unwrap();
        assert!(w.wide.is_some());
        w.write(&plain(0, 30)).unwrap();
        w.write(&RecordBatch::try_new(run_length_schema, make(30, 25, true)).unwrap()).unwrap();
        w.write(&plain(55, 45)).unwrap();
        w.close().unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(out)).unwrap();
        let sizes: Vec<i64> = reader.metadata().row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(sizes, [40, 40, 20]);
        let got: Vec<RecordBatch> = reader.with_batch_size(1000).build().unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(got, [plain(0, 100)]);
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
