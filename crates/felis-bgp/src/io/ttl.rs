//! TTL security (GTSM, RFC 5082; Calico's BGPPeer `ttlSecurity`) through the Linux socket
//! options `IP_TTL`/`IP_MINTTL` (IPv6: `IPV6_UNICAST_HOPS`/`IPV6_MINHOPCOUNT`).
//!
//! A peer at most `hops` hops away sends with TTL 255, so its packets arrive with a TTL of at
//! least `256 - hops`; the kernel drops anything lower before TCP sees it (RFC 5082 §3:
//! "TTL >= 255 - trust radius", with a trust radius of `hops - 1`; BIRD's `ttl security on;
//! multihop N`, which Calico renders, uses the same `256 - N`). We send with 255 too, so the
//! peer's own check passes. The options go on the connecting socket before `connect` and on an
//! accepted socket as soon as it is ours; the listener sends SYN-ACKs with TTL 255 once any peer
//! uses GTSM (accepted sockets of other peers are set back to the default TTL).

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

/// The TTL we send with under GTSM.
pub(crate) const GTSM_TTL: i32 = 255;

/// The lowest TTL accepted from a peer at most `hops` hops away (`hops` 0 counts as 1).
pub(crate) fn min_ttl(hops: u8) -> i32 {
    256 - i32::from(hops.max(1))
}

/// Sets TTL security for `peer` on `socket`: with `hops`, send with TTL 255 and drop packets
/// that arrive with less than `256 - hops`; without, the default TTL and no check.
pub(crate) fn set_ttl_security(
    socket: &impl AsRawFd,
    peer: IpAddr,
    hops: Option<u8>,
) -> io::Result<()> {
    let (ttl, min) = match hops {
        Some(h) => (GTSM_TTL, min_ttl(h)),
        // -1: the kernel's default (net.ipv4.ip_default_ttl / hop_limit).
        None => (-1, 0),
    };
    match peer.to_canonical() {
        IpAddr::V4(_) => {
            set(socket, libc::IPPROTO_IP, libc::IP_TTL, ttl)?;
            set(socket, libc::IPPROTO_IP, libc::IP_MINTTL, min)
        }
        IpAddr::V6(_) => {
            set(socket, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, ttl)?;
            set(socket, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, min)
        }
    }
}

/// Makes the listener answer with TTL 255 (its SYN-ACKs must pass a GTSM peer's check).
/// `v6`: the listener is an IPv6 (dual-stack) socket.
pub(crate) fn set_listener_ttl(socket: &impl AsRawFd, v6: bool) -> io::Result<()> {
    // IPv4 (and IPv4-mapped connections of a dual-stack socket) use IP_TTL.
    set(socket, libc::IPPROTO_IP, libc::IP_TTL, GTSM_TTL)?;
    if v6 {
        set(
            socket,
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            GTSM_TTL,
        )?;
    }
    Ok(())
}

fn set(socket: &impl AsRawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: `value` is a live `c_int` and we pass its exact size; the kernel only reads it.
    // The file descriptor is owned by `socket` for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_is_256_minus_hops() {
        assert_eq!(
            min_ttl(1),
            255,
            "a direct neighbour's packets arrive with 255"
        );
        assert_eq!(min_ttl(2), 254);
        assert_eq!(min_ttl(0), 255);
        assert_eq!(min_ttl(255), 1);
    }

    #[test]
    fn options_apply_to_tcp_sockets_of_either_family_and_can_be_undone() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        set_ttl_security(&socket, local, Some(2)).unwrap();
        set_ttl_security(&socket, local, None).unwrap();
        set_listener_ttl(&socket, false).unwrap();
        // A dual-stack listener takes both families' options (IPv4 peers arrive mapped).
        if let Ok(socket) = std::net::TcpListener::bind("[::]:0") {
            set_listener_ttl(&socket, true).unwrap();
            set_ttl_security(&socket, local, Some(1)).unwrap();
            set_ttl_security(&socket, "::1".parse().unwrap(), Some(1)).unwrap();
            set_ttl_security(&socket, "::ffff:127.0.0.1".parse().unwrap(), None).unwrap();
        }
    }
}
