//! End-to-end tests of the keylink CLI live in `tests/`; helpers in `tests/common/mod.rs`.
