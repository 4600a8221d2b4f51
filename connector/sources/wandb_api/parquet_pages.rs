//! The pages of an exported history file, for parquet's Arrow reader, with
//! one zstd decompression context per thread.
//!
//! parquet's own page reader creates a codec (a zstd compression and a
//! decompression context) for every column chunk it opens; the server's
//! files hold one chunk per key, and every context asks the CPU for its
//! features (`cpuid`, which traps in a virtual machine): that was 4% of an
//! API export's CPU. Here the page headers are read from the file's bytes
//! (Thrift's compact protocol, the fields a reader needs), zstd pages are
//! decompressed with the thread's context, and the pages go to parquet's
//! Arrow reader ([`ParquetRecordBatchReader::try_new_with_row_groups`]),
//! which decodes them as it decodes its own. Files with another codec are
//! read by parquet's own page reader (see [`handles`]).

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;
use parquet::arrow::FieldLevels;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, RowGroups};
use parquet::basic::{Compression, Encoding};
use parquet::column::page::{Page, PageIterator, PageMetadata, PageReader};
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};

/// Pages larger than this are refused (a file would need a corrupt header to
/// announce one; parquet writers cut pages at about 1 MiB).
const MAX_PAGE: usize = 1 << 30;

/// Whether every column chunk of the file is zstd-compressed or plain.
pub fn handles(meta: &ParquetMetaData) -> bool {
    meta.row_groups()
        .iter()
        .flat_map(|rg| rg.columns())
        .all(|c| matches!(c.compression(), Compression::UNCOMPRESSED | Compression::ZSTD(_)))
}

/// Checks that every column chunk lies inside the file (parquet's own page
/// reader panics on a negative offset or size).
pub fn check_chunks(meta: &ParquetMetaData, file_len: usize) -> Result<()> {
    let mut rows = 0i64;
    for (g, rg) in meta.row_groups().iter().enumerate() {
        rows = rows
            .checked_add(rg.num_rows())
            .filter(|_| rg.num_rows() >= 0)
            .ok_or_else(|| err(format!("row group {g} of {} rows", rg.num_rows())))?;
        for i in 0..rg.num_columns() {
            chunk_range(rg, g, i, file_len)?;
        }
    }
    Ok(())
}

/// Walks every page header of every column chunk: for files parquet's own
/// page reader reads (other codecs), whose header parser is slow or panics
/// on some damaged headers that runport's refuses at once.
pub fn check_pages(data: &Bytes, meta: &ParquetMetaData) -> Result<()> {
    for (g, rg) in meta.row_groups().iter().enumerate() {
        for i in 0..rg.num_columns() {
            let range = chunk_range(rg, g, i, data.len())?;
            let mut pages = ChunkPages::new(data.slice(range), false);
            while pages.next_raw(true)?.is_some() {}
        }
    }
    Ok(())
}

/// The bytes of column `i` of row group `g`.
fn chunk_range(rg: &RowGroupMetaData, g: usize, i: usize, file_len: usize) -> Result<std::ops::Range<usize>> {
    let col = rg.columns().get(i).ok_or_else(|| err(format!("row group {g} has no column {i}")))?;
    let start = col.dictionary_page_offset().unwrap_or(col.data_page_offset());
    usize::try_from(start)
        .ok()
        .zip(usize::try_from(col.compressed_size()).ok())
        .and_then(|(s, n)| Some(s..s.checked_add(n)?))
        .filter(|r| r.end <= file_len)
        .ok_or_else(|| {
            err(format!(
                "column {} of row group {g}: bytes {start}+{} outside the file ({file_len} bytes)",
                col.column_path(),
                col.compressed_size(),
            ))
        })
}

/// Reads the columns of `levels` (projected from the file's schema) from the
/// file's bytes.
pub fn reader(
    data: Bytes,
    meta: Arc<ParquetMetaData>,
    levels: &FieldLevels,
    batch_size: usize,
) -> Result<ParquetRecordBatchReader> {
    ParquetRecordBatchReader::try_new_with_row_groups(levels, &File { data, meta }, batch_size, None)
}

