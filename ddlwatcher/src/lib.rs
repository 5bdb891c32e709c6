//! Catalog model and introspection for pgteleport.
//!
//! This crate holds what both the capture side and (later) the DDL diff need to know about
//! the replicated tables: their columns, types and primary keys, read from `pg_catalog`
//! (never `information_schema`, which hides objects the role has no rights on), plus the
//! `target_expression` matcher. The model is plain data so the diff can be tested without a
//! database.

pub mod catalog;
pub mod expression;

pub use catalog::{
    describe_table, introspect_tables, qualified, quote_ident, quote_literal, Column, Table,
};
pub use expression::{ExpressionError, TargetExpression};
