//! The kubelet's CRI log format, as conmon writes it (`-l k8s-file:PATH`):
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>\n`, where `P`
//! marks a partial line (the content continues in the next record) and `F`
//! a full one (the newline ends it).

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One record of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriLogRecord<'a> {
    pub timestamp: &'a str,
    pub stream: LogStream,
    /// `true` for `P` records (no newline after the content).
    pub partial: bool,
    pub content: &'a [u8],
}

/// A line that is not a CRI log record.
#[derive(Debug, thiserror::Error)]
#[error("malformed CRI log line {line}: {reason}")]
pub struct CriLogError {
    pub line: usize,
    pub reason: &'static str,
}

/// Parses a whole CRI log file.
pub fn parse_cri_log(data: &[u8]) -> Result<Vec<CriLogRecord<'_>>, CriLogError> {
    let mut records = Vec::new();
    for (index, line) in data.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let err = |reason| CriLogError {
            line: index + 1,
            reason,
        };
        let mut fields = line.splitn(4, |b| *b == b' ');
        let timestamp = fields.next().ok_or_else(|| err("no timestamp"))?;
        let timestamp =
            std::str::from_utf8(timestamp).map_err(|_| err("timestamp is not UTF-8"))?;
        let stream = match fields.next() {
            Some(b"stdout") => LogStream::Stdout,
            Some(b"stderr") => LogStream::Stderr,
            _ => return Err(err("stream is neither stdout nor stderr")),
        };
        let partial = match fields.next() {
            Some(b"F") => false,
            Some(b"P") => true,
            _ => return Err(err("tag is neither F nor P")),
        };
        // An empty full line is written as "<ts> stdout F " or without the
        // trailing space; both mean empty content.
        let content = fields.next().unwrap_or(b"");
        records.push(CriLogRecord {
            timestamp,
            stream,
            partial,
            content,
        });
    }
    Ok(records)
}

/// Reassembles the original stdout and stderr bytes from a CRI log.
pub fn split_streams(data: &[u8]) -> Result<(Vec<u8>, Vec<u8>), CriLogError> {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    for record in parse_cri_log(data)? {
        let out = match record.stream {
            LogStream::Stdout => &mut stdout,
            LogStream::Stderr => &mut stderr,
        };
        out.extend_from_slice(record.content);
        if !record.partial {
            out.push(b'\n');
        }
    }
    Ok((stdout, stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_partial_records() {
        let log = b"2026-11-22T17:15:57.224328975+00:00 stdout F hello\n\
2026-11-22T17:15:57.3+00:00 stderr P par\n\
2026-11-22T17:15:57.4+00:00 stderr F tial line\n\
2026-11-22T17:15:57.5+00:00 stdout P no newline\n";
        let records = parse_cri_log(log).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(records[0].timestamp, "2026-11-22T17:15:57.224328975+00:00");
        assert_eq!(records[0].stream, LogStream::Stdout);
        assert!(!records[0].partial);
        assert_eq!(records[0].content, b"hello");
        let (out, err) = split_streams(log).unwrap();
        assert_eq!(out, b"hello\nno newline");
        assert_eq!(err, b"partial line\n");
    }

    #[test]
    fn content_keeps_its_spaces() {
        let (out, _) = split_streams(b"ts stdout F  a  b \n").unwrap();
        assert_eq!(out, b" a  b \n");
    }

    #[test]
    fn empty_full_line() {
        let (out, _) = split_streams(b"ts stdout F\nts stdout F \n").unwrap();
        assert_eq!(out, b"\n\n");
    }

    #[test]
    fn rejects_garbage() {
        let e = parse_cri_log(b"ts stdout F ok\nts weird F x\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(parse_cri_log(b"ts stdout X x\n").is_err());
    }
}
