//! The official third-party clients receive a live flip published through the control API:
//! `pusher-js` on the Pusher endpoint and `centrifuge` (Centrifugo's JS SDK) on the Centrifugo
//! endpoint, run with node. `./scripts/test` installs them (`npm ci` in `tests/kick-sim/node`) and
//! sets KICK_REQUIRE_NODE_TESTS=1, so that a missing node fails rather than skips.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

fn node_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/node"));
    let have_node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_node
        && dir.join("node_modules/pusher-js").exists()
        && dir.join("node_modules/centrifuge").exists()
    {
        return Some(dir);
    }
    assert!(
        std::env::var_os("KICK_REQUIRE_NODE_TESTS").is_none(),
        "node or the npm packages are missing: run `npm ci` in {}",
        dir.display()
    );
    eprintln!(
        "skipped: node or tests/kick-sim/node/node_modules missing (./scripts/test installs them)"
    );
    None
}

/// Runs a node script; flips streamer `idx` live once it reports being subscribed; returns the
/// JSON line it printed for the event.
async fn run(
    dir: &PathBuf,
    script: &str,
    args: &[String],
    sim: &kick_sim::SimHandle,
    idx: usize,
) -> Value {
    let mut child = tokio::process::Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let read = async {
        let mut last = Value::Null;
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v.get("subscribed").is_some() {
                sim.sim.set_live(idx, true);
            } else {
                last = v;
            }
        }
        last
    };
    let event = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("node client timed out");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{script} exited with {status}");
    event
}

#[tokio::test]
async fn pusher_js_and_centrifuge_js_receive_a_live_flip() {
    live_flip(kick_sim::Options::ideal()).await;
}

/// On a realistic sim the channel's Centrifugo region comes from the per-channel negotiation
/// (streamer 3 is not in the first region).
#[tokio::test]
async fn pusher_js_and_centrifuge_js_receive_a_live_flip_realistic() {
    live_flip(kick_sim::Options::realistic()).await;
}

async fn live_flip(base: kick_sim::Options) {
    let Some(dir) = node_dir() else { return };
    let realistic = !base.regions.is_empty();
    let sim = kick_sim::start(
        "127.0.0.1:0".parse().unwrap(),
        kick_sim::Options {
            streamers: 5,
            ..base
        },
    )
    .await
    .unwrap();
    let truth = |i: usize| sim.sim.streamer(i);
    // pusher-js: the event's data arrives decoded by the client.
    let s = truth(2);
    let args = vec![
        "127.0.0.1".into(),
        sim.addr.port().to_string(),
        sim.sim.opts.pusher_key.clone(),
        s.channel_id.to_string(),
    ];
    let got = run(&dir, "pusher.mjs", &args, &sim, 2).await;
    let s = truth(2);
    assert_eq!(got["event"], "App\\Events\\StreamerIsLive");
    assert_eq!(got["data"]["livestream"]["id"], s.livestream_id.unwrap());
    assert_eq!(got["data"]["livestream"]["channel_id"], s.channel_id);
    // centrifuge-js: negotiation, guest token, connect, subscribe, publication.
    let s = truth(3);
    let mut args = vec![sim.url(), s.channel_id.to_string()];
    if realistic {
        args.push("per-channel".into());
    }
    let got = run(&dir, "centrifuge.mjs", &args, &sim, 3).await;
    let s = truth(3);
    assert_eq!(got["publication"]["event"], "App\\Events\\StreamerIsLive");
    let inner: Value = serde_json::from_str(got["publication"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(inner["livestream"]["id"], s.livestream_id.unwrap());
}
