//! Operating the job: what it reports about itself while it runs.

pub mod report;
