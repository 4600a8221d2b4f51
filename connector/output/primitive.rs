//! Flat `Int64`, `Float64` and `Timestamp` columns written from the arrays'
//! value buffers, without parquet's Arrow writer (which first lists every
//! non-null row index, 8 bytes a row, and then gathers the values through
//! it; for the history's 100-million-row columns that bookkeeping cost as
//! much as the encoding).
//!
//! With runport's settings (V1 data pages, no dictionary, `PLAIN`,
//! `DELTA_BINARY_PACKED` or `BYTE_STREAM_SPLIT`, zstd or no compression, no
//! bloom filter, no page-header statistics) a chunk is encoded here page by
//! page ([`super::pages`]) with the statistics, level histograms and page
//! index parquet's column writer would give it (its min/max rules: IEEE 754
//! total order, NaN only when a page holds nothing else). Other settings go
//! through parquet's typed column writer.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrowPrimitiveType};
use arrow_buffer::{BooleanBufferBuilder, NullBuffer};
use arrow_schema::{DataType, TimeUnit};
use bytes::Bytes;
use parquet::basic::{BoundaryOrder, Compression, Encoding, EncodingMask, PageType, SortOrder, Type as PhysicalType};
use parquet::column::page::{CompressedPage, Page, PageWriteSpec, PageWriter};
use parquet::column::writer::{ColumnCloseResult, ColumnWriter, get_column_writer};
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{
    ColumnChunkMetaData, ColumnIndexBuilder, LevelHistogram, OffsetIndexBuilder, PageEncodingStats,
};
use parquet::file::properties::{EnabledStatistics, WriterPropertiesPtr, WriterVersion};
use parquet::file::statistics::{Statistics, ValueStatistics};
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

use super::pages;

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
pub struct PrimitiveChunk(Inner);

enum Inner {
    Pages(Box<PageChunk>),
    Typed(Box<TypedChunk>),
}

impl PrimitiveChunk {
    pub fn new(descr: ColumnDescPtr, props: WriterPropertiesPtr) -> Result<Self> {
        if descr.max_rep_level() != 0 || descr.max_def_level() > 1 {
            return Err(ParquetError::General(format!("column {} is not flat", descr.path())));
        }
        Ok(match PageChunk::try_new(&descr, &props)? {
            Some(c) => PrimitiveChunk(Inner::Pages(Box::new(c))),
            None => PrimitiveChunk(Inner::Typed(Box::new(TypedChunk::new(descr, props)?))),
        })
    }

    /// Whether the chunk is encoded by runport's page encoder (else by parquet's typed writer).
    pub fn encodes_pages(&self) -> bool {
        matches!(self.0, Inner::Pages(_))
    }

    pub fn rows(&self) -> usize {
        match &self.0 {
            Inner::Pages(c) => c.rows,
            Inner::Typed(c) => c.rows,
        }
    }

    /// Adds the rows of an array of the column's type.
    pub fn write(&mut self, array: &dyn Array) -> Result<()> {
        match &mut self.0 {
            Inner::Pages(c) => c.write(array),
            Inner::Typed(c) => c.write(array),
        }
    }

    /// An upper estimate of the encoded size so far, for row-group bounds.
    pub fn estimated_size(&self) -> usize {
        match &self.0 {
            Inner::Pages(c) => c.estimated_size(),
            Inner::Typed(c) => c.estimated_size(),
        }
    }

    /// The chunk's bytes (offsets relative to their start) and its metadata.
    pub fn close(self) -> Result<(Bytes, ColumnCloseResult)> {
        match self.0 {
            Inner::Pages(c) => c.close(),
            Inner::Typed(c) => c.close(),
        }
    }
}

/// A chunk written by parquet's typed column writer.
struct TypedChunk {
    writer: ColumnWriter<'static>,
    pages: MemoryPages,
    nullable: bool,
    /// Definition levels of a batch without nulls, reused.
    ones: Vec<i16>,
    rows: usize,
    /// The most a page holds before it is written out.
    page_bytes: usize,
}

