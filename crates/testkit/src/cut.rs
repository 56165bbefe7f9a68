//! A TCP relay the test controls, between a client under test and a real server: `cut` breaks
//! every connection through it and refuses new ones until `restore`, as a network cut does:
//! the link first goes silent for a moment (what either side writes then is lost, though its
//! writes succeed), then both sides see their connection end.

use std::sync::Arc;

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long a cut link stays silent (bytes swallowed) before its connections end.
const SILENCE: Duration = Duration::from_millis(700);

/// See the module docs.
#[derive(Debug)]
pub struct CutRelay {
    port: u16,
    target: (String, u16),
    /// Bumped by each `cut`: the connections of an older generation end.
    generation: Arc<watch::Sender<u64>>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl CutRelay {
    /// Listens on a free loopback port and relays to `host:port`.
    pub async fn start(host: &str, port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut relay = Self {
            port: listener.local_addr().unwrap().port(),
            target: (host.to_owned(), port),
            generation: Arc::new(watch::channel(0).0),
            accept: None,
        };
        relay.serve(listener);
        relay
    }

    /// The loopback port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target.clone();
        let generation = self.generation.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let mut cut = generation.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect((target.0.as_str(), target.1)).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                        _ = cut.changed() => {}
                    }
                    // The link goes silent first, as a real one does: what either side writes
                    // now is lost. Then both see the connection end.
                    let mut a = [0u8; 4096];
                    let mut b = [0u8; 4096];
                    let discard = async {
                        loop {
                            tokio::select! {
                                r = client.read(&mut a) => if !matches!(r, Ok(n) if n > 0) { break },
                                r = server.read(&mut b) => if !matches!(r, Ok(n) if n > 0) { break },
                            }
                        }
                    };
                    let _ = tokio::time::timeout(SILENCE, discard).await;
                });
            }
        }));
    }

    /// Breaks every connection and refuses new ones.
    pub fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again, on the same port.
    pub async fn restore(&mut self) {
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        self.serve(listener);
    }
}

impl Drop for CutRelay {
    fn drop(&mut self) {
        self.cut();
    }
}
