//! Any `:authority` on the CRI's unix socket.
//!
//! On a unix socket the authority names nothing (the socket path already
//! identifies the peer), and clients differ in what they send: Go's gRPC
//! sends `localhost`, C-core based clients (Python's `grpcio`, Ruby, PHP)
//! send the socket path percent-encoded, Java sends the path as is. The
//! HTTP/2 server under tonic rejects a request whose `:authority` is not a
//! valid URI authority by resetting the stream (`PROTOCOL_ERROR`), and has no
//! setting to relax that. So every connection is read through
//! [`AuthorityFix`], which decodes each request header block (HPACK, with
//! the client's dynamic table), replaces an invalid `:authority` with
//! `localhost`, and hands the server the same header list re-encoded as
//! plain literals that do not touch the server's dynamic table (so the two
//! sides' HPACK state never disagrees). Every other frame passes unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What a client's `:authority` becomes when it is not a valid authority.
pub const UNIX_AUTHORITY: &[u8] = b"localhost";

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame a peer may send before the server raises
/// SETTINGS_MAX_FRAME_SIZE (which tonic does not): re-encoded blocks are cut
/// to it.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// Bound on one request's header block (all its frames): far above what a
/// CRI request carries; more is refused as a protocol violation.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Bound on the client's HPACK table, for the decoder.
const MAX_TABLE_SIZE: usize = 64 * 1024;

/// Where the client-to-server byte stream is.
enum ReadState {
    /// Inside the connection preface (this many bytes left).
    Preface(usize),
    /// At a frame boundary.
    FrameStart,
    /// Copying the payload of a frame that is not rewritten.
    PassThrough(usize),
}

/// A request header block being collected (HEADERS + CONTINUATIONs).
struct PendingHeaders {
    stream_id: u32,
    /// Flags of the HEADERS frame, less PADDED and END_HEADERS.
    flags: u8,
    /// The 5 priority bytes, when the PRIORITY flag was set.
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// A server-side connection whose request headers get a valid
/// `:authority`; see the module documentation.
pub struct AuthorityFix<S> {
    inner: S,
    state: ReadState,
    pending: Option<PendingHeaders>,
    /// Raw bytes read from the client, not processed yet.
    input: BytesMut,
    /// Processed bytes for the server, not handed out yet.
    output: BytesMut,
    decoder: loona_hpack::Decoder<'static>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE_SIZE);
        Self {
            inner,
            state: ReadState::Preface(PREFACE_LEN),
            pending: None,
            input: BytesMut::with_capacity(8 * 1024),
            output: BytesMut::with_capacity(8 * 1024),
            decoder,
            eof: false,
        }
    }

