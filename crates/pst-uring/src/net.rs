//! Socket setup for ports (socket2 underneath).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

use socket2::{Domain, Protocol, Socket, Type};

/// A listening socket with `SO_REUSEADDR` and `TCP_NODELAY` (inherited by accepted sockets on
/// Linux, which saves a `setsockopt` per connection), without `SO_REUSEPORT`: binding an address
/// another socket listens on fails with `EADDRINUSE` instead of silently sharing it.
pub fn listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    listener_with(addr, backlog, false)
}

/// A listening socket as [`listener`], with or without `SO_REUSEPORT`. With it, any process of
/// the same user can bind the same address and the kernel spreads connections over all of them
/// — a second instance of a server starts silently beside the first, and so does the listener
/// of a killed process that the kernel has not torn down yet. Without it, such a bind fails
/// (`EADDRINUSE`).
pub fn listener_with(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(reuse_port)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}

/// Bytes in a TCP socket's send queue that the peer has not acknowledged yet (`SIOCOUTQ`).
/// A send waiting on a full socket buffer completes only once much of it has drained, so a
/// peer reading slowly can go seconds without a send completion; this count still falls.
pub fn unacked_send_bytes(fd: i32) -> io::Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: `SIOCOUTQ` (`TIOCOUTQ` on Linux) writes one `int` through the pointer, which
    // points to a live `c_int`; on an fd that is not a TCP socket the call fails (`EBADF`,
    // `ENOTTY`, `EINVAL`) without other effect.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as u32)
}

/// Disable Nagle on a connected stream.
pub fn set_nodelay(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)
}

/// Stop and close a listening socket the port owned.
///
/// `shutdown()` first: the socket may be shared with other ports (threads) through duplicated
/// fds, and shutting it down takes it out of the listening state for all of them at once, so
/// no connection is accepted into a queue that nobody will read.
pub(crate) fn close_listener(fd: i32) -> io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: callers pass a listener fd the port owns (adopted with `Driver::adopt`) and that
    // nothing else will close.
    #[allow(unsafe_code)]
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sock = socket2::SockRef::from(&fd);
    let r = sock.shutdown(std::net::Shutdown::Both);
    drop(fd);
    r
}
