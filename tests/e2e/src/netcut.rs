//! A TCP link from a service to PostgreSQL that a test can cut like a network partition and
//! heal: while cut, nothing passes either way (bytes already read are held, new connections are
//! accepted but not carried), as when a host's packets are dropped; when healed, the held bytes
//! and connections go on, as TCP does after a partition shorter than its timeouts. So a request
//! sent before the cut may reach the server long after others took over: what fencing is for.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;

/// A cuttable link: listens on `127.0.0.1:port` and carries each connection to a Unix socket.
#[derive(Debug, Clone)]
pub struct Link {
    pub port: u16,
    cut: Arc<watch::Sender<bool>>,
}

impl Link {
    /// Starts a link to the PostgreSQL Unix socket `socket` (e.g. `<dir>/.s.PGSQL.5433`).
    pub async fn start(socket: PathBuf) -> Link {
        Link::start_on("127.0.0.1".parse().unwrap(), socket).await
    }

    /// [`Link::start`] listening on `ip` (e.g. the host's end of a namespace's link).
    pub async fn start_on(ip: std::net::IpAddr, socket: PathBuf) -> Link {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(watch::Sender::new(false));
        let state = cut.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (socket, state) = (socket.clone(), state.subscribe());
                tokio::spawn(carry(tcp, socket, state));
            }
        });
        Link { port, cut }
    }

    /// Cuts the link (nothing passes until [`Link::heal`]).
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

async fn wait_open(state: &mut watch::Receiver<bool>) {
    let _ = state.wait_for(|cut| !*cut).await;
}

async fn carry(tcp: TcpStream, socket: PathBuf, mut state: watch::Receiver<bool>) {
    wait_open(&mut state).await;
    let Ok(unix) = UnixStream::connect(&socket).await else {
        return;
    };
    let (tr, tw) = tcp.into_split();
    let (ur, uw) = unix.into_split();
    tokio::join!(relay(tr, uw, state.clone()), relay(ur, tw, state));
}

/// Copies `from` to `to`, holding what it read while the link is cut.
async fn relay(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut state: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        wait_open(&mut state).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
