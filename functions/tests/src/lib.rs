//! Test-only package: see `tests/it`.