    /// Moves what can be processed from `input` to `output`. Returns false
    /// when more input is needed.
    fn process(&mut self) -> io::Result<bool> {
        match self.state {
            ReadState::Preface(left) | ReadState::PassThrough(left) => {
                let n = left.min(self.input.len());
                if n == 0 && left > 0 {
                    return Ok(false);
                }
                self.output.extend_from_slice(&self.input.split_to(n));
                let rest = left - n;
                self.state = match (&self.state, rest) {
                    (_, 0) => ReadState::FrameStart,
                    (ReadState::Preface(_), r) => ReadState::Preface(r),
                    (_, r) => ReadState::PassThrough(r),
                };
                Ok(true)
            }
            ReadState::FrameStart => {
                if self.input.len() < FRAME_HEADER_LEN {
                    return Ok(false);
                }
                let len =
                    u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]]) as usize;
                let kind = self.input[3];
                if kind != FRAME_HEADERS && kind != FRAME_CONTINUATION {
                    if self.pending.is_some() {
                        return Err(protocol("a frame interrupted a header block"));
                    }
                    self.output
                        .extend_from_slice(&self.input.split_to(FRAME_HEADER_LEN));
                    self.state = ReadState::PassThrough(len);
                    return Ok(true);
                }
                if len > MAX_HEADER_BLOCK {
                    return Err(protocol("header frame too large"));
                }
                if self.input.len() < FRAME_HEADER_LEN + len {
                    self.input
                        .reserve(FRAME_HEADER_LEN + len - self.input.len());
                    return Ok(false);
                }
                let header = self.input.split_to(FRAME_HEADER_LEN);
                let payload = self.input.split_to(len);
                let flags = header[4];
                let stream_id =
                    u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
                self.header_frame(kind, flags, stream_id, &payload)?;
                Ok(true)
            }
        }
    }

    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        let fragment = if kind == FRAME_HEADERS {
            if self.pending.is_some() {
                return Err(protocol("HEADERS inside a header block"));
            }
            let mut rest = payload;
            let mut pad = 0usize;
            if flags & FLAG_PADDED != 0 {
                let (&n, tail) = rest.split_first().ok_or_else(|| protocol("bad padding"))?;
                pad = usize::from(n);
                rest = tail;
            }
            let priority = if flags & FLAG_PRIORITY != 0 {
                if rest.len() < 5 {
                    return Err(protocol("short priority"));
                }
                let (p, tail) = rest.split_at(5);
                rest = tail;
                Some(<[u8; 5]>::try_from(p).expect("5 bytes"))
            } else {
                None
            };
            if pad > rest.len() {
                return Err(protocol("padding longer than the frame"));
            }
            self.pending = Some(PendingHeaders {
                stream_id,
                flags: flags & !(FLAG_PADDED | FLAG_END_HEADERS),
                priority,
                block: Vec::new(),
            });
            &rest[..rest.len() - pad]
        } else {
            match &self.pending {
                Some(p) if p.stream_id == stream_id => payload,
                _ => return Err(protocol("CONTINUATION without its HEADERS")),
            }
        };
        let pending = self.pending.as_mut().expect("set above");
        if pending.block.len() + fragment.len() > MAX_HEADER_BLOCK {
            return Err(protocol("header block too large"));
        }
        pending.block.extend_from_slice(fragment);
        if flags & FLAG_END_HEADERS != 0 {
            let pending = self.pending.take().expect("set above");
            self.emit_headers(pending)?;
        }
        Ok(())
    }

    fn emit_headers(&mut self, pending: PendingHeaders) -> io::Result<()> {
        let headers = self
            .decoder
            .decode(&pending.block)
            .map_err(|e| protocol(&format!("bad header block: {e}")))?;
        let mut block = Vec::with_capacity(pending.block.len() + 64);
        for (name, value) in &headers {
            let value: &[u8] = if name == b":authority" && !valid_authority(value) {
                UNIX_AUTHORITY
            } else {
                value
            };
            encode_literal(&mut block, name, value);
        }
        let mut first = Vec::with_capacity(5 + block.len().min(MAX_FRAME_PAYLOAD));
        if let Some(p) = pending.priority {
            first.extend_from_slice(&p);
        }
        let head_len = (MAX_FRAME_PAYLOAD - first.len()).min(block.len());
        first.extend_from_slice(&block[..head_len]);
        let rest: Vec<&[u8]> = block[head_len..].chunks(MAX_FRAME_PAYLOAD).collect();
        let flags = pending.flags | if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        self.put_frame(FRAME_HEADERS, flags, pending.stream_id, &first);
        let count = rest.len();
        for (i, chunk) in rest.into_iter().enumerate() {
            let flags = if i + 1 == count { FLAG_END_HEADERS } else { 0 };
            self.put_frame(FRAME_CONTINUATION, flags, pending.stream_id, chunk);
        }
        Ok(())
    }

    fn put_frame(&mut self, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).expect("bounded by MAX_FRAME_PAYLOAD");
        self.output.put_slice(&len.to_be_bytes()[1..]);
        self.output.put_u8(kind);
        self.output.put_u8(flags);
        self.output.put_u32(stream_id);
        self.output.put_slice(payload);
    }
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 from the client: {what}"),
    )
}

/// What the server accepts as `:authority`.
fn valid_authority(value: &[u8]) -> bool {
    tonic::codegen::http::uri::Authority::try_from(value).is_ok()
}

/// HPACK "literal header field without indexing, new name" (RFC 7541
/// 6.2.2), strings not Huffman-coded: it leaves the server's dynamic table
/// alone.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    encode_string(out, name);
    encode_string(out, value);
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, s.len(), 7, 0);
    out.extend_from_slice(s);
}

/// An HPACK integer with an `prefix_bits`-bit prefix (RFC 7541 5.1).
fn encode_integer(out: &mut Vec<u8>, mut value: usize, prefix_bits: u8, first_byte_flags: u8) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        out.push(first_byte_flags | value as u8);
        return;
    }
    out.push(first_byte_flags | max_prefix as u8);
    value -= max_prefix;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.process()? {
                continue;
            }
            // Need more input.
            let mut chunk = [0u8; 8 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The client went away: what is left is an incomplete frame,
                // which the server cannot use either.
                this.eof = true;
                this.input.clear();
                continue;
            }
            this.input.extend_from_slice(read.filled());
        }
    }
}