impl TypedChunk {
    fn new(descr: ColumnDescPtr, props: WriterPropertiesPtr) -> Result<Self> {
        let nullable = descr.max_def_level() == 1;
        let pages = MemoryPages(Arc::new(Mutex::new(TrackedWrite::new(Vec::new()))));
        let page_bytes = props.data_page_size_limit();
        let writer = get_column_writer(descr, props, Box::new(pages.clone()));
        Ok(TypedChunk { writer, pages, nullable, ones: Vec::new(), rows: 0, page_bytes })
    }

    fn write(&mut self, array: &dyn Array) -> Result<()> {
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

    /// The pages written plus at most one page being filled.
    fn estimated_size(&self) -> usize {
        let written = self.pages.0.lock().map(|s| s.bytes_written()).unwrap_or(0);
        written + self.page_bytes.min(self.rows * 8)
    }

    fn close(self) -> Result<(Bytes, ColumnCloseResult)> {
        let close = self.writer.close()?;
        let sink = Arc::try_unwrap(self.pages.0)
            .map_err(|_| ParquetError::General("page buffer still shared".into()))?
            .into_inner()
            .map_err(|_| ParquetError::General("a page buffer lock was poisoned".into()))?;
        Ok((Bytes::from(sink.into_inner()?), close))
    }
}

/// A chunk encoded page by page from the values' bits.
struct PageChunk {
    descr: ColumnDescPtr,
    double: bool,
    nullable: bool,
    encoding: Encoding,
    codec: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    stats: EnabledStatistics,
    page_rows: usize,
    // The page being filled: its non-null values' bits, its validity (nullable
    // columns), rows and nulls.
    values: Vec<u64>,
    validity: BooleanBufferBuilder,
    page_len: usize,
    page_nulls: usize,
    // The chunk so far.
    sink: TrackedWrite<Vec<u8>>,
    buf: Vec<u8>,
    rows: usize,
    pages: i32,
    first_data_page: Option<u64>,
    compressed: i64,
    uncompressed: i64,
    nulls: u64,
    nans: Option<u64>,
    /// Least and greatest total-order keys of the non-NaN values, and of the NaNs.
    min_max: Option<(i64, i64)>,
    nan_min_max: Option<(i64, i64)>,
    def_histogram: Option<LevelHistogram>,
    column_index: Option<ColumnIndexBuilder>,
    offset_index: Option<OffsetIndexBuilder>,
    last_page_min_max: Option<(i64, i64)>,
    ascending: bool,
    descending: bool,
}

impl PageChunk {
    /// The encoder for a column under `props`, or `None` when the settings
    /// ask for what only parquet's writer does.
    fn try_new(descr: &ColumnDescPtr, props: &WriterPropertiesPtr) -> Result<Option<Self>> {
        let path = descr.path();
        let double = match (descr.physical_type(), descr.sort_order()) {
            (PhysicalType::INT64, SortOrder::SIGNED) => false,
            (PhysicalType::DOUBLE, _) => true,
            _ => return Ok(None),
        };
        let encoding = props.encoding(path).unwrap_or(Encoding::PLAIN);
        let supported = match encoding {
            Encoding::PLAIN | Encoding::BYTE_STREAM_SPLIT => true,
            Encoding::DELTA_BINARY_PACKED => !double,
            _ => false,
        };
        let zstd = match props.compression(path) {
            Compression::UNCOMPRESSED => None,
            Compression::ZSTD(level) => Some(level),
            _ => return Ok(None),
        };
        if !supported
            || props.writer_version() != WriterVersion::PARQUET_1_0
            || props.dictionary_enabled(path)
            || props.bloom_filter_properties(path).is_some()
            || props.write_page_header_statistics(path)
        {
            return Ok(None);
        }
        let stats = props.statistics_enabled(path);
        let nullable = descr.max_def_level() == 1;
        let page_rows = props.data_page_row_count_limit().min(props.data_page_size_limit() / 8).max(1);
        let histogram =
            || if stats != EnabledStatistics::None { LevelHistogram::try_new(descr.max_def_level()) } else { None };
        Ok(Some(PageChunk {
            descr: Arc::clone(descr),
            double,
            nullable,
            encoding,
            codec: props.compression(path),
            zstd: zstd.map(|l| zstd::bulk::Compressor::new(l.compression_level())).transpose()?,
            stats,
            page_rows,
            values: Vec::new(),
            validity: BooleanBufferBuilder::new(0),
            page_len: 0,
            page_nulls: 0,
            sink: TrackedWrite::new(Vec::new()),
            buf: Vec::new(),
            rows: 0,
            pages: 0,
            first_data_page: None,
            compressed: 0,
            uncompressed: 0,
            nulls: 0,
            nans: None,
            min_max: None,
            nan_min_max: None,
            def_histogram: histogram(),
            column_index: (stats == EnabledStatistics::Page).then(|| ColumnIndexBuilder::new(descr.physical_type())),
            offset_index: (!props.offset_index_disabled()).then(OffsetIndexBuilder::new),
            last_page_min_max: None,
            ascending: true,
            descending: true,
        }))
    }

