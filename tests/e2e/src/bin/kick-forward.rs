//! A TCP forwarder for the network-namespace tests: `kick-forward LISTEN TARGET` accepts on
//! `LISTEN` and carries each connection to `TARGET`. Run inside a namespace (`ip netns exec`), it
//! makes a service there reach kick-sim at the address kick-sim announces (its own loopback
//! URLs) through the namespace's own link, which the test can cut.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, target] = args.as_slice() else {
        eprintln!("usage: kick-forward LISTEN_ADDR TARGET_ADDR");
        std::process::exit(64);
    };
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
        eprintln!("kick-forward: cannot listen on {listen}: {e}");
        std::process::exit(71);
    });
    for client in listener.incoming().flatten() {
        let target = target.clone();
        std::thread::spawn(move || {
            let Ok(server) = TcpStream::connect(&target) else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                (Ok(c), Ok(s)) => (c, s),
                _ => return,
            };
            let up = std::thread::spawn(move || pipe(client, server));
            pipe(s2, c2);
            let _ = up.join();
        });
    }
}