super::delegate_write_and_connect_info!(AuthorityFix);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Runs `input` through the fix and returns what the server reads.
    async fn through(input: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        tokio::io::AsyncWriteExt::write_all(&mut client, &input)
            .await
            .unwrap();
        drop(client);
        let mut out = Vec::new();
        AuthorityFix::new(server)
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }

    /// Splits the server's view into (kind, flags, stream, payload) frames.
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..24], PREFACE);
        let mut rest = &bytes[24..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    #[tokio::test]
    async fn bad_authorities_become_localhost_with_the_clients_table_tracked() {
        // As C-core clients send them: the first request adds its fields to
        // the dynamic table, the second refers to them by index only.
        let literal = |out: &mut Vec<u8>, first: u8, value: &[u8]| {
            out.push(first);
            out.push(value.len() as u8);
            out.extend_from_slice(value);
        };
        let path = b"/runtime.v1.RuntimeService/Version";
        let mut first = vec![0x83, 0x86]; // :method POST, :scheme http (static)
        literal(&mut first, 0x44, path); // :path, incremental indexing
        literal(&mut first, 0x41, b"%2Frun%2Fcrius%2Fcrius.sock"); // :authority
        // te: trailers, new name, incremental indexing.
        first.extend_from_slice(&[0x40, 2, b't', b'e', 8]);
        first.extend_from_slice(b"trailers");
        // Dynamic table now: 62 te, 63 :authority, 64 :path.
        let second = [0x83, 0x86, 0x80 | 64, 0x80 | 63, 0x80 | 62];
        let mut good = vec![0x83, 0x86, 0x80 | 64];
        literal(&mut good, 0x01, b"crius.invalid"); // without indexing
        good.push(0x80 | 62);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &first));
        input.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0])); // DATA
        // Split over HEADERS + CONTINUATION, padded.
        let mut padded = vec![3u8];
        padded.extend_from_slice(&second[..2]);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(FRAME_HEADERS, FLAG_PADDED, 3, &padded));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 3, &second[2..]));
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 5, &good));
        let out = frames(&through(input).await);
        let kinds: Vec<_> = out.iter().map(|f| (f.0, f.1, f.2)).collect();
        assert_eq!(
            kinds,
            vec![
                (0x4, 0, 0),
                (FRAME_HEADERS, FLAG_END_HEADERS, 1),
                (0x0, 0x1, 1),
                (FRAME_HEADERS, FLAG_END_HEADERS, 3),
                (FRAME_HEADERS, FLAG_END_HEADERS, 5),
            ]
        );
        assert_eq!(out[2].3, vec![0, 0, 0, 0, 0]);
        // The server decodes with a fresh table: nothing may refer to one.
        let mut server = loona_hpack::Decoder::new();
        for (i, authority) in [
            (1, &b"localhost"[..]),
            (3, b"localhost"),
            (4, b"crius.invalid"),
        ] {
            let headers = server.decode(&out[i].3).unwrap();
            assert_eq!(headers.len(), 5);
            assert_eq!(headers[2].1, b"/runtime.v1.RuntimeService/Version");
            assert_eq!(headers[3], (b":authority".to_vec(), authority.to_vec()));
        }
    }

    #[tokio::test]
    async fn large_blocks_are_cut_into_continuations() {
        let mut enc = loona_hpack::Encoder::new();
        let big = vec![b'x'; 40_000];
        let block = enc.encode(vec![
            (&b":authority"[..], &b"/run/x.sock"[..]),
            (b"big", &big[..]),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_PRIORITY,
            1,
            &{
                let mut p = vec![0, 0, 0, 0, 16];
                p.extend_from_slice(&block);
                p
            },
        ));
        let out = frames(&through(input).await);
        assert!(out.len() >= 3, "{}", out.len());
        assert_eq!(out[0].1, FLAG_PRIORITY);
        assert!(out.iter().all(|f| f.3.len() <= MAX_FRAME_PAYLOAD));
        assert_eq!(out.last().unwrap().1, FLAG_END_HEADERS);
        let mut joined = out[0].3[5..].to_vec();
        for f in &out[1..] {
            assert_eq!(f.0, FRAME_CONTINUATION);
            joined.extend_from_slice(&f.3);
        }
        let headers = loona_hpack::Decoder::new().decode(&joined).unwrap();
        assert_eq!(headers[0].1, b"localhost");
        assert_eq!(headers[1].1, big);
    }

    #[test]
    fn integers_use_the_continuation_encoding() {
        let mut out = Vec::new();
        encode_integer(&mut out, 10, 7, 0);
        assert_eq!(out, [10]);
        out.clear();
        encode_integer(&mut out, 1337, 5, 0);
        assert_eq!(out, [31, 154, 10]); // RFC 7541 C.1.2
    }
}
