//! One module per `wrongbook` subcommand; `main.rs` only parses the command line and calls
//! these.

pub mod bench;
pub mod db_limit;
pub mod demo;
pub mod gen;
pub mod init_db;
pub mod job;
pub mod progress;
pub mod replay;
pub mod run;
pub mod scaling;
