//! String columns made of long runs of one value (the history's `run_id` and
//! `key`): batches carry them as Arrow run-end encoded arrays
//! (`RunEndEncoded<Int32, Utf8>`), and they are written as ordinary
//! dictionary-encoded Parquet column chunks (a dictionary page, then data
//! pages of RLE runs, statistics and the page index) in time proportional to
//! the number of runs. parquet's own writer expands such arrays and hashes and
//! compares every value, which cost ~15 ns a row for each of these columns.
//!
//! The file's Arrow schema keeps the plain `Utf8` type: readers see strings.
//! Pages are compressed with zstd (the codec of every runport table) or not
//! at all, as the column's codec says; a column of another codec is expanded
//! to strings and written by parquet's writer (see [`writes_codec`]).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{ArrayBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use arrow_array::{Array, ArrayRef, Int32Array, RunArray};
use arrow_schema::{DataType, Field};
use bytes::Bytes;
use parquet::basic::{
    BoundaryOrder, Compression, ConvertedType, Encoding, EncodingMask, LogicalType, Type as PhysicalType,
};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::data_type::ByteArray;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{ColumnChunkMetaData, ColumnIndexBuilder, OffsetIndexBuilder};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::{Statistics, ValueStatistics};
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

use super::pages::put_uleb128;

/// The Arrow type of a run-length string column in a batch.
pub fn run_length_type() -> DataType {
    DataType::RunEndEncoded(
        Arc::new(Field::new("run_ends", DataType::Int32, false)),
        Arc::new(Field::new("values", DataType::Utf8, true)),
    )
}

/// Whether a batch column of type `batch` is a run-length form of a file
/// column of type `file`.
pub fn is_run_length_of(batch: &DataType, file: &DataType) -> bool {
    *file == DataType::Utf8 && *batch == run_length_type()
}

/// Whether [`RunLengthChunk`] writes pages of this codec.
pub fn writes_codec(codec: Compression) -> bool {
    matches!(codec, Compression::ZSTD(_) | Compression::UNCOMPRESSED)
}

/// Builds a run-length string column, run after run.
#[derive(Default)]
pub struct RunsBuilder {
    ends: Vec<i32>,
    values: StringBuilder,
    len: usize,
}

impl RunsBuilder {
    /// Appends `count` rows of `value` (merged with the last run when equal).
    pub fn push(&mut self, value: &str, count: usize) {
        if count == 0 {
            return;
        }
        self.len += count;
        let same = self.values.len() > 0 && {
            let offsets = self.values.offsets_slice();
            let start = offsets[offsets.len() - 2] as usize;
            &self.values.values_slice()[start..] == value.as_bytes()
        };
        if same {
            *self.ends.last_mut().expect("invariant: a run exists") = self.len as i32;
        } else {
            self.values.append_value(value);
            self.ends.push(self.len as i32);
        }
    }

    /// The column; a batch holds fewer than 2^31 rows.
    pub fn finish(mut self) -> ArrayRef {
        let ends = Int32Array::from(self.ends);
        let values = self.values.finish();
        Arc::new(RunArray::<Int32Type>::try_new(&ends, &values).expect("invariant: ends ascend, one per value"))
    }
}

/// `value` repeated `n` times.
pub fn repeated(value: &str, n: usize) -> ArrayRef {
    let mut b = RunsBuilder::default();
    b.push(value, n);
    b.finish()
}

/// One run of a data page: dictionary index and row count.
struct PageRuns {
    runs: Vec<(u32, u32)>,
    rows: usize,
    unencoded: i64,
}

impl PageRuns {
    fn new() -> Self {
        PageRuns { runs: Vec::new(), rows: 0, unencoded: 0 }
    }
}

/// One row group's column chunk of a run-length string column.
pub struct RunLengthChunk {
    dict: Vec<Box<[u8]>>,
    index: HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>,
    pages: Vec<PageRuns>,
    current: PageRuns,
    page_rows: usize,
    rows: usize,
}