struct File {
    data: Bytes,
    meta: Arc<ParquetMetaData>,
}

impl RowGroups for File {
    fn num_rows(&self) -> usize {
        self.meta.row_groups().iter().fold(0usize, |n, rg| n.saturating_add(rg.num_rows().max(0) as usize))
    }

    fn column_chunks(&self, i: usize) -> Result<Box<dyn PageIterator>> {
        let mut chunks = Vec::with_capacity(self.meta.num_row_groups());
        for (g, rg) in self.meta.row_groups().iter().enumerate() {
            let range = chunk_range(rg, g, i, self.data.len())?;
            let pages =
                ChunkPages::new(self.data.slice(range), rg.column(i).compression() != Compression::UNCOMPRESSED);
            chunks.push(Ok(Box::new(pages) as Box<dyn PageReader>));
        }
        Ok(Box::new(Chunks(chunks.into_iter())))
    }

    fn row_groups(&self) -> Box<dyn Iterator<Item = &RowGroupMetaData> + '_> {
        Box::new(self.meta.row_groups().iter())
    }

    fn metadata(&self) -> &ParquetMetaData {
        &self.meta
    }
}

struct Chunks(std::vec::IntoIter<Result<Box<dyn PageReader>>>);

impl Iterator for Chunks {
    type Item = Result<Box<dyn PageReader>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

impl PageIterator for Chunks {}

/// The pages of one column chunk.
struct ChunkPages {
    data: Bytes,
    pos: usize,
    zstd: bool,
    /// A dictionary page came: dictionary-encoded data pages may follow
    /// (parquet's decoder panics on one without it).
    has_dictionary: bool,
}

impl ChunkPages {
    fn new(data: Bytes, zstd: bool) -> ChunkPages {
        ChunkPages { data, pos: 0, zstd, has_dictionary: false }
    }

    /// A dictionary-encoded data page needs the chunk's dictionary page
    /// before it (parquet's decoder panics without one).
    fn check_dictionary(&self, encoding: Encoding) -> Result<()> {
        #[allow(deprecated)]
        let needs = matches!(encoding, Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY);
        if needs && !self.has_dictionary {
            return Err(err("a dictionary-encoded data page without a dictionary page".into()));
        }
        Ok(())
    }

    /// The next page's header and body (index pages and unknown kinds skipped).
    fn next_raw(&mut self, advance: bool) -> Result<Option<(Header, Bytes)>> {
        let mut pos = self.pos;
        loop {
            if pos >= self.data.len() {
                if advance {
                    self.pos = pos;
                }
                return Ok(None);
            }
            let (len, header) = Header::read(&self.data[pos..])?;
            let start = pos + len;
            let end = start
                .checked_add(header.compressed)
                .filter(|&e| e <= self.data.len())
                .ok_or_else(|| err(format!("a page of {} bytes runs past its column chunk", header.compressed)))?;
            pos = end;
            if matches!(header.kind, Kind::Dictionary(_) | Kind::V1(_) | Kind::V2(_)) {
                if advance {
                    self.pos = pos;
                }
                return Ok(Some((header, self.data.slice(start..end))));
            }
        }
    }
}

impl Iterator for ChunkPages {
    type Item = Result<Page>;
    fn next(&mut self) -> Option<Self::Item> {
        self.get_next_page().transpose()
    }
}

impl PageReader for ChunkPages {
    fn get_next_page(&mut self) -> Result<Option<Page>> {
        let Some((h, body)) = self.next_raw(true)? else { return Ok(None) };
        let size = h.uncompressed;
        Ok(Some(match h.kind {
            Kind::Dictionary(d) => {
                self.has_dictionary = true;
                Page::DictionaryPage {
                    buf: self.body(body, 0, size, true)?,
                    num_values: d.num_values,
                    encoding: d.encoding,
                    is_sorted: d.is_sorted,
                }
            }
            Kind::V1(d) => {
                self.check_dictionary(d.encoding)?;
                Page::DataPage {
                    buf: self.body(body, 0, size, true)?,
                    num_values: d.num_values,
                    encoding: d.encoding,
                    def_level_encoding: d.def_level_encoding,
                    rep_level_encoding: d.rep_level_encoding,
                    statistics: None,
                }
            }
            Kind::V2(d) => {
                self.check_dictionary(d.encoding)?;
                let levels = d.def_levels_byte_len as usize + d.rep_levels_byte_len as usize;
                Page::DataPageV2 {
                    buf: self.body(body, levels, size, d.is_compressed)?,
                    num_values: d.num_values,
                    encoding: d.encoding,
                    num_nulls: d.num_nulls,
                    num_rows: d.num_rows,
                    def_levels_byte_len: d.def_levels_byte_len,
                    rep_levels_byte_len: d.rep_levels_byte_len,
                    is_compressed: d.is_compressed,
                    statistics: None,
                }
            }
            Kind::Other => return Err(err("an index page read as data".into())),
        }))
    }