    fn write(&mut self, array: &dyn Array) -> Result<()> {
        let bits: &[u64] = match (array.data_type(), self.double) {
            (DataType::Int64, false) => array.as_primitive::<Int64Type>().values().inner().typed_data(),
            (DataType::Timestamp(TimeUnit::Microsecond, _), false) => {
                array.as_primitive::<TimestampMicrosecondType>().values().inner().typed_data()
            }
            (DataType::Float64, true) => array.as_primitive::<Float64Type>().values().inner().typed_data(),
            _ => {
                return Err(ParquetError::General(format!(
                    "an array of type {} for column {}",
                    array.data_type(),
                    self.descr.path()
                )));
            }
        };
        let nulls = array.nulls().filter(|n| n.null_count() > 0);
        if nulls.is_some() && !self.nullable {
            return Err(ParquetError::General(format!("nulls in the required column {}", self.descr.path())));
        }
        let mut at = 0;
        while at < bits.len() {
            let take = (bits.len() - at).min(self.page_rows - self.page_len);
            if self.page_len == 0 && take == self.page_rows && nulls.is_none() {
                // A whole page without nulls: encoded from the array itself.
                self.page_len = take;
                self.flush_page(Some(&bits[at..at + take]))?;
            } else {
                self.append(&bits[at..at + take], nulls.map(|n| n.slice(at, take)));
                if self.page_len == self.page_rows {
                    self.flush_page(None)?;
                }
            }
            at += take;
        }
        self.rows += bits.len();
        Ok(())
    }

    fn append(&mut self, bits: &[u64], nulls: Option<NullBuffer>) {
        match nulls {
            None => {
                self.values.extend_from_slice(bits);
                if self.nullable {
                    self.validity.append_n(bits.len(), true);
                }
            }
            Some(n) => {
                self.values.extend(n.valid_indices().map(|i| bits[i]));
                self.validity.append_buffer(n.inner());
                self.page_nulls += n.null_count();
            }
        }
        self.page_len += bits.len();
    }

    /// Least and greatest key of the page's values and its NaN count, by
    /// parquet's rules: NaNs count only when the page holds nothing else.
    fn page_min_max(&self, values: &[u64]) -> Option<(i64, i64, u64)> {
        if self.double {
            pages::min_max_f64(values)
        } else {
            pages::min_max_i64(values).map(|(min, max)| (min, max, 0))
        }
    }

    /// The little-endian bytes of the value of a key.
    fn value_bytes(&self, key: i64) -> Vec<u8> {
        let bits = if self.double { pages::total_order_key(key as u64) as u64 } else { key as u64 };
        bits.to_le_bytes().to_vec()
    }

