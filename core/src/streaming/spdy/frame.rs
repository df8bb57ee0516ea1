//! SPDY/3.1 frames (draft-mbelshe-httpbis-spdy-00 and the 3.1 changes):
//! an 8-byte header, control frames with a version and type, data frames
//! with a stream id; header blocks compressed with zlib and the SPDY/3
//! dictionary, one compression context per direction for the whole
//! connection.

use std::sync::LazyLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;

/// Largest frame payload accepted from a peer. The length field allows
/// 16 MiB; clients write stdin and port-forward data in 32 KiB pieces.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;
/// Largest decompressed header block accepted from a peer.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_INVALID_STREAM: u32 = 2;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;
pub const RST_STREAM_IN_USE: u32 = 8;
pub const RST_FRAME_TOO_LARGE: u32 = 11;

/// GOAWAY status codes.
pub const GOAWAY_OK: u32 = 0;
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// SETTINGS ids.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// The initial flow-control window of streams and of the session.
pub const INITIAL_WINDOW: i64 = 64 * 1024;

/// Header names and values; names are lowercase on the wire.
pub type Headers = Vec<(String, String)>;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control frame of a type this implementation does not know; the
    /// spec says to ignore it.
    Unknown {
        frame_type: u16,
    },
}

/// A frame that cannot be decoded; the connection cannot continue.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame payload of {0} bytes is larger than the {MAX_FRAME_PAYLOAD} accepted")]
    TooLarge(usize),
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("header block: {0}")]
    HeaderBlock(String),
}

/// The SPDY/3 header compression dictionary: the length-prefixed words
/// of the spec followed by its literal tail.
pub static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut out = Vec::with_capacity(1423);
    for word in WORDS {
        out.extend_from_slice(&(word.len() as u32).to_be_bytes());
        out.extend_from_slice(word.as_bytes());
    }
    out.extend_from_slice(TAIL.as_bytes());
    out
});