    fn peek_next_page(&mut self) -> Result<Option<PageMetadata>> {
        Ok(self.next_raw(false)?.map(|(h, _)| match h.kind {
            Kind::V1(d) => PageMetadata { num_rows: None, num_levels: Some(d.num_values as usize), is_dict: false },
            Kind::V2(d) => PageMetadata {
                num_rows: Some(d.num_rows as usize),
                num_levels: Some(d.num_values as usize),
                is_dict: false,
            },
            Kind::Dictionary(_) | Kind::Other => PageMetadata { num_rows: None, num_levels: None, is_dict: true },
        }))
    }

    fn skip_next_page(&mut self) -> Result<()> {
        self.next_raw(true).map(|_| ())
    }
}

impl ChunkPages {
    /// The page's bytes as the decoders want them: the first `levels` bytes
    /// as stored, the rest decompressed when the chunk and page are
    /// compressed; `size` bytes in all.
    fn body(&self, body: Bytes, levels: usize, size: usize, compressed: bool) -> Result<Bytes> {
        if !self.zstd || !compressed {
            if body.len() != size {
                return Err(err(format!("an uncompressed page of {} bytes announced as {size}", body.len())));
            }
            return Ok(body);
        }
        if levels > body.len() || levels > size {
            return Err(err(format!("page levels of {levels} bytes in a page of {} bytes", body.len())));
        }
        if size > MAX_PAGE {
            return Err(err(format!("a page of {size} bytes (at most {MAX_PAGE} are read)")));
        }
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&body[..levels]);
        if size > levels {
            decompress(&body[levels..], &mut out)?;
        }
        if out.len() != size {
            return Err(err(format!("a page decompressed to {} bytes, its header says {size}", out.len())));
        }
        Ok(Bytes::from(out))
    }
}

thread_local! {
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Appends the decompressed `src` to `out`, within `out`'s capacity.
fn decompress(src: &[u8], out: &mut Vec<u8>) -> Result<()> {
    ZSTD.with_borrow_mut(|slot| {
        let dctx = match slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new().map_err(|e| err(format!("zstd: {e}")))?),
        };
        let at = out.len() as u64;
        let mut cursor = std::io::Cursor::new(out);
        cursor.set_position(at);
        dctx.decompress_to_buffer(src, &mut cursor).map_err(|e| err(format!("zstd page: {e}")))?;
        Ok(())
    })
}

fn err(message: String) -> ParquetError {
    ParquetError::General(message)
}

/// What a reader needs of a `PageHeader`.
#[derive(Debug, PartialEq)]
struct Header {
    kind: Kind,
    uncompressed: usize,
    compressed: usize,
}

#[derive(Debug, PartialEq)]
enum Kind {
    Dictionary(DictionaryHeader),
    V1(V1Header),
    V2(V2Header),
    Other,
}

