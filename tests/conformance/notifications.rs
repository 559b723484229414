//! Conformance cases: see main.rs for the range of spec §10 cases this module covers.