/// Declares a header (de)compression state: a struct around one zlib
/// stream, defaulting to `new()`. Its Debug names only the type, because
/// the zlib state is large and means nothing to a reader.
macro_rules! header_zlib_state {
    ($(#[$doc:meta])* $name:ident($zlib:ty)) => {
        $(#[$doc])*
        pub struct $name {
            zlib: $zlib,
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }
    };
}

header_zlib_state!(
    /// The header compression state of one direction of a connection.
    HeaderEncoder(Compress)
);

impl HeaderEncoder {
    pub fn new() -> Self {
        let mut zlib = Compress::new(Compression::default(), true);
        // A fresh deflate stream accepts a preset dictionary; this cannot fail.
        let _ = zlib.set_dictionary(&DICTIONARY);
        Self { zlib }
    }

    /// The compressed header block for `headers`, ending in a sync flush.
    pub fn encode(&mut self, headers: &[(String, String)]) -> Vec<u8> {
        let mut plain = Vec::new();
        plain.put_u32(headers.len() as u32);
        for (name, value) in headers {
            plain.put_u32(name.len() as u32);
            plain.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            plain.put_u32(value.len() as u32);
            plain.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            out.reserve(256);
            let before_in = self.zlib.total_in();
            // Compressing into a Vec with spare room does not fail.
            let _ = self.zlib.compress_vec(input, &mut out, FlushCompress::Sync);
            let used = (self.zlib.total_in() - before_in) as usize;
            input = &input[used..];
            // Done once all input is taken and the flush left room to spare.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

header_zlib_state!(
    /// The header decompression state of one direction of a connection.
    HeaderDecoder(Decompress)
);

impl HeaderDecoder {
    pub fn new() -> Self {
        Self {
            zlib: Decompress::new(true),
        }
    }

    /// Decodes one compressed header block.
    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, FrameError> {
        let bad = |m: &str| FrameError::HeaderBlock(m.to_string());
        let mut plain = Vec::with_capacity(1024);
        let mut input = block;
        loop {
            if plain.len() >= MAX_HEADER_BLOCK {
                return Err(bad("decompressed header block too large"));
            }
            plain.reserve(4096.min(MAX_HEADER_BLOCK - plain.len()).max(1));
            let before_in = self.zlib.total_in();
            let before_out = plain.len();
            let result = self
                .zlib
                .decompress_vec(input, &mut plain, FlushDecompress::Sync);
            let used = (self.zlib.total_in() - before_in) as usize;
            input = &input[used..];
            match result {
                Ok(Status::Ok | Status::BufError) => {}
                Ok(Status::StreamEnd) => return Err(bad("zlib stream ended")),
                Err(e) if e.needs_dictionary().is_some() => {
                    self.zlib
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| bad(&format!("dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(bad(&format!("zlib: {e}"))),
            }
            if input.is_empty() && plain.len() < plain.capacity() {
                break;
            }
            if used == 0 && plain.len() == before_out && plain.len() < plain.capacity() {
                return Err(bad("zlib made no progress"));
            }
        }
        parse_header_block(&plain)
    }
}

fn parse_header_block(mut plain: &[u8]) -> Result<Headers, FrameError> {
    let bad = |m: &str| FrameError::HeaderBlock(m.to_string());
    fn take<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
        if buf.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if buf.len() < 4 + len {
            return None;
        }
        let value = &buf[4..4 + len];
        *buf = &buf[4 + len..];
        Some(value)
    }
    if plain.len() < 4 {
        return Err(bad("truncated"));
    }
    let count = plain.get_u32() as usize;
    if count > 1024 {
        return Err(bad("too many headers"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take(&mut plain).ok_or_else(|| bad("truncated name"))?;
        let value = take(&mut plain).ok_or_else(|| bad("truncated value"))?;
        if name.is_empty() {
            return Err(bad("empty header name"));
        }
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad("header name not UTF-8"))?;
        let value = String::from_utf8_lossy(value).into_owned();
        headers.push((name.to_ascii_lowercase(), value));
    }
    Ok(headers)
}

/// The first value of header `name` (values of one name are NUL-separated).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

/// Length of the frame starting at `buf` if its 8-byte header is complete.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    Ok(Some(8 + len))
}

/// Decodes one whole frame (`frame_len` bytes).
pub fn decode(frame: &[u8], headers: &mut HeaderDecoder) -> Result<Frame, FrameError> {
    let mut head = &frame[..8];
    let word = head.get_u32();
    let flags = head.get_u8();
    let payload = &frame[8..];
    if word & 0x8000_0000 == 0 {
        return Ok(Frame::Data {
            stream_id: word & 0x7fff_ffff,
            fin: flags & FLAG_FIN != 0,
            data: Bytes::copy_from_slice(payload),
        });
    }
    let version = ((word >> 16) & 0x7fff) as u16;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let frame_type = (word & 0xffff) as u16;
    let mut p = payload;
    let need = |p: &[u8], n: usize, what: &'static str| {
        if p.len() < n {
            Err(FrameError::Malformed(what))
        } else {
            Ok(())
        }
    };
    Ok(match frame_type {
        TYPE_SYN_STREAM => {
            need(p, 10, "SYN_STREAM")?;
            let stream_id = p.get_u32() & 0x7fff_ffff;
            let associated_to = p.get_u32() & 0x7fff_ffff;
            let priority = p.get_u8() >> 5;
            let _slot = p.get_u8();
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers: headers.decode(p)?,
            }
        }
        TYPE_SYN_REPLY | TYPE_HEADERS => {
            // Both carry a stream id, FIN and a header block; they differ
            // in meaning only.
            let reply = frame_type == TYPE_SYN_REPLY;
            need(p, 4, if reply { "SYN_REPLY" } else { "HEADERS" })?;
            let stream_id = p.get_u32() & 0x7fff_ffff;
            let fin = flags & FLAG_FIN != 0;
            let headers = headers.decode(p)?;
            if reply {
                Frame::SynReply {
                    stream_id,
                    fin,
                    headers,
                }
            } else {
                Frame::Headers {
                    stream_id,
                    fin,
                    headers,
                }
            }
        }
        TYPE_RST_STREAM => {
            need(p, 8, "RST_STREAM")?;
            Frame::RstStream {
                stream_id: p.get_u32() & 0x7fff_ffff,
                status: p.get_u32(),
            }
        }
        TYPE_SETTINGS => {
            need(p, 4, "SETTINGS")?;
            let count = p.get_u32() as usize;
            if p.len() != count.saturating_mul(8) {
                return Err(FrameError::Malformed("SETTINGS"));
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let word = p.get_u32();
                entries.push(((word >> 24) as u8, word & 0x00ff_ffff, p.get_u32()));
            }
            Frame::Settings { entries }
        }
        TYPE_PING => {
            need(p, 4, "PING")?;
            Frame::Ping { id: p.get_u32() }
        }
        TYPE_GOAWAY => {
            // SPDY/3 added a status code; tolerate its absence (SPDY/2 size).
            need(p, 4, "GOAWAY")?;
            let last_good_stream_id = p.get_u32() & 0x7fff_ffff;
            let status = if p.len() >= 4 { p.get_u32() } else { GOAWAY_OK };
            Frame::GoAway {
                last_good_stream_id,
                status,
            }
        }
        TYPE_WINDOW_UPDATE => {
            need(p, 8, "WINDOW_UPDATE")?;
            Frame::WindowUpdate {
                stream_id: p.get_u32() & 0x7fff_ffff,
                delta: p.get_u32() & 0x7fff_ffff,
            }
        }
        other => Frame::Unknown { frame_type: other },
    })
}

fn control(out: &mut BytesMut, frame_type: u16, flags: u8, payload: &[u8]) {
    out.put_u32(0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(frame_type));
    out.put_u32((u32::from(flags) << 24) | payload.len() as u32);
    out.extend_from_slice(payload);
}

/// A flagless control frame whose payload is `words`, big-endian.
fn control_words(out: &mut BytesMut, frame_type: u16, words: &[u32]) {
    let payload: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    control(out, frame_type, 0, &payload);
}

/// Appends the wire form of `frame` to `out`.
pub fn encode(frame: &Frame, headers: &mut HeaderEncoder, out: &mut BytesMut) {
    match frame {
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32((u32::from(u8::from(*fin)) << 24) | data.len() as u32);
            out.extend_from_slice(data);
        }
        Frame::SynStream {
            stream_id,
            associated_to,
            priority,
            flags,
            headers: h,
        } => {
            let mut p = Vec::new();
            p.put_u32(*stream_id);
            p.put_u32(*associated_to);
            p.put_u8(priority << 5);
            p.put_u8(0);
            p.extend_from_slice(&headers.encode(h));
            control(out, TYPE_SYN_STREAM, *flags, &p);
        }
        Frame::SynReply {
            stream_id,
            fin,
            headers: h,
        }
        | Frame::Headers {
            stream_id,
            fin,
            headers: h,
        } => {
            let frame_type = if matches!(frame, Frame::SynReply { .. }) {
                TYPE_SYN_REPLY
            } else {
                TYPE_HEADERS
            };
            let mut p = Vec::new();
            p.put_u32(*stream_id);
            p.extend_from_slice(&headers.encode(h));
            control(out, frame_type, u8::from(*fin), &p);
        }
        Frame::RstStream { stream_id, status } => {
            control_words(out, TYPE_RST_STREAM, &[*stream_id, *status]);
        }
        Frame::Settings { entries } => {
            let mut p = Vec::new();
            p.put_u32(entries.len() as u32);
            for (flags, id, value) in entries {
                p.put_u32((u32::from(*flags) << 24) | (id & 0x00ff_ffff));
                p.put_u32(*value);
            }
            control(out, TYPE_SETTINGS, 0, &p);
        }
        Frame::Ping { id } => control_words(out, TYPE_PING, &[*id]),
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => control_words(out, TYPE_GOAWAY, &[*last_good_stream_id, *status]),
        Frame::WindowUpdate { stream_id, delta } => {
            control_words(out, TYPE_WINDOW_UPDATE, &[*stream_id, *delta]);
        }
        Frame::Unknown { .. } => {}
    }
}
