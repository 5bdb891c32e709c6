//! Catalog model, introspection and DDL generation for pgteleport.
//!
//! This crate holds what capture, initial load and (later) the DDL diff need to know about
//! the replicated tables: columns, types, keys, indexes and the user types they use, read
//! from `pg_catalog`, plus the `target_expression` matcher and the DDL that recreates the
//! model on a target. The model is plain serialisable data, so the DDL generation is tested
//! without a database.

pub mod catalog;
pub mod ddl;
pub mod diff;
pub mod expression;
pub mod retarget;
pub mod snapshot;

pub use catalog::{
    base_type_sql, key_columns_sql, key_index_sql, mentions, qualified, quote_ident, quote_literal,
    Collation, Column, Constraint, Function, Index, Partition, Sequence, Table, TypeDef, TypeKind,
    TypeRef, View, FIRST_USER_OID,
};
pub use ddl::SchemaMap;
pub use diff::{diff, Catalog, Statement};
pub use expression::{ExpressionError, TargetExpression};
pub use snapshot::{catalog_sql, ReadError};
