//! RESP command framing over arbitrary bytes fed in arbitrary pieces.
//!
//! Input: byte 0 seeds how the stream is cut into chunks, byte 1 picks the limits, the rest is
//! the byte stream. Checked: no panic; cutting never changes the commands; at most one error,
//! last; arguments lie inside the stream, in order, within the bulk (or inline line) limit;
//! `needed_from` never passes the bytes fed.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod chunks;
use chunks::chunks;
use pst_resp::{CommandFramer, Event, Limits};

fn limits(sel: u8) -> Limits {
    match sel % 3 {
        0 => Limits::default(),
        1 => Limits {
            max_bulk: 8,
            max_args: 3,
            max_line: 16,
        },
        _ => Limits {
            max_bulk: 1024,
            max_args: 64,
            max_line: 256,
        },
    }
}

fn frame(data: &[u8], lim: Limits, seed: u8) -> Vec<Event> {
    let mut f = CommandFramer::new(lim);
    let mut out = Vec::new();
    let mut at = 0u64;
    for piece in chunks(data, seed, 61) {
        f.feed(piece, &mut out);
        at += piece.len() as u64;
        assert!(f.needed_from() <= at, "needed_from past the stream");
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
            Event::Command(args) => {
                assert!(!args.is_empty(), "empty command");
                for a in args {
                    assert!(a.start >= prev_end, "arguments overlap or go backwards");
                    assert!(a.start <= a.end && a.end <= data.len() as u64);
                    assert!(a.end - a.start <= lim.max_bulk.max(lim.max_line as u64));
                    prev_end = a.end;
                }
            }
            Event::Inline(args) => {
                assert!(!args.is_empty(), "empty command");
                for a in args {
                    assert!(a.len() <= lim.max_line, "inline argument longer than its line");
                }
            }
            Event::Error(_) => assert_eq!(i, whole.len() - 1, "events after an error"),
        }
    }
});
