//! The `felis` binary: a calicoctl-style CLI over v3 resources. Thin: it parses arguments, opens
//! the datastore and calls the libraries.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use felis::output::{self, Format};
use felis_api::{Kind, Resource};
use felis_client::{Client, LabelOp, WriteMode, WriteSummary};

#[derive(Parser)]
#[command(
    name = "felis",
    version,
    about = "Container networking and network policy, Calico-compatible"
)]
struct Cli {
    /// The datastore: `file:///path/felis.db` (embedded) or `etcd://host:port[,host:port]`.
    /// Calico's DATASTORE_TYPE=etcdv3 with ETCD_ENDPOINTS is honoured too.
    #[arg(long, global = true, env = "FELIS_DATASTORE")]
    datastore: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or replace resources from files.
    Apply(WriteArgs),
    /// Create resources from files.
    Create {
        #[command(flatten)]
        files: WriteArgs,
        /// Skip resources that already exist instead of failing.
        #[arg(long)]
        skip_exists: bool,
    },
    /// Replace existing resources from files.
    Replace(WriteArgs),
    /// Delete resources by kind and name, or those named in files.
    Delete {
        /// Kind and names (`ippool default-pool`), unless -f is given.
        args: Vec<String>,
        #[command(flatten)]
        files: OptionalFiles,
        /// Do not fail when a resource does not exist.
        #[arg(short = 's', long)]
        skip_not_exists: bool,
        /// Namespace of namespaced resources.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Show resources.
    Get {
        /// Kind and optional names (`ippools`, `ippool default-pool`), unless -f is given.
        args: Vec<String>,
        #[command(flatten)]
        files: OptionalFiles,
        /// Output format: ps (default), wide, yaml, json.
        #[arg(short, long, default_value = "ps")]
        output: Format,
        /// Namespace of namespaced resources.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Change fields of a resource with a JSON (or YAML) merge patch.
    Patch {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
        /// The patch, e.g. '{"spec":{"natOutgoing":true}}'.
        #[arg(short, long)]
        patch: String,
        /// Namespace of namespaced resources.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Set (`key=value`) or remove (`key --remove`) a label.
    Label {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
        /// `key=value` to set, or `key` with --remove.
        label: String,
        /// Replace an existing value.
        #[arg(long)]
        overwrite: bool,
        /// Remove the label.
        #[arg(long)]
        remove: bool,
        /// Namespace of namespaced resources.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Selector tools.
    #[command(subcommand)]
    Selector(SelectorCommand),
    /// The node agent.
    #[command(subcommand)]
    Node(NodeCommand),
    /// IP address management: usage, leak checks, release, configuration.
    #[command(subcommand)]
    Ipam(IpamCommand),
    /// Network policy tools.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// AWS: check security groups, subnets and source/destination checks for the cluster.
    #[command(subcommand)]
    Aws(AwsCommand),
    /// A whole cluster in network namespaces on this machine, with an emulated AWS-like VPC.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Install the CNI plugin: the binary as `felis`, the `felis-ipam` link, and a network
    /// configuration list.
    InstallCni {
        /// Where the runtime looks for CNI plugins.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// Where the runtime looks for network configurations.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The file name of the configuration list.
        #[arg(long, default_value = "10-felis.conflist")]
        conf_name: String,
        /// Do not write a configuration list.
        #[arg(long)]
        no_conf: bool,
        /// Node name to put in the configuration (default: the agent's nodename file, then
        /// the host name, at each invocation).
        #[arg(long)]
        nodename: Option<String>,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum SelectorCommand {
    /// Evaluate a selector against a label set: prints `true` or `false`.
    Match {
        /// The selector, e.g. "role == 'db' && has(tier)".
        selector: String,
        /// The labels as a JSON object of strings.
        #[arg(long, default_value = "{}")]
        labels: String,
    },
}

#[derive(Subcommand)]
enum IpamCommand {
    /// Show pool usage (calicoctl's table), one address, blocks, borrowed addresses or the
    /// IPAM configuration.
    Show {
        /// Show whether this address is in use, and by what.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// Add a row per block.
        #[arg(long)]
        show_blocks: bool,
        /// List addresses borrowed from other nodes' blocks.
        #[arg(long)]
        show_borrowed: bool,
        /// Show the IPAM configuration.
        #[arg(long)]
        show_configuration: bool,
    },
    /// Look for leaked addresses, handles without addresses, addresses outside the pools and
    /// blocks of deleted nodes.
    Check {
        /// Write the report as JSON to this file.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// How long an address allocated to a pod may go without a WorkloadEndpoint before it
        /// counts as leaked (a CNI ADD writes the endpoint after allocating): e.g. 15m, 30s, 0s.
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        grace_period: std::time::Duration,
    },
    /// Release addresses: one, or the problems found in every given report.
    Release {
        /// The address to release.
        #[arg(long, conflicts_with = "from_report")]
        ip: Option<std::net::IpAddr>,
        /// A report from `felis ipam check -o`; repeat to release only what all reports found.
        #[arg(long)]
        from_report: Vec<PathBuf>,
        /// The grace period the reports were made with (see `ipam check`).
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        grace_period: std::time::Duration,
    },
    /// Change the IPAM configuration.
    Configure {
        /// Only allocate from blocks affine to the node (no borrowing).
        #[arg(long, action = clap::ArgAction::Set)]
        strictaffinity: Option<bool>,
        /// The most blocks one node may claim (0: no limit).
        #[arg(long)]
        max_blocks_per_host: Option<u32>,
    },
    /// Split a pool into N smaller pools (N a power of two).
    Split {
        /// Into how many pools.
        parts: u32,
        /// The pool, by CIDR.
        #[arg(long, conflicts_with = "name")]
        cidr: Option<ipnet::IpNet>,
        /// The pool, by name.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Which policy decides a packet: per direction, the verdict and what decided it.
    Trace {
        /// The source: NAMESPACE/WORKLOAD, WORKLOAD (namespace default) or an IP address.
        #[arg(long)]
        from: String,
        /// The destination: NAMESPACE/WORKLOAD, WORKLOAD or an IP address.
        #[arg(long)]
        to: String,
        /// TCP, UDP, SCTP, ICMP, ICMPv6 or a protocol number.
        #[arg(long, default_value = "TCP")]
        protocol: String,
        /// The destination port (TCP, UDP, SCTP).
        #[arg(long)]
        port: Option<u16>,
        /// The ICMP type.
        #[arg(long)]
        icmp_type: Option<u8>,
        /// The ICMP code.
        #[arg(long)]
        icmp_code: Option<u8>,
        /// Output format: text (default) or json.
        #[arg(short, long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
}

#[derive(Subcommand)]
enum AwsCommand {
    /// Per peer node: are BGP (TCP 179), IPIP (protocol 4) and VXLAN (UDP 4789) allowed by the
    /// security groups, are source/destination checks off, which peers share a subnet; and
    /// what to change. Exits 1 when something blocks the cluster.
    Check {
        /// This node's name (default: the agent's nodename file, then the host name).
        #[arg(long, env = "NODENAME")]
        nodename: Option<String>,
        /// Output format: table (default) or json.
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Run the node agent: register this node, then keep its routes, tunnels and NAT in line
    /// with the datastore.
    Run(NodeRunArgs),
    /// The agent's BGP sessions, in calicoctl's shape: process line, IPv4 and IPv6 peer tables.
    Status {
        /// The agent's state directory (its `--state-dir`), where it writes `status.json`.
        #[arg(long, env = "FELIS_STATE_DIR", default_value = "/var/lib/felis")]
        state_dir: PathBuf,
        /// Output format: table (default) or json.
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
}

#[derive(Args)]
struct NodeRunArgs {
    /// This node's name (default: the host name).
    #[arg(long, env = "NODENAME")]
    nodename: Option<String>,
    /// This node's IPv4 address with prefix length, or `autodetect`.
    #[arg(long, env = "IP", default_value = "autodetect")]
    ip: String,
    /// How to autodetect: first-found, interface=REGEX, skip-interface=REGEX, cidr=CIDR,
    /// can-reach=IP.
    #[arg(long, env = "IP_AUTODETECTION_METHOD", default_value = "first-found")]
    ip_autodetection_method: String,
    /// Address of the health endpoint (`/liveness`, `/readiness`).
    #[arg(long, env = "FELIS_HEALTH_ADDRESS", default_value = "127.0.0.1:9099")]
    health_address: std::net::SocketAddr,
    /// Where `nodename` and `mtu` are written for the CNI plugin.
    #[arg(long, env = "FELIS_STATE_DIR", default_value = "/var/lib/felis")]
    state_dir: PathBuf,
    /// Create this IPv4 pool (`default-ipv4-ippool`) if no pool exists.
    #[arg(long, env = "CALICO_IPV4POOL_CIDR")]
    ipv4_pool_cidr: Option<ipnet::IpNet>,
    /// The default pool's vxlanMode: Never, Always or CrossSubnet.
    #[arg(long, env = "CALICO_IPV4POOL_VXLAN", default_value = "Never")]
    ipv4_pool_vxlan: String,
    /// The default pool's ipipMode: Never, Always or CrossSubnet.
    #[arg(long, env = "CALICO_IPV4POOL_IPIP", default_value = "Never")]
    ipv4_pool_ipip: String,
    /// The default pool's natOutgoing.
    #[arg(long, env = "CALICO_IPV4POOL_NAT_OUTGOING", default_value_t = true, action = clap::ArgAction::Set)]
    ipv4_pool_nat_outgoing: bool,
    /// Seconds between full reconciliations.
    #[arg(long, default_value_t = 90)]
    resync_interval: u64,
    /// `bird` (or `bgp`): run the BGP speaker (node-to-node mesh, BGPPeers); `vxlan` or `none`:
    /// no BGP, routes to other nodes' blocks come from IPAM alone.
    #[arg(long, env = "CALICO_NETWORKING_BACKEND", default_value = "bird", value_parser = ["bird", "bgp", "vxlan", "none"])]
    networking_backend: String,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build the VPC, hosts and workloads, and start the agents.
    Up {
        #[command(flatten)]
        name: LabName,
        /// Number of hosts.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Number of VPC subnets (hosts go round-robin over them).
        #[arg(long, default_value_t = 2)]
        subnets: usize,
        /// Workloads per host.
        #[arg(long, default_value_t = 2)]
        workloads: usize,
        /// The pool's encapsulation: vxlan-cross-subnet, vxlan, ipip-cross-subnet, ipip or none.
        #[arg(long, default_value = "vxlan-cross-subnet")]
        pool_mode: String,
        /// The hosts' emulated source/destination checks (AWS's default is on; Calico's guide
        /// says to turn them off).
        #[arg(long, default_value = "off", value_parser = ["on", "off"])]
        src_dst_check: String,
    },
    /// List the lab's hosts and workloads.
    Ps {
        #[command(flatten)]
        name: LabName,
        /// Output format: table (default) or json.
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Run a command in a host's or workload's network namespace.
    Exec {
        #[command(flatten)]
        name: LabName,
        /// The host or workload (see `felis lab ps`).
        target: String,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Probe every workload to every other and to the internet.
    Check {
        #[command(flatten)]
        name: LabName,
        /// Output format: table (default) or json.
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Measure the pod network against the hosts' own: one-stream TCP throughput and ping RTT
    /// (routed pods vs hosts in one subnet, VXLAN pods vs hosts across subnets), and the time
    /// from a CNI ADD until the new workload answers from another host. Needs a lab with
    /// --hosts 3 --subnets 2 (or more) and at least one workload per host.
    Bench {
        #[command(flatten)]
        name: LabName,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Interleaved rounds over all paths (the median is kept).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Workloads to attach for the CNI ADD → reachable measurement (0 to skip).
        #[arg(long, default_value_t = 20)]
        attach: usize,
        /// Instead: throughput and new-connection rate between two pods with a large policy
        /// set enforced vs none (needs two hosts in h1's subnet with a workload each).
        #[arg(long)]
        policy: bool,
        /// With --policy: rules in the generated policy set.
        #[arg(long, default_value_t = 10_000, requires = "policy")]
        rules: usize,
        /// With --policy: generated endpoints.
        #[arg(long, default_value_t = 1_000, requires = "policy")]
        endpoints: usize,
        /// Output format: table (default) or json.
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Stop, start or restart a host's agent (the dataplane it programmed stays while it is down).
    Agent {
        #[command(flatten)]
        name: LabName,
        /// The host.
        host: String,
        /// stop, start or restart.
        #[arg(value_parser = ["stop", "start", "restart"])]
        action: String,
        /// Stop with SIGKILL, as a crash would, instead of SIGTERM.
        #[arg(long)]
        kill: bool,
    },
    /// Turn a host's emulated source/destination check on or off.
    SrcDstCheck {
        #[command(flatten)]
        name: LabName,
        /// The host.
        host: String,
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Serve the lab's AWS (IMDSv2 and EC2 source/destination-check calls); `lab up` runs it
    /// in the VPC router's namespace.
    #[command(hide = true)]
    AwsEmulator {
        #[command(flatten)]
        name: LabName,
    },
    /// Remove everything the lab made.
    Down {
        #[command(flatten)]
        name: LabName,
    },
}

#[derive(Args)]
struct LabName {
    /// The lab's name: several labs can run at once.
    #[arg(long, default_value = "felis")]
    name: String,
}

#[derive(Args)]
struct WriteArgs {
    /// A YAML or JSON file, `-` for standard input, or a directory.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Read directories recursively.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Namespace for namespaced resources that do not name one.
    #[arg(short, long)]
    namespace: Option<String>,
}

#[derive(Args)]
struct OptionalFiles {
    /// A YAML or JSON file, `-` for standard input, or a directory.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Read directories recursively.
    #[arg(short = 'R', long)]
    recursive: bool,
}

fn main() -> ExitCode {
    restore_sigpipe();
    // Invoked as an IPAM plugin (a link named felis-ipam or calico-ipam), or by a container
    // runtime as the CNI plugin (CNI_COMMAND set): speak CNI, not the CLI.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let invoked_as = Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("felis");
    if matches!(invoked_as, "felis-ipam" | "calico-ipam") {
        return exit_code(felis::cni::run_ipam_plugin());
    }
    if std::env::var_os("CNI_COMMAND").is_some() {
        return exit_code(felis::cni::run_plugin());
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`felis get ... | head`) would panic.
/// A command-line tool should end quietly instead, like every other Unix tool.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: called first thing in main, before any thread exists; restoring the default
    // disposition of SIGPIPE has no memory-safety effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let datastore = cli.datastore;
    match cli.command {
        Command::Version => {
            println!("Client Version:    v{}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Selector(SelectorCommand::Match { selector, labels }) => {
            selector_match(&selector, &labels)
        }
        Command::Lab(command) => lab(command),
        Command::Policy(PolicyCommand::Trace {
            from,
            to,
            protocol,
            port,
            icmp_type,
            icmp_code,
            output,
        }) => {
            let store = open(datastore)?;
            let resources = felis_client::Client::new(store.as_ref()).list_all()?;
            let set = felis_policy::PolicySet::from_resources(&resources)?;
            let query =
                felis_policy::Query::from_args(&from, &to, &protocol, port, icmp_type, icmp_code)?;
            let report = felis_policy::trace(&set, &query)?;
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Aws(AwsCommand::Check { nodename, output }) => {
            aws_check(datastore, nodename, &output)
        }
        Command::InstallCni {
            bin_dir,
            conf_dir,
            conf_name,
            no_conf,
            nodename,
        } => {
            let datastore = felis_store::url_from_env(datastore.as_deref());
            let conf = (!no_conf).then(|| conf_dir.join(&conf_name));
            felis::cni::install(&bin_dir, conf.as_deref(), &datastore, nodename.as_deref())?;
            println!(
                "installed {}/felis and {}/felis-ipam",
                bin_dir.display(),
                bin_dir.display()
            );
            if let Some(conf) = conf {
                println!("wrote {}", conf.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(NodeCommand::Run(args)) => node_run(datastore, args),
        Command::Node(NodeCommand::Status { state_dir, output }) => {
            use felis_agent::bgp::{STATUS_MAX_AGE, StatusReport, render_status};
            let contents = std::fs::read(state_dir.join("status.json")).ok();
            #[allow(clippy::disallowed_methods)] // the CLI edge reads the clock
            let now = std::time::SystemTime::now();
            let report = StatusReport::from_status_file(contents.as_deref(), now, STATUS_MAX_AGE);
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", render_status(&report));
            }
            Ok(if report.running {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Ipam(command) => ipam(datastore, command),
        Command::Apply(args) => write(datastore, &args, WriteMode::Apply, "applied"),
        Command::Create { files, skip_exists } => write(
            datastore,
            &files,
            WriteMode::Create {
                skip_existing: skip_exists,
            },
            "created",
        ),
        Command::Replace(args) => write(datastore, &args, WriteMode::Replace, "replaced"),
        Command::Delete {
            args,
            files,
            skip_not_exists,
            namespace,
        } => {
            if !files.files.is_empty() {
                let write_args = WriteArgs {
                    files: files.files,
                    recursive: files.recursive,
                    namespace: Some(namespace),
                };
                let mode = WriteMode::Delete {
                    skip_missing: skip_not_exists,
                };
                return write(datastore, &write_args, mode, "deleted");
            }
            let (kind, names) = kind_and_names(&args)?;
            if names.is_empty() {
                bail!("name the {} to delete, or give -f FILE", kind.name());
            }
            let store = open(datastore)?;
            let client = Client::new(store.as_ref());
            let ns = kind.is_namespaced().then_some(namespace.as_str());
            let mut deleted = 0;
            for name in &names {
                if client.delete(kind, ns, name, skip_not_exists)? {
                    deleted += 1;
                }
            }
            println!(
                "Successfully deleted {deleted} '{}' resource(s)",
                kind.name()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Get {
            args,
            files,
            output,
            namespace,
            all_namespaces,
        } => get(datastore, &args, &files, output, &namespace, all_namespaces),
        Command::Patch {
            kind,
            name,
            patch,
            namespace,
        } => {
            let kind = parse_kind(&kind)?;
            let patch: serde_json::Value = parse_patch(&patch)?;
            let store = open(datastore)?;
            let client = Client::new(store.as_ref());
            let ns = kind.is_namespaced().then_some(namespace.as_str());
            client.modify(kind, ns, &name, &|value| {
                felis_client::merge_patch(value, &patch);
                Ok(())
            })?;
            println!("Successfully patched 1 '{}' resource", kind.name());
            Ok(ExitCode::SUCCESS)
        }
        Command::Label {
            kind,
            name,
            label,
            overwrite,
            remove,
            namespace,
        } => {
            let kind = parse_kind(&kind)?;
            let op = match (remove, label.split_once('=')) {
                (true, None) => LabelOp::Remove { key: label.clone() },
                (true, Some(_)) => bail!("--remove takes a label key, not key=value"),
                (false, Some((k, v))) => LabelOp::Set {
                    key: k.to_string(),
                    value: v.to_string(),
                    overwrite,
                },
                (false, None) => bail!("give the label as key=value, or key with --remove"),
            };
            let store = open(datastore)?;
            let client = Client::new(store.as_ref());
            let ns = kind.is_namespaced().then_some(namespace.as_str());
            client.modify(kind, ns, &name, &|value| {
                felis_client::label_change(value, &op)
            })?;
            match &op {
                LabelOp::Set { key, value, .. } => println!(
                    "Successfully set label {key}={value} on {} {name}",
                    kind.name()
                ),
                LabelOp::Remove { key } => {
                    println!(
                        "Successfully removed label {key} from {} {name}",
                        kind.name()
                    )
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn ipam(datastore: Option<String>, command: IpamCommand) -> anyhow::Result<ExitCode> {
    use felis_ipam::report;
    let store = open(datastore)?;
    let mut ipam = felis_ipam::Ipam::new(store.as_ref());
    let grace = match &command {
        IpamCommand::Check { grace_period, .. } | IpamCommand::Release { grace_period, .. } => {
            Some(*grace_period)
        }
        _ => None,
    };
    #[allow(clippy::disallowed_methods)] // the CLI edge reads the clock
    let now = std::time::SystemTime::now();
    ipam.workload_grace = grace.map(|grace| felis_ipam::WorkloadGrace { now, grace });
    match command {
        IpamCommand::Show {
            ip,
            show_blocks,
            show_borrowed,
            show_configuration,
        } => {
            if let Some(ip) = ip {
                print!("{}", report::render_address(&ipam.show_ip(ip)?));
            } else if show_borrowed {
                print!("{}", report::render_borrowed(&ipam.show_borrowed()?));
            } else if show_configuration {
                print!("{}", report::render_configuration(&ipam.configuration()?));
            } else {
                print!("{}", report::render_show(&ipam.show()?, show_blocks));
            }
        }
        IpamCommand::Check { output, .. } => {
            let report = ipam.check()?;
            println!("{}", report.summary());
            if let Some(path) = output {
                let json = serde_json::to_string_pretty(&report)?;
                write_atomically(&path, json.as_bytes())?;
                println!("Report written to {}", path.display());
            }
        }
        IpamCommand::Release {
            ip, from_report, ..
        } => {
            if let Some(ip) = ip {
                let not_allocated = ipam.release_ips(&[ip])?;
                if !not_allocated.is_empty() {
                    bail!("{ip} is not assigned");
                }
                println!("Successfully released address {ip}");
            } else if !from_report.is_empty() {
                let mut reports = Vec::new();
                for path in &from_report {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let report: report::CheckReport =
                        serde_json::from_str(&text).with_context(|| {
                            format!("{} is not an ipam check report", path.display())
                        })?;
                    reports.push(report);
                }
                let summary = ipam.release_from_reports(&reports)?;
                println!(
                    "Released {} leaked address(es), fixed {} handle(s), released {} affinity(ies) of deleted nodes; skipped {} that changed since the report",
                    summary.released.len(),
                    summary.handles_fixed,
                    summary.affinities_released,
                    summary.skipped
                );
            } else {
                bail!("give --ip IP or --from-report FILE");
            }
        }
        IpamCommand::Configure {
            strictaffinity,
            max_blocks_per_host,
        } => {
            if strictaffinity.is_none() && max_blocks_per_host.is_none() {
                bail!("give --strictaffinity=true|false and/or --max-blocks-per-host=N");
            }
            let config = ipam.configure(strictaffinity, max_blocks_per_host)?;
            print!("{}", report::render_configuration(&config));
        }
        IpamCommand::Split { parts, cidr, name } => {
            let client = Client::new(store.as_ref());
            let pools = client.list(Kind::IpPool, None)?;
            let pool = pools
                .iter()
                .find_map(|r| match r {
                    Resource::IpPool(p)
                        if Some(p.spec.cidr) == cidr
                            || name.as_deref() == Some(p.metadata.name.as_str()) =>
                    {
                        Some(p.clone())
                    }
                    _ => None,
                })
                .context("no pool with that --cidr or --name")?;
            let block_size = pool
                .spec
                .block_size
                .unwrap_or(if pool.spec.cidr.addr().is_ipv4() {
                    26
                } else {
                    122
                });
            let cidrs = felis_ipam::pool::split(pool.spec.cidr, block_size, parts)?;
            let mut created = Vec::new();
            for (i, part) in cidrs.iter().enumerate() {
                let mut p = pool.clone();
                p.metadata = felis_api::ObjectMeta {
                    name: format!("{}-split-{}", pool.metadata.name, i + 1),
                    labels: pool.metadata.labels.clone(),
                    ..felis_api::ObjectMeta::default()
                };
                p.spec.cidr = *part;
                created.push(Resource::IpPool(p));
            }
            client.replace_with(&Resource::IpPool(pool.clone()), &created)?;
            println!(
                "Split pool {} ({}) into {parts} pools:",
                pool.metadata.name, pool.spec.cidr
            );
            for r in &created {
                if let Resource::IpPool(p) = r {
                    println!("  {}  {}", p.metadata.name, p.spec.cidr);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `15m`, `30s`, `2h`, `500ms` or a number of seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 15m or 30s"))?;
    let secs = |k: u64| std::time::Duration::from_secs(n.saturating_mul(k));
    match unit {
        "" | "s" => Ok(secs(1)),
        "m" => Ok(secs(60)),
        "h" => Ok(secs(3600)),
        "ms" => Ok(std::time::Duration::from_millis(n)),
        _ => Err(format!("{text:?}: use a unit of ms, s, m or h")),
    }
}

/// Writes a file through a temporary file and a rename, so that readers never see half of it.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn aws_check(
    datastore: Option<String>,
    nodename: Option<String>,
    output: &str,
) -> anyhow::Result<ExitCode> {
    use felis_aws::check::{Cluster, NodeSpec, PoolSpec};
    let store = open(datastore)?;
    let client = Client::new(store.as_ref());
    let mut cluster = Cluster {
        this_node: nodename.or_else(|| {
            std::fs::read_to_string("/var/lib/felis/nodename")
                .ok()
                .map(|n| n.trim().to_string())
        }),
        ..Cluster::default()
    };
    for resource in client.list(Kind::Node, None)? {
        if let Resource::Node(node) = resource
            && let Some(ipnet::IpNet::V4(address)) =
                node.spec.bgp.as_ref().and_then(|b| b.ipv4_address)
        {
            cluster.nodes.push(NodeSpec {
                name: node.metadata.name.clone(),
                address,
            });
        }
    }
    for resource in client.list(Kind::IpPool, None)? {
        if let Resource::IpPool(pool) = resource
            && let ipnet::IpNet::V4(cidr) = pool.spec.cidr
        {
            cluster.pools.push(PoolSpec {
                name: pool.metadata.name.clone(),
                cidr,
                ipip_mode: pool
                    .spec
                    .ipip_mode
                    .as_str()
                    .parse()
                    .map_err(anyhow::Error::msg)?,
                vxlan_mode: pool
                    .spec
                    .vxlan_mode
                    .as_str()
                    .parse()
                    .map_err(anyhow::Error::msg)?,
                disabled: pool.spec.disabled,
            });
        }
    }
    let report = felis_aws::check::run(&cluster).context("reading this instance from EC2")?;
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_table());
    }
    Ok(if report.blocking() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn node_run(datastore: Option<String>, args: NodeRunArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FELIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let node_name = match args.nodename {
        Some(n) if !n.is_empty() => n,
        _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name (or pass --nodename)")?
            .trim()
            .to_string(),
    };
    let ip = if args.ip == "autodetect" {
        let method = felis_agent::autodetect::Method::parse(&args.ip_autodetection_method)
            .map_err(anyhow::Error::msg)
            .context("--ip-autodetection-method")?;
        felis_agent::run::IpSetting::Autodetect(method)
    } else {
        let net: ipnet::IpNet = args
            .ip
            .parse()
            .with_context(|| format!("--ip {:?}: give an address with its prefix length, e.g. 10.0.1.5/24, or `autodetect`", args.ip))?;
        felis_agent::run::IpSetting::Fixed(net)
    };
    let mode = |flag: &str, value: &str| -> anyhow::Result<felis_api::EncapMode> {
        serde_json::from_value(serde_json::Value::String(value.to_string()))
            .with_context(|| format!("{flag} {value:?}: use Never, Always or CrossSubnet"))
    };
    let default_pool = match args.ipv4_pool_cidr {
        Some(cidr) => Some(felis_agent::run::DefaultPool {
            cidr,
            vxlan_mode: mode("--ipv4-pool-vxlan", &args.ipv4_pool_vxlan)?,
            ipip_mode: mode("--ipv4-pool-ipip", &args.ipv4_pool_ipip)?,
            nat_outgoing: args.ipv4_pool_nat_outgoing,
        }),
        None => None,
    };
    let config = felis_agent::run::Config {
        node_name,
        ip,
        store: open(datastore)?,
        health_address: args.health_address,
        default_pool,
        resync_interval: std::time::Duration::from_secs(args.resync_interval.max(1)),
        state_dir: args.state_dir,
        bgp: matches!(args.networking_backend.as_str(), "bird" | "bgp"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        };
        felis_agent::run::run(config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn lab(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::Up {
            name,
            hosts,
            subnets,
            workloads,
            pool_mode,
            src_dst_check,
        } => {
            let spec = felis_lab::LabSpec {
                name: name.name,
                hosts,
                subnets,
                workloads,
                pool_mode: felis_lab::PoolMode::parse(&pool_mode)?,
                src_dst_check: src_dst_check == "on",
            };
            let mut state = felis_lab::create(spec)?;
            let felis = std::env::current_exe().context("finding the felis binary")?;
            let started = felis_lab::start_agents(&state, &felis)
                .context("starting the agents")
                .and_then(|()| {
                    felis_lab::attach_workloads(&mut state, &felis).context("attaching workloads")
                });
            if let Err(e) = started {
                let _ = felis_lab::destroy(&state.plan.spec.name);
                return Err(e.context("the lab was removed"));
            }
            print!("{}", lab_table(&state.listing()));
            println!(
                "lab {} is up (datastore {})",
                state.plan.spec.name, state.datastore
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Ps { name, output } => {
            let listing = felis_lab::State::load(&name.name)?.listing();
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print!("{}", lab_table(&listing));
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec {
            name,
            target,
            command,
        } => {
            let state = felis_lab::State::load(&name.name)?;
            let code = felis_lab::exec(&state, &target, &command)?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        LabCommand::Check { name, output } => {
            let state = felis_lab::State::load(&name.name)?;
            let report = felis_lab::check(&state);
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let mut rows = vec![vec![
                    "FROM".to_string(),
                    "TO".to_string(),
                    "ADDRESS".to_string(),
                    "RESULT".to_string(),
                ]];
                for p in &report.probes {
                    let result = if p.ok { "ok" } else { "FAIL" };
                    rows.push(vec![
                        p.from.clone(),
                        p.to.clone(),
                        p.address.clone(),
                        result.into(),
                    ]);
                }
                print!("{}", output::align(&rows));
                println!("{} passed, {} failed", report.passed, report.failed);
            }
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        LabCommand::Bench {
            name,
            seconds,
            rounds,
            attach,
            policy,
            rules,
            endpoints,
            output,
        } => {
            let state = felis_lab::State::load(&name.name)?;
            let felis = std::env::current_exe().context("finding the felis binary")?;
            if policy {
                let r = felis_lab::policy_bench::run(
                    &state, &felis, seconds, rounds, rules, endpoints,
                )?;
                if output == "json" {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    println!(
                        "{}: {} rules in {} policies over {} endpoints, enforced {:.1} s after apply",
                        r.path, r.rules, r.policies, r.endpoints, r.program_seconds
                    );
                    println!(
                        "throughput: {:.2} Gbit/s without policy, {:.2} Gbit/s with: ratio {:.3}",
                        r.baseline_throughput_bps / 1e9,
                        r.policy_throughput_bps / 1e9,
                        r.throughput_ratio
                    );
                    println!(
                        "new connections: {:.0}/s without policy, {:.0}/s with: ratio {:.3}",
                        r.baseline_connections_per_second,
                        r.policy_connections_per_second,
                        r.connection_rate_ratio
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let report = felis_lab::bench::run(&state, &felis, seconds, rounds, attach)?;
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut rows = vec![
                ["KIND", "PATH", "VIA", "THROUGHPUT", "RTT"]
                    .map(String::from)
                    .to_vec(),
            ];
            for p in &report.paths {
                rows.push(vec![
                    p.kind.clone(),
                    p.path.clone(),
                    p.via.clone(),
                    format!("{:.2} Gbit/s", p.throughput_bps / 1e9),
                    format!("{:.3} ms", p.rtt_ms),
                ]);
            }
            print!("{}", output::align(&rows));
            let show = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
            for line in report.summary_lines() {
                println!("{line}");
            }
            if report.add_to_reachable_samples > 0 {
                println!(
                    "CNI ADD -> reachable from another host: p50 {} ms, p99 {} ms ({} workloads)",
                    show(report.add_to_reachable_p50_ms),
                    show(report.add_to_reachable_p99_ms),
                    report.add_to_reachable_samples
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Agent {
            name,
            host,
            action,
            kill,
        } => {
            let state = felis_lab::State::load(&name.name)?;
            let felis = std::env::current_exe().context("finding the felis binary")?;
            if action != "start" {
                let was = felis_lab::stop_agent(&state, &host, kill)?;
                println!(
                    "agent on {host} {}",
                    if was { "stopped" } else { "was not running" }
                );
            }
            if action != "stop" {
                felis_lab::start_agent(&state, &felis, &host)?;
                println!("agent on {host} is ready");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::SrcDstCheck { name, host, state } => {
            felis_lab::set_src_dst_check(&name.name, &host, state == "on")?;
            println!("source/destination check of {host} is {state}");
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::AwsEmulator { name } => {
            felis_lab::aws::serve(&name.name)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down { name } => {
            let removed = felis_lab::destroy(&name.name)?;
            println!(
                "lab {} is down ({} namespaces removed)",
                name.name,
                removed.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn lab_table(listing: &felis_lab::Listing) -> String {
    let mut rows = vec![vec![
        "HOST".to_string(),
        "SUBNET".to_string(),
        "ADDRESS".to_string(),
    ]];
    for h in &listing.hosts {
        rows.push(vec![h.name.clone(), h.subnet.clone(), h.address.clone()]);
    }
    let mut text = output::align(&rows);
    if !listing.workloads.is_empty() {
        let mut rows = vec![vec![
            "WORKLOAD".to_string(),
            "HOST".to_string(),
            "ADDRESS".to_string(),
        ]];
        for w in &listing.workloads {
            rows.push(vec![w.name.clone(), w.host.clone(), w.address.clone()]);
        }
        text.push('\n');
        text.push_str(&output::align(&rows));
    }
    text
}

fn open(flag: Option<String>) -> anyhow::Result<std::sync::Arc<dyn felis_store::Datastore>> {
    let url = felis_store::url_from_env(flag.as_deref());
    felis_store::open(&url).with_context(|| format!("opening datastore {url}"))
}

fn selector_match(selector: &str, labels: &str) -> anyhow::Result<ExitCode> {
    let labels: std::collections::BTreeMap<String, String> =
        serde_json::from_str(labels).context("--labels must be a JSON object of strings")?;
    match felis_api::selector::Selector::parse(selector) {
        Ok(s) => {
            println!("{}", s.matches(&labels));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "Error: {e}\n  {selector}\n  {}^",
                " ".repeat(e.column.saturating_sub(1))
            );
            Ok(ExitCode::from(2))
        }
    }
}

fn write(
    datastore: Option<String>,
    args: &WriteArgs,
    mode: WriteMode,
    verb: &str,
) -> anyhow::Result<ExitCode> {
    let resources = load_files(&args.files, args.recursive, args.namespace.as_deref())?;
    if resources.is_empty() {
        bail!("no resources found in {}", describe(&args.files));
    }
    let store = open(datastore)?;
    let summary = Client::new(store.as_ref())
        .write(&resources, mode)
        .with_context(|| format!("nothing was {verb}"))?;
    print_summary(&summary, verb);
    Ok(ExitCode::SUCCESS)
}

fn print_summary(summary: &WriteSummary, verb: &str) {
    match summary.kinds.as_slice() {
        [kind] => println!(
            "Successfully {verb} {} '{}' resource(s)",
            summary.written,
            kind.name()
        ),
        _ => println!("Successfully {verb} {} resource(s)", summary.written),
    }
    if summary.skipped > 0 {
        println!("Skipped {} resource(s)", summary.skipped);
    }
}

fn get(
    datastore: Option<String>,
    args: &[String],
    files: &OptionalFiles,
    format: Format,
    namespace: &str,
    all_namespaces: bool,
) -> anyhow::Result<ExitCode> {
    let store = open(datastore)?;
    let client = Client::new(store.as_ref());
    if !files.files.is_empty() {
        let wanted = load_files(&files.files, files.recursive, Some(namespace))?;
        let mut found = Vec::new();
        for r in &wanted {
            let ns = r
                .kind()
                .is_namespaced()
                .then(|| r.metadata().namespace.as_deref())
                .flatten();
            found.push(client.get(r.kind(), ns, &r.metadata().name)?);
        }
        for r in &found {
            let text = output::render(r.kind(), std::slice::from_ref(r), format, true, false)
                .map_err(anyhow::Error::msg)?;
            print!("{text}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (kind, names) = kind_and_names(args)?;
    let ns = (kind.is_namespaced() && !all_namespaces).then_some(namespace);
    let resources = if names.is_empty() {
        client.list(kind, ns)?
    } else {
        let ns = kind.is_namespaced().then_some(namespace);
        names
            .iter()
            .map(|n| client.get(kind, ns, n))
            .collect::<Result<Vec<_>, _>>()?
    };
    let single = names.len() == 1;
    let text = output::render(kind, &resources, format, single, all_namespaces)
        .map_err(anyhow::Error::msg)?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn kind_and_names(args: &[String]) -> anyhow::Result<(Kind, Vec<String>)> {
    let Some((kind, names)) = args.split_first() else {
        bail!("name a resource kind, e.g. `ippools`, or give -f FILE");
    };
    Ok((parse_kind(kind)?, names.to_vec()))
}

fn parse_kind(name: &str) -> anyhow::Result<Kind> {
    Kind::from_name(name).with_context(|| format!("unknown resource kind {name:?}"))
}

fn parse_patch(text: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(text)
        .or_else(|_| serde_saphyr::from_str::<serde_json::Value>(text))
        .context("the patch is neither JSON nor YAML")
}

/// Reads every file (or stdin, or every YAML/JSON file of a directory) and parses all of their
/// documents; the first bad document fails the whole load, naming its file.
fn load_files(
    paths: &[PathBuf],
    recursive: bool,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<Resource>> {
    let mut sources = Vec::new();
    for path in paths {
        collect_sources(path, recursive, &mut sources)?;
    }
    let mut resources = Vec::new();
    for path in sources {
        let text = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            text
        } else {
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
        };
        let parsed = felis_api::load::parse_documents(&text, namespace)
            .with_context(|| format!("in {}", display_path(&path)))?;
        resources.extend(parsed);
    }
    Ok(resources)
}

fn collect_sources(path: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.as_os_str() == "-" || !path.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading directory {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            if recursive {
                collect_sources(&entry, recursive, out)?;
            }
        } else if matches!(
            entry.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(entry);
        }
    }
    Ok(())
}

fn display_path(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "standard input".to_string()
    } else {
        path.display().to_string()
    }
}

fn describe(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| display_path(p))
        .collect::<Vec<_>>()
        .join(", ")
}
