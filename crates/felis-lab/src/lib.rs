//! `felis lab`: a whole cluster in network namespaces on one machine, with an emulated AWS-like
//! VPC. The demo, the integration-test bed and the benchmark bed.
//!
//! The lab builds its VPC with `ip` and `nft` (it is an emulator, not the product's dataplane),
//! keeps its state in `/run/felis/lab/<name>/state.json`, and names every namespace
//! `<name>.<what>` so that several labs coexist and `down` removes exactly what its lab made,
//! also after a crash.

mod agents;
pub mod aws;
pub mod bench;
pub mod plan;
pub mod policy_bench;
mod sh;
mod topology;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

pub use plan::LabSpec;
pub use plan::Plan;
pub use plan::PoolMode;

/// Lab errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
    /// The lab already exists.
    #[error("lab {0:?} already exists: run `felis lab down --name {0}` first")]
    Exists(String),
    /// The lab does not exist.
    #[error("lab {0:?} is not up")]
    NotFound(String),
    /// No such host or workload.
    #[error("lab {lab:?} has no host or workload {target:?}")]
    NoTarget {
        /// The lab.
        lab: String,
        /// What was asked for.
        target: String,
    },
    /// A command could not be started.
    #[error("failed to run {command}")]
    Spawn {
        /// The program.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The state file could not be read or written.
    #[error("lab state {path}: {reason}")]
    State {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// A workload's address, once known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadAddress {
    /// The workload.
    pub name: String,
    /// Its address.
    pub address: IpAddr,
}

/// What a lab keeps on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The plan.
    pub plan: Plan,
    /// Workload addresses, by workload name.
    #[serde(default)]
    pub addresses: BTreeMap<String, IpAddr>,
    /// Per-host source/destination check (true = on).
    #[serde(default)]
    pub src_dst_checks: BTreeMap<String, bool>,
    /// The datastore URL the lab's agents use.
    #[serde(default)]
    pub datastore: String,
}

/// The lab's state directory.
pub fn state_dir(name: &str) -> PathBuf {
    PathBuf::from("/run/felis/lab").join(name)
}

/// Writes (or rewrites) the marker `GlobalNetworkSet` `marker` and returns the datastore
/// revision it was written at: every change made before this call is at or below it.
/// `felis` is the binary to run the CLI with.
pub fn mark_revision(state: &State, felis: &std::path::Path, marker: &str) -> Result<i64, Error> {
    let manifest = format!(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {{name: {marker}, labels: {{t: t{}}}}}\nspec: {{nets: []}}\n",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    agents::felis(state, felis, &["apply", "-f", "-"], &manifest)?;
    let out = agents::felis(
        state,
        felis,
        &["get", "globalnetworkset", marker, "-o", "json"],
        "",
    )?;
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| {
            v.pointer("/metadata/resourceVersion")?
                .as_str()?
                .parse()
                .ok()
        })
        .ok_or_else(|| Error::Invalid(format!("the marker {marker} has no resourceVersion")))
}

