//! SPDY/3.1 framing against byte-exact vectors from the spec's frame
//! layouts, and header blocks compressed by an independent zlib (Python's,
//! with the dictionary as `zdict`).

use bytes::{Bytes, BytesMut};

use super::frame::*;

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn hex(text: &str) -> Vec<u8> {
    let text: String = text.split_whitespace().collect();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(frame, &mut HeaderEncoder::new(), &mut out);
    out.to_vec()
}

fn decoded(bytes: &[u8]) -> Frame {
    assert_eq!(frame_len(bytes), Ok(Some(bytes.len())));
    decode(bytes, &mut HeaderDecoder::new()).expect("decodes")
}

#[test]
fn dictionary_is_the_spdy3_one() {
    // The spec's dictionary is 1423 bytes; zlib streams name it by this
    // Adler-32 (the DICTID a SPDY/3 peer's header blocks carry).
    assert_eq!(DICTIONARY.len(), 1423);
    assert_eq!(adler32(&DICTIONARY), 0xe3c6_a7c2);
}

#[test]
fn control_frames_match_the_wire_layout() {
    let cases = [
        (Frame::Ping { id: 1 }, "80030006 00000004 00000001"),
        (
            Frame::RstStream {
                stream_id: 3,
                status: RST_CANCEL,
            },
            "80030003 00000008 00000003 00000005",
        ),
        (
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 0x8000,
            },
            "80030009 00000008 00000001 00008000",
        ),
        (
            Frame::GoAway {
                last_good_stream_id: 5,
                status: GOAWAY_OK,
            },
            "80030007 00000008 00000005 00000000",
        ),
        (
            Frame::Settings {
                entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 0x10000)],
            },
            "80030004 0000000c 00000001 00000007 00010000",
        ),
        (
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::from_static(b"hi"),
            },
            "00000001 01000002 6869",
        ),
    ];
    for (frame, wire) in cases {
        let wire = hex(wire);
        assert_eq!(encoded(&frame), wire, "{frame:?}");
        assert_eq!(decoded(&wire), frame);
    }
}

#[test]
fn header_blocks_from_an_independent_zlib_decode() {
    // Two blocks from one compression context: the second refers back to
    // the first, as on a real connection.
    let first = hex("78bbe3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff");
    let second = hex("02651c0c2960624ec90797d1c022bb084c5b18581800000000ffff");
    let mut decoder = HeaderDecoder::new();
    assert_eq!(
        decoder.decode(&first).expect("first"),
        vec![("streamtype".to_string(), "error".to_string())]
    );
    assert_eq!(
        decoder.decode(&second).expect("second"),
        vec![
            ("streamtype".to_string(), "stdout".to_string()),
            ("port".to_string(), "8080".to_string())
        ]
    );
}

#[test]
fn syn_stream_round_trips_with_shared_contexts() {
    let mut encoder = HeaderEncoder::new();
    let mut decoder = HeaderDecoder::new();
    for (id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout")] {
        let frame = Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), kind.into())],
        };
        let mut out = BytesMut::new();
        encode(&frame, &mut encoder, &mut out);
        // Type, flags and the fixed fields before the header block.
        assert_eq!(&out[..4], &hex("80030001")[..]);
        assert_eq!(&out[8..16], &[0, 0, 0, id as u8, 0, 0, 0, 0]);
        assert_eq!(decode(&out, &mut decoder).expect("decode"), frame);
    }
}

#[test]
fn bad_frames_are_refused() {
    // Version 2 control frame.
    let v2 = hex("80020006 00000004 00000001");
    assert_eq!(
        decode(&v2, &mut HeaderDecoder::new()),
        Err(FrameError::Version(2))
    );
    // Truncated RST_STREAM.
    let short = hex("80030003 00000004 00000001");
    assert!(decode(&short, &mut HeaderDecoder::new()).is_err());
    // Over the size limit.
    assert!(matches!(
        frame_len(&hex("00000001 00ffffff")),
        Err(FrameError::TooLarge(_))
    ));
    // Garbage where a header block should be.
    let garbage = hex("80030002 00000008 00000001 deadbeef");
    assert!(decode(&garbage, &mut HeaderDecoder::new()).is_err());
}
