//! What hooks print: the backends of a scale-out hook's output.

use crate::endpoint::Endpoint;

/// Parses the backends a scale-out hook printed, one [`Endpoint`] a line: `ADDR`,
/// `ADDR:PORT` or `[V6]:PORT` (also `[V6]`). Blank lines and `#` comments (whole-line or after
/// the address) are ignored. A line that is not a unicast address (port 1-65535) comes back in
/// the second list, trimmed, for the log. (Adding them to the group then applies the checks
/// of every backend: [`crate::endpoint::check_backend`].)
pub fn parse_backends(lines: &[String]) -> (Vec<Endpoint>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for line in lines {
        let s = line.split('#').next().unwrap_or("").trim();
        if s.is_empty() {
            continue;
        }
        match s.parse::<Endpoint>() {
            Ok(e) if crate::endpoint::check_unicast(e.addr).is_ok() => ok.push(e),
            _ => bad.push(line.trim().to_string()),
        }
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn parse_backends_accepts_addresses_and_reports_invalid_lines() {
        let lines: Vec<String> = [
            "10.0.0.5",
            "  10.0.0.6:8080  ",
            "[2001:db8::1]:443",
            "2001:db8::2",
            "[2001:db8::3]",
            "",
            "# a comment",
            "10.0.0.7 # launched i-123",
            "hello",
            "10.0.0.8:0",
            "10.0.0.9:70000",
            "0.0.0.0",
            "224.0.0.1",
            "2001:db8::1:80",
            "10.0.0.1:80:90",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (ok, bad) = parse_backends(&lines);
        let ok: Vec<(IpAddr, Option<u16>)> = ok.iter().map(|e| (e.addr, e.port)).collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            ok,
            vec![
                (ip("10.0.0.5"), None),
                (ip("10.0.0.6"), Some(8080)),
                (ip("2001:db8::1"), Some(443)),
                (ip("2001:db8::2"), None),
                (ip("2001:db8::3"), None),
                (ip("10.0.0.7"), None),
                // A bare IPv6 address that ends in :80 is an address, not a port.
                (ip("2001:db8::1:80"), None),
            ]
        );
        assert_eq!(
            bad,
            vec![
                "hello",
                "10.0.0.8:0",
                "10.0.0.9:70000",
                "0.0.0.0",
                "224.0.0.1",
                "10.0.0.1:80:90"
            ]
        );
    }
}
