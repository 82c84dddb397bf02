//! Whatever the decoders accept is insertable: every input of the fuzz corpora (the frame
//! targets' and `staged_row`'s, seeded from the recorded fixtures and hostile values, grown by
//! the fuzzer) goes through the decoders and the collector's row builder exactly as a socket
//! sends it, and each row is inserted into `raw_events` of a real PostgreSQL (`jsonb` cast
//! included). One row PostgreSQL refused once stopped staging for every streamer.

use std::collections::BTreeSet;
use std::path::PathBuf;

use kick_collector::rows::{self, Staged};
use kick_shared::kick::frame::{self, CentrifugoMsg, PusherFrame};

const CORPORA: &[&str] = &["staged_row", "pusher_frame", "centrifugo_frame"];

fn corpus_files() -> Vec<PathBuf> {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus"));
    let mut files = BTreeSet::new();
    for c in CORPORA {
        for e in std::fs::read_dir(root.join(c)).unwrap_or_else(|e| panic!("{c}: {e}")) {
            files.insert(e.unwrap().path());
        }
    }
    files.into_iter().collect()
}

/// The rows a socket would stage for `text` (either transport), as the collector builds them.
fn rows_of(text: &str) -> Vec<Staged> {
    let now = chrono::Utc::now();
    let mut out = Vec::new();
    match frame::decode_pusher(text) {
        Ok(PusherFrame::Event { channel, event }) => {
            out.extend(rows::realtime(&channel, &event, now));
        }
        Ok(_) => {}
        Err(e) => out.push(rows::rejected_frame(
            "pusher",
            &e.to_string(),
            text.as_bytes(),
            now,
        )),
    }
    for (line, msg) in frame::centrifugo_messages(text).take(64) {
        match msg {
            Ok(CentrifugoMsg::Publication { channel, event }) => {
                out.extend(rows::realtime(&channel, &event, now));
            }
            Ok(_) => {}
            Err(e) => out.push(rows::rejected_frame(
                "centrifugo",
                &e.to_string(),
                line.as_bytes(),
                now,
            )),
        }
    }
    out
}

#[tokio::test]
async fn every_row_built_from_the_fuzz_corpora_is_insertable() {
    let db = kick_testkit::fresh_db().await;
    let c = db.client().await;
    let insert = c
        .prepare(
            "INSERT INTO raw_events (source, topic, event_name, kick_channel_id, kick_user_id,
                 livestream_id, event_time, payload, dedupe_key, outcome, processed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9, $10,
                     CASE WHEN $10::text IS NULL THEN NULL ELSE now() END)
             ON CONFLICT (dedupe_key) DO NOTHING",
        )
        .await
        .unwrap();
    let files = corpus_files();
    assert!(files.len() > 500, "{} corpus files", files.len());
    let (mut rows_total, mut live_or_stop) = (0, 0);
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        // Text frames are UTF-8 (tungstenite checks); the rest never reaches a decoder.
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        for row in rows_of(text) {
            rows_total += 1;
            if row.outcome.is_none() {
                live_or_stop += 1;
            }
            let source = row.source.as_str();
            c.execute(
                &insert,
                &[
                    &source,
                    &row.topic,
                    &row.event_name,
                    &row.channel_id,
                    &row.user_id,
                    &row.livestream_id,
                    &row.event_time,
                    &row.payload,
                    &row.dedupe_key,
                    &row.outcome,
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {row:?}: {e}", f.display()));
        }
    }
    eprintln!(
        "{} corpus files: {rows_total} rows inserted ({live_or_stop} live/offline)",
        files.len()
    );
    assert!(
        live_or_stop > 50,
        "the corpora hold live and offline events"
    );
}
