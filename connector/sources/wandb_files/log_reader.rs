//! The `.wandb` transaction log: a 7-byte header, then the LevelDB log format.
//!
//! The file is a sequence of 32 KiB blocks counted from offset 0 (the header
//! sits in block 0). Each block holds chunks `crc u32 LE | len u16 LE | type u8
//! | payload`; a chunk never crosses a block, and fewer than 7 bytes left in a
//! block are zero padding. Type 1 is a whole record, 2/3/4 are the first,
//! middle and last pieces of a record spread over several blocks. The checksum
//! is plain CRC-32 (IEEE) of the type byte followed by the payload.
//!
//! [`TransactionLogReader`] streams records with one block of memory plus the
//! record being reassembled. Damage never stops it: a bad checksum or a
//! malformed chunk drops the block's remaining chunks (and any record being
//! reassembled) and resumes at the next block; a file that ends inside a chunk
//! or a record yields what was complete. Both are reported as
//! [`LogWarning`]s. Only a file that does not start with the header, or an I/O
//! error, is an error.

use std::io::{self, Read};

/// Size of a log block.
pub const BLOCK_SIZE: usize = 32 * 1024;
/// The file header: `:W&B`, magic 0xBEE1 little-endian, version 0.
pub const HEADER: [u8; 7] = [0x3A, 0x57, 0x26, 0x42, 0xE1, 0xBE, 0x00];
const CHUNK_HEADER: usize = 7;

const FULL: u8 = 1;
const FIRST: u8 = 2;
const MIDDLE: u8 = 3;
const LAST: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("not a W&B transaction log (the file does not start with the .wandb header)")]
    NotATransactionLog,
    #[error("W&B transaction log version {0} is not supported (expected 0)")]
    UnsupportedVersion(u8),
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// Damage found while reading; the reader went on past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogWarning {
    /// Byte offset in the file where the damage was found.
    pub offset: u64,
    pub kind: LogWarningKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogWarningKind {
    /// A chunk failed its checksum or was malformed; the rest of its block was skipped.
    Corrupt,
    /// The file ends inside a chunk or a record; what was complete was kept.
    Truncated,
}

impl std::fmt::Display for LogWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            LogWarningKind::Corrupt => {
                write!(f, "corrupt chunk at byte {}: skipped to the next 32 KiB block", self.offset)
            }
            LogWarningKind::Truncated => {
                write!(f, "file ends inside a record at byte {}: kept what was complete", self.offset)
            }
        }
    }
}

/// A record's bytes and the file offsets it spans.
pub type PlacedRecord<'a> = (&'a [u8], std::ops::Range<u64>);

/// Streams the records of one transaction log. See the module docs.
pub struct TransactionLogReader<R> {
    inner: R,
    block: Vec<u8>,
    /// Valid bytes in `block`.
    block_len: usize,
    /// Position of the next chunk inside `block`.
    block_pos: usize,
    /// File offset of `block[0]`.
    block_offset: u64,
    eof: bool,
    record: Vec<u8>,
    in_fragment: bool,
    fragment_start: u64,
    /// Set after damage, so the orphaned pieces that follow are not reported again.
    after_corruption: bool,
    warnings: Vec<LogWarning>,
    bytes_read: u64,
    /// File offsets where the last record returned starts and ends.
    record_start: u64,
    record_end: u64,
}

enum Found {
    InBlock(usize, usize),
    Assembled,
}

impl<R: Read> TransactionLogReader<R> {
    /// Checks the header and prepares to read records.
    pub fn new(mut inner: R) -> Result<Self, LogError> {
        let mut block = vec![0u8; BLOCK_SIZE];
        let block_len = read_full(&mut inner, &mut block)?;
        if block_len < HEADER.len() || block[..6] != HEADER[..6] {
            return Err(LogError::NotATransactionLog);
        }
        if block[6] != HEADER[6] {
            return Err(LogError::UnsupportedVersion(block[6]));
        }
        Ok(Self {
            inner,
            eof: block_len < BLOCK_SIZE,
            block,
            block_len,
            block_pos: HEADER.len(),
            block_offset: 0,
            record: Vec::new(),
            in_fragment: false,
            fragment_start: 0,
            after_corruption: false,
            warnings: Vec::new(),
            bytes_read: block_len as u64,
            record_start: 0,
            record_end: HEADER.len() as u64,
        })
    }

