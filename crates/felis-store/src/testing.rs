//! Test helpers (feature `testing`, dev-only): a throw-away etcd server.
//!
//! [`EtcdServer::start`] runs Debian's `/usr/bin/etcd` (package `etcd-server`) on free loopback
//! ports with a temporary data directory. The server is stopped and the directory removed when
//! the value is dropped, panics included; if the test process is killed outright, the wrapper
//! shell notices its stdin closing and kills etcd too.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// Where Debian's `etcd-server` installs etcd; `FELIS_TEST_ETCD` overrides it.
const DEFAULT_ETCD: &str = "/usr/bin/etcd";
/// How long a fresh etcd may take to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A private single-member etcd cluster on loopback.
#[derive(Debug)]
pub struct EtcdServer {
    binary: PathBuf,
    data: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd on free ports with a fresh data directory and waits until it is healthy.
    /// Fails with a message naming the package when etcd is not installed.
    pub fn start() -> Result<Self, Error> {
        let binary = std::env::var_os("FELIS_TEST_ETCD")
            .map_or_else(|| PathBuf::from(DEFAULT_ETCD), PathBuf::from);
        if !binary.exists() {
            return Err(Error::backend(
                "starting a test etcd server",
                format!(
                    "{} not found: install Debian package etcd-server (apt-get install -y \
                     etcd-server) or set FELIS_TEST_ETCD",
                    binary.display()
                ),
            ));
        }
        let mut data = tempfile::Builder::new()
            .prefix("felis-test-etcd-")
            .tempdir()
            .map_err(|e| Error::backend("creating a data directory for test etcd", e))?;
        // Ports picked by the kernel can be taken again before etcd binds them: retry.
        let mut last_error = None;
        for _ in 0..5 {
            let (client_port, peer_port) = (free_port()?, free_port()?);
            let mut server = Self {
                binary: binary.clone(),
                data,
                client_port,
                peer_port,
                child: None,
            };
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    server.kill();
                    last_error = Some(e);
                    data = server.into_data()?;
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| Error::backend("starting a test etcd server", "no attempt made")))
    }

    /// The datastore URL of this server, `etcd://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// The client endpoint, `http://127.0.0.1:PORT` (for `etcdctl --endpoints`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Stops etcd (the data directory stays until drop).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Stops etcd if running and starts it again on the same ports and data directory.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        self.launch()
    }

    fn into_data(mut self) -> Result<tempfile::TempDir, Error> {
        self.kill();
        let fresh = tempfile::Builder::new()
            .prefix("felis-test-etcd-")
            .tempdir()
            .map_err(|e| Error::backend("creating a data directory for test etcd", e))?;
        Ok(std::mem::replace(&mut self.data, fresh))
    }

    fn launch(&mut self) -> Result<(), Error> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = self.data.path().join("etcd.log");
        let member = self.data.path().join("member-data");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::backend(format!("creating {}", log.display()), e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| Error::backend(format!("creating {}", log.display()), e))?;
        // `sh` runs etcd in the background and kills it when our end of its stdin closes: on
        // drop, and also when this process dies without running destructors.
        let script = r#"etcd="$1"; shift; "$etcd" "$@" & pid=$!; read _ignored; kill $pid 2>/dev/null; wait $pid"#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("felis-test-etcd")
            .arg(&self.binary)
            .args(["--name", "felis-test", "--data-dir"])
            .arg(&member)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("felis-test={peer}")])
            .args(["--log-level", "warn"])
            .stdin(Stdio::piped())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| Error::backend("spawning test etcd", e))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if is_healthy(self.client_port) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let tail = tail_of(&log);
                return Err(Error::backend(
                    "starting a test etcd server",
                    format!("etcd exited with {status}; log:\n{tail}"),
                ));
            }
            if Instant::now() > deadline {
                let tail = tail_of(&log);
                return Err(Error::backend(
                    "starting a test etcd server",
                    format!("etcd not healthy after {START_TIMEOUT:?}; log:\n{tail}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Closing stdin makes the wrapper kill etcd and wait for it.
            drop(child.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback TCP port that was free a moment ago.
fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::backend("finding a free loopback port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::backend("finding a free loopback port", e))
}

/// Does etcd answer `GET /health` with `"health":"true"`?
fn is_healthy(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.contains("\"health\":\"true\"")
}

fn tail_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<&str> = text.lines().rev().take(20).collect();
    lines.reverse();
    lines.join("\n")
}
