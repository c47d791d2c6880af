//! The health check's HTTP response reader (`xlb::health::parse_http_response`, the code a
//! real check runs on its socket) on arbitrary bytes: never panics or hangs; the result is the
//! same whether the bytes arrive in one read or in pieces (for responses shorter than the
//! reader's limits, 4 KiB); a success is a final (not 1xx) status, a failure a "bad HTTP response".
//!
//! Input: the first byte sets the piece size (1 + byte), the rest is the response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlb::health::parse_http_response;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, response)) = data.split_first() else {
        return;
    };
    let whole = parse_http_response(&[response]);
    match &whole {
        // httparse takes any three digits (`032` too); interim 1xx responses are skipped.
        Ok((status, _)) => assert!(
            *status <= 999 && (!(100..200).contains(status) || *status == 101),
            "status {status} returned as final"
        ),
        Err(reason) => assert!(reason.starts_with("bad HTTP response: "), "{reason}"),
    }
    if response.len() < 4096 {
        let pieces: Vec<&[u8]> = response.chunks(usize::from(piece) + 1).collect();
        assert_eq!(
            parse_http_response(&pieces),
            whole,
            "piece size {}",
            piece + 1
        );
    }
});