    /// A reader of the log from `offset`, a block boundary other than the
    /// first (reached by the caller, e.g. by seeking): records that began
    /// before it are skipped as damage.
    pub fn at_block(mut inner: R, offset: u64) -> Result<Self, LogError> {
        debug_assert!(offset > 0 && offset.is_multiple_of(BLOCK_SIZE as u64));
        let mut block = vec![0u8; BLOCK_SIZE];
        let block_len = read_full(&mut inner, &mut block)?;
        Ok(Self {
            inner,
            eof: block_len < BLOCK_SIZE,
            block,
            block_len,
            block_pos: 0,
            block_offset: offset,
            record: Vec::new(),
            in_fragment: false,
            fragment_start: 0,
            after_corruption: true,
            warnings: Vec::new(),
            bytes_read: block_len as u64,
            record_start: offset,
            record_end: offset,
        })
    }

    /// Damage found so far.
    pub fn warnings(&self) -> &[LogWarning] {
        &self.warnings
    }

    /// Bytes read from the file so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The file offset where the last record returned starts (its first chunk's header).
    pub fn record_start(&self) -> u64 {
        self.record_start
    }

    /// The file offset just past the last record returned: where the log's
    /// complete records end so far (the header's end before any).
    pub fn record_end(&self) -> u64 {
        self.record_end
    }

    /// The next record's bytes, or `None` at the end of the log.
    pub fn next_record(&mut self) -> Result<Option<&[u8]>, LogError> {
        Ok(self.next_record_at()?.map(|(rec, _)| rec))
    }

