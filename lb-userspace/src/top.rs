//! `xlb top`.