impl RunLengthChunk {
    /// Data pages hold at most `page_rows` rows (parquet's data page row limit).
    pub fn new(page_rows: usize) -> Self {
        RunLengthChunk {
            dict: Vec::new(),
            index: HashMap::default(),
            pages: Vec::new(),
            current: PageRuns::new(),
            page_rows: page_rows.max(1),
            rows: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Adds the rows of a (possibly sliced) `RunEndEncoded<Int32, Utf8>` array.
    pub fn write(&mut self, array: &dyn Array) -> Result<()> {
        let mut null = false;
        for_each_run(array, |value, count| match value {
            Some(v) => self.push_run(v.as_bytes(), count),
            None => null = true,
        })?;
        if null {
            return Err(ParquetError::General("a null in a run-length string column".into()));
        }
        Ok(())
    }

    fn push_run(&mut self, value: &[u8], mut count: usize) {
        let id = match self.index.get(value) {
            Some(id) => *id,
            None => {
                let id = self.dict.len() as u32;
                self.dict.push(value.into());
                self.index.insert(value.into(), id);
                id
            }
        };
        self.rows += count;
        while count > 0 {
            let take = count.min(self.page_rows - self.current.rows);
            match self.current.runs.last_mut() {
                Some((last, n)) if *last == id => *n += take as u32,
                _ => self.current.runs.push((id, take as u32)),
            }
            self.current.rows += take;
            self.current.unencoded += (take * value.len()) as i64;
            count -= take;
            if self.current.rows == self.page_rows {
                self.pages.push(std::mem::replace(&mut self.current, PageRuns::new()));
            }
        }
    }

    /// An upper bound of the encoded size, for row-group bounds.
    pub fn estimated_size(&self) -> usize {
        let dict: usize = self.dict.iter().map(|v| v.len() + 4).sum();
        let runs: usize = self.pages.iter().chain([&self.current]).map(|p| p.runs.len() * 10 + 32).sum();
        dict + runs
    }

    /// Encodes the chunk: its bytes (offsets relative to their start) and
    /// what parquet's row-group writer needs to splice them in.
    pub fn close(mut self, descr: ColumnDescPtr, props: &WriterProperties) -> Result<(Bytes, ColumnCloseResult)> {
        if descr.physical_type() != PhysicalType::BYTE_ARRAY || descr.max_def_level() != 0 || descr.max_rep_level() != 0
        {
            return Err(ParquetError::General(format!(
                "column {} is not a required, flat byte-array column",
                descr.path()
            )));
        }
        if self.current.rows > 0 {
            self.pages.push(std::mem::replace(&mut self.current, PageRuns::new()));
        }
        let stats_level = props.statistics_enabled(descr.path());
        let mut sink = TrackedWrite::new(Vec::new());
        let mut compressed = 0i64;
        let mut uncompressed = 0i64;
        let mut offset_index = (!props.offset_index_disabled()).then(OffsetIndexBuilder::new);
        let mut column_index =
            (stats_level == EnabledStatistics::Page).then(|| ColumnIndexBuilder::new(PhysicalType::BYTE_ARRAY));
        let mut first_data_page = None;
        // The column index's boundary order, from the untruncated page bounds.
        let (mut ascending, mut descending, mut last_page) = (true, true, None::<(&[u8], &[u8])>);
        let (codec, mut zstd) = match props.compression(descr.path()) {
            c @ Compression::ZSTD(level) => (c, Some(zstd::bulk::Compressor::new(level.compression_level())?)),
            Compression::UNCOMPRESSED => (Compression::UNCOMPRESSED, None),
            other => {
                return Err(ParquetError::General(format!(
                    "column {}: run-length chunks are not written with {other} (only zstd or uncompressed)",
                    descr.path()
                )));
            }
        };
        let mut compress = |raw: Vec<u8>| -> Result<(Bytes, usize)> {
            let size = raw.len();
            match zstd.as_mut() {
                Some(z) => Ok((Bytes::from(z.compress(&raw)?), size)),
                None => Ok((Bytes::from(raw), size)),
            }
        };
        {
            let mut writer = SerializedPageWriter::new(&mut sink);
            let mut plain = Vec::new();
            for v in &self.dict {
                plain.extend_from_slice(&(v.len() as u32).to_le_bytes());
                plain.extend_from_slice(v);
            }
            let (buf, size) = compress(plain)?;
            let page = Page::DictionaryPage {
                buf,
                num_values: self.dict.len() as u32,
                encoding: props.dictionary_page_encoding(),
                is_sorted: false,
            };
            let spec = writer.write_page(CompressedPage::new(page, size))?;
            compressed += spec.compressed_size as i64;
            uncompressed += spec.uncompressed_size as i64;

            let bit_width = bits_for(self.dict.len().saturating_sub(1)).max(1);
            let value_bytes = usize::from(bit_width).div_ceil(8);
            for page in &self.pages {
                let mut buf = Vec::with_capacity(1 + page.runs.len() * (5 + value_bytes));
                buf.push(bit_width);
                for (id, n) in &page.runs {
                    put_uleb128(&mut buf, u64::from(*n) << 1);
                    buf.extend_from_slice(&id.to_le_bytes()[..value_bytes]);
                }
                let (buf, size) = compress(buf)?;
                let data = Page::DataPage {
                    buf,
                    num_values: page.rows as u32,
                    encoding: props.dictionary_data_page_encoding(),
                    def_level_encoding: Encoding::RLE,
                    rep_level_encoding: Encoding::RLE,
                    statistics: None,
                };
                let spec = writer.write_page(CompressedPage::new(data, size))?;
                first_data_page.get_or_insert(spec.offset);
                compressed += spec.compressed_size as i64;
                uncompressed += spec.uncompressed_size as i64;
                if let Some(b) = offset_index.as_mut() {
                    b.append_offset_and_size(spec.offset as i64, spec.compressed_size as i32);
                    b.append_row_count(page.rows as i64);
                    b.append_unencoded_byte_array_data_bytes(Some(page.unencoded));
                }
                if let Some(b) = column_index.as_mut() {
                    let (min, max) = self.min_max(page.runs.iter().map(|(id, _)| *id));
                    if let Some((last_min, last_max)) = last_page {
                        ascending &= !(last_min > min || last_max > max);
                        descending &= !(min > last_min || max > last_max);
                    }
                    last_page = Some((min, max));
                    let length = props.column_index_truncate_length();
                    b.append(false, truncate_min(&descr, length, min).0, truncate_max(&descr, length, max).0, 0, None);
                }
            }
        }
        let first_data_page = first_data_page.ok_or_else(|| ParquetError::General("an empty column chunk".into()))?;
        let unencoded: i64 = self.pages.iter().map(|p| p.unencoded).sum();
        let mut meta = ColumnChunkMetaData::builder(Arc::clone(&descr))
            .set_compression(codec)
            .set_encodings_mask(EncodingMask::new_from_encodings(
                [Encoding::PLAIN, Encoding::RLE, props.dictionary_data_page_encoding()].iter(),
            ))
            .set_total_compressed_size(compressed)
            .set_total_uncompressed_size(uncompressed)
            .set_num_values(self.rows as i64)
            .set_data_page_offset(first_data_page as i64)
            .set_dictionary_page_offset(Some(0));
        if stats_level != EnabledStatistics::None {
            let (min, max) = self.min_max(0..self.dict.len() as u32);
            let length = props.statistics_truncate_length();
            let (min, min_cut) = truncate_min(&descr, length, min);
            let (max, max_cut) = truncate_max(&descr, length, max);
            let stats =
                ValueStatistics::new(Some(ByteArray::from(min)), Some(ByteArray::from(max)), None, Some(0), false)
                    .with_min_is_exact(!min_cut)
                    .with_max_is_exact(!max_cut);
            meta =
                meta.set_statistics(Statistics::ByteArray(stats)).set_unencoded_byte_array_data_bytes(Some(unencoded));
        }
        let close = ColumnCloseResult {
            bytes_written: sink.bytes_written() as u64,
            rows_written: self.rows as u64,
            metadata: meta.build()?,
            bloom_filter: None,
            column_index: column_index
                .map(|mut b| {
                    b.set_boundary_order(match (ascending, descending) {
                        (true, _) => BoundaryOrder::ASCENDING,
                        (false, true) => BoundaryOrder::DESCENDING,
                        (false, false) => BoundaryOrder::UNORDERED,
                    });
                    b.build()
                })
                .transpose()?,
            offset_index: offset_index.map(|b| b.build()),
        };
        let bytes = sink.into_inner()?;
        Ok((Bytes::from(bytes), close))
    }

    /// Byte-wise (UTF-8 order) least and greatest of the dictionary entries `ids`.
    fn min_max(&self, ids: impl Iterator<Item = u32>) -> (&[u8], &[u8]) {
        let mut min: Option<&[u8]> = None;
        let mut max: Option<&[u8]> = None;
        for id in ids {
            let v = &*self.dict[id as usize];
            if min.is_none_or(|m| v < m) {
                min = Some(v);
            }
            if max.is_none_or(|m| v > m) {
                max = Some(v);
            }
        }
        (min.unwrap_or_default(), max.unwrap_or_default())
    }
}

/// The values of a run-length string column, one per row (for tests and checks).
pub fn expand(array: &dyn Array) -> Vec<String> {
    let runs = array.as_run::<Int32Type>();
    let values = runs.values().as_string::<i32>();
    let ends = runs.run_ends();
    let mut out = Vec::with_capacity(ends.len());
    for p in ends.get_start_physical_index()..=ends.get_end_physical_index() {
        let end = (ends.values()[p] as usize).saturating_sub(ends.offset()).min(ends.len());
        out.resize(end, values.value(p).to_string());
    }
    out
}

/// Calls `f(value, rows)` for each run of a (possibly sliced)
/// `RunEndEncoded<Int32, Utf8>` array, in order; empty runs are skipped.
fn for_each_run(array: &dyn Array, mut f: impl FnMut(Option<&str>, usize)) -> Result<()> {
    let runs = array
        .as_run_opt::<Int32Type>()
        .ok_or_else(|| ParquetError::General(format!("a run-length column of type {}", array.data_type())))?;
    let values = runs
        .values()
        .as_string_opt::<i32>()
        .ok_or_else(|| ParquetError::General("run-length values that are not strings".into()))?;
    let ends = runs.run_ends();
    let (offset, len) = (ends.offset(), ends.len());
    if len == 0 {
        return Ok(());
    }
    let mut start = 0usize;
    for p in ends.get_start_physical_index()..=ends.get_end_physical_index() {
        let end = (ends.values()[p] as usize).saturating_sub(offset).min(len);
        if end > start {
            f(values.is_valid(p).then(|| values.value(p)), end - start);
            start = end;
        }
    }
    Ok(())
}

/// A run-length string column as a plain `Utf8` array, one value per row.
pub fn expand_to_strings(array: &dyn Array) -> Result<ArrayRef> {
    let mut out = StringBuilder::with_capacity(array.len(), 0);
    for_each_run(array, |value, count| (0..count).for_each(|_| out.append_option(value)))?;
    Ok(Arc::new(out.finish()))
}

// Truncation of byte-array statistics and column-index bounds, by parquet's
// rules (its column writer's, which are not public): a minimum is cut to at
// most `length` bytes (at a character boundary for UTF-8), a maximum is cut
// and its last byte or character incremented so that it stays an upper
// bound. Each returns the bound and whether it was cut.

/// Whether parquet's writer truncates bounds of this byte-array column (not decimals).
fn truncates(descr: &ColumnDescPtr) -> bool {
    descr.converted_type() != ConvertedType::DECIMAL
        && !matches!(descr.logical_type_ref(), Some(LogicalType::Decimal { .. }))
}

fn is_utf8(descr: &ColumnDescPtr) -> bool {
    descr.logical_type_ref() == Some(&LogicalType::String) || descr.converted_type() == ConvertedType::UTF8
}

fn truncate_min(descr: &ColumnDescPtr, length: Option<usize>, data: &[u8]) -> (Vec<u8>, bool) {
    length
        .filter(|l| data.len() > *l && truncates(descr))
        .and_then(|l| match std::str::from_utf8(data) {
            Ok(text) if is_utf8(descr) => (1..=l).rfind(|x| text.is_char_boundary(*x)).map(|cut| data[..cut].to_vec()),
            _ => Some(data[..l].to_vec()),
        })
        .map_or_else(|| (data.to_vec(), false), |cut| (cut, true))
}

fn truncate_max(descr: &ColumnDescPtr, length: Option<usize>, data: &[u8]) -> (Vec<u8>, bool) {
    length
        .filter(|l| data.len() > *l && truncates(descr))
        .and_then(|l| match std::str::from_utf8(data) {
            Ok(text) if is_utf8(descr) => {
                let cut = (l.saturating_sub(3)..=l).rfind(|x| text.is_char_boundary(*x))?;
                increment_utf8(&text[..cut])
            }
            _ => increment_bytes(data[..l].to_vec()),
        })
        .map_or_else(|| (data.to_vec(), false), |cut| (cut, true))
}

/// The text with its last character that can be incremented without
/// changing its encoded width incremented, and the characters after it dropped.
fn increment_utf8(text: &str) -> Option<Vec<u8>> {
    text.char_indices().rev().find_map(|(at, c)| {
        let next = char::from_u32(c as u32 + 1).filter(|n| n.len_utf8() == c.len_utf8())?;
        let mut out = text.as_bytes()[..at + c.len_utf8()].to_vec();
        next.encode_utf8(&mut out[at..]);
        Some(out)
    })
}

/// The bytes incremented as one big-endian number; `None` when all are 0xff.
fn increment_bytes(mut data: Vec<u8>) -> Option<Vec<u8>> {
    for byte in data.iter_mut().rev() {
        let (next, overflow) = byte.overflowing_add(1);
        *byte = next;
        if !overflow {
            return Some(data);
        }
    }
    None
}

fn bits_for(max: usize) -> u8 {
    (usize::BITS - max.leading_zeros()) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::parallel::ParallelWriter;
    use arrow_array::{Int64Array, RecordBatch, StringArray};
    use arrow_schema::Schema;
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::file::metadata::PageIndexPolicy;
    use parquet::file::page_index::column_index::ColumnIndexMetaData;

    /// 300 distinct values (9-bit indices), runs of 1 to 3,000 rows, a run
    /// crossing batch, page and row-group bounds, a value coming back later.
    fn runs() -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> =
            (0..300).map(|i| (format!("run-{:03}-é", 299 - i), 1 + (i * 37) % 3000)).collect();
        v.insert(150, ("run-299-é".into(), 4500));
        v
    }

    #[test]
    fn run_length_columns_read_back_as_strings_with_statistics_and_page_index() {
        let file_schema = Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch_schema = Arc::new(Schema::new(vec![
            Field::new("run_id", run_length_type(), false),
            Field::new("n", DataType::Int64, false),
        ]));
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(parquet::basic::ZstdLevel::try_new(1).unwrap()))
            .set_max_row_group_row_count(Some(100_000))
            .set_data_page_row_count_limit(1000)
            .build();
        let mut expected: Vec<String> = Vec::new();
        let mut out = Vec::new();
        let mut w = ParallelWriter::try_new(&mut out, Arc::clone(&file_schema), props).unwrap();
        let all = runs();
        for part in all.chunks(70) {
            let mut b = RunsBuilder::default();
            for (v, n) in part {
                b.push(v, *n);
                expected.extend(std::iter::repeat_n(v.clone(), *n));
            }
            let col = b.finish();
            let len = col.len();
            let from = expected.len() - len;
            let n = Int64Array::from_iter_values(from as i64..expected.len() as i64);
            let batch = RecordBatch::try_new(Arc::clone(&batch_schema), vec![col, Arc::new(n)]).unwrap();
            w.write(&batch).unwrap();
        }
        w.close().unwrap();
        assert!(expected.len() > 200_000, "the data spans several row groups");

        let opts = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(Bytes::from(out), opts).unwrap();
        assert_eq!(reader.schema().field(0).data_type(), &DataType::Utf8);
        let meta = reader.metadata().clone();
        let mut got = Vec::new();
        let mut rows_seen = 0i64;
        for b in reader.build().unwrap() {
            let b = b.unwrap();
            let s = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..b.num_rows() {
                assert_eq!(n.value(i), rows_seen, "rows stay aligned with the other column");
                rows_seen += 1;
                got.push(s.value(i).to_string());
            }
        }
        assert_eq!(got, expected);

        let mut offset = 0usize;
        for (g, group) in meta.row_groups().iter().enumerate() {
            let rows = &expected[offset..offset + group.num_rows() as usize];
            offset += group.num_rows() as usize;
            let chunk = group.column(0);
            let Some(Statistics::ByteArray(stats)) = chunk.statistics() else { panic!("chunk statistics") };
            assert_eq!(stats.min_opt().unwrap().as_utf8().unwrap(), rows.iter().min().unwrap());
            assert_eq!(stats.max_opt().unwrap().as_utf8().unwrap(), rows.iter().max().unwrap());
            assert!(matches!(chunk.compression(), Compression::ZSTD(_)), "the table's codec");
            let page_index = meta.page_index_for_row_group(g);
            let pages = &page_index.offset_index(0).expect("an offset index").page_locations;
            assert_eq!(pages.len(), rows.len().div_ceil(1000), "pages of 1,000 rows");
            let Some(ColumnIndexMetaData::BYTE_ARRAY(index)) = page_index.column_index(0) else {
                panic!("a byte-array column index")
            };
            for (p, loc) in pages.iter().enumerate() {
                let start = loc.first_row_index as usize;
                let page = &rows[start..(start + 1000).min(rows.len())];
                assert_eq!(index.min_value(p).unwrap(), page.iter().min().unwrap().as_bytes());
                assert_eq!(index.max_value(p).unwrap(), page.iter().max().unwrap().as_bytes());
            }
        }
        assert_eq!(offset, expected.len());
    }