#[derive(Debug, PartialEq)]
struct DictionaryHeader {
    num_values: u32,
    encoding: Encoding,
    is_sorted: bool,
}

#[derive(Debug, PartialEq)]
struct V1Header {
    num_values: u32,
    encoding: Encoding,
    def_level_encoding: Encoding,
    rep_level_encoding: Encoding,
}

#[derive(Debug, PartialEq)]
struct V2Header {
    num_values: u32,
    num_nulls: u32,
    num_rows: u32,
    encoding: Encoding,
    def_levels_byte_len: u32,
    rep_levels_byte_len: u32,
    is_compressed: bool,
}

impl Header {
    /// Reads a header from the start of `buf`; returns its length in bytes.
    fn read(buf: &[u8]) -> Result<(usize, Header)> {
        let mut r = Compact { buf, pos: 0 };
        let h = Header::fields(&mut r).map_err(|e| err(format!("page header: {e}")))?;
        Ok((r.pos, h))
    }

    fn fields(r: &mut Compact) -> std::result::Result<Header, String> {
        let (mut kind, mut uncompressed, mut compressed) = (None, None, None);
        let (mut dict, mut v1, mut v2) = (None, None, None);
        r.fields(0, |r, id, ty| {
            match (id, ty) {
                (1, I32) => kind = Some(r.i32()?),
                (2, I32) => uncompressed = Some(r.i32()?),
                (3, I32) => compressed = Some(r.i32()?),
                (5, STRUCT) => v1 = Some(V1Header::read(r)?),
                (7, STRUCT) => dict = Some(DictionaryHeader::read(r)?),
                (8, STRUCT) => v2 = Some(V2Header::read(r)?),
                _ => r.skip(ty, 1)?,
            }
            Ok(())
        })?;
        let size = |v: Option<i32>, what: &str| -> std::result::Result<usize, String> {
            let v = v.ok_or_else(|| format!("no {what}"))?;
            usize::try_from(v).map_err(|_| format!("{what} {v}"))
        };
        let kind = match kind.ok_or("no page type")? {
            0 => Kind::V1(v1.ok_or("a data page without its header")?),
            2 => Kind::Dictionary(dict.ok_or("a dictionary page without its header")?),
            3 => Kind::V2(v2.ok_or("a data page v2 without its header")?),
            _ => Kind::Other,
        };
        Ok(Header {
            kind,
            uncompressed: size(uncompressed, "uncompressed size")?,
            compressed: size(compressed, "compressed size")?,
        })
    }
}

impl DictionaryHeader {
    fn read(r: &mut Compact) -> std::result::Result<Self, String> {
        let (mut n, mut enc, mut sorted) = (None, None, false);
        r.fields(1, |r, id, ty| {
            match (id, ty) {
                (1, I32) => n = Some(count(r.i32()?, "values")?),
                (2, I32) => enc = Some(encoding(r.i32()?)?),
                (3, TRUE | FALSE) => sorted = ty == TRUE,
                _ => r.skip(ty, 2)?,
            }
            Ok(())
        })?;
        Ok(DictionaryHeader {
            num_values: n.ok_or("no value count")?,
            encoding: enc.ok_or("no encoding")?,
            is_sorted: sorted,
        })
    }
}

impl V1Header {
    fn read(r: &mut Compact) -> std::result::Result<Self, String> {
        let (mut n, mut enc, mut def, mut rep) = (None, None, None, None);
        r.fields(1, |r, id, ty| {
            match (id, ty) {
                (1, I32) => n = Some(count(r.i32()?, "values")?),
                (2, I32) => enc = Some(encoding(r.i32()?)?),
                (3, I32) => def = Some(encoding(r.i32()?)?),
                (4, I32) => rep = Some(encoding(r.i32()?)?),
                _ => r.skip(ty, 2)?,
            }
            Ok(())
        })?;
        Ok(V1Header {
            num_values: n.ok_or("no value count")?,
            encoding: enc.ok_or("no encoding")?,
            def_level_encoding: def.ok_or("no definition level encoding")?,
            rep_level_encoding: rep.ok_or("no repetition level encoding")?,
        })
    }
}

