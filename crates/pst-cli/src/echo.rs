//! The echo workload: raw TCP, every byte sent back. On the port the received buffer itself is
//! kept and sent back (zero copy from the pool); on epoll it is read and written.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pst::SlotKind;

use crate::epoll::{StreamApp, Verdict};
use crate::server::{drain_port, Worker};

/// Serve echo on one worker's port.
pub fn uring(mut w: Worker) -> anyhow::Result<()> {
    let mut port = w.port.take().expect("uring worker has a port");
    port.add_listener(w.take_listener()?)?;
    let mut requests = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        port.sync(Some(Duration::from_millis(100)))?;
        for i in 0..port.rx().len() {
            let s = port.rx()[i];
            match s.kind {
                SlotKind::Data => {
                    requests += 1;
                    if let Some(e) = port.keep(&s) {
                        // A send to a connection that just failed is refused; its slot follows.
                        let _ = port.send(s.conn, e);
                    }
                }
                SlotKind::End | SlotKind::Error(_) => port.close(s.conn),
                SlotKind::Accepted => {}
            }
        }
        if let Some(st) = &w.stats {
            st.set(w.index, port.stats().driver.syscalls(), requests);
        }
    }
    drain_port(&mut port)
}

/// Echo for the epoll engine.
#[derive(Debug, Default)]
pub struct EchoApp;

impl StreamApp for EchoApp {
    type Conn = ();
    fn on_data(&mut self, _: &mut (), data: &[u8], out: &mut Vec<u8>) -> Verdict {
        out.extend_from_slice(data);
        Verdict::Continue
    }
}

/// Serve echo on one worker with epoll.
pub fn epoll(mut w: Worker, limits: crate::service::Limits) -> anyhow::Result<()> {
    let l = w.take_listener()?;
    crate::epoll::serve(
        l,
        EchoApp,
        &w.stop,
        w.stats.as_deref().map(|s| (s, w.index)),
        limits,
    )?;
    Ok(())
}
