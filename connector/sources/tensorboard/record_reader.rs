//! The TFRecord framing of TensorBoard event files: each record is
//!
//! ```text
//! u64 length (little-endian) | u32 masked CRC-32C of the length bytes
//! data (length bytes)        | u32 masked CRC-32C of the data
//! ```
//!
//! A mask is `((crc >> 15) | (crc << 17)) + 0xa282ead8`. Both checksums are
//! checked. The framing has no markers to find the next record by:
//!
//! - a record whose data fails its checksum is skipped (its length is
//!   trusted: it passed its own checksum);
//! - a length that fails its checksum cannot be trusted, so the reader looks
//!   for the next offset where a whole record passes both checks, and
//!   resumes there;
//! - a record cut short by the end of the file (a writer still writing, or a
//!   crash) ends the file.
//!
//! Each of these is a [`RecordWarning`] naming the offset; nothing panics on
//! any input.

use std::fmt;
use std::io::{self, Read};

/// Bytes before a record's data: the length and its checksum.
const HEADER: usize = 12;
/// Bytes after it: the data's checksum.
const FOOTER: usize = 4;
/// A record longer than this is refused even with a valid length checksum
/// (TensorBoard's own records are small; an image is a few MB).
pub const MAX_RECORD: u64 = 1 << 30;
/// Bytes read from the file at a time.
const READ_SIZE: usize = 256 * 1024;

/// The masked CRC-32C of `data`, as TFRecord writes it.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// Damage passed over in an event file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordWarning {
    /// Byte offset of the damaged record (or of the damaged bytes).
    pub offset: u64,
    pub kind: RecordWarningKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordWarningKind {
    /// The data failed its checksum; the record was skipped.
    DataChecksum,
    /// The length failed its checksum (or was implausible); the bytes up to
    /// the next whole record (this many) were skipped.
    LengthChecksum { skipped: u64 },
    /// The file ends inside a record (this many bytes of it were there).
    Truncated { have: u64 },
}

impl fmt::Display for RecordWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RecordWarningKind::DataChecksum => {
                write!(f, "record at offset {} skipped: its data fails its checksum", self.offset)
            }
            RecordWarningKind::LengthChecksum { skipped } => write!(
                f,
                "bad record length at offset {}: {skipped} bytes skipped to the next whole record",
                self.offset
            ),
            RecordWarningKind::Truncated { have } => {
                write!(f, "the file ends inside the record at offset {} ({have} bytes of it)", self.offset)
            }
        }
    }
}

/// Reads the records of one event file in order.
pub struct RecordReader<R> {
    r: R,
    buf: Vec<u8>,
    /// Where the next record starts in `buf`.
    pos: usize,
    /// The file offset of `buf[0]`.
    base: u64,
    eof: bool,
    warnings: Vec<RecordWarning>,
}

impl<R: Read> RecordReader<R> {
    pub fn new(r: R) -> RecordReader<R> {
        RecordReader { r, buf: Vec::new(), pos: 0, base: 0, eof: false, warnings: Vec::new() }
    }

    /// Damage passed over so far.
    pub fn warnings(&self) -> &[RecordWarning] {
        &self.warnings
    }

