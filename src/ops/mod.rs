//! Operating the job: what it reports about itself while it runs (progress log, metrics topic,
//! Prometheus endpoint, status page, threshold alerts, CPU time by thread role).

pub mod http;
pub mod metrics;
pub mod report;
pub mod status;
pub mod thread_cpu;
pub mod thresholds;