    /// Writes `runs` as one string column with `props`: by runport (a
    /// run-length column through `ParallelWriter`) and by parquet's own
    /// `ArrowWriter` (plain strings).
    fn both_writers(runs: &[(String, usize)], props: &WriterProperties) -> (Bytes, Bytes) {
        let file_schema = Arc::new(Schema::new(vec![Field::new("key", DataType::Utf8, false)]));
        let batch_schema = Arc::new(Schema::new(vec![Field::new("key", run_length_type(), false)]));
        let mut ours = Vec::new();
        let mut w = ParallelWriter::try_new(&mut ours, Arc::clone(&file_schema), props.clone()).unwrap();
        let mut theirs = Vec::new();
        let mut t =
            parquet::arrow::ArrowWriter::try_new(&mut theirs, Arc::clone(&file_schema), Some(props.clone())).unwrap();
        for part in runs.chunks(50) {
            let mut b = RunsBuilder::default();
            let mut plain = Vec::new();
            for (v, n) in part {
                b.push(v, *n);
                plain.extend(std::iter::repeat_n(v.as_str(), *n));
            }
            w.write(&RecordBatch::try_new(Arc::clone(&batch_schema), vec![b.finish()]).unwrap()).unwrap();
            let plain: ArrayRef = Arc::new(StringArray::from(plain));
            t.write(&RecordBatch::try_new(Arc::clone(&file_schema), vec![plain]).unwrap()).unwrap();
        }
        w.close().unwrap();
        t.close().unwrap();
        (Bytes::from(ours), Bytes::from(theirs))
    }

