//! Cluster mode (SPEC §9): the job's layout over processes, with timely's own networking (no
//! home-made coordination). Process `i` of `n` runs `w` workers with global indexes
//! `i*w .. (i+1)*w`; the hostfile lists one `host:port` per process, in process order, where
//! the processes connect to each other.
//!
//! Timely waits forever for a peer that never comes; the engine waits at most the
//! configured time and then names the peers it cannot reach ([`Layout::unreachable_peers`]).

use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use crate::config::Config;

/// Why a cluster cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("hostfile {path}: {message}")]
    Hostfile { path: String, message: String },
    #[error("{0}")]
    Start(String),
}

/// Where this process stands in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub processes: usize,
    pub process: usize,
    /// Workers per process.
    pub workers: usize,
    /// `host:port` of each process (empty for one process).
    pub addresses: Vec<String>,
    pub connect_timeout: Duration,
}

impl Layout {
    /// One process with `workers` workers.
    pub fn single(workers: usize) -> Layout {
        Layout {
            processes: 1,
            process: 0,
            workers,
            addresses: Vec::new(),
            connect_timeout: Duration::from_secs(60),
        }
    }

    /// The layout `config` describes (its `[cluster]` section and `workers`), reading the
    /// hostfile.
    pub fn from_config(config: &Config, workers: usize) -> Result<Layout, ClusterError> {
        let cluster = &config.cluster;
        let mut layout = Layout::single(workers);
        layout.processes = cluster.processes;
        layout.process = cluster.process;
        layout.connect_timeout = cluster.connect_timeout.0;
        if cluster.processes > 1 {
            let path = config.resolve(&cluster.hostfile);
            layout.addresses = read_hostfile(&path)?;
            if layout.addresses.len() < cluster.processes {
                return Err(ClusterError::Hostfile {
                    path: path.display().to_string(),
                    message: format!(
                        "lists {} address(es) for {} processes: one host:port per process, in process order",
                        layout.addresses.len(),
                        cluster.processes
                    ),
                });
            }
            layout.addresses.truncate(cluster.processes);
        }
        Ok(layout)
    }

    /// Workers of the whole job.
    pub fn peers(&self) -> usize {
        self.processes * self.workers
    }

    /// The global index of this process's first worker.
    pub fn first_worker(&self) -> usize {
        self.process * self.workers
    }

    /// Timely's configuration for this layout.
    pub fn timely_config(&self) -> timely::Config {
        if self.processes == 1 {
            return timely::Config::process(self.workers);
        }
        timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: self.addresses.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        }
    }

    /// The operations endpoint of this process: process `i` listens on the port + `i`, so
    /// several processes can share a host.
    pub fn listen_address(&self, listen: &str) -> String {
        match listen.rsplit_once(':') {
            Some((host, port)) if self.process > 0 => match port.parse::<u16>() {
                Ok(0) => listen.to_owned(),
                Ok(port) => format!("{host}:{}", port + self.process as u16),
                Err(_) => listen.to_owned(),
            },
            _ => listen.to_owned(),
        }
    }

    /// Which other processes do not accept connections now, with why: what a start-up that
    /// timed out reports.
    pub fn unreachable_peers(&self) -> Vec<String> {
        self.addresses
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.process)
            .filter_map(|(i, address)| {
                let reached = address
                    .to_socket_addrs()
                    .map_err(|e| e.to_string())
                    .and_then(|mut addrs| {
                        let addr = addrs.next().ok_or("no address")?;
                        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                            .map_err(|e| e.to_string())
                    });
                reached
                    .err()
                    .map(|why| format!("process {i} at {address} ({why})"))
            })
            .collect()
    }
}

/// One `host:port` per line; blank lines and `#` comments are ignored.
pub fn read_hostfile(path: &Path) -> Result<Vec<String>, ClusterError> {
    let text = std::fs::read_to_string(path).map_err(|e| ClusterError::Hostfile {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut addresses = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let valid = line
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(ClusterError::Hostfile {
                path: path.display().to_string(),
                message: format!("line {}: `{line}` is not host:port", n + 1),
            });
        }
        if addresses.iter().any(|a| a == line) {
            return Err(ClusterError::Hostfile {
                path: path.display().to_string(),
                message: format!("line {}: `{line}` is listed twice", n + 1),
            });
        }
        addresses.push(line.to_owned());
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostfile_lists_one_address_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(
            &path,
            "# the job\n127.0.0.1:2101\n\nworker-1.wb:2101 # second\n",
        )
        .unwrap();
        assert_eq!(
            read_hostfile(&path).unwrap(),
            vec!["127.0.0.1:2101", "worker-1.wb:2101"]
        );
        std::fs::write(&path, "127.0.0.1\n").unwrap();
        assert!(read_hostfile(&path)
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        std::fs::write(&path, "a:1\na:1\n").unwrap();
        assert!(read_hostfile(&path)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn processes_share_a_host_on_consecutive_ports() {
        let mut layout = Layout::single(2);
        layout.processes = 3;
        layout.process = 2;
        assert_eq!(layout.listen_address("127.0.0.1:9249"), "127.0.0.1:9251");
        assert_eq!(layout.listen_address("127.0.0.1:0"), "127.0.0.1:0");
        assert_eq!(layout.first_worker(), 4);
        assert_eq!(layout.peers(), 6);
    }
}
