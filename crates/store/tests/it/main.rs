//! Integration tests for the store, each scenario run on SQLite (temporary file) and on
//! PostgreSQL (`TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`, in a
//! fresh schema per test, dropped at the end).

// Test helpers outside `#[test]` fns panic on purpose, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod outbox;
mod records;
mod secrets;
mod startup;