    /// Values, chunk statistics, column index and page row counts of a file's only column.
    fn summary(data: &Bytes) -> (Vec<String>, Vec<String>, Compression) {
        let opts = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(data.clone(), opts).unwrap();
        let meta = reader.metadata().clone();
        let mut values = Vec::new();
        for b in reader.build().unwrap() {
            let b = b.unwrap();
            values.extend(b.column(0).as_string::<i32>().iter().map(|v| v.unwrap().to_string()));
        }
        let mut described = Vec::new();
        for (g, group) in meta.row_groups().iter().enumerate() {
            let chunk = group.column(0);
            described.push(format!("group {g}: {} rows, statistics {:?}", group.num_rows(), chunk.statistics()));
            let index = meta.page_index_for_row_group(g);
            let rows: Vec<i64> =
                index.offset_index(0).unwrap().page_locations.iter().map(|p| p.first_row_index).collect();
            described.push(format!("group {g}: pages at rows {rows:?}"));
            described.push(format!("group {g}: column index {:?}", index.column_index(0)));
        }
        let codec = meta.row_group(0).column(0).compression();
        (values, described, codec)
    }

    #[test]
    fn chunks_match_parquets_own_writer() {
        // Short values, and values past the 64-byte truncation of statistics
        // and column index (a 2-byte character across the cut, a value whose
        // last byte cannot be incremented), in an order that is neither
        // ascending nor descending, then ascending.
        let long = |i: usize| format!("{}{}-{i:03}", "é".repeat(31), "x");
        let mut runs: Vec<(String, usize)> = Vec::new();
        for i in 0..120 {
            let v = match i % 4 {
                0 => format!("k{:03}", (i * 37) % 120),
                1 => long((i * 13) % 120),
                2 => format!("{}\u{7f}", "a".repeat(70)),
                _ => format!("{}{}", "z".repeat(63), "\u{10ffff}"),
            };
            // Multiples of parquet's write batch (100 rows), where its writer checks page bounds.
            runs.push((v, 100 * (1 + (i * 211) % 25)));
        }
        runs.extend((0..60).map(|i| (format!("p{i:03}"), 700)));
        let props = |codec| {
            WriterProperties::builder()
                .set_compression(codec)
                .set_statistics_enabled(EnabledStatistics::Page)
                .set_dictionary_enabled(true)
                .set_data_page_row_count_limit(1000)
                .set_write_batch_size(100)
                .set_max_row_group_row_count(Some(40_000))
                .build()
        };
        for codec in [
            Compression::ZSTD(parquet::basic::ZstdLevel::try_new(1).unwrap()),
            Compression::UNCOMPRESSED,
            Compression::SNAPPY,
            Compression::LZ4_RAW,
            Compression::GZIP(parquet::basic::GzipLevel::default()),
            Compression::BROTLI(parquet::basic::BrotliLevel::default()),
        ] {
            let (ours, theirs) = both_writers(&runs, &props(codec));
            let (ours, theirs) = (summary(&ours), summary(&theirs));
            assert_eq!(ours.2, codec, "the codec asked for");
            assert_eq!(ours.0, theirs.0, "{codec:?}: values");
            assert!(ours.1.len() > 3, "several row groups");
            for (a, b) in ours.1.iter().zip(&theirs.1) {
                assert_eq!(a, b, "{codec:?}");
            }
            assert_eq!(ours.1.len(), theirs.1.len());
        }
    }

