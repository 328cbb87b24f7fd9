//! Echo server on tokio, as tokio's own `examples/echo.rs` writes it (accept loop, a task per
//! connection, `read` then `write_all`), run thread-per-core: each `--threads` worker owns a
//! current-thread runtime and a `SO_REUSEPORT` listener, pinned like pst's workers.
//!
//! `pst-peer-echo-tokio --addr 127.0.0.1:7000 --threads 1 --cpu 0`

use std::io;

use pst_peers::EchoArgs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

fn main() -> io::Result<()> {
    let args = EchoArgs::from_env();
    let (addr, buf_size) = (args.addr, args.buf_size);
    args.run_workers(move |_| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        rt.block_on(serve(addr, buf_size))
    })
}

fn listener(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn serve(addr: std::net::SocketAddr, buf_size: usize) -> io::Result<()> {
    let listener = listener(addr)?;
    loop {
        let (mut socket, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0; buf_size];
            loop {
                let n = match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if socket.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}
