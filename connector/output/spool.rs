//! A file written by a thread of its own.
//!
//! Encoded column chunks reach the file in pieces of at most 8 KiB (parquet
//! splices them through `std::io::copy`), so writing them straight to the
//! file costs a system call per piece, and the kernel's copy into the page
//! cache ran on the thread that also closes row groups: the encoders waited
//! for it. [`Spool`] gathers the pieces into buffers of [`BUFFER`] bytes and
//! hands each full buffer to its writer thread, which writes it with one call;
//! at most [`AHEAD`] buffers wait, so memory stays bounded whatever the
//! file's size.
//!
//! The first write error ends the writer thread; the next write, flush or
//! [`Spool::finish`] returns it. Only `finish` guarantees that everything
//! written has reached the file; a `Spool` dropped without it discards the
//! rest (the file is a temporary one then, removed by its owner).

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Bytes gathered before a buffer goes to the writer thread.
pub const BUFFER: usize = 1 << 20;
/// Full buffers that may wait for the writer thread.
pub const AHEAD: usize = 4;

pub struct Spool {
    buf: Vec<u8>,
    to_writer: Option<SyncSender<Vec<u8>>>,
    /// Written buffers coming back, to be filled again.
    returned: Receiver<Vec<u8>>,
    writer: Option<JoinHandle<io::Result<File>>>,
}

impl Spool {
    pub fn new(file: File) -> io::Result<Spool> {
        let (to_writer, from_spool) = sync_channel::<Vec<u8>>(AHEAD);
        let (give_back, returned) = sync_channel::<Vec<u8>>(AHEAD + 1);
        let writer = std::thread::Builder::new().name("runport-file".into()).spawn(move || {
            let mut file = file;
            for mut buf in from_spool {
                file.write_all(&buf)?;
                buf.clear();
                // A full return channel only means enough buffers are spare.
                let _ = give_back.try_send(buf);
            }
            Ok(file)
        })?;
        Ok(Spool { buf: Vec::with_capacity(BUFFER), to_writer: Some(to_writer), returned, writer: Some(writer) })
    }

    /// Hands the gathered bytes to the writer thread.
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self.returned.try_recv().unwrap_or_else(|_| Vec::with_capacity(BUFFER));
        let full = std::mem::replace(&mut self.buf, next);
        let sent = match &self.to_writer {
            Some(tx) => tx.send(full).is_ok(),
            None => false,
        };
        if sent { Ok(()) } else { Err(self.failure()) }
    }

    /// Ends the writer thread's input and waits for it: the file once it has
    /// written everything it was given, or its error.
    fn join(&mut self) -> io::Result<File> {
        self.to_writer = None;
        match self.writer.take().map(|h| h.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the file's writer thread panicked")),
            None => Err(io::Error::other("the file was written already or failed before")),
        }
    }

    /// The writer thread's error, once it has stopped.
    fn failure(&mut self) -> io::Error {
        match self.join() {
            Err(e) => e,
            Ok(_) => io::Error::other("the file's writer thread stopped early"),
        }
    }

    /// Writes what is left and waits for the writer thread; returns the file
    /// once every byte given to the spool has been written to it.
    pub fn finish(mut self) -> io::Result<File> {
        self.send()?;
        self.join()
    }
}

impl Write for Spool {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.writer.is_none() {
            return Err(io::Error::other("the file's writer thread has stopped"));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BUFFER {
            self.send()?;
        }
        Ok(data.len())
    }

    /// Hands the gathered bytes to the writer thread (without waiting for it:
    /// [`Spool::finish`] does).
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_arrives_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut spool = Spool::new(File::create(&path).unwrap()).unwrap();
        let mut expected = Vec::new();
        // Pieces of many sizes, some larger than a buffer, crossing buffer edges.
        for i in 0..3000usize {
            let piece: Vec<u8> = (0..(i * 37) % 9000 + if i % 500 == 0 { 3 * BUFFER } else { 0 })
                .map(|j| (i.wrapping_mul(31) ^ j) as u8)
                .collect();
            spool.write_all(&piece).unwrap();
            expected.extend_from_slice(&piece);
            if i % 700 == 0 {
                spool.flush().unwrap();
            }
        }
        let file = spool.finish().unwrap();
        assert_eq!(file.metadata().unwrap().len(), expected.len() as u64);
        assert!(std::fs::read(&path).unwrap() == expected, "the file differs from what was written");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_write_error_is_returned() {
        // /dev/full fails every write with ENOSPC.
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            panic!("/dev/full is needed by this test");
        };
        let mut spool = Spool::new(full).unwrap();
        let piece = vec![7u8; 8192];
        let mut failed = None;
        for _ in 0..(AHEAD + 3) * BUFFER / piece.len() {
            if let Err(e) = spool.write_all(&piece) {
                failed = Some(e);
                break;
            }
        }
        let e = match failed {
            Some(e) => e,
            None => spool.finish().expect_err("writing to a full device must fail"),
        };
        assert_eq!(e.raw_os_error(), Some(28), "ENOSPC expected, got {e}");
    }
}
