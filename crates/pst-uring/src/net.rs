//! Socket setup for ports (socket2 underneath).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

use socket2::{Domain, Protocol, Socket, Type};

/// A listening socket with `SO_REUSEADDR`, `SO_REUSEPORT` (so one listener per port/thread can
/// share an address) and `TCP_NODELAY` (inherited by accepted sockets on Linux, which saves a
/// `setsockopt` per connection).
pub fn listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}

/// Disable Nagle on a connected stream.
pub fn set_nodelay(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)
}

/// Close a raw fd the port owned.
pub fn close_fd(fd: i32) -> io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: callers pass an fd the port owns (it was adopted with `Driver::adopt`) and that
    // nothing else will close.
    #[allow(unsafe_code)]
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}