    #[test]
    fn slices_and_merged_runs_expand_to_the_same_rows() {
        let mut b = RunsBuilder::default();
        b.push("a", 3);
        b.push("a", 2);
        b.push("b", 0);
        b.push("b", 4);
        let col = b.finish();
        assert_eq!(col.as_run::<Int32Type>().values().len(), 2, "equal neighbours merge");
        assert_eq!(expand(col.as_ref()), ["a", "a", "a", "a", "a", "b", "b", "b", "b"]);
        assert_eq!(expand(col.slice(4, 3).as_ref()), ["a", "b", "b"]);
        let mut chunk = RunLengthChunk::new(2);
        chunk.write(col.slice(4, 3).as_ref()).unwrap();
        chunk.write(col.slice(0, 1).as_ref()).unwrap();
        assert_eq!(chunk.rows(), 4);
        let page_runs: Vec<Vec<(u32, u32)>> = chunk.pages.iter().map(|p| p.runs.clone()).collect();
        assert_eq!(page_runs, [vec![(0, 1), (1, 1)], vec![(1, 1), (0, 1)]]);
        assert!(chunk.write(&StringArray::from(vec!["x"])).is_err(), "plain strings are refused");
    }

    #[test]
    fn plain_arrays_after_run_length_ones_in_a_row_group_are_refused() {
        let file = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
        let rl = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("k", run_length_type(), false)])),
            vec![repeated("a", 3)],
        )
        .unwrap();
        let plain = RecordBatch::try_new(Arc::clone(&file), vec![Arc::new(StringArray::from(vec!["b"]))]).unwrap();
        for (first, second) in [(&rl, &plain), (&plain, &rl)] {
            let mut out = Vec::new();
            let mut w = ParallelWriter::try_new(&mut out, Arc::clone(&file), WriterProperties::default()).unwrap();
            w.write(first).unwrap();
            let err = w.write(second).unwrap_err().to_string();
            assert!(err.contains("mixes run-length and plain"), "{err}");
        }
    }
}