impl V2Header {
    fn read(r: &mut Compact) -> std::result::Result<Self, String> {
        let (mut n, mut nulls, mut rows, mut enc, mut def, mut rep, mut compressed) =
            (None, None, None, None, None, None, true);
        r.fields(1, |r, id, ty| {
            match (id, ty) {
                (1, I32) => n = Some(count(r.i32()?, "values")?),
                (2, I32) => nulls = Some(count(r.i32()?, "nulls")?),
                (3, I32) => rows = Some(count(r.i32()?, "rows")?),
                (4, I32) => enc = Some(encoding(r.i32()?)?),
                (5, I32) => def = Some(count(r.i32()?, "definition level bytes")?),
                (6, I32) => rep = Some(count(r.i32()?, "repetition level bytes")?),
                (7, TRUE | FALSE) => compressed = ty == TRUE,
                _ => r.skip(ty, 2)?,
            }
            Ok(())
        })?;
        Ok(V2Header {
            num_values: n.ok_or("no value count")?,
            num_nulls: nulls.ok_or("no null count")?,
            num_rows: rows.ok_or("no row count")?,
            encoding: enc.ok_or("no encoding")?,
            def_levels_byte_len: def.ok_or("no definition level length")?,
            rep_levels_byte_len: rep.ok_or("no repetition level length")?,
            is_compressed: compressed,
        })
    }
}

fn count(v: i32, what: &str) -> std::result::Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{v} {what}"))
}

#[allow(deprecated)]
fn encoding(v: i32) -> std::result::Result<Encoding, String> {
    Ok(match v {
        0 => Encoding::PLAIN,
        2 => Encoding::PLAIN_DICTIONARY,
        3 => Encoding::RLE,
        4 => Encoding::BIT_PACKED,
        5 => Encoding::DELTA_BINARY_PACKED,
        6 => Encoding::DELTA_LENGTH_BYTE_ARRAY,
        7 => Encoding::DELTA_BYTE_ARRAY,
        8 => Encoding::RLE_DICTIONARY,
        9 => Encoding::BYTE_STREAM_SPLIT,
        _ => return Err(format!("unknown encoding {v}")),
    })
}

// Thrift compact protocol field types.
const TRUE: u8 = 1;
const FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;

/// Nesting deeper than this is refused (a page header nests three levels).
const MAX_DEPTH: usize = 16;

/// A reader of Thrift's compact protocol.
struct Compact<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Parsed<T> = std::result::Result<T, String>;