    /// The next record's bytes and where it lies in the file (the
    /// [`Self::record_start`]..[`Self::record_end`] it leaves).
    pub fn next_record_at(&mut self) -> Result<Option<PlacedRecord<'_>>, LogError> {
        let found = loop {
            if self.block_len - self.block_pos < CHUNK_HEADER {
                if !self.next_block()? {
                    return Ok(None);
                }
                continue;
            }
            let at = self.block_pos;
            let h = &self.block[at..at + CHUNK_HEADER];
            let crc = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let len = u16::from_le_bytes([h[4], h[5]]) as usize;
            let kind = h[6];
            if crc == 0 && len == 0 && kind == 0 {
                // Zero-filled space (preallocation or padding): nothing more in this block.
                self.block_pos = self.block_len;
                continue;
            }
            let start = at + CHUNK_HEADER;
            let end = start + len;
            if end > self.block_len {
                if self.eof {
                    // The file ends inside this chunk.
                    self.warn(at, LogWarningKind::Truncated);
                    self.in_fragment = false;
                    self.block_pos = self.block_len;
                    return Ok(None);
                }
                self.corrupt(at);
                continue;
            }
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&[kind]);
            hasher.update(&self.block[start..end]);
            if hasher.finalize() != crc {
                self.corrupt(at);
                continue;
            }
            self.block_pos = end;
            match kind {
                FULL => {
                    self.after_corruption = false;
                    if self.in_fragment {
                        // A record that never got its last piece.
                        self.warn_at(self.fragment_start, LogWarningKind::Corrupt);
                        self.in_fragment = false;
                    }
                    break Found::InBlock(start, end);
                }
                FIRST => {
                    self.after_corruption = false;
                    if self.in_fragment {
                        self.warn_at(self.fragment_start, LogWarningKind::Corrupt);
                    }
                    self.record.clear();
                    self.record.extend_from_slice(&self.block[start..end]);
                    self.in_fragment = true;
                    self.fragment_start = self.block_offset + at as u64;
                }
                MIDDLE | LAST if !self.in_fragment => {
                    // A piece of a record whose beginning was lost: skip it,
                    // reporting it only when no earlier damage explains it.
                    if !self.after_corruption {
                        self.warn(at, LogWarningKind::Corrupt);
                        self.after_corruption = true;
                    }
                }
                MIDDLE => self.record.extend_from_slice(&self.block[start..end]),
                LAST => {
                    self.record.extend_from_slice(&self.block[start..end]);
                    self.in_fragment = false;
                    break Found::Assembled;
                }
                _ => self.corrupt(at),
            }
        };
        self.record_end = self.block_offset + self.block_pos as u64;
        if let Found::InBlock(s, _) = found {
            self.record_start = self.block_offset + (s - CHUNK_HEADER) as u64;
        } else {
            self.record_start = self.fragment_start;
        }
        let at = self.record_start..self.record_end;
        Ok(Some(match found {
            Found::InBlock(s, e) => (&self.block[s..e], at),
            Found::Assembled => (&self.record, at),
        }))
    }

    fn warn(&mut self, pos_in_block: usize, kind: LogWarningKind) {
        self.warn_at(self.block_offset + pos_in_block as u64, kind);
    }

    fn warn_at(&mut self, offset: u64, kind: LogWarningKind) {
        self.warnings.push(LogWarning { offset, kind });
    }

    fn corrupt(&mut self, at: usize) {
        if !self.after_corruption {
            self.warn(at, LogWarningKind::Corrupt);
        }
        self.after_corruption = true;
        self.in_fragment = false;
        self.record.clear();
        self.block_pos = self.block_len;
    }

    /// Loads the next block; false at the end of the file.
    fn next_block(&mut self) -> Result<bool, LogError> {
        let leftover = self.block_len - self.block_pos;
        if self.eof {
            if leftover > 0 && self.block[self.block_pos..self.block_len].iter().any(|&b| b != 0) {
                self.warn(self.block_pos, LogWarningKind::Truncated);
            } else if self.in_fragment {
                self.warn_at(self.fragment_start, LogWarningKind::Truncated);
            }
            self.in_fragment = false;
            self.block_pos = self.block_len;
            return Ok(false);
        }
        self.block_offset += self.block_len as u64;
        self.block_len = read_full(&mut self.inner, &mut self.block)?;
        self.bytes_read += self.block_len as u64;
        self.block_pos = 0;
        self.eof = self.block_len < BLOCK_SIZE;
        if self.block_len == 0 {
            return self.next_block();
        }
        Ok(true)
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes records in the same format (used by tests, fuzzing seeds and benchmarks).
pub fn encode_log(records: &[&[u8]]) -> Vec<u8> {
    let mut out = HEADER.to_vec();
    for rec in records {
        let mut rest: &[u8] = rec;
        let mut first = true;
        loop {
            let left = BLOCK_SIZE - out.len() % BLOCK_SIZE;
            if left < CHUNK_HEADER {
                out.resize(out.len() + left, 0);
                continue;
            }
            let room = left - CHUNK_HEADER;
            let take = rest.len().min(room);
            let last = take == rest.len();
            let kind = match (first, last) {
                (true, true) => FULL,
                (true, false) => FIRST,
                (false, true) => LAST,
                (false, false) => MIDDLE,
            };
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&[kind]);
            hasher.update(&rest[..take]);
            out.extend_from_slice(&hasher.finalize().to_le_bytes());
            out.extend_from_slice(&(take as u16).to_le_bytes());
            out.push(kind);
            out.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            first = false;
            if last {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> (Vec<Vec<u8>>, Vec<LogWarning>) {
        let mut r = TransactionLogReader::new(bytes).expect("valid header");
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().expect("in-memory reads do not fail") {
            out.push(rec.to_vec());
        }
        (out, r.warnings().to_vec())
    }

    fn sample_records() -> Vec<Vec<u8>> {
        // Small records, one spanning three blocks, and one ending so that a
        // block keeps fewer than 7 bytes (padding).
        let mut recs = vec![b"alpha".to_vec(), vec![7u8; 70_000]];
        for i in 0..200 {
            recs.push(vec![i as u8; 100 + i * 3]);
        }
        recs
    }

    #[test]
    fn round_trips_full_and_fragmented_records() {
        let recs = sample_records();
        let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
        let bytes = encode_log(&refs);
        assert!(bytes.len() > 3 * BLOCK_SIZE);
        let (got, warnings) = read_all(&bytes);
        assert_eq!(got, recs);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn record_offsets_are_where_the_log_of_the_records_so_far_ends() {
        let recs = sample_records();
        let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
        let bytes = encode_log(&refs);
        let mut r = TransactionLogReader::new(&bytes[..]).unwrap();
        assert_eq!(r.record_end(), HEADER.len() as u64);
        let mut n = 0;
        let mut previous_end = r.record_end();
        while r.next_record().unwrap().is_some() {
            n += 1;
            // The log of the first n records ends where the n-th record ends
            // (up to the padding of a block that had no room for a header).
            let prefix = encode_log(&refs[..n]);
            assert_eq!(r.record_end(), prefix.len() as u64, "record {n}");
            assert!(r.record_start() >= previous_end && r.record_start() < r.record_end(), "record {n}");
            assert_eq!(&bytes[..prefix.len()], &prefix[..]);
            previous_end = r.record_end();
        }
        assert_eq!(n, recs.len());
    }

    #[test]
    fn padding_at_block_end_is_skipped() {
        // First record fills block 0 up to 3 bytes before its end.
        let first = vec![1u8; BLOCK_SIZE - HEADER.len() - CHUNK_HEADER - 3];
        let bytes = encode_log(&[&first, b"next"]);
        assert_eq!(&bytes[BLOCK_SIZE - 3..BLOCK_SIZE], &[0, 0, 0]);
        let (got, warnings) = read_all(&bytes);
        assert_eq!(got, vec![first, b"next".to_vec()]);
        assert!(warnings.is_empty());
    }

    #[test]
    fn rejects_files_that_are_not_logs() {
        assert!(matches!(TransactionLogReader::new(&b"PAR1 not a log"[..]), Err(LogError::NotATransactionLog)));
        assert!(matches!(TransactionLogReader::new(&b""[..]), Err(LogError::NotATransactionLog)));
        let mut v = HEADER.to_vec();
        v[6] = 9;
        assert!(matches!(TransactionLogReader::new(&v[..]), Err(LogError::UnsupportedVersion(9))));
    }

    #[test]
    fn header_only_file_is_empty_without_warning() {
        let (got, warnings) = read_all(&HEADER);
        assert!(got.is_empty());
        assert!(warnings.is_empty());
    }

    #[test]
    fn bad_checksum_skips_to_next_block() {
        let recs = sample_records();
        let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
        let mut bytes = encode_log(&refs);
        // Damage the payload of "alpha" (first chunk in block 0).
        bytes[HEADER.len() + CHUNK_HEADER] ^= 0xFF;
        let (got, warnings) = read_all(&bytes);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0], LogWarning { offset: HEADER.len() as u64, kind: LogWarningKind::Corrupt });
        // The 70,000-byte record started in block 0, so its later pieces are
        // orphans, skipped without a second warning; reading then resumes.
        assert!(!got.contains(&recs[0]));
        assert!(!got.contains(&recs[1]));
        let tail: Vec<Vec<u8>> = recs[2..].to_vec();
        assert!(got.ends_with(&tail[tail.len() - 150..]));
        // Every record returned is intact.
        for g in &got {
            assert!(recs.contains(g));
        }
    }

    #[test]
    fn truncated_file_keeps_complete_records() {
        let recs = sample_records();
        let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
        let bytes = encode_log(&refs);
        for cut in [bytes.len() - 1, bytes.len() - 50, 40_000, 8, 7 + 3] {
            let (got, warnings) = read_all(&bytes[..cut]);
            assert!(recs.starts_with(&got), "cut at {cut}: records must be a prefix");
            assert_eq!(warnings.len(), 1, "cut at {cut}: {warnings:?}");
            assert_eq!(warnings[0].kind, LogWarningKind::Truncated);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_u64;
        for len in [8usize, 100, 40_000, 70_000] {
            for _ in 0..20 {
                let mut bytes = HEADER.to_vec();
                while bytes.len() < len {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    bytes.push(seed as u8);
                }
                let _ = read_all(&bytes);
            }
        }
    }
}