/// Waits until `host`'s agent in lab `name` has programmed its dataplane (routes and policy)
/// from the datastore up to `revision`, as its `synced-revision` state file says.
pub fn wait_synced(
    name: &str,
    host: &str,
    revision: i64,
    timeout: std::time::Duration,
) -> Result<(), Error> {
    let file = state_dir(name).join(host).join("synced-revision");
    #[allow(clippy::disallowed_methods)] // waiting on real processes needs the real clock
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let synced: i64 = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if synced >= revision {
            return Ok(());
        }
        #[allow(clippy::disallowed_methods)]
        if std::time::Instant::now() > deadline {
            return Err(Error::Invalid(format!(
                "{host}'s agent did not program revision {revision} within {}s (it is at {synced})",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl State {
    /// Reads the state of lab `name`.
    pub fn load(name: &str) -> Result<State, Error> {
        let path = state_dir(name).join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(name.to_string()),
            _ => Error::State {
                path: path.display().to_string(),
                reason: e.to_string(),
            },
        })?;
        serde_json::from_str(&text).map_err(|e| Error::State {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Writes the state atomically (temp file, then rename).
    pub fn save(&self) -> Result<(), Error> {
        let dir = state_dir(&self.plan.spec.name);
        let path = dir.join("state.json");
        let err = |e: std::io::Error| Error::State {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(err)?;
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::State {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// The namespace of a host or workload by name.
    pub fn netns_of(&self, target: &str) -> Option<&str> {
        let plan = &self.plan;
        plan.hosts
            .iter()
            .find(|h| h.name == target)
            .map(|h| h.netns.as_str())
            .or_else(|| {
                plan.workloads
                    .iter()
                    .find(|w| w.name == target)
                    .map(|w| w.netns.as_str())
            })
    }
}

/// Builds the lab's VPC, internet and hosts. On failure, removes what it made.
pub fn create(spec: LabSpec) -> Result<State, Error> {
    let plan = Plan::new(spec)?;
    let name = plan.spec.name.clone();
    if state_dir(&name).join("state.json").exists()
        || sh::namespaces()
            .iter()
            .any(|n| n.starts_with(&format!("{name}.")))
    {
        return Err(Error::Exists(name));
    }
    let state = State {
        src_dst_checks: plan
            .hosts
            .iter()
            .map(|h| (h.name.clone(), plan.spec.src_dst_check))
            .collect(),
        datastore: format!("file://{}", state_dir(&name).join("felis.db").display()),
        addresses: BTreeMap::new(),
        plan,
    };
    // Saved first, so that `down` finds everything even if `up` dies half-way.
    state.save()?;
    if let Err(e) = topology::build(&state.plan) {
        let _ = destroy(&name);
        return Err(e);
    }
    Ok(state)
}

/// Writes the lab's pool and starts an agent on every host (`felis_binary node run`), waiting
/// until all are ready.
pub fn start_agents(state: &State, felis_binary: &std::path::Path) -> Result<(), Error> {
    agents::spawn_aws_emulator(state, felis_binary)?;
    agents::apply_pool(state, felis_binary)?;
    agents::start(state, felis_binary, std::time::Duration::from_secs(30))
}

/// Attaches every workload through the CNI plugin, as a container runtime would, and records
/// their addresses in the lab's state.
pub fn attach_workloads(state: &mut State, felis_binary: &std::path::Path) -> Result<(), Error> {
    for (name, address) in agents::attach(state, felis_binary)? {
        state.addresses.insert(name, address);
    }
    state.save()?;
    agents::wait_policy_programmed(state, std::time::Duration::from_secs(30))?;
    agents::wait_routes(state, std::time::Duration::from_secs(30))
}

/// Stops a host's agent (SIGKILL with `kill`, as a crash; else SIGTERM); the dataplane it
/// programmed stays. Returns whether one was running.
pub fn stop_agent(state: &State, host: &str, kill: bool) -> Result<bool, Error> {
    let host = state.plan.host(host).ok_or_else(|| Error::NoTarget {
        lab: state.plan.spec.name.clone(),
        target: host.to_string(),
    })?;
    agents::stop_agent(host, kill)
}

/// Starts a host's agent and waits until it is ready.
pub fn start_agent(state: &State, felis_binary: &std::path::Path, host: &str) -> Result<(), Error> {
    let host = state.plan.host(host).ok_or_else(|| Error::NoTarget {
        lab: state.plan.spec.name.clone(),
        target: host.to_string(),
    })?;
    agents::spawn_agent(state, felis_binary, host)?;
    agents::wait_ready(state, host, std::time::Duration::from_secs(30))
}

/// Whether the agent in a host's namespace answers ready.
pub fn agent_ready(netns: &str) -> bool {
    agents::is_ready(netns)
}

/// Creates a workload's namespace, as a runtime does before calling CNI.
pub fn create_workload_netns(netns: &str) -> Result<(), Error> {
    topology::create_workload_netns(netns)
}

/// Removes everything lab `name` made: processes in its namespaces, the namespaces, its state.
/// Works from the namespace names alone, so also after a crash. Returns the namespaces removed.
pub fn destroy(name: &str) -> Result<Vec<String>, Error> {
    plan::validate_name(name)?;
    let prefix = format!("{name}.");
    let mut removed = Vec::new();
    // Workloads and hosts first, the VPC router last.
    let mut owned: Vec<String> = sh::namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    owned.sort_by_key(|n| (n.ends_with(".vpc"), n.clone()));
    for netns in owned {
        topology::delete_netns(&netns)?;
        removed.push(netns);
    }
    let dir = state_dir(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::State {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(removed)
}

/// Turns a host's emulated source/destination check on or off.
pub fn set_src_dst_check(name: &str, host: &str, on: bool) -> Result<(), Error> {
    let mut state = State::load(name)?;
    if state.plan.host(host).is_none() {
        return Err(Error::NoTarget {
            lab: name.to_string(),
            target: host.to_string(),
        });
    }
    state.src_dst_checks.insert(host.to_string(), on);
    topology::set_src_dst_checks(&state.plan, &state.src_dst_checks)?;
    state.save()
}

/// The `lab ps` view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// Hosts.
    pub hosts: Vec<HostRow>,
    /// Workloads.
    pub workloads: Vec<WorkloadRow>,
}

/// A host in `lab ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRow {
    /// Name.
    pub name: String,
    /// Subnet.
    pub subnet: String,
    /// Address.
    pub address: String,
}

/// A workload in `lab ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRow {
    /// Name.
    pub name: String,
    /// Host.
    pub host: String,
    /// Address (empty when it has none yet).
    pub address: String,
}

impl State {
    /// The `lab ps` view.
    pub fn listing(&self) -> Listing {
        let subnet_cidr = |name: &str| {
            self.plan
                .subnets
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.cidr())
                .unwrap_or_default()
        };
        Listing {
            hosts: self
                .plan
                .hosts
                .iter()
                .map(|h| HostRow {
                    name: h.name.clone(),
                    subnet: subnet_cidr(&h.subnet),
                    address: h.address.to_string(),
                })
                .collect(),
            workloads: self
                .plan
                .workloads
                .iter()
                .map(|w| WorkloadRow {
                    name: w.name.clone(),
                    host: w.host.clone(),
                    address: self
                        .addresses
                        .get(&w.name)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// One probe of `lab check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// From (a workload, or a host when the lab has no workloads).
    pub from: String,
    /// To (a workload or host, or `internet`).
    pub to: String,
    /// The address probed.
    pub address: String,
    /// Whether it answered.
    pub ok: bool,
}

/// The result of `lab check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Every probe.
    pub probes: Vec<Probe>,
    /// How many answered.
    pub passed: usize,
    /// How many did not.
    pub failed: usize,
}

/// Probes every workload (or, with none, every host) to every other and to the internet, in
/// parallel, with one ping each.
pub fn check(state: &State) -> CheckReport {
    let mut endpoints: Vec<(String, String, String)> = state
        .plan
        .workloads
        .iter()
        .filter_map(|w| {
            let address = state.addresses.get(&w.name)?;
            Some((w.name.clone(), w.netns.clone(), address.to_string()))
        })
        .collect();
    if endpoints.is_empty() {
        endpoints = state
            .plan
            .hosts
            .iter()
            .map(|h| (h.name.clone(), h.netns.clone(), h.address.to_string()))
            .collect();
    }
    let mut jobs = Vec::new();
    for (from, netns, _) in &endpoints {
        for (to, _, address) in &endpoints {
            if from != to {
                jobs.push((from.clone(), netns.clone(), to.clone(), address.clone()));
            }
        }
        let internet = plan::INTERNET_ADDRESS.to_string();
        jobs.push((
            from.clone(),
            netns.clone(),
            "internet".to_string(),
            internet,
        ));
    }
    let probes: Vec<Probe> = std::thread::scope(|scope| {
        let mut results = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(16) {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(from, netns, to, address)| {
                    scope.spawn(move || Probe {
                        from: from.clone(),
                        to: to.clone(),
                        address: address.clone(),
                        ok: topology::ping(netns, address),
                    })
                })
                .collect();
            for h in handles {
                if let Ok(p) = h.join() {
                    results.push(p);
                }
            }
        }
        results
    });
    let passed = probes.iter().filter(|p| p.ok).count();
    CheckReport {
        failed: probes.len() - passed,
        passed,
        probes,
    }
}

/// Runs `command` in a host's or workload's namespace, inheriting stdio; returns its exit code.
pub fn exec(state: &State, target: &str, command: &[String]) -> Result<i32, Error> {
    let netns = state.netns_of(target).ok_or_else(|| Error::NoTarget {
        lab: state.plan.spec.name.clone(),
        target: target.to_string(),
    })?;
    // On a host, the lab's AWS answers as the instance's metadata and EC2 endpoint, as the
    // agent's environment has it (so `felis aws check` works there), and the CLI finds the
    // lab's datastore.
    let host = state.plan.hosts.iter().find(|h| h.name == target);
    let envs = host.map(aws::agent_env).unwrap_or_default();
    let datastore = host.map(|_| ("FELIS_DATASTORE", state.datastore.clone()));
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", netns])
        .args(command)
        .envs(envs)
        .envs(datastore)
        .status()
        .map_err(|source| Error::Spawn {
            command: "ip netns exec".into(),
            source,
        })?;
    Ok(status.code().unwrap_or(1))
}
