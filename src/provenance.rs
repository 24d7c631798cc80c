//! Where a run's figures come from: the build (version, commit, optimized or not) and the
//! machine (CPU, kernel), so that benchmark reports can be compared across commits and
//! machines.

use serde::Serialize;

/// The commit the binary was built from: 12 hex digits, with `-dirty` when its code had
/// changes not committed, or `unknown` outside a git checkout.
pub const COMMIT: &str = env!("BUILT_FROM_COMMIT");

/// The version `--version` prints: the crate's version and the commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("BUILT_FROM_COMMIT"),
    ")"
);

/// The build a run came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    pub version: &'static str,
    pub commit: &'static str,
    /// Whether the code was optimized (`cargo build --release`); an unoptimized build runs
    /// many times slower, so its figures say little about the engine.
    pub optimized: bool,
}

impl BuildInfo {
    /// This binary's build.
    pub fn current() -> BuildInfo {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            commit: COMMIT,
            optimized: !cfg!(debug_assertions),
        }
    }
}

/// The machine a run came from, as far as the system tells (Linux: `/proc`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MachineInfo {
    /// The CPU's model name, e.g. `AMD EPYC` or `Intel(R) Xeon(R) Processor`.
    pub cpu: Option<String>,
    /// The x86 family and model numbers, which tell CPU generations apart where the model
    /// name does not (family 23 model 49 is a Zen 2, family 25 model 17 a Zen 4).
    pub cpu_family: Option<u32>,
    pub cpu_model: Option<u32>,
    /// The kernel's release.
    pub kernel: Option<String>,
}

impl MachineInfo {
    /// This machine's.
    pub fn current() -> MachineInfo {
        let mut machine = std::fs::read_to_string("/proc/cpuinfo")
            .map(|text| MachineInfo::from_cpuinfo(&text))
            .unwrap_or_default();
        machine.kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|release| release.trim().to_owned())
            .filter(|release| !release.is_empty());
        machine
    }

    /// The CPU of `/proc/cpuinfo`'s first processor.
    fn from_cpuinfo(text: &str) -> MachineInfo {
        let first = text.split("\n\n").next().unwrap_or_default();
        let field = |name: &str| {
            first.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_owned())
            })
        };
        MachineInfo {
            cpu: field("model name").filter(|name| !name.is_empty()),
            cpu_family: field("cpu family").and_then(|n| n.parse().ok()),
            cpu_model: field("model").and_then(|n| n.parse().ok()),
            kernel: None,
        }
    }

    /// One line for a report: `AMD EPYC (family 23, model 49), Linux 6.18.44`.
    pub fn describe(&self) -> String {
        let mut cpu = self.cpu.clone().unwrap_or_else(|| "unknown CPU".into());
        if let (Some(family), Some(model)) = (self.cpu_family, self.cpu_model) {
            cpu.push_str(&format!(" (family {family}, model {model})"));
        }
        match &self.kernel {
            Some(kernel) => format!("{cpu}, Linux {kernel}"),
            None => cpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_processors_cpu_is_read_from_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\n\
                    model name\t: AMD EPYC\nflags\t\t: fpu avx2\n\n\
                    processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n\
                    model name\t: Another CPU\n";
        let machine = MachineInfo::from_cpuinfo(text);
        assert_eq!(machine.cpu.as_deref(), Some("AMD EPYC"));
        assert_eq!(
            (machine.cpu_family, machine.cpu_model),
            (Some(23), Some(49))
        );
        let described = MachineInfo {
            kernel: Some("6.18.44".into()),
            ..machine
        }
        .describe();
        assert_eq!(described, "AMD EPYC (family 23, model 49), Linux 6.18.44");
    }

    #[test]
    fn a_cpu_the_system_does_not_describe_is_unknown() {
        // An ARM machine's cpuinfo has neither a model name nor x86 family numbers.
        let machine = MachineInfo::from_cpuinfo("processor\t: 0\nBogoMIPS\t: 50.00\n");
        assert_eq!(machine, MachineInfo::default());
        assert_eq!(machine.describe(), "unknown CPU");
    }
}
