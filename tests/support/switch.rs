//! A TCP forwarder that can be switched off: a network partition between
//! portcullis and one of its dependencies, for as long as a test says.
//! While off, new connections are closed at once and open ones are cut.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Switch {
    pub port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Switch {
    /// Forwards a free local port to `127.0.0.1:target`, switched on.
    pub async fn start(target: u16) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, open2) = (up.clone(), open.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                open2.lock().unwrap().push(task);
            }
        });
        Switch { port, up, open, accept }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn off(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn on(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.accept.abort();
        self.off();
    }
}
