//! Fuzz the QMP decoder: frames must not depend on how the stream is chunked, must tile the
//! input (with only whitespace between them), and classification must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qmptap::wire::{Decoder, Frame, FrameKind, Limits, Message};

/// Small limits, so that every limit is reached by short inputs.
const SMALL: Limits = Limits {
    max_message_bytes: 48,
    max_tokens: 12,
    max_depth: 5,
    keep_prefix: 7,
};

fn decode<'a>(limits: Limits, chunks: impl Iterator<Item = &'a [u8]>) -> Vec<Frame> {
    let mut decoder = Decoder::with_limits(limits);
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk, &mut out);
    }
    out.extend(decoder.finish());
    assert_eq!(decoder.buffered(), 0);
    out
}

fuzz_target!(|data: &[u8]| {
    // Header: one byte of flags, four bytes of chunk sizes (used in turn, 1..=256 each).
    if data.len() < 5 {
        return;
    }
    let (header, input) = data.split_at(5);
    let limits = if header[0] & 1 == 1 {
        SMALL
    } else {
        Limits::QEMU
    };
    let sizes: Vec<usize> = header[1..].iter().map(|&b| usize::from(b) + 1).collect();

    let whole = decode(limits, std::iter::once(input));
    let mut rest = input;
    let mut chunks = Vec::new();
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, after) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk);
        rest = after;
    }
    let chunked = decode(limits, chunks.into_iter());
    assert_eq!(whole, chunked);

    // The frames tile the input: between them only whitespace, their bytes the input's.
    let mut at = 0usize;
    let mut limited = false;
    for frame in &whole {
        let start = usize::try_from(frame.offset).unwrap();
        let len = usize::try_from(frame.len).unwrap();
        assert!(start >= at);
        if !limited {
            assert!(input[at..start].iter().all(|b| b" \t\r\n".contains(b)));
        }
        match frame.kind {
            FrameKind::Limit(_) => {
                limited = true;
                assert!(frame.bytes.len() <= limits.keep_prefix);
                assert!(frame.bytes.len() <= len);
            }
            FrameKind::Invalid { offending, at } => {
                assert_eq!(frame.bytes.len(), len);
                assert_eq!(frame.bytes[at], offending);
            }
            _ => assert_eq!(frame.bytes.len(), len),
        }
        assert_eq!(&input[start..start + frame.bytes.len()], &frame.bytes[..]);
        at = start + len;
        let message = Message::classify(frame);
        if message.exact {
            assert_eq!(
                message.json.as_deref().map(str::as_bytes),
                Some(&frame.bytes[..])
            );
        }
    }
    assert!(input[at..].iter().all(|b| b" \t\r\n".contains(b)));
    // Arbitrary bytes (not a frame) must classify without panicking too.
    let _ = Message::from_bytes(input);
});
