//! Starting the lab's node agents: the pool first, then `felis node run` in each host's
//! namespace, as a process of its own (logs and state under the lab's directory), and waiting
//! until each answers ready.

use std::io::Read;
use std::io::Write;
use std::net::SocketAddr;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use crate::Error;
use crate::State;
use crate::plan::POOL_CIDR;
use crate::state_dir;

/// Where each agent serves its health endpoint, inside its host's namespace.
pub(crate) const HEALTH_ADDRESS: &str = "127.0.0.1:9099";

/// Runs `felis ARGS` with the lab's datastore, feeding `stdin`; fails with its stderr.
pub(crate) fn felis(
    state: &State,
    felis: &Path,
    args: &[&str],
    stdin: &str,
) -> Result<String, Error> {
    let mut child = Command::new(felis)
        .args(args)
        .env("FELIS_DATASTORE", &state.datastore)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: felis.display().to_string(),
            source,
        })?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.as_bytes())
            .map_err(|source| Error::Spawn {
                command: felis.display().to_string(),
                source,
            })?;
    }
    let output = child.wait_with_output().map_err(|source| Error::Spawn {
        command: felis.display().to_string(),
        source,
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: format!("felis {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Writes the lab's pool (`lab-pool`, 10.244.0.0/16, natOutgoing) with the asked-for modes.
pub(crate) fn apply_pool(state: &State, felis_binary: &Path) -> Result<(), Error> {
    let (ipip, vxlan) = state.plan.spec.pool_mode.modes();
    let pool = format!(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: lab-pool\nspec:\n  \
         cidr: {POOL_CIDR}\n  ipipMode: {ipip}\n  vxlanMode: {vxlan}\n  natOutgoing: true\n"
    );
    felis(state, felis_binary, &["apply", "-f", "-"], &pool).map(|_| ())
}

/// Starts `felis node run` on every host, then waits (up to `timeout`) for all to be ready.
pub(crate) fn start(state: &State, felis_binary: &Path, timeout: Duration) -> Result<(), Error> {
    for host in &state.plan.hosts {
        spawn_agent(state, felis_binary, host)?;
    }
    for host in &state.plan.hosts {
        wait_ready(state, host, timeout)?;
    }
    Ok(())
}

/// Starts the agent of one host, as its own process (logs appended to `<host>.log`).
pub(crate) fn spawn_agent(
    state: &State,
    felis_binary: &Path,
    host: &crate::plan::Host,
) -> Result<(), Error> {
    let dir = state_dir(&state.plan.spec.name);
    let (log, err_log) = open_log(state, &format!("{}.log", host.name))?;
    let address = format!("{}/24", host.address);
    Command::new("ip")
        .args(["netns", "exec", &host.netns])
        .arg(felis_binary)
        .args(["node", "run", "--nodename", &host.name, "--ip", &address])
        .arg("--state-dir")
        .arg(dir.join(&host.name))
        .args(["--health-address", HEALTH_ADDRESS])
        .env("FELIS_DATASTORE", &state.datastore)
        .envs(crate::aws::agent_env(host))
        .env(
            "FELIS_LOG",
            std::env::var("FELIS_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        // Its own process group: a Ctrl-C at the terminal that ran `lab up` leaves it alone.
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            command: "felis node run".into(),
            source,
        })?;
    Ok(())
}

/// Opens (appending) a log file in the lab's state directory, twice: for stdout and stderr.
fn open_log(state: &State, file: &str) -> Result<(std::fs::File, std::fs::File), Error> {
    let path = state_dir(&state.plan.spec.name).join(file);
    let error = |e: std::io::Error| Error::State {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(error)?;
    let err_log = log.try_clone().map_err(error)?;
    Ok((log, err_log))
}

/// Starts the lab's AWS emulator in the router's namespace (logs in `aws.log`), and waits until
/// it listens.
pub(crate) fn spawn_aws_emulator(state: &State, felis_binary: &Path) -> Result<(), Error> {
    let log_path = state_dir(&state.plan.spec.name).join("aws.log");
    let (log, err_log) = open_log(state, "aws.log")?;
    Command::new("ip")
        .args(["netns", "exec", &state.plan.router_netns])
        .arg(felis_binary)
        .args(["lab", "aws-emulator", "--name", &state.plan.spec.name])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            command: "felis lab aws-emulator".into(),
            source,
        })?;
    let Some(host) = state.plan.hosts.first() else {
        return Ok(());
    };
    let netns = felis_netlink::Netns::open(Path::new("/run/netns").join(&host.netns))
        .map_err(|e| Error::Invalid(format!("opening {}: {e}", host.netns)))?;
    let endpoint = crate::aws::endpoint(host);
    #[allow(clippy::disallowed_methods)] // waiting on a real process needs the real clock
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let up = netns
            .run(move || {
                std::net::TcpStream::connect_timeout(&endpoint, Duration::from_millis(200)).is_ok()
            })
            .unwrap_or(false);
        if up {
            return Ok(());
        }
        #[allow(clippy::disallowed_methods)]
        if Instant::now() > deadline {
            return Err(Error::Invalid(format!(
                "the lab's AWS emulator did not listen on {endpoint} within 10s: see {}",
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the agent of `host` answers ready.
pub(crate) fn wait_ready(
    state: &State,
    host: &crate::plan::Host,
    timeout: Duration,
) -> Result<(), Error> {
    #[allow(clippy::disallowed_methods)] // waiting on real processes needs the real clock
    let deadline = Instant::now() + timeout;
    while !is_ready(&host.netns) {
        #[allow(clippy::disallowed_methods)]
        if Instant::now() > deadline {
            let log = state_dir(&state.plan.spec.name).join(format!("{}.log", host.name));
            return Err(Error::Invalid(format!(
                "the agent on {} did not become ready in {}s; see {}",
                host.name,
                timeout.as_secs(),
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Stops the agent of `host` (SIGKILL with `kill`, else SIGTERM) and waits until it is gone.
/// Returns whether one was running.
pub(crate) fn stop_agent(host: &crate::plan::Host, kill: bool) -> Result<bool, Error> {
    let pids = crate::sh::ip(&["netns", "pids", &host.netns])?;
    let agents: Vec<String> = pids
        .split_whitespace()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    c.split(|b| *b == 0).any(|arg| arg == b"node")
                        && c.windows(3).any(|w| w == b"run")
                })
                .unwrap_or(false)
        })
        .map(str::to_string)
        .collect();
    for pid in &agents {
        let _ = crate::sh::run("kill", &[if kill { "-KILL" } else { "-TERM" }, pid]);
    }
    for pid in &agents {
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(!agents.is_empty())
}

/// Waits until every workload interface (`cali*`) on every host has a device group, which the
/// agent sets once the interface's policy chains are in the dispatch maps of table `inet felis`
/// (`pol-from-grp`, `pol-to-grp`): until then the agent's dataplane drops the new interface's
/// traffic, by design, as Calico's CNI can wait for Felix.
pub(crate) fn wait_policy_programmed(state: &State, timeout: Duration) -> Result<(), Error> {
    #[allow(clippy::disallowed_methods)] // waiting on real processes needs the real clock
    let deadline = Instant::now() + timeout;
    for host in &state.plan.hosts {
        loop {
            let links = crate::sh::ip_in(&host.netns, &["-o", "link", "show"])?;
            let programmed = links
                .lines()
                .filter(|l| {
                    l.split(": ")
                        .nth(1)
                        .is_some_and(|name| name.starts_with("cali"))
                })
                .all(|l| {
                    let group = l.split_whitespace().skip_while(|w| *w != "group").nth(1);
                    group.is_some_and(|g| g != "default" && g != "0")
                });
            if programmed {
                break;
            }
            #[allow(clippy::disallowed_methods)]
            if Instant::now() > deadline {
                return Err(Error::Invalid(format!(
                    "the agent on {} did not program policy for its workloads within {}s",
                    host.name,
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Waits until every host routes every workload's address: with a route of its own (local
/// `cali*`, or toward the workload's host, direct or encapsulated), not merely the default
/// route or its own block's blackhole. Routes to remote blocks follow BGP (or IPAM) a moment
/// after the agents are ready; `lab up` returns once the cluster has converged.
pub(crate) fn wait_routes(state: &State, timeout: Duration) -> Result<(), Error> {
    #[allow(clippy::disallowed_methods)] // waiting on real processes needs the real clock
    let deadline = Instant::now() + timeout;
    for host in &state.plan.hosts {
        for (workload, address) in &state.addresses {
            let address = address.to_string();
            loop {
                let routes =
                    crate::sh::ip_in(&host.netns, &["-o", "route", "show", "match", &address])
                        .unwrap_or_default();
                let routed = routes.lines().any(|l| {
                    let first = l.split_whitespace().next().unwrap_or_default();
                    !matches!(first, "default" | "blackhole" | "unreachable" | "prohibit")
                        && !l.contains(" proto kernel ")
                });
                if routed {
                    break;
                }
                #[allow(clippy::disallowed_methods)]
                if Instant::now() > deadline {
                    return Err(Error::Invalid(format!(
                        "{} has no route to {workload} ({address}) after {}s: the agents did not converge (see {}.log)",
                        host.name,
                        timeout.as_secs(),
                        host.name
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(())
}

/// Asks an agent's `/readiness` from inside its host's namespace.
pub(crate) fn is_ready(netns: &str) -> bool {
    let Ok(ns) = felis_netlink::Netns::open(Path::new("/run/netns").join(netns)) else {
        return false;
    };
    let Ok(address) = HEALTH_ADDRESS.parse::<SocketAddr>() else {
        return false;
    };
    ns.run(move || {
        let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(500))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream
            .write_all(b"GET /readiness HTTP/1.0\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.starts_with("HTTP/1.1 200")
    })
    .unwrap_or(false)
}

/// The CNI network configuration the lab's runtime hands the plugin for `host`.
pub(crate) fn cni_config(state: &State, host: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "felis",
        "nodename": host,
        "datastore": state.datastore,
        "mtu": 0,
        "ipam": {"type": "felis-ipam"},
    })
    .to_string()
}

/// Attaches every workload as a container runtime would: makes its namespace, then runs the
/// CNI plugin with ADD in its host's namespace. Returns each workload's address.
pub(crate) fn attach(
    state: &State,
    felis_binary: &Path,
) -> Result<Vec<(String, std::net::IpAddr)>, Error> {
    let mut addresses = Vec::new();
    for workload in &state.plan.workloads {
        crate::topology::create_workload_netns(&workload.netns)?;
        let host = state
            .plan
            .host(&workload.host)
            .ok_or_else(|| Error::Invalid(format!("workload {} has no host", workload.name)))?;
        let address = cni(
            state,
            felis_binary,
            "ADD",
            host,
            &workload.name,
            &workload.netns,
        )?
        .ok_or_else(|| Error::Invalid(format!("CNI ADD of {} gave no address", workload.name)))?;
        addresses.push((workload.name.clone(), address));
    }
    Ok(addresses)
}

/// Runs the CNI plugin (`felis_binary` with `CNI_COMMAND`) for workload `name` in `netns`, in
/// `host`'s namespace, as a runtime does. Returns the first address of an ADD's result.
pub(crate) fn cni(
    state: &State,
    felis_binary: &Path,
    command: &str,
    host: &crate::plan::Host,
    name: &str,
    netns: &str,
) -> Result<Option<std::net::IpAddr>, Error> {
    let dir = state_dir(&state.plan.spec.name);
    let config = cni_config(state, &host.name);
    let what = || format!("CNI {command} of {name}");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &host.netns])
        .arg(felis_binary)
        .env("CNI_COMMAND", command)
        .env(
            "CNI_CONTAINERID",
            format!("{}-{name}", state.plan.spec.name),
        )
        .env("CNI_NETNS", Path::new("/run/netns").join(netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", felis_binary.parent().unwrap_or(Path::new("/")))
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"),
        )
        .env("FELIS_MTU_FILE", dir.join(&host.name).join("mtu"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: what(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(config.as_bytes())
            .map_err(|source| Error::Spawn {
                command: what(),
                source,
            })?;
    }
    let output = child.wait_with_output().map_err(|source| Error::Spawn {
        command: what(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(Error::Command {
            command: what(),
            stderr: format!(
                "{} {}",
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    if command != "ADD" {
        return Ok(None);
    }
    let result: serde_json::Value = serde_json::from_str(&stdout).map_err(|e| Error::Command {
        command: what(),
        stderr: format!("unreadable result {stdout:?}: {e}"),
    })?;
    Ok(result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok()))
}
