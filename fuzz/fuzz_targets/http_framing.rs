//! HTTP request framing over arbitrary bytes fed in arbitrary pieces.
//!
//! Input: byte 0 seeds how the stream is cut into chunks, byte 1 picks the limits, the rest is
//! the byte stream a client sent. Checked: no panic; cutting the stream differently never
//! changes what is framed; at most one error and nothing after it; bodies lie inside the stream,
//! after the previous request, within the body limit (chunk data in order inside its body); `needed_from` never passes the position.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod chunks;
use chunks::chunks;
use pst_http::{Event, Limits, RequestFramer};

fn limits(sel: u8) -> Limits {
    match sel % 3 {
        0 => Limits::default(),
        1 => Limits {
            max_head: 64,
            max_headers: 3, // an HTTP/1.1 request needs Host besides two others
            max_body: 16,
        },
        _ => Limits {
            max_head: 512,
            max_headers: 8,
            max_body: 4096,
        },
    }
}

/// Frame `data` cut into chunks chosen by `seed` (0: one chunk).
fn frame(data: &[u8], lim: Limits, seed: u8) -> Vec<Event> {
    let mut f = RequestFramer::new(lim);
    let mut out = Vec::new();
    let mut at = 0u64;
    for piece in chunks(data, seed, 97) {
        f.feed(piece, &mut out);
        at += piece.len() as u64;
        assert_eq!(f.position(), at);
        assert!(
            f.needed_from() <= f.position(),
            "needed_from past the stream"
        );
    }
    out
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let (seed, lim) = (input[0], limits(input[1]));
    let data = &input[2..];
    let whole = frame(data, lim, 0);
    let cut = frame(data, lim, seed.max(1));
    assert_eq!(whole, cut, "framing depends on how the stream was cut");

    let mut prev_end = 0u64;
    for (i, ev) in whole.iter().enumerate() {
        match ev {
            Event::Request(r) => {
                assert!(r.body.start <= r.body.end && r.body.end <= data.len() as u64);
                assert!(r.body.start >= prev_end, "bodies overlap or go backwards");
                assert!(r.body_len() <= lim.max_body);
                let mut at = r.body.start;
                for d in &r.chunks {
                    assert!(r.chunked, "chunk ranges without a chunked body");
                    assert!(at <= d.start && d.start < d.end && d.end <= r.body.end, "chunk data outside its body or out of order");
                    at = d.end;
                }
                prev_end = r.body.end;
            }
            Event::Continue => {}
            Event::Error(_) => assert_eq!(i, whole.len() - 1, "events after an error"),
        }
    }
});
