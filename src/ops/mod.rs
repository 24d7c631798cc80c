//! Operating the job: what it reports about itself while it runs (progress log, metrics topic,
//! Prometheus endpoint, status page, threshold alerts).

pub mod http;
pub mod metrics;
pub mod report;
pub mod status;
pub mod thresholds;
