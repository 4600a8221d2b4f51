//! Fetched answers larger than a history chunk go to a temporary file, not
//! memory.
//!
//! A [`Spool`] keeps the bytes written to it in memory up to a limit (a
//! quarter of a history chunk, [`crate::pipeline::HistoryTarget::answer_bytes`]) and moves
//! them to a temporary file once they pass it: a file of the export's spill
//! folder, counted in its peak ([`SpillDir::temp_file`]), or an anonymous file
//! in the system's temporary folder (`TMPDIR`) when there is none (the wide
//! layout's first pass). Either is removed when the [`Spooled`] result is
//! dropped, and an anonymous one by the system even after a kill.
//!
//! A spool takes a download as it arrives ([`BodySink`]) or a sequence of
//! records ([`Spool::write_record`], read back in order with
//! [`Spooled::records`]).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Cursor, Read, Seek, Write};
use std::sync::Arc;

use bytes::Bytes;

use crate::http::BodySink;
use crate::output::spill::{SpillDir, SpillFile};
use crate::pipeline::HistoryTarget;

/// Bytes of the write buffer of a spool's file.
const FILE_BUFFER: usize = 1 << 20;

/// Bytes kept in memory up to a limit, then in a temporary file.
pub struct Spool {
    limit: usize,
    spill: Option<Arc<SpillDir>>,
    memory: Vec<u8>,
    file: Option<SpoolFile>,
    len: u64,
}

/// A spool's temporary file, being written.
struct SpoolFile {
    writer: BufWriter<File>,
    /// The spill folder's record of the file (`None`: an anonymous file).
    kept: Option<SpillFile>,
}

/// What a spool holds once written: bytes, or a temporary file (removed
/// when this is dropped).
pub enum Spooled {
    Memory(Bytes),
    File { file: File, len: u64, kept: Option<SpillFile> },
}

impl Default for Spooled {
    fn default() -> Self {
        Spooled::Memory(Bytes::new())
    }
}

impl Spool {
    /// A spool holding up to `limit` bytes in memory; past it, a file in
    /// `spill` (or an anonymous temporary file without one).
    pub fn new(limit: usize, spill: Option<Arc<SpillDir>>) -> Spool {
        Spool { limit, spill, memory: Vec::new(), file: None, len: 0 }
    }