    /// The offset where the next record would start (past every complete
    /// record read so far, and past skipped damage).
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Makes at least `need` bytes from `pos` available, unless the file
    /// ends first; returns whether they are.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        while self.buf.len() - self.pos < need {
            if self.eof {
                return Ok(false);
            }
            if self.pos > 0 && self.pos >= self.buf.len() / 2 {
                self.buf.drain(..self.pos);
                self.base += self.pos as u64;
                self.pos = 0;
            }
            let start = self.buf.len();
            let want = READ_SIZE.max(need - (start - self.pos));
            self.buf.resize(start + want, 0);
            let n = loop {
                match self.r.read(&mut self.buf[start..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(start);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(start + n);
            if n == 0 {
                self.eof = true;
            }
        }
        Ok(true)
    }

    /// The length at `pos` when its checksum holds and it is plausible.
    fn length_at(&self, pos: usize) -> Option<u64> {
        let h = &self.buf[pos..pos + HEADER];
        let len = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        (masked_crc(&h[..8]) == crc && len <= MAX_RECORD).then_some(len)
    }

    /// Whether the first record's length passes its checksum: a file whose
    /// first record does not is not an event file. `None` for an empty file.
    pub fn starts_with_record(&mut self) -> io::Result<Option<bool>> {
        if !self.fill(1)? {
            return Ok(None);
        }
        if !self.fill(HEADER)? {
            return Ok(Some(false));
        }
        Ok(Some(self.length_at(self.pos).is_some()))
    }

    /// The next record's offset and data, or `None` at the end of the file.
    pub fn next_record(&mut self) -> io::Result<Option<(u64, &[u8])>> {
        loop {
            if !self.fill(HEADER)? {
                return Ok(self.truncated());
            }
            let Some(len) = self.length_at(self.pos) else {
                self.resync()?;
                continue;
            };
            let total = HEADER + len as usize + FOOTER;
            if !self.fill(total)? {
                return Ok(self.truncated());
            }
            let start = self.pos;
            let data = start + HEADER..start + HEADER + len as usize;
            let crc = u32::from_le_bytes(self.buf[data.end..data.end + FOOTER].try_into().expect("4 bytes"));
            self.pos += total;
            if masked_crc(&self.buf[data.clone()]) != crc {
                self.warnings
                    .push(RecordWarning { offset: self.base + start as u64, kind: RecordWarningKind::DataChecksum });
                continue;
            }
            return Ok(Some((self.base + start as u64, &self.buf[data])));
        }
    }

    /// The bytes left at the end of the file are an incomplete record.
    fn truncated(&mut self) -> Option<(u64, &[u8])> {
        let have = (self.buf.len() - self.pos) as u64;
        if have > 0 {
            self.warnings.push(RecordWarning { offset: self.offset(), kind: RecordWarningKind::Truncated { have } });
            self.pos = self.buf.len();
        }
        None
    }

    /// From a length that fails its checksum: on to the next offset where a
    /// whole record passes both checks, or to the end of the file.
    fn resync(&mut self) -> io::Result<()> {
        let bad = self.offset();
        self.pos += 1;
        loop {
            if !self.fill(HEADER)? {
                // No whole record after the damage: the rest is skipped.
                self.pos = self.buf.len();
                break;
            }
            if self.whole_record_here()? {
                break;
            }
            self.pos += 1;
        }
        let skipped = self.offset() - bad;
        self.warnings.push(RecordWarning { offset: bad, kind: RecordWarningKind::LengthChecksum { skipped } });
        Ok(())
    }

    /// Whether a record passing both checks starts at `pos`.
    fn whole_record_here(&mut self) -> io::Result<bool> {
        let Some(len) = self.length_at(self.pos) else { return Ok(false) };
        let total = HEADER + len as usize + FOOTER;
        if !self.fill(total)? {
            return Ok(false);
        }
        let data = self.pos + HEADER..self.pos + HEADER + len as usize;
        let crc = u32::from_le_bytes(self.buf[data.end..data.end + FOOTER].try_into().expect("4 bytes"));
        Ok(masked_crc(&self.buf[data]) == crc)
    }
}

/// One record framed as TFRecord writes it (tests and fuzz seeds).
pub fn frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + data.len() + FOOTER);
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8], step: usize) -> (Vec<Vec<u8>>, Vec<RecordWarning>) {
        struct Short<'a>(&'a [u8], usize);
        impl Read for Short<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(self.1);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut r = RecordReader::new(Short(bytes, step));
        let mut out = Vec::new();
        while let Some((_, rec)) = r.next_record().unwrap() {
            out.push(rec.to_vec());
        }
        (out, r.warnings().to_vec())
    }

    #[test]
    fn masked_crc_matches_tensorboards() {
        // CRC-32C check value of "123456789" is 0xe3069283; the masked
        // values as tensorboard's own `masked_crc32c` gives them, and the
        // length checksum tensorboardX wrote for its first record (24 bytes).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc(&24u64.to_le_bytes()), 0x224b_7fa3);
    }

    #[test]
    fn damage_loses_only_the_damaged_record() {
        let records: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize * 300]).collect();
        let mut file = Vec::new();
        let mut offsets = Vec::new();
        for r in &records {
            offsets.push(file.len());
            file.extend(frame(r));
        }
        for step in [1, 7, 100_000] {
            assert_eq!(read_all(&file, step), (records.clone(), vec![]));
            // A flipped data byte: that record only.
            let mut bad = file.clone();
            bad[offsets[1] + HEADER + 3] ^= 1;
            let (got, w) = read_all(&bad, step);
            assert_eq!(got, [&records[..1], &records[2..]].concat());
            assert_eq!(w, vec![RecordWarning { offset: offsets[1] as u64, kind: RecordWarningKind::DataChecksum }]);
            // A flipped length byte: the reader finds the next record.
            let mut bad = file.clone();
            bad[offsets[2]] ^= 0x40;
            let (got, w) = read_all(&bad, step);
            assert_eq!(got, [&records[..2], &records[3..]].concat());
            let skipped = (offsets[3] - offsets[2]) as u64;
            assert_eq!(
                w,
                vec![RecordWarning { offset: offsets[2] as u64, kind: RecordWarningKind::LengthChecksum { skipped } }]
            );
            // Cut inside the last record.
            let cut = &file[..offsets[4] + 20];
            let (got, w) = read_all(cut, step);
            assert_eq!(got, records[..4].to_vec());
            assert_eq!(
                w,
                vec![RecordWarning { offset: offsets[4] as u64, kind: RecordWarningKind::Truncated { have: 20 } }]
            );
            // A damaged length in the last record: the rest is skipped.
            let mut bad = file.clone();
            bad[offsets[4] + 2] ^= 1;
            let (got, w) = read_all(&bad, step);
            assert_eq!(got, records[..4].to_vec());
            assert_eq!(w.len(), 1);
            assert_eq!(w[0].offset, offsets[4] as u64);
        }
    }

    #[test]
    fn empty_and_foreign_files() {
        let mut r = RecordReader::new(&b""[..]);
        assert_eq!(r.starts_with_record().unwrap(), None);
        let mut r = RecordReader::new(&b"not an event file at all"[..]);
        assert_eq!(r.starts_with_record().unwrap(), Some(false));
        let framed = frame(b"x");
        let mut r = RecordReader::new(framed.as_slice());
        assert_eq!(r.starts_with_record().unwrap(), Some(true));
        assert_eq!(r.next_record().unwrap(), Some((0, &b"x"[..])));
    }
}
