//! Helpers shared by the conformance tests (add more here; e2e helpers live in tests/e2e/support.rs
//! and the harness in tests/src).
