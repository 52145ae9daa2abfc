//! Network namespaces: open, create named ones like `ip netns add`, delete, and run code inside.
//!
//! The only safe way to enter a namespace from a multi-threaded program is on a thread of its
//! own: `setns(2)` changes the calling thread only, and a tokio worker that entered a namespace
//! would carry it into unrelated tasks. Every function here therefore does its `setns` or
//! `unshare` on a throwaway OS thread that ends when the work is done.

use std::fs;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;

use nix::mount::MntFlags;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use crate::error::Error;
use crate::error::Result;

/// Where named namespaces live, as with `ip netns`.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// An open network namespace, held by a file descriptor (and the path it came from, if any).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: Option<PathBuf>,
}

impl Netns {
    /// The network namespace of the calling thread.
    pub fn current() -> Result<Netns> {
        let path = PathBuf::from("/proc/thread-self/ns/net");
        let file = File::open(&path).map_err(|source| Error::NetnsOpen { path, source })?;
        Ok(Netns { file, path: None })
    }

    /// Opens a namespace file, e.g. `/run/netns/x` or `/proc/<pid>/ns/net`.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| Error::NetnsOpen {
            path: path.clone(),
            source,
        })?;
        Ok(Netns {
            file,
            path: Some(path),
        })
    }

    /// Creates a new, empty namespace and pins it at `/run/netns/<name>` (like `ip netns add`).
    ///
    /// Fails with `EEXIST` if the name is taken.
    pub fn create_named(name: &str) -> Result<Netns> {
        validate_netns_name(name)?;
        let create_err = |source: io::Error| Error::NetnsCreate {
            name: name.to_string(),
            source,
        };
        fs::create_dir_all(NETNS_RUN_DIR).map_err(create_err)?;
        make_run_dir_shared().map_err(create_err)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        // The mount point: an empty file, created exclusively so two creators cannot share it.
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&path)
            .map_err(create_err)?;
        let bind = {
            let path = path.clone();
            move || -> io::Result<()> {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
                nix::mount::mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
                Ok(())
            }
        };
        let outcome = std::thread::Builder::new()
            .name(format!("netns-add-{name}"))
            .spawn(bind)
            .map_err(create_err)?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace creation thread panicked")));
        if let Err(source) = outcome {
            let _ = fs::remove_file(&path);
            return Err(create_err(source));
        }
        Netns::open(&path)
    }

    /// Unmounts and removes `/run/netns/<name>`; succeeds if it is already gone.
    pub fn delete_named(name: &str) -> Result<()> {
        validate_netns_name(name)?;
        delete_path(&Path::new(NETNS_RUN_DIR).join(name))
    }

    /// The path this namespace was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A description for messages: the path, or `current`.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "current".to_string(),
        }
    }

    /// Another handle on the same namespace.
    pub fn try_clone(&self) -> Result<Netns> {
        let file = self.file.try_clone().map_err(|source| Error::NetnsOpen {
            path: self.path.clone().unwrap_or_default(),
            source,
        })?;
        Ok(Netns {
            file,
            path: self.path.clone(),
        })
    }

    /// Runs `f` on a throwaway OS thread that has entered this namespace, and returns its value.
    ///
    /// Sockets opened and processes spawned inside `f` stay in this namespace after it returns
    /// (a child inherits the namespace of the thread that forked it), e.g.
    /// `netns.run(|| Command::new("bird").args(..).spawn())`. A panic inside `f` is resumed on
    /// the caller's thread.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        run_in(self, f)
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Runs `f` on a throwaway OS thread inside `netns`; the caller's thread never changes namespace.
pub fn run_in<T, F>(netns: &Netns, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    on_fresh_thread(&netns.describe(), CloneFlags::CLONE_NEWNET, Some(netns), f)
}

/// Runs `f` on a throwaway OS thread inside a brand-new anonymous namespace, which disappears
/// when `f` returns (unless `f` pins it).
pub fn run_in_new_netns<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    on_fresh_thread("anonymous", CloneFlags::CLONE_NEWNET, None, f)
}

/// Spawns a scoped thread that enters `netns` (or unshares `flags` when `None`), runs `f` and
/// joins; a panic in `f` is resumed on the caller.
fn on_fresh_thread<T, F>(
    describe: &str,
    flags: CloneFlags,
    netns: Option<&Netns>,
    f: F,
) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("netns-run".to_string())
            .spawn_scoped(scope, || -> Result<T> {
                let entered = match netns {
                    Some(ns) => nix::sched::setns(ns.as_fd(), flags),
                    None => nix::sched::unshare(flags),
                };
                entered.map_err(|errno| Error::NetnsEnter {
                    netns: describe.to_string(),
                    source: io::Error::from(errno),
                })?;
                Ok(f())
            })
            .map_err(|source| Error::Thread {
                netns: describe.to_string(),
                source,
            })?;
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Unmounts and removes a namespace mount point; succeeds if it does not exist.
pub fn delete_path(path: &Path) -> Result<()> {
    let delete_err = |source: io::Error| Error::NetnsDelete {
        path: path.to_path_buf(),
        source,
    };
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (half-created); ENOENT: already gone.
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(errno) => return Err(delete_err(io::Error::from(errno))),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(delete_err(e)),
    }
}

/// Names of the namespaces pinned under [`NETNS_RUN_DIR`].
pub fn list_named() -> Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::NetnsOpen {
                path: PathBuf::from(NETNS_RUN_DIR),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Rejects names that are not a single path component.
fn validate_netns_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name.contains('/') || name.contains('\0') {
        Some("contains '/' or NUL")
    } else if name.len() > 255 {
        Some("longer than 255 bytes")
    } else {
        None
    };
    crate::types::reject_name(name, reason)
}

/// Makes `/run/netns` a shared mount, as `ip netns add` does, so namespaces pinned there
/// propagate into mount namespaces created later (container runtimes).
fn make_run_dir_shared() -> io::Result<()> {
    // Serialise within this process so parallel creators do not stack several self-binds.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let shared = || {
        nix::mount::mount(
            None::<&str>,
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet; bind it onto itself, then retry.
        Err(nix::errno::Errno::EINVAL) => {
            nix::mount::mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            shared()?;
            Ok(())
        }
        Err(errno) => Err(io::Error::from(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_names_must_be_one_path_component() {
        assert!(validate_netns_name("ct-1-2").is_ok());
        assert!(validate_netns_name("").is_err());
        assert!(validate_netns_name("..").is_err());
        assert!(validate_netns_name("a/b").is_err());
    }
}
