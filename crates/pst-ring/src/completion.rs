//! What the core is told about finished operations, decoded from the kernel's form by the
//! driver (`pst-uring` decodes io_uring CQE flags; the simulated kernel builds these directly).

/// A positive error number, as a failed operation reports it (`ECONNRESET` is `Errno(104)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// `ENOENT`: a cancel found no such request (it had already ended).
    pub const NOENT: Errno = Errno(2);
    /// `EINVAL`: what accepting on a socket that stopped listening returns.
    pub const INVAL: Errno = Errno(22);
    /// `EPIPE`: sending on a socket whose peer has gone.
    pub const PIPE: Errno = Errno(32);
    /// `ECONNRESET`: the peer reset the connection.
    pub const CONNRESET: Errno = Errno(104);
    /// `ENOBUFS`: a receive found no provided buffer (the multishot ends).
    pub const NOBUFS: Errno = Errno(105);
    /// `ECANCELED`: the request was cancelled (its socket was closed, or a cancel request).
    pub const CANCELED: Errno = Errno(125);
}

/// One completion of an operation the core issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// An operation's result (for a multishot request, one of its results).
    Op {
        /// The [`UserData`](crate::UserData) the operation was submitted with.
        user_data: u64,
        /// Bytes received or sent, or the accepted socket; or why the operation failed.
        result: Result<u32, Errno>,
        /// The provided buffer a receive used (the first of a run, for a bundle).
        buffer: Option<u16>,
        /// The request stays armed (multishot); on a zero-copy send's result, a
        /// [`Completion::ZcNotif`] follows.
        more: bool,
    },
    /// A zero-copy send's notification: the kernel no longer reads that send's buffers.
    ZcNotif {
        /// The send's [`UserData`](crate::UserData).
        user_data: u64,
        /// The kernel copied the data after all (always so on loopback).
        copied: bool,
    },
}
