//! The XDP object built by `build.rs`.

/// The ELF object holding the `xlb`, `xlb_pass` and `xlb_tx` programs and their maps.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