    /// Writes the page being filled, whose non-null values are `values` or
    /// else those gathered in `self.values`.
    fn flush_page(&mut self, values: Option<&[u64]>) -> Result<()> {
        let gathered = std::mem::take(&mut self.values);
        let values = values.unwrap_or(&gathered);
        let rows = self.page_len;
        let nulls = self.page_nulls;
        let stats = (self.stats != EnabledStatistics::None).then(|| self.page_min_max(values)).flatten();
        self.buf.clear();
        if self.nullable {
            let validity = self.validity.finish();
            pages::definition_levels(rows, (nulls > 0).then(|| validity.values()), &mut self.buf);
        }
        match self.encoding {
            Encoding::DELTA_BINARY_PACKED => pages::delta_binary_packed(values, &mut self.buf),
            Encoding::BYTE_STREAM_SPLIT => pages::byte_stream_split(values, &mut self.buf),
            _ => pages::plain(values, &mut self.buf),
        }
        let all_nan = stats.is_some_and(|(_, _, nans)| self.double && nans as usize == values.len());
        let size = self.buf.len();
        let buf = match self.zstd.as_mut() {
            Some(z) => Bytes::from(z.compress(&self.buf)?),
            None => Bytes::copy_from_slice(&self.buf),
        };
        let page = Page::DataPage {
            buf,
            num_values: rows as u32,
            encoding: self.encoding,
            def_level_encoding: Encoding::RLE,
            rep_level_encoding: Encoding::RLE,
            statistics: None,
        };
        let spec = SerializedPageWriter::new(&mut self.sink).write_page(CompressedPage::new(page, size))?;
        self.first_data_page.get_or_insert(spec.offset);
        self.compressed += spec.compressed_size as i64;
        self.uncompressed += spec.uncompressed_size as i64;
        self.pages += 1;
        if let Some(b) = self.offset_index.as_mut() {
            b.append_offset_and_size(spec.offset as i64, spec.compressed_size as i32);
            b.append_row_count(rows as i64);
        }

        let page_histogram =
            self.def_histogram.as_ref().map(|_| LevelHistogram::from(vec![nulls as i64, (rows - nulls) as i64]));
        if let (Some(chunk), Some(page)) = (self.def_histogram.as_mut(), page_histogram.as_ref()) {
            chunk.add(page);
        }
        self.nulls += nulls as u64;
        let page_nans = stats.map(|(_, _, n)| n).filter(|_| self.double);
        if let Some(n) = page_nans {
            *self.nans.get_or_insert(0) += n;
        }
        if let Some((min, max, _)) = stats {
            let slot = if all_nan { &mut self.nan_min_max } else { &mut self.min_max };
            *slot = Some(slot.map_or((min, max), |(a, b)| (a.min(min), b.max(max))));
        }
        let nan_count = self.double.then(|| page_nans.unwrap_or(0) as i64);
        let min_max = stats.map(|(min, max, _)| (min, max));
        if let Some(b) = self.column_index.as_mut().filter(|b| b.valid()) {
            if nulls == rows {
                b.append(true, Vec::new(), Vec::new(), nulls as i64, nan_count);
            } else if let Some((min, max)) = min_max {
                if let Some((last_min, last_max)) = self.last_page_min_max {
                    self.ascending &= !(last_min > min || last_max > max);
                    self.descending &= !(min > last_min || max > last_max);
                }
                self.last_page_min_max = Some((min, max));
                let (min, max) = (self.value_bytes(min), self.value_bytes(max));
                let b = self.column_index.as_mut().expect("invariant: checked above");
                b.append(false, min, max, nulls as i64, nan_count);
            }
            if let Some(b) = self.column_index.as_mut() {
                b.append_histograms(&None, &page_histogram);
            }
        }

        self.values = gathered;
        self.values.clear();
        self.validity = BooleanBufferBuilder::new(self.page_rows.min(1 << 16));
        self.page_len = 0;
        self.page_nulls = 0;
        Ok(())
    }

    fn estimated_size(&self) -> usize {
        self.sink.bytes_written() + self.values.len() * 8
    }

