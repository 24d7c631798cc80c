//! wrongbook: a streaming wide-table engine on timely and differential dataflow.
//!
//! It keeps the MySQL wide table `dwd_wrong_record_wide_delta` exactly current from an
//! error-notebook app's business events, routed by a hot-reloadable routing table and joined
//! to a chain of three dimension tables as an incrementally maintained join.
//!
//! Data flows one way, and the modules follow it:
//!
//! - [`config`], [`spec`]: the job's configuration (TOML + environment) and the dataflow spec
//!   (payload schemas, processors, aliases, maps, dimension queries) — data, not code.
//! - [`source`]: where input comes from (Kafka partitions, a JSONL file or memory), the routing
//!   table and dimension snapshots (read in full, diffed).
//! - [`event`]: parsing and validation of a raw message into a typed `BusinessEvent`.
//! - [`dataflow`]: ingest (route + process) and the differential graph: record state, the
//!   dimension chain, wide rows.
//! - [`sink`]: wide-row changes into the database (MySQL/MariaDB, SQLite, memory), and dead
//!   letters.
//! - [`engine`]: threads, channels, epochs and the end of input around the dataflow;
//!   [`checkpoint`]: durable checkpoints and restore; [`cluster`]: the layout over processes.
//! - [`ops`]: what the running job reports (progress log, metrics and alerts topics,
//!   `/metrics`, the status page, threshold alerts).
//! - [`schema`], [`db`]: the seed's tables and database connections.
//! - [`commands`]: one module per `wrongbook` subcommand; [`provenance`]: the build and the
//!   machine a report's figures come from.

pub mod checkpoint;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod dataflow;
pub mod db;
pub mod engine;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub mod json;
pub mod ops;
pub mod provenance;
pub mod schema;
pub mod sink;
pub mod source;
pub mod spec;
