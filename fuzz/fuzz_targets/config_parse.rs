//! `xlb::config::parse` on arbitrary text: never panics; an error names a line and column
//! inside the text; a valid config serializes (as the state file's fingerprint does) and
//! builds the daemon's state.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The daemon reads the file with `read_to_string`: non-UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match xlb::config::parse(text, "fuzz.toml") {
        Ok(config) => {
            serde_json::to_string(&config).expect("a valid config serializes");
            let state = xlb::state::State::new(config);
            assert_eq!(state.groups.len(), state.config.target_groups.len());
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.toml:"), "{shown}");
            if let xlb::config::ConfigError::Invalid { line, column, .. } = e {
                let lines = text.split('\n').count();
                assert!(
                    line >= 1 && line <= lines,
                    "line {line} of {lines}: {shown}"
                );
                let width = text
                    .split('\n')
                    .nth(line - 1)
                    .map_or(0, |l| l.chars().count());
                assert!(
                    column >= 1 && column <= width + 1,
                    "column {column} of a line of {width} characters: {shown}"
                );
            }
        }
    }
});
