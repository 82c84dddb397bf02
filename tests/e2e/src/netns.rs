//! Hosts for the tests as Linux network namespaces (`ip netns` + veth, from iproute2; needs
//! root). Each host has two links to the machine: one to PostgreSQL and one to Kick (kick-sim),
//! so a test can cut a host off from the database alone, as a real partition would (the link
//! goes down: packets are dropped, connections hang, and resume if it comes back in time).
//!
//! Inside the namespace, `kick-forward` listens on kick-sim's own loopback port and carries
//! connections over the Kick link, so the URLs kick-sim announces work there too.

use std::net::Ipv4Addr;
use std::process::{Child, Command};

/// The second octet of a test process's addresses (10.200.0.0–10.249.255.255), from its tag.
fn second_octet(tag: u32) -> u8 {
    // `tag % 50` is below 50, so the sum is at most 249.
    200 + u8::try_from(tag % 50).unwrap_or(0)
}

/// One simulated host.
#[derive(Debug)]
pub struct Host {
    pub ns: String,
    /// The machine's end of the database link (PostgreSQL is reached here).
    pub db_ip: Ipv4Addr,
    /// The machine's end of the Kick link.
    pub kick_ip: Ipv4Addr,
    db_if: String,
    forwarder: Option<Child>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this machine can make namespaces (root and iproute2).
pub fn available() -> Result<(), String> {
    let name = format!("kmchk{}", std::process::id() % 100_000);
    ip(&["netns", "add", &name])?;
    ip(&["netns", "del", &name])
}

impl Host {
    /// Creates host `idx` (1–250) for this test process: namespace, two veth pairs, addresses.
    pub fn create(idx: u8) -> Result<Host, String> {
        let tag = std::process::id() % 10_000;
        let ns = format!("km{tag}h{idx}");
        let (db_h, db_n) = (format!("kd{tag}h{idx}"), format!("kd{tag}n{idx}"));
        let (k_h, k_n) = (format!("kk{tag}h{idx}"), format!("kk{tag}n{idx}"));
        // Distinct /30s per test process and host: second octet 200–249 (u8 arithmetic that
        // cannot overflow whatever the process id).
        let octet = second_octet(tag);
        let db_ip = Ipv4Addr::new(10, octet, idx, 1);
        let kick_ip = Ipv4Addr::new(10, octet, idx, 5);
        let _ = ip(&["netns", "del", &ns]);
        ip(&["netns", "add", &ns])?;
        let host = Host {
            ns: ns.clone(),
            db_ip,
            kick_ip,
            db_if: db_h.clone(),
            forwarder: None,
        };
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", ns.as_str(), "ip"];
            a.extend_from_slice(args);
            ip(&a)
        };
        inside(&["link", "set", "lo", "up"])?;
        for (h, n, mine, theirs) in [
            (&db_h, &db_n, db_ip, Ipv4Addr::new(10, octet, idx, 2)),
            (&k_h, &k_n, kick_ip, Ipv4Addr::new(10, octet, idx, 6)),
        ] {
            ip(&["link", "add", h, "type", "veth", "peer", "name", n])?;
            ip(&["link", "set", n, "netns", &ns])?;
            ip(&["addr", "add", &format!("{mine}/30"), "dev", h])?;
            ip(&["link", "set", h, "up"])?;
            inside(&["addr", "add", &format!("{theirs}/30"), "dev", n])?;
            inside(&["link", "set", n, "up"])?;
        }
        Ok(host)
    }

    /// Starts `kick-forward` inside: `127.0.0.1:port` there → `kick_ip:port` (kick-sim listens
    /// on every address of the machine).
    pub fn forward_kick(&mut self, forwarder: &std::path::Path, port: u16) -> Result<(), String> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(forwarder)
            .arg(format!("127.0.0.1:{port}"))
            .arg(format!("{}:{port}", self.kick_ip))
            .spawn()
            .map_err(|e| format!("kick-forward: {e}"))?;
        self.forwarder = Some(child);
        Ok(())
    }

    /// The wrapper that runs a program on this host.
    pub fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", self.ns.as_str()]
    }

    /// Cuts the host off from PostgreSQL (its database link goes down).
    pub fn cut_db(&self) {
        ip(&["link", "set", &self.db_if, "down"]).unwrap();
    }

    pub fn heal_db(&self) {
        ip(&["link", "set", &self.db_if, "up"]).unwrap();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.forwarder.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting the namespace deletes the veth ends in it, and so their peers.
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

#[cfg(test)]
mod tests {
    use super::second_octet;

    #[test]
    fn every_process_tag_gives_a_valid_octet() {
        for tag in 0..10_000 {
            let o = second_octet(tag);
            assert!((200..250).contains(&o), "tag {tag}: {o}");
        }
        assert_eq!(second_octet(u32::MAX), 200 + (u32::MAX % 50) as u8);
    }
}
