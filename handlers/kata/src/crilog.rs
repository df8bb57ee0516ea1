//! Writing a container's output into its CRI log file on the host:
//! `<RFC3339Nano> <stdout|stderr> <F|P> <content>\n`, `P` for a piece of a
//! line that continues in the next record.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Longest record content; longer lines are split into `P` records.
const MAX_RECORD: usize = 16 * 1024;

/// A CRI log file shared by a container's stdout and stderr copiers.
#[derive(Debug)]
pub struct CriLog {
    path: PathBuf,
    file: Mutex<File>,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl CriLog {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(open(path)?),
        })
    }

    /// Opens the path again (after the kubelet rotated the file away).
    pub fn reopen(&self) -> io::Result<()> {
        let file = open(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = file;
        Ok(())
    }

    /// Writes one record; one `write` call so records never interleave.
    pub fn write_record(&self, stream: &str, partial: bool, content: &[u8]) -> io::Result<()> {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.9f%:z");
        let mut record =
            format!("{now} {stream} {} ", if partial { 'P' } else { 'F' }).into_bytes();
        record.extend_from_slice(content);
        record.push(b'\n');
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(&record)
    }
}

/// Splits one stream's output into CRI records.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Records (`partial`, content) completed by `chunk`.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        for &byte in chunk {
            if byte == b'\n' {
                out.push((false, std::mem::take(&mut self.pending)));
            } else {
                self.pending.push(byte);
                if self.pending.len() >= MAX_RECORD {
                    out.push((true, std::mem::take(&mut self.pending)));
                }
            }
        }
        out
    }

    /// At end of stream: what is left, as a partial record (the output did
    /// not end with a newline, and the log must not invent one).
    pub fn finish(&mut self) -> Option<(bool, Vec<u8>)> {
        (!self.pending.is_empty()).then(|| (true, std::mem::take(&mut self.pending)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_keeps_partials() {
        let mut s = LineSplitter::default();
        assert_eq!(s.feed(b"hel"), vec![]);
        assert_eq!(s.feed(b"lo\nwor"), vec![(false, b"hello".to_vec())]);
        assert_eq!(
            s.feed(b"ld\n\n"),
            vec![(false, b"world".to_vec()), (false, vec![])]
        );
        assert_eq!(s.feed(b"tail"), vec![]);
        assert_eq!(s.finish(), Some((true, b"tail".to_vec())));
        assert_eq!(s.finish(), None);
        let long = vec![b'x'; MAX_RECORD + 1];
        let records = s.feed(&long);
        assert_eq!(records.len(), 1);
        assert!(records[0].0 && records[0].1.len() == MAX_RECORD);
    }

    #[test]
    fn records_have_the_cri_shape_and_reopen_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = CriLog::open(&path).unwrap();
        log.write_record("stdout", false, b"hello").unwrap();
        log.write_record("stderr", true, b"par").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let (ts, rest) = lines[0].split_once(' ').unwrap();
        assert_eq!(rest, "stdout F hello");
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
        assert!(lines[1].ends_with(" stderr P par"));

        std::fs::rename(&path, dir.path().join("c.log.1")).unwrap();
        log.reopen().unwrap();
        log.write_record("stdout", false, b"after").unwrap();
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("stdout F after\n")
        );
    }
}
