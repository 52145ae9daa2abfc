//! Running `nft`: one process per script (`nft -f -`), or one long-lived `nft -i` process fed a
//! transaction per line, which saves the ~17–20 ms of process start-up on every delta.
//!
//! `nft -i` runs each input line as one transaction (all its `;`-separated commands commit or
//! none do) and reports errors on stderr only. After each transaction the session sends a
//! sentinel command that always fails (`list set inet felis pol-sync-<n>`, a set that never
//! exists): its error marks the end of the transaction's own output on stderr, so anything
//! before it is the transaction's error.

use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::process::Child;
use std::process::ChildStderr;
use std::process::ChildStdin;
use std::process::Command;
use std::process::Stdio;

use crate::error::Error;
use crate::render::TABLE;

/// Applies `script` in one transaction with a fresh `nft -f -` process.
pub fn apply_script(script: &str) -> Result<(), Error> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(Error::Pipe)?;
    }
    let output = child.wait_with_output().map_err(Error::Pipe)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Refused(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

/// Names of the chains, sets and maps in table `inet felis` (empty if the table is absent).
pub fn list_names() -> Result<Vec<String>, Error> {
    let output = Command::new("nft")
        .args(["-t", "list", "table", "inet", TABLE])
        .stdin(Stdio::null())
        .output()
        .map_err(Error::Spawn)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(Vec::new());
        }
        return Err(Error::List(stderr.trim().to_string()));
    }
    Ok(parse_names(&String::from_utf8_lossy(&output.stdout)))
}

/// The object names in an `nft list table` listing.
pub fn parse_names(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("chain" | "set" | "map"), Some(name), Some("{")) => Some(name.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// A long-lived `nft -i` process in the namespace it was started in.
#[derive(Debug)]
pub struct NftSession {
    child: Child,
    stdin: ChildStdin,
    stderr: BufReader<ChildStderr>,
    sequence: u64,
}

impl NftSession {
    /// Starts `nft -i` (in the calling thread's network namespace).
    pub fn start() -> Result<NftSession, Error> {
        let mut child = Command::new("nft")
            .arg("-i")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::Spawn)?;
        let (Some(stdin), Some(stderr)) = (child.stdin.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Pipe(std::io::Error::other("nft -i has no pipes")));
        };
        Ok(NftSession {
            child,
            stdin,
            stderr: BufReader::new(stderr),
            sequence: 0,
        })
    }

    /// Applies `script` (nft commands, one per line) as one transaction.
    pub fn apply(&mut self, script: &str) -> Result<(), Error> {
        self.sequence += 1;
        let sentinel = format!("pol-sync-{}", self.sequence);
        let mut line = String::with_capacity(script.len() + 64);
        for command in script.lines().filter(|l| !l.trim().is_empty()) {
            if !line.is_empty() {
                line.push_str("; ");
            }
            line.push_str(command);
        }
        line.push('\n');
        line.push_str(&format!("list set inet {TABLE} {sentinel}\n"));
        self.stdin.write_all(line.as_bytes()).map_err(Error::Pipe)?;
        self.stdin.flush().map_err(Error::Pipe)?;
        let mut errors: Vec<String> = Vec::new();
        loop {
            let mut text = String::new();
            let read = self.stderr.read_line(&mut text).map_err(Error::Pipe)?;
            if read == 0 {
                return Err(Error::Pipe(std::io::Error::other(
                    "nft -i exited before the transaction finished",
                )));
            }
            if text.contains(&sentinel) {
                // The sentinel's own "Error:" line precedes it; its caret line follows.
                errors.pop();
                let mut carets = String::new();
                self.stderr.read_line(&mut carets).map_err(Error::Pipe)?;
                break;
            }
            errors.push(text.trim_end().to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Refused(truncate(&errors.join("\n"))))
        }
    }
}

impl Drop for NftSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Error text with the echoed (possibly huge) command lines cut short.
fn truncate(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.len() > 400 {
                format!("{}…", &l[..l.floor_char_boundary(400)])
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_object_names_from_a_terse_listing() {
        let listing = "table inet felis {\n\tmap pol-from-wl {\n\t\ttype ifname : verdict\n\t}\n\tset masq-ipam-pools-v4 {\n\t\ttype ipv4_addr\n\t}\n\tchain pi-prod/web {\n\t\tip saddr @pol-s0-4h accept\n\t}\n\tchain nat-postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t}\n}\n";
        assert_eq!(
            parse_names(listing),
            [
                "pol-from-wl",
                "masq-ipam-pools-v4",
                "pi-prod/web",
                "nat-postrouting"
            ]
        );
    }

    #[test]
    fn long_error_lines_are_cut() {
        let text = format!("Error: x\n{}\n^^^", "é".repeat(1000));
        let cut = truncate(&text);
        assert!(cut.lines().all(|l| l.len() <= 404), "{cut}");
        assert!(cut.starts_with("Error: x\n") && cut.ends_with("^^^"));
    }
}
