//! Flat `Int64`, `Float64` and `Timestamp` columns written with parquet's
//! typed column writer straight from the arrays' value buffers. parquet's
//! Arrow writer first lists every non-null row index (8 bytes a row) and then
//! gathers the values through it; for the history's 100-million-row columns
//! that bookkeeping cost as much as the encoding. Encodings, statistics and
//! the page index are the typed writer's own, as with the Arrow writer.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrowPrimitiveType};
use arrow_schema::{DataType, TimeUnit};
use bytes::Bytes;
use parquet::column::page::{CompressedPage, PageWriteSpec, PageWriter};
use parquet::column::writer::{ColumnCloseResult, ColumnWriter, get_column_writer};
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::WriterPropertiesPtr;
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

/// Whether a flat field of this type is written by [`PrimitiveChunk`].
pub fn is_direct(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Int64 | DataType::Float64 | DataType::Timestamp(TimeUnit::Microsecond, _))
}

/// Pages serialized into memory, shared with the chunk that reads them back.
#[derive(Clone)]
struct MemoryPages(Arc<Mutex<TrackedWrite<Vec<u8>>>>);

impl PageWriter for MemoryPages {
    fn write_page(&mut self, page: CompressedPage) -> Result<PageWriteSpec> {
        let mut sink = self.0.lock().map_err(|_| ParquetError::General("a page buffer lock was poisoned".into()))?;
        SerializedPageWriter::new(&mut sink).write_page(page)
    }

    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// One row group's chunk of a flat primitive column.
pub struct PrimitiveChunk {
    writer: ColumnWriter<'static>,
    pages: MemoryPages,
    nullable: bool,
    /// Definition levels of a batch without nulls, reused.
    ones: Vec<i16>,
    rows: usize,
    /// The most a page holds before it is written out.
    page_bytes: usize,
}

impl PrimitiveChunk {
    pub fn new(descr: ColumnDescPtr, props: WriterPropertiesPtr) -> Result<Self> {
        if descr.max_rep_level() != 0 || descr.max_def_level() > 1 {
            return Err(ParquetError::General(format!("column {} is not flat", descr.path())));
        }
        let nullable = descr.max_def_level() == 1;
        let pages = MemoryPages(Arc::new(Mutex::new(TrackedWrite::new(Vec::new()))));
        let page_bytes = props.data_page_size_limit();
        let writer = get_column_writer(descr, props, Box::new(pages.clone()));
        Ok(PrimitiveChunk { writer, pages, nullable, ones: Vec::new(), rows: 0, page_bytes })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Adds the rows of an array of the column's type.
    pub fn write(&mut self, array: &dyn Array) -> Result<()> {
        let mismatch = || ParquetError::General(format!("an array of type {} for this column", array.data_type()));
        match (&mut self.writer, array.data_type()) {
            (ColumnWriter::Int64ColumnWriter(w), DataType::Int64) => {
                let (v, def) = levels::<Int64Type>(array, self.nullable, &mut self.ones)?;
                w.write_batch(&v, def.as_deref(), None)?;
            }
            (ColumnWriter::Int64ColumnWriter(w), DataType::Timestamp(TimeUnit::Microsecond, _)) => {
                let (v, def) = levels::<TimestampMicrosecondType>(array, self.nullable, &mut self.ones)?;
                w.write_batch(&v, def.as_deref(), None)?;
            }
            (ColumnWriter::DoubleColumnWriter(w), DataType::Float64) => {
                let (v, def) = levels::<Float64Type>(array, self.nullable, &mut self.ones)?;
                w.write_batch(&v, def.as_deref(), None)?;
            }
            _ => return Err(mismatch()),
        }
        self.rows += array.len();
        Ok(())
    }

    /// An upper estimate of the encoded size so far, for row-group bounds:
    /// the pages written plus at most one page being filled.
    pub fn estimated_size(&self) -> usize {
        let written = self.pages.0.lock().map(|s| s.bytes_written()).unwrap_or(0);
        written + self.page_bytes.min(self.rows * 8)
    }

    /// The chunk's bytes (offsets relative to their start) and its metadata.
    pub fn close(self) -> Result<(Bytes, ColumnCloseResult)> {
        let close = self.writer.close()?;
        let sink = Arc::try_unwrap(self.pages.0)
            .map_err(|_| ParquetError::General("page buffer still shared".into()))?
            .into_inner()
            .map_err(|_| ParquetError::General("a page buffer lock was poisoned".into()))?;
        Ok((Bytes::from(sink.into_inner()?), close))
    }
}

/// Values and definition levels, borrowed when they can be.
type Levels<'a, N> = (Cow<'a, [N]>, Option<Cow<'a, [i16]>>);

/// The non-null values of `array` and, for a nullable column, its definition levels.
fn levels<'a, T: ArrowPrimitiveType>(
    array: &'a dyn Array,
    nullable: bool,
    ones: &'a mut Vec<i16>,
) -> Result<Levels<'a, T::Native>> {
    let a = array.as_primitive::<T>();
    let values = a.values();
    match a.nulls().filter(|n| n.null_count() > 0) {
        None if !nullable => Ok((Cow::Borrowed(values.as_ref()), None)),
        None => {
            if ones.len() < values.len() {
                ones.resize(values.len(), 1);
            }
            Ok((Cow::Borrowed(values.as_ref()), Some(Cow::Borrowed(&ones[..values.len()]))))
        }
        Some(_) if !nullable => Err(ParquetError::General("nulls in a required column".into())),
        Some(nulls) => {
            let def: Vec<i16> = nulls.iter().map(i16::from).collect();
            let kept: Vec<T::Native> = nulls.valid_indices().map(|i| values[i]).collect();
            Ok((Cow::Owned(kept), Some(Cow::Owned(def))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::parallel::ParallelWriter;
    use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
    use arrow_schema::{Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::basic::Encoding;
    use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
    use parquet::file::page_index::column_index::ColumnIndexMetaData;
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use parquet::schema::types::ColumnPath;

    /// Files written through the typed path hold the same values, statistics
    /// and page index as parquet's Arrow writer writes for the same batches.
    #[test]
    fn typed_columns_match_the_arrow_writer() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("step", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("v", DataType::Float64, true),
            Field::new("w", DataType::Float64, true),
        ]));
        let batch = |from: i64, n: i64| {
            let cols: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_iter_values(from..from + n)),
                Arc::new(
                    TimestampMicrosecondArray::from_iter((from..from + n).map(|i| (i % 5 != 0).then_some(i * 1000)))
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter((from..from + n).map(|i| match i % 7 {
                    0 => None,
                    1 => Some(f64::NAN),
                    _ => Some((i as f64).sin()),
                }))),
                Arc::new(Float64Array::from_iter_values((from..from + n).map(|i| i as f64 / 3.0))),
            ];
            RecordBatch::try_new(Arc::clone(&schema), cols).unwrap()
        };
        let batches = [batch(0, 30_000), batch(30_000, 5), batch(30_005, 45_000)];
        let props = WriterProperties::builder()
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_dictionary_enabled(false)
            .set_max_row_group_row_count(Some(50_000))
            .set_column_encoding(ColumnPath::from("step"), Encoding::DELTA_BINARY_PACKED)
            .set_column_encoding(ColumnPath::from("v"), Encoding::BYTE_STREAM_SPLIT)
            .build();

        let mut ours = Vec::new();
        let mut w = ParallelWriter::try_new(&mut ours, Arc::clone(&schema), props.clone()).unwrap();
        batches.iter().for_each(|b| w.write(b).unwrap());
        w.close().unwrap();
        let mut theirs = Vec::new();
        let mut w = ArrowWriter::try_new(&mut theirs, Arc::clone(&schema), Some(props)).unwrap();
        batches.iter().for_each(|b| w.write(b).unwrap());
        w.close().unwrap();

        let read = |bytes: Vec<u8>| -> (Arc<ParquetMetaData>, Vec<RecordBatch>) {
            let opts = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
            let r = ParquetRecordBatchReaderBuilder::try_new_with_options(Bytes::from(bytes), opts).unwrap();
            let meta = r.metadata().clone();
            (meta, r.build().unwrap().map(|b| b.unwrap()).collect())
        };
        let ((m1, b1), (m2, b2)) = (read(ours), read(theirs));
        let rows = |bs: &[RecordBatch]| bs.iter().map(|b| b.num_rows()).sum::<usize>();
        assert_eq!(rows(&b1), 75_005);
        let concat = |bs: &[RecordBatch], c: usize| {
            bs.iter()
                .flat_map(|b| (0..b.num_rows()).map(move |i| b.column(c).slice(i, 1).to_data()))
                .collect::<Vec<_>>()
        };
        for c in 0..4 {
            assert_eq!(concat(&b1, c), concat(&b2, c), "column {c}");
        }
        assert_eq!(m1.num_row_groups(), 2);
        assert_eq!(m1.num_row_groups(), m2.num_row_groups());
        for g in 0..m1.num_row_groups() {
            for c in 0..4 {
                let (a, b) = (m1.row_group(g).column(c), m2.row_group(g).column(c));
                assert_eq!(a.statistics(), b.statistics(), "statistics of column {c} in row group {g}");
                assert_eq!(a.num_values(), b.num_values());
                assert_eq!(a.encodings_mask(), b.encodings_mask(), "encodings of column {c}");
                // Pages may be cut at other rows (the typed writer checks its
                // limits every 1,024 values): both files must have a page index
                // covering every row, with null counts adding up to the chunk's.
                for meta in [&m1, &m2] {
                    let index = meta.page_index_for_row_group(g);
                    let pages = &index.offset_index(c).expect("an offset index").page_locations;
                    assert_eq!(pages[0].first_row_index, 0);
                    assert!(pages.windows(2).all(|w| w[0].first_row_index < w[1].first_row_index));
                    let nulls: i64 = match index.column_index(c).expect("a column index") {
                        ColumnIndexMetaData::INT64(i) => (0..pages.len()).map(|p| i.null_count(p).unwrap()).sum(),
                        ColumnIndexMetaData::DOUBLE(i) => (0..pages.len()).map(|p| i.null_count(p).unwrap()).sum(),
                        other => panic!("column index {other:?}"),
                    };
                    assert_eq!(Some(nulls as u64), meta.row_group(g).column(c).statistics().unwrap().null_count_opt());
                }
            }
        }
    }
}
