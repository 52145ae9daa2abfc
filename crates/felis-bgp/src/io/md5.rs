//! TCP-MD5 signatures (RFC 2385) through the Linux `TCP_MD5SIG` socket option.
//!
//! The key is set per peer address: on the outgoing socket before `connect`, and on the
//! listening socket (accepted sockets inherit it).

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

/// `struct tcp_md5sig` from `linux/tcp.h`:
/// sockaddr_storage (128) · flags (1) · prefixlen (1) · keylen (2) · ifindex (4) · key (80).
const SIZE: usize = 216;
const KEY_OFFSET: usize = 136;
const MAX_KEY: usize = 80;

/// Sets (or with an empty `key`, clears) the MD5 key for `peer` on `socket`.
pub(crate) fn set_md5_key(socket: &impl AsRawFd, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > MAX_KEY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP-MD5 key longer than 80",
        ));
    }
    let mut buf = [0u8; SIZE];
    match peer {
        IpAddr::V4(a) => {
            put(&mut buf, 0, &(libc::AF_INET as u16).to_ne_bytes());
            put(&mut buf, 4, &a.octets());
        }
        IpAddr::V6(a) => {
            put(&mut buf, 0, &(libc::AF_INET6 as u16).to_ne_bytes());
            put(&mut buf, 8, &a.octets());
        }
    }
    let keylen = u16::try_from(key.len()).unwrap_or(0);
    put(&mut buf, 130, &keylen.to_ne_bytes());
    put(&mut buf, KEY_OFFSET, key);
    #[allow(unsafe_code)]
    // SAFETY: `buf` is a live, initialised buffer of exactly `SIZE` bytes laid out as the
    // kernel's `struct tcp_md5sig`; the kernel only reads `SIZE` bytes from it, and the file
    // descriptor is owned by `socket` for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            buf.as_ptr().cast(),
            SIZE as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}