impl Compact<'_> {
    fn byte(&mut self) -> Parsed<u8> {
        let b = *self.buf.get(self.pos).ok_or("cut short")?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Parsed<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift.min(63);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint of more than 10 bytes".into())
    }

    fn i64(&mut self) -> Parsed<i64> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn i32(&mut self) -> Parsed<i32> {
        let v = self.i64()?;
        i32::try_from(v).map_err(|_| format!("{v} is not a 32-bit integer"))
    }

    /// Calls `field(self, id, type)` for each field of a struct, until its
    /// stop byte; `field` must read or skip the value.
    fn fields(&mut self, depth: usize, mut field: impl FnMut(&mut Self, i16, u8) -> Parsed<()>) -> Parsed<()> {
        if depth > MAX_DEPTH {
            return Err("nested too deep".into());
        }
        let mut last = 0i16;
        loop {
            let b = self.byte()?;
            if b == 0 {
                return Ok(());
            }
            let ty = b & 0x0f;
            let delta = (b >> 4) as i16;
            let id = if delta == 0 {
                i16::try_from(self.i64()?).map_err(|_| "a field id out of range")?
            } else {
                last.checked_add(delta).ok_or("a field id out of range")?
            };
            last = id;
            field(self, id, ty)?;
        }
    }

    /// Skips an element of a list, set or map: a boolean is a byte there.
    fn skip_element(&mut self, ty: u8, depth: usize) -> Parsed<()> {
        if ty == TRUE || ty == FALSE { self.byte().map(|_| ()) } else { self.skip(ty, depth) }
    }

    fn skip(&mut self, ty: u8, depth: usize) -> Parsed<()> {
        if depth > MAX_DEPTH {
            return Err("nested too deep".into());
        }
        match ty {
            TRUE | FALSE => {}
            BYTE => {
                self.byte()?;
            }
            I16 | I32 | I64 => {
                self.varint()?;
            }
            DOUBLE => self.bytes(8)?,
            BINARY => {
                let n = usize::try_from(self.varint()?).map_err(|_| "a length out of range")?;
                self.bytes(n)?;
            }
            LIST | SET => {
                let b = self.byte()?;
                let n = match b >> 4 {
                    15 => usize::try_from(self.varint()?).map_err(|_| "a length out of range")?,
                    n => n as usize,
                };
                for _ in 0..n {
                    self.skip_element(b & 0x0f, depth + 1)?;
                }
            }
            MAP => {
                let n = usize::try_from(self.varint()?).map_err(|_| "a length out of range")?;
                if n > 0 {
                    let kv = self.byte()?;
                    for _ in 0..n {
                        self.skip_element(kv >> 4, depth + 1)?;
                        self.skip_element(kv & 0x0f, depth + 1)?;
                    }
                }
            }
            STRUCT => self.fields(depth + 1, |r, _, t| r.skip(t, depth + 1))?,
            other => return Err(format!("unknown field type {other}")),
        }
        Ok(())
    }

    fn bytes(&mut self, n: usize) -> Parsed<()> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or("cut short")?;
        self.pos = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::{ArrowWriter, ProjectionMask, parquet_to_arrow_field_levels};
    use parquet::basic::ZstdLevel;
    use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};

    fn batch(n: usize, seed: u64) -> RecordBatch {
        let mut x = seed;
        let mut next = move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            x >> 11
        };
        let step: ArrayRef = Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i * 2)));
        let loss: ArrayRef = Arc::new(Float64Array::from_iter((0..n).map(|i| {
            let r = next();
            (i % 7 != 3).then_some(r as f64 / 1e6)
        })));
        // few distinct values: dictionary pages
        let acc: ArrayRef = Arc::new(Float64Array::from_iter_values((0..n).map(|_| (next() % 5) as f64)));
        let name: ArrayRef =
            Arc::new(StringArray::from_iter((0..n).map(|i| (i % 4 != 0).then(|| format!("v{}", next() % 9)))));
        RecordBatch::try_from_iter([("_step", step), ("loss", loss), ("acc", acc), ("name", name)]).unwrap()
    }

    fn file(props: WriterProperties, batches: &[RecordBatch]) -> Bytes {
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, batches[0].schema(), Some(props)).unwrap();
        for b in batches {
            w.write(b).unwrap();
            w.flush().unwrap();
        }
        w.close().unwrap();
        Bytes::from(out)
    }

    fn read_ours(data: &Bytes, roots: &[usize]) -> Result<Vec<RecordBatch>> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(data.clone())?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
        let levels = parquet_to_arrow_field_levels(builder.parquet_schema(), mask, Some(builder.schema().fields()))?;
        reader(data.clone(), Arc::clone(builder.metadata()), &levels, 1000)?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))
    }

    fn read_theirs(data: &Bytes, roots: &[usize]) -> Vec<RecordBatch> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(data.clone()).unwrap();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
        builder.with_projection(mask).with_batch_size(1000).build().unwrap().map(|b| b.unwrap()).collect()
    }

    #[test]
    fn pages_read_as_parquets_own_reader_reads_them() {
        let batches = [batch(2500, 1), batch(1700, 2)];
        let zstd = Compression::ZSTD(ZstdLevel::try_new(3).unwrap());
        let configs = [
            ("zstd v1", WriterProperties::builder().set_compression(zstd).build()),
            (
                "zstd v2",
                WriterProperties::builder()
                    .set_compression(zstd)
                    .set_writer_version(WriterVersion::PARQUET_2_0)
                    .build(),
            ),
            ("plain v1", WriterProperties::builder().set_compression(Compression::UNCOMPRESSED).build()),
            (
                "plain v2, small pages, page statistics",
                WriterProperties::builder()
                    .set_compression(Compression::UNCOMPRESSED)
                    .set_writer_version(WriterVersion::PARQUET_2_0)
                    .set_data_page_row_count_limit(100)
                    .set_write_batch_size(50)
                    .set_statistics_enabled(EnabledStatistics::Page)
                    .build(),
            ),
            (
                "zstd, small pages, no dictionary",
                WriterProperties::builder()
                    .set_compression(zstd)
                    .set_dictionary_enabled(false)
                    .set_data_page_row_count_limit(300)
                    .set_write_batch_size(100)
                    .build(),
            ),
        ];
        for (what, props) in configs {
            let data = file(props, &batches);
            let meta = ParquetRecordBatchReaderBuilder::try_new(data.clone()).unwrap().metadata().clone();
            assert!(handles(&meta), "{what}");
            assert_eq!(meta.num_row_groups(), 2, "{what}");
            for roots in [vec![0, 1, 2, 3], vec![1], vec![3, 0]] {
                let ours = read_ours(&data, &roots).unwrap();
                let theirs = read_theirs(&data, &roots);
                assert_eq!(ours, theirs, "{what}, columns {roots:?}");
                assert_eq!(ours.iter().map(|b| b.num_rows()).sum::<usize>(), 4200, "{what}");
            }
        }
        let snappy = file(WriterProperties::builder().set_compression(Compression::SNAPPY).build(), &batches);
        let meta = ParquetRecordBatchReaderBuilder::try_new(snappy).unwrap().metadata().clone();
        assert!(!handles(&meta), "another codec goes to parquet's own reader");
    }

    #[test]
    fn damaged_pages_are_errors_not_panics() {
        let zstd = Compression::ZSTD(ZstdLevel::try_new(1).unwrap());
        let data = file(
            WriterProperties::builder().set_compression(zstd).set_data_page_row_count_limit(500).build(),
            &[batch(3000, 7)],
        );
        let good = read_theirs(&data, &[0, 1, 2, 3]);
        // The footer stays intact (it is parsed by parquet); the pages are damaged.
        let footer = u32::from_le_bytes(data[data.len() - 8..data.len() - 4].try_into().unwrap()) as usize + 8;
        let pages_end = data.len() - footer;
        let mut x = 12345u64;
        let mut errors = 0;
        for round in 0..400 {
            let mut bad = data.to_vec();
            for _ in 0..1 + round % 4 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let at = 4 + (x >> 33) as usize % (pages_end - 4);
                bad[at] = match round % 3 {
                    0 => bad[at] ^ 0xff,
                    1 => 0,
                    _ => (x >> 13) as u8,
                };
            }
            let bad = Bytes::from(bad);
            match std::panic::catch_unwind(|| read_ours(&bad, &[0, 1, 2, 3])) {
                Ok(Ok(batches)) => {
                    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3000, "round {round}")
                }
                Ok(Err(_)) => errors += 1,
                Err(_) => panic!("round {round}: a damaged page made the reader panic"),
            }
        }
        assert!(errors > 100, "damage must be found: {errors} errors in 400 rounds");
        // Cut short: every truncation of a column chunk is an error.
        let builder = ParquetRecordBatchReaderBuilder::try_new(data.clone()).unwrap();
        let meta = builder.metadata();
        let levels = parquet_to_arrow_field_levels(
            builder.parquet_schema(),
            ProjectionMask::all(),
            Some(builder.schema().fields()),
        )
        .unwrap();
        let col = meta.row_group(0).column(1);
        let chunk = col.dictionary_page_offset().unwrap_or(col.data_page_offset()) as usize;
        for cut in [chunk + 1, chunk + 5, chunk + col.compressed_size() as usize - 1] {
            let short = data.slice(..cut);
            let result = reader(short, Arc::clone(meta), &levels, 1000)
                .and_then(|r| r.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| err(e.to_string())));
            assert!(result.is_err(), "a file cut at {cut} must fail");
        }
        assert_eq!(read_ours(&data, &[0, 1, 2, 3]).unwrap(), good);
    }

    #[test]
    fn a_dictionary_page_missing_is_an_error() {
        let data = file(WriterProperties::builder().build(), &[batch(300, 3)]);
        let meta = ParquetRecordBatchReaderBuilder::try_new(data.clone()).unwrap().metadata().clone();
        let at = meta.row_group(0).column(2).dictionary_page_offset().expect("acc has a dictionary") as usize;
        // The header's first field is the page type (2, zigzag 4): make it an index page (1), which is skipped.
        assert_eq!(&data[at..at + 2], [0x15, 0x04]);
        let mut bad = data.to_vec();
        bad[at + 1] = 0x02;
        let e = read_ours(&Bytes::from(bad), &[2]).unwrap_err();
        assert!(e.to_string().contains("without a dictionary page"), "{e}");
    }

    #[test]
    fn thrift_fields_are_skipped_whatever_their_type() {
        // A data page header with unknown fields of every type around the
        // known ones (ids 100.., a list of booleans, a map, a nested struct).
        let mut h = vec![0x15, 0x00]; // 1: type = 0 (i32, zigzag)
        h.extend([0x15, 0xa0, 0x1f]); // 2: uncompressed = 2000
        h.extend([0x15, 0xa0, 0x1f]); // 3: compressed = 2000
        h.extend([0x0c, 0xc8, 0x01]); // field 100, struct (long form, id zigzag 200 = 100)
        h.extend([0x19, 0x31, 0x01, 0x02, 0x01]); // 1: list<bool> of 3
        h.extend([0x1b, 0x01, 0x58, 0x02, 0x00]); // 2: map<i32, binary> of 1: 1 -> "" (length 0)
        h.extend([0x1c, 0x17, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x00]); // 3: struct { 1: double 1.0 }
        h.push(0x00); // end of field 100
        h.extend([0x0c, 0xf2, 0x01]); // field 121 (long form), struct: we go back to id 5 by long form next
        h.push(0x00);
        h.extend([0x0c, 0x0a]); // field 5 (long form, zigzag 10), data page header
        h.extend([0x15, 0xe8, 0x07, 0x15, 0x00, 0x15, 0x06, 0x15, 0x06, 0x00]);
        h.push(0x00);
        h.extend([1, 2, 3]); // the page body starts here
        let (len, header) = Header::read(&h).unwrap();
        assert_eq!(len, h.len() - 3);
        assert_eq!(
            header,
            Header {
                kind: Kind::V1(V1Header {
                    num_values: 500,
                    encoding: Encoding::PLAIN,
                    def_level_encoding: Encoding::RLE,
                    rep_level_encoding: Encoding::RLE,
                }),
                uncompressed: 2000,
                compressed: 2000,
            }
        );
        for cut in 0..len {
            assert!(Header::read(&h[..cut]).is_err(), "a header cut at {cut} must fail");
        }
        // A short-form delta after the largest long-form id overflows i16: an error.
        let mut over = vec![0x15, 0x00]; // 1: type = 0
        over.extend([0x05, 0xfe, 0xff, 0x03, 0x00]); // field 32767 (long form, zigzag 65534), i32 0
        over.extend([0x15, 0x00]); // field 32767 + 1, i32 0
        over.push(0x00);
        assert!(Header::read(&over).unwrap_err().to_string().contains("field id out of range"));
        // Deep nesting is refused, not followed.
        let mut deep = vec![0x15, 0x00];
        deep.extend(std::iter::repeat_n(0x1c, 1000));
        assert!(Header::read(&deep).unwrap_err().to_string().contains("deep"));
    }
}
