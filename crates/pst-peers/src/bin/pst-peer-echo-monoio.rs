//! Echo server on monoio's io_uring driver, as monoio's own `examples/echo.rs` writes it
//! (ownership-passing `read` into a `Vec`, `write_all` of the same buffer, a task per
//! connection), run thread-per-core as monoio's benchmark server does: each `--threads` worker
//! builds its own io_uring runtime and a `SO_REUSEPORT` listener, pinned like pst's workers.
//!
//! `pst-peer-echo-monoio --addr 127.0.0.1:7000 --threads 1 --cpu 0`

use std::io;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use monoio::{IoUringDriver, RuntimeBuilder};
use pst_peers::EchoArgs;

fn main() -> io::Result<()> {
    let args = EchoArgs::from_env();
    let (addr, buf_size) = (args.addr, args.buf_size);
    args.run_workers(move |_| {
        let mut rt = RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(1024)
            .build()?;
        rt.block_on(serve(addr, buf_size))
    })
}

async fn serve(addr: std::net::SocketAddr, buf_size: usize) -> io::Result<()> {
    let opts = ListenerOpts::new().reuse_port(true).backlog(4096);
    let listener = TcpListener::bind_with_config(addr, &opts)?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                monoio::spawn(echo(stream, buf_size));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

async fn echo(mut stream: TcpStream, buf_size: usize) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(buf_size);
    let mut res;
    loop {
        (res, buf) = stream.read(buf).await;
        if res? == 0 {
            return Ok(());
        }
        (res, buf) = stream.write_all(buf).await;
        res?;
        buf.clear();
    }
}