    fn close(mut self) -> Result<(Bytes, ColumnCloseResult)> {
        if self.page_len > 0 {
            self.flush_page(None)?;
        }
        let first_data_page =
            self.first_data_page.ok_or_else(|| ParquetError::General("an empty column chunk".into()))?;
        let mut meta = ColumnChunkMetaData::builder(Arc::clone(&self.descr))
            .set_compression(self.codec)
            .set_encodings_mask(EncodingMask::new_from_encodings([Encoding::RLE, self.encoding].iter()))
            .set_page_encoding_stats(vec![PageEncodingStats {
                page_type: PageType::DATA_PAGE,
                encoding: self.encoding,
                count: self.pages,
            }])
            .set_total_compressed_size(self.compressed)
            .set_total_uncompressed_size(self.uncompressed)
            .set_num_values(self.rows as i64)
            .set_data_page_offset(first_data_page as i64)
            .set_dictionary_page_offset(None);
        if self.stats != EnabledStatistics::None {
            let (min, max) = match self.min_max.or(self.nan_min_max) {
                Some((min, max)) => (Some(min), Some(max)),
                None => (None, None),
            };
            let signed = self.descr.sort_order().is_signed();
            let statistics = if self.double {
                let value = |k: i64| f64::from_bits(pages::total_order_key(k as u64) as u64);
                Statistics::Double(
                    ValueStatistics::new(min.map(value), max.map(value), None, Some(self.nulls), false)
                        .with_nan_count(self.nans)
                        .with_backwards_compatible_min_max(signed),
                )
            } else {
                Statistics::Int64(
                    ValueStatistics::new(min, max, None, Some(self.nulls), false)
                        .with_nan_count(None)
                        .with_backwards_compatible_min_max(signed),
                )
            };
            meta = meta
                .set_statistics(statistics)
                .set_unencoded_byte_array_data_bytes(None)
                .set_repetition_level_histogram(None)
                .set_definition_level_histogram(self.def_histogram.take());
        }
        let column_index = match self.column_index.take() {
            Some(mut b) if b.valid() => {
                b.set_boundary_order(match (self.ascending, self.descending) {
                    (true, _) => BoundaryOrder::ASCENDING,
                    (false, true) => BoundaryOrder::DESCENDING,
                    (false, false) => BoundaryOrder::UNORDERED,
                });
                Some(b.build()?)
            }
            _ => None,
        };
        let close = ColumnCloseResult {
            bytes_written: self.sink.bytes_written() as u64,
            rows_written: self.rows as u64,
            metadata: meta.build()?,
            bloom_filter: None,
            column_index,
            offset_index: self.offset_index.take().map(|b| b.build()),
        };
        Ok((Bytes::from(self.sink.into_inner()?), close))
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
    use arrow_schema::{Field, Schema, SchemaRef};
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::basic::ZstdLevel;
    use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
    use parquet::file::page_index::column_index::ColumnIndexMetaData;
    use parquet::file::page_index::offset_index::OffsetIndexMetaData;
    use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};
    use parquet::schema::types::ColumnPath;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("step", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("v", DataType::Float64, true),
            Field::new("w", DataType::Float64, true),
            Field::new("r", DataType::Int64, true),
        ]))
    }

    /// Rows `from..from + n`: ascending steps, timestamps with gaps and nulls,
    /// floats with nulls, NaNs (both signs), zeros of both signs and
    /// infinities, pages of nothing but nulls or NaNs, and integers spanning
    /// the whole range (deltas that overflow).
    fn batch(schema: &SchemaRef, from: i64, n: i64) -> RecordBatch {
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ from as u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let rows = from..from + n;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.clone())),
            Arc::new(
                TimestampMicrosecondArray::from_iter(
                    rows.clone().map(|i| (i % 5 != 0).then_some(1_700_000_000_000_000 + i * 1_000_003 + i % 977)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter(rows.clone().map(|i| match (i / 4096, i % 11) {
                (3, _) => None,
                (5, _) => Some(if i % 2 == 0 { f64::NAN } else { -f64::NAN }),
                (_, 0) => None,
                (_, 1) => Some(f64::NAN),
                (_, 2) => Some(if i % 3 == 0 { -0.0 } else { 0.0 }),
                (_, 3) if i % 7 == 0 => Some(f64::NEG_INFINITY),
                _ => Some((i as f64).sin()),
            }))),
            Arc::new(Float64Array::from_iter_values(rows.clone().map(|i| i as f64 / 3.0))),
            Arc::new(Int64Array::from_iter(rows.map(|i| match i % 13 {
                0 => None,
                1 => Some(i64::MIN),
                2 => Some(i64::MAX),
                _ => Some(next() as i64),
            }))),
        ];
        RecordBatch::try_new(Arc::clone(schema), cols).unwrap()
    }

    fn read(bytes: Vec<u8>, page_index: bool) -> (Arc<ParquetMetaData>, Vec<RecordBatch>) {
        let policy = if page_index { PageIndexPolicy::Required } else { PageIndexPolicy::Skip };
        let opts = ArrowReaderOptions::new().with_page_index_policy(policy);
        let r = ParquetRecordBatchReaderBuilder::try_new_with_options(Bytes::from(bytes), opts).unwrap();
        let meta = r.metadata().clone();
        (meta, r.build().unwrap().map(|b| b.unwrap()).collect())
    }

    /// Writes `batches` with runport's writer and with parquet's Arrow
    /// writer under `props`: the files must hold the same values and chunk
    /// metadata, a page index covering every row and, when `same_pages`
    /// (pages cut at the same rows), the same column index.
    fn compare(batches: &[RecordBatch], props: WriterPropertiesBuilder, same_pages: bool) {
        let schema = batches[0].schema();
        let mut ours = Vec::new();
        let mut w = ParallelWriter::try_new(&mut ours, Arc::clone(&schema), props.clone().build()).unwrap();
        batches.iter().for_each(|b| w.write(b).unwrap());
        w.close().unwrap();
        let mut theirs = Vec::new();
        let mut w = ArrowWriter::try_new(&mut theirs, Arc::clone(&schema), Some(props.build())).unwrap();
        batches.iter().for_each(|b| w.write(b).unwrap());
        w.close().unwrap();

        let ((m1, b1), (m2, b2)) = (read(ours, true), read(theirs, true));
        let rows = |bs: &[RecordBatch]| bs.iter().map(|b| b.num_rows()).sum::<usize>();
        assert_eq!(rows(&b1), batches.iter().map(|b| b.num_rows()).sum::<usize>());
        let concat = |bs: &[RecordBatch], c: usize| {
            bs.iter()
                .flat_map(|b| (0..b.num_rows()).map(move |i| b.column(c).slice(i, 1).to_data()))
                .collect::<Vec<_>>()
        };
        let columns = schema.fields().len();
        for c in 0..columns {
            assert_eq!(concat(&b1, c), concat(&b2, c), "column {c}");
        }
        assert_eq!(m1.num_row_groups(), m2.num_row_groups());
        for g in 0..m1.num_row_groups() {
            for c in 0..columns {
                let (a, b) = (m1.row_group(g).column(c), m2.row_group(g).column(c));
                let at = format!("column {c} of row group {g}");
                assert_eq!(a.statistics(), b.statistics(), "statistics of {at}");
                assert_eq!(a.num_values(), b.num_values(), "{at}");
                assert_eq!(a.encodings_mask(), b.encodings_mask(), "encodings of {at}");
                assert_eq!(a.compression(), b.compression(), "{at}");
                assert_eq!(a.definition_level_histogram(), b.definition_level_histogram(), "{at}");
                assert_eq!(a.repetition_level_histogram(), b.repetition_level_histogram(), "{at}");
                assert_eq!(a.dictionary_page_offset().is_some(), b.dictionary_page_offset().is_some(), "{at}");
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
                if same_pages {
                    let (i1, i2) = (m1.page_index_for_row_group(g), m2.page_index_for_row_group(g));
                    let (c1, c2) = (i1.column_index(c).unwrap(), i2.column_index(c).unwrap());
                    assert_eq!(format!("{c1:?}"), format!("{c2:?}"), "column index of {at}");
                    // NaNs of either sign print alike: compare the bits of doubles.
                    if let (ColumnIndexMetaData::DOUBLE(d1), ColumnIndexMetaData::DOUBLE(d2)) = (c1, c2) {
                        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(d1.min_values()), bits(d2.min_values()), "minima of {at}");
                        assert_eq!(bits(d1.max_values()), bits(d2.max_values()), "maxima of {at}");
                    }
                    let first_rows = |i: &OffsetIndexMetaData| {
                        i.page_locations.iter().map(|p| p.first_row_index).collect::<Vec<_>>()
                    };
                    assert_eq!(first_rows(i1.offset_index(c).unwrap()), first_rows(i2.offset_index(c).unwrap()));
                }
            }
        }
    }

    fn props(page_rows: usize) -> WriterPropertiesBuilder {
        WriterProperties::builder()
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_dictionary_enabled(false)
            .set_max_row_group_row_count(Some(50_000))
            .set_data_page_row_count_limit(page_rows)
            .set_column_encoding(ColumnPath::from("step"), Encoding::DELTA_BINARY_PACKED)
            .set_column_encoding(ColumnPath::from("ts"), Encoding::DELTA_BINARY_PACKED)
            .set_column_encoding(ColumnPath::from("r"), Encoding::DELTA_BINARY_PACKED)
            .set_column_encoding(ColumnPath::from("v"), Encoding::BYTE_STREAM_SPLIT)
    }

    fn descr(schema: &SchemaRef, c: usize) -> ColumnDescPtr {
        parquet::arrow::ArrowSchemaConverter::new().convert(schema).unwrap().column(c)
    }

    /// runport's page encoder is used with runport's settings, and its files
    /// read back as parquet's own writer's do: the same values, statistics
    /// (IEEE 754 total order, NaN counts), level histograms and page index.
    #[test]
    fn page_encoded_columns_match_the_arrow_writer() {
        let schema = schema();
        let p = Arc::new(props(4096).build());
        for c in 0..schema.fields().len() {
            assert!(PrimitiveChunk::new(descr(&schema, c), Arc::clone(&p)).unwrap().encodes_pages(), "column {c}");
        }
        // Pages cut at the same rows as parquet's writer (which checks its
        // limits every 1,024 values), whole pages taken from one array and
        // pages gathered from several: the column index is compared too.
        let aligned = [
            batch(&schema, 0, 8192),
            batch(&schema, 8192, 1024),
            batch(&schema, 9216, 3072),
            batch(&schema, 12_288, 28_672),
        ];
        compare(&aligned, props(4096), true);
        let zstd = Compression::ZSTD(ZstdLevel::try_new(1).unwrap());
        compare(&aligned, props(4096).set_compression(zstd), true);
        // Batches across page and row-group limits; other encodings.
        let ragged = [batch(&schema, 0, 30_000), batch(&schema, 30_000, 5), batch(&schema, 30_005, 45_000)];
        compare(&ragged, props(20_000), false);
        let plain = WriterProperties::builder()
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_dictionary_enabled(false)
            .set_column_encoding(ColumnPath::from("ts"), Encoding::BYTE_STREAM_SPLIT)
            .set_compression(zstd);
        compare(&ragged, plain, false);
    }

    /// Settings the page encoder does not cover go through parquet's typed
    /// column writer, with the same result as its Arrow writer.
    #[test]
    fn typed_columns_match_the_arrow_writer() {
        let schema = schema();
        let typed = || {
            WriterProperties::builder()
                .set_statistics_enabled(EnabledStatistics::Chunk)
                .set_dictionary_enabled(true)
                .set_column_dictionary_enabled(ColumnPath::from("step"), false)
                .set_column_encoding(ColumnPath::from("step"), Encoding::DELTA_BINARY_PACKED)
                .set_writer_version(WriterVersion::PARQUET_2_0)
        };
        let p = Arc::new(typed().build());
        for c in 0..schema.fields().len() {
            assert!(!PrimitiveChunk::new(descr(&schema, c), Arc::clone(&p)).unwrap().encodes_pages(), "column {c}");
        }
        let batches = [batch(&schema, 0, 30_000), batch(&schema, 30_000, 5), batch(&schema, 30_005, 45_000)];
        let mut ours = Vec::new();
        let mut w = ParallelWriter::try_new(&mut ours, Arc::clone(&schema), typed().build()).unwrap();
        batches.iter().for_each(|b| w.write(b).unwrap());
        w.close().unwrap();
        let mut theirs = Vec::new();
        let mut w = ArrowWriter::try_new(&mut theirs, Arc::clone(&schema), Some(typed().build())).unwrap();
        batches.iter().for_each(|b| w.write(b).unwrap());
        w.close().unwrap();
        let ((m1, b1), (m2, b2)) = (read(ours, false), read(theirs, false));
        assert_eq!(b1, b2);
        assert_eq!(m1.num_row_groups(), m2.num_row_groups());
        for g in 0..m1.num_row_groups() {
            for c in 0..schema.fields().len() {
                let (a, b) = (m1.row_group(g).column(c), m2.row_group(g).column(c));
                assert_eq!(a.statistics(), b.statistics());
                assert_eq!(a.encodings_mask(), b.encodings_mask());
            }
        }
    }
}