    /// A spool for a run's history, of which `held` bytes are in memory
    /// already (earlier answers of the same run): the run holds at most a
    /// quarter chunk's worth in memory ([`HistoryTarget::answer_bytes`]), the rest goes to the target's spill folder;
    /// all in memory without a target (no history chunks are taken then
    /// either).
    pub fn for_history(target: Option<&HistoryTarget>, held: u64) -> Spool {
        match target {
            Some(t) => {
                let left = (t.answer_bytes() as u64).saturating_sub(held);
                Spool::new(usize::try_from(left).unwrap_or(usize::MAX), t.spill.clone())
            }
            None => Spool::new(usize::MAX, None),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes are in a temporary file.
    pub fn in_file(&self) -> bool {
        self.file.is_some()
    }

    /// Appends `bytes`, moving everything to a file once past the limit.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.len += bytes.len() as u64;
        if self.file.is_none() && self.memory.len() + bytes.len() > self.limit {
            self.move_to_file()?;
        }
        match &mut self.file {
            Some(f) => {
                f.writer.write_all(bytes)?;
                if let Some(kept) = &mut f.kept {
                    kept.holds(self.len);
                }
            }
            None => self.memory.extend_from_slice(bytes),
        }
        Ok(())
    }

    /// Appends one record (its length, then its bytes): read back with
    /// [`Spooled::records`].
    pub fn write_record(&mut self, record: &[u8]) -> io::Result<()> {
        let len = u32::try_from(record.len())
            .map_err(|_| io::Error::other(format!("a record of {} bytes (at most 4 GiB)", record.len())))?;
        self.write(&len.to_le_bytes())?;
        self.write(record)
    }

    /// Drops everything written.
    pub fn clear(&mut self) {
        self.memory = Vec::new();
        self.file = None;
        self.len = 0;
    }

    fn move_to_file(&mut self) -> io::Result<()> {
        let (file, kept) = match &self.spill {
            Some(dir) => {
                let (file, kept) = dir.temp_file().map_err(|e| io::Error::other(e.to_string()))?;
                (file, Some(kept))
            }
            None => (tempfile::tempfile()?, None),
        };
        let mut f = SpoolFile { writer: BufWriter::with_capacity(FILE_BUFFER, file), kept };
        f.writer.write_all(&self.memory)?;
        if let Some(kept) = &mut f.kept {
            kept.holds(self.memory.len() as u64);
        }
        self.memory = Vec::new();
        self.file = Some(f);
        Ok(())
    }

    /// What the spool holds, ready to be read from its start.
    pub fn finish(self) -> io::Result<Spooled> {
        let Some(f) = self.file else {
            return Ok(Spooled::Memory(Bytes::from(self.memory)));
        };
        let mut file = f.writer.into_inner().map_err(|e| e.into_error())?;
        // A spill folder's file is opened for writing only: read it anew.
        if let Some(kept) = &f.kept {
            file = File::open(kept.path())?;
        }
        file.rewind()?;
        Ok(Spooled::File { file, len: self.len, kept: f.kept })
    }
}

impl BodySink for Spool {
    fn start(&mut self, length: Option<u64>) -> io::Result<()> {
        self.clear();
        if length.is_some_and(|n| n > self.limit as u64) {
            self.move_to_file()?;
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        Spool::write(self, bytes)
    }
}

impl Spooled {
    pub fn len(&self) -> u64 {
        match self {
            Spooled::Memory(b) => b.len() as u64,
            Spooled::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory.
    pub fn held(&self) -> u64 {
        match self {
            Spooled::Memory(b) => b.len() as u64,
            Spooled::File { .. } => 0,
        }
    }

    /// The records written with [`Spool::write_record`], in order.
    pub fn records(self) -> Records {
        match self {
            Spooled::Memory(b) => Records { reader: Box::new(Cursor::new(b)), record: Vec::new(), _kept: None },
            Spooled::File { file, kept, .. } => Records {
                reader: Box::new(BufReader::with_capacity(FILE_BUFFER, file)),
                record: Vec::new(),
                _kept: kept,
            },
        }
    }
}

/// Reads a spool's records back one at a time.
pub struct Records {
    reader: Box<dyn Read + Send>,
    record: Vec<u8>,
    _kept: Option<SpillFile>,
}

impl Records {
    /// The next record; `None` at the end.
    pub fn next_record(&mut self) -> io::Result<Option<&[u8]>> {
        let mut len = [0u8; 4];
        match self.reader.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        self.record.clear();
        let len = u32::from_le_bytes(len) as u64;
        let read = (&mut self.reader).take(len).read_to_end(&mut self.record)?;
        if read as u64 != len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a spooled record cut short"));
        }
        Ok(Some(&self.record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(spooled: Spooled) -> Vec<Vec<u8>> {
        let mut r = spooled.records();
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            out.push(rec.to_vec());
        }
        out
    }

    #[test]
    fn small_stays_in_memory_and_large_goes_to_a_spill_file_removed_on_drop() {
        let base = tempfile::tempdir().unwrap();
        let dir = SpillDir::create(&base.path().join("spill")).unwrap();
        let rows: Vec<Vec<u8>> = (0..100).map(|i| format!("{{\"_step\": {i}}}").into_bytes()).collect();

        let mut small = Spool::new(1 << 20, Some(Arc::clone(&dir)));
        rows.iter().for_each(|r| small.write_record(r).unwrap());
        assert!(!small.in_file());
        assert_eq!(records(small.finish().unwrap()), rows);

        let mut large = Spool::new(64, Some(Arc::clone(&dir)));
        rows.iter().for_each(|r| large.write_record(r).unwrap());
        assert!(large.in_file());
        let len = large.len();
        let spooled = large.finish().unwrap();
        assert!(matches!(spooled, Spooled::File { .. }));
        assert_eq!(spooled.len(), len);
        assert_eq!(dir.peak_bytes(), len, "the spill folder counts the file");
        assert_eq!(fs_count(dir.path()), 1);
        assert_eq!(records(spooled), rows);
        assert_eq!(fs_count(dir.path()), 0, "the file is removed once read");
    }

    fn fs_count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    /// A run's answers share one chunk of memory: once earlier ones hold
    /// it, the next goes to a file however small.
    #[test]
    fn the_answers_of_a_run_share_a_chunk_of_memory() {
        use crate::output::history::long_schema;
        use crate::pipeline::HistoryEncoding;
        let base = tempfile::tempdir().unwrap();
        let dir = SpillDir::create(&base.path().join("spill")).unwrap();
        let target =
            HistoryTarget { encoding: HistoryEncoding::Long(long_schema()), chunk_bytes: 400, spill: Some(dir) };
        let mut held = 0;
        let mut in_file = Vec::new();
        for _ in 0..4 {
            let mut spool = Spool::for_history(Some(&target), held);
            spool.write(&[7u8; 40]).unwrap();
            in_file.push(spool.in_file());
            held += spool.finish().unwrap().held();
        }
        assert_eq!(in_file, [false, false, true, true]);
        assert_eq!(held, 80);
        let mut unbounded = Spool::for_history(None, u64::MAX);
        unbounded.write(&[7u8; 1000]).unwrap();
        assert!(!unbounded.in_file(), "without a target nothing is spooled");
    }

    #[test]
    fn a_body_restarts_on_retry_and_goes_to_a_file_by_its_length() {
        let mut spool = Spool::new(10, None);
        BodySink::start(&mut spool, Some(5)).unwrap();
        BodySink::write(&mut spool, b"abcdefghijklmnop").unwrap();
        assert!(spool.in_file());
        // A retry: what the cut attempt wrote is gone.
        BodySink::start(&mut spool, Some(4)).unwrap();
        assert!(!spool.in_file());
        BodySink::write(&mut spool, b"wxyz").unwrap();
        match spool.finish().unwrap() {
            Spooled::Memory(b) => assert_eq!(&b[..], b"wxyz"),
            Spooled::File { .. } => panic!("4 bytes stay in memory"),
        }
        let mut spool = Spool::new(10, None);
        BodySink::start(&mut spool, Some(11)).unwrap();
        assert!(spool.in_file(), "an announced length past the limit goes to a file at once");
        BodySink::write(&mut spool, b"0123456789a").unwrap();
        let Spooled::File { mut file, len, .. } = spool.finish().unwrap() else { panic!("a file") };
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!((text.as_str(), len), ("0123456789a", 11));
    }
}
