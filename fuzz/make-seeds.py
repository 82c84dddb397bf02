#!/usr/bin/env python3
"""Seeds for the fuzz targets, from the recorded payloads in tests/fixtures/kick/ plus hostile
inputs built by hand.

    fuzz/make-seeds.py seeds DIR   # DIR/<target>/<name>: fixtures (compacted) and hostile seeds
    fuzz/make-seeds.py huge DIR    # DIR/<target>/<name>: inputs of 1-8 MiB for the time check

The committed corpora (fuzz/corpus/<target>/) were made by `seeds`, then minimized with
`cargo fuzz cmin` together with what the fuzzer found. The huge inputs are never committed:
`./scripts/fuzz` makes them afresh and runs every target over them under a timeout, so that a
decoder that is super-linear in its input fails loudly.
"""

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "kick"

MIB = 1 << 20


def compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def fixture(name):
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def fixtures(pattern):
    return sorted(FIXTURES.glob(pattern))


def pusher(event, data, channel="channel.668", data_as_string=True):
    frame = {"event": event, "data": compact(data) if data_as_string else data}
    if channel is not None:
        frame["channel"] = channel
    return compact(frame)


def centrifugo_pub(event, data, channel="channel.668"):
    return compact(
        {"push": {"channel": channel, "pub": {"data": {"event": event, "data": compact(data)}}}}
    )


LIVE = "App\\Events\\StreamerIsLive"
STOP = "App\\Events\\StopStreamBroadcast"

# Numbers and strings that have broken decoders elsewhere: out of range, negative, zero,
# wrong type, NUL, lone escapes.
HOSTILE_IDS = [
    0,
    -1,
    -9223372036854775808,
    9223372036854775807,
    18446744073709551615,
    18446744073709551616,
    1e300,
    5.0,
    "-5",
    "0",
    "+5",
    " 5",
    "18446744073709551615",
    True,
    None,
    [],
    {},
]
NUL_STRINGS = ["\u0000", "a\u0000b", "channel.\u0000668"]


def deep(n, leaf="1"):
    return "[" * n + leaf + "]" * n


def live_data(livestream_id=74331109, channel_id=668, **extra):
    ls = {"id": livestream_id, "channel_id": channel_id, "session_title": "t",
          "created_at": "2025-09-14T23:18:20.000000Z"}
    ls.update(extra)
    return {"livestream": ls}


def stop_data(livestream_id=129387275, channel_id=26869410, is_banned=False):
    return {"livestream": {"id": livestream_id,
                           "channel": {"id": channel_id, "is_banned": is_banned}}}


def frame_seeds():
    """Pusher frames and Centrifugo frames share hostile inner payloads."""
    pusher_seeds = {}
    centrifugo_seeds = {}

    for path in fixtures("pusher-*.json"):
        value = json.loads(path.read_text(encoding="utf-8"))
        if ".frame." in path.name or "doc-example" in path.name:
            pusher_seeds[path.stem] = compact(value)
        elif ".data." in path.name:
            # Inner payloads: put them in both envelopes, under the event they were captured as.
            name = path.name.split(".")[0].removeprefix("pusher-")
            event = {
                "streamer-is-live": LIVE,
                "stop-stream-broadcast": STOP,
            }.get(name, "App\\Events\\" + "".join(p.title() for p in name.split("-")))
            pusher_seeds[path.stem + ".pusher"] = pusher(event, value)
            pusher_seeds[path.stem + ".object-data"] = pusher(event, value, data_as_string=False)
            centrifugo_seeds[path.stem + ".centrifugo"] = centrifugo_pub(event, value)
    for path in fixtures("centrifugo-*.json"):
        centrifugo_seeds[path.stem] = compact(json.loads(path.read_text(encoding="utf-8")))
    centrifugo_seeds["several-lines"] = "\n".join([
        compact(fixture("centrifugo-connect.reply.2026-10-03.json")),
        compact(fixture("centrifugo-subscribe.reply.json")),
        "{}",
        "",
        "not json",
        compact(fixture("centrifugo-publication.push.stop-stream-broadcast.RECONSTRUCTED.json")),
    ])
    centrifugo_seeds["error-reply"] = '{"id":3,"error":{"code":109,"message":"token expired"}}'
    centrifugo_seeds["refresh-reply"] = '{"id":4,"refresh":{"client":"c","expires":true,"ttl":2699}}'
    centrifugo_seeds["unsubscribe-reply"] = '{"id":5,"unsubscribe":{}}'
    centrifugo_seeds["disconnect-push"] = '{"push":{"disconnect":{"code":3501,"reason":"bad request"}}}'
    centrifugo_seeds["unsub-push"] = '{"push":{"channel":"channel.668","unsub":{"code":2500}}}'
    pusher_seeds["ping"] = '{"event":"pusher:ping","data":{}}'
    pusher_seeds["pong"] = '{"event":"pusher:pong","data":"{}"}'
    pusher_seeds["error"] = '{"event":"pusher:error","data":{"code":4201,"message":"Pong reply not received"}}'
    pusher_seeds["subscription-error"] = (
        '{"event":"pusher:subscription_error","channel":"private-x",'
        '"data":{"type":"AuthError","error":"bad","status":401}}'
    )
    pusher_seeds["internal-other"] = '{"event":"pusher_internal:member_added","data":"{}"}'

    # Hostile: ids of every wrong kind, in every place an id is read, in both transports.
    for i, bad in enumerate(HOSTILE_IDS):
        for where, data, event in [
            ("live-livestream-id", live_data(livestream_id=bad), LIVE),
            ("live-channel-id", live_data(channel_id=bad), LIVE),
            ("stop-livestream-id", stop_data(livestream_id=bad), STOP),
            ("stop-channel-id", stop_data(channel_id=bad), STOP),
        ]:
            pusher_seeds[f"hostile-{where}-{i}"] = pusher(event, data)
            centrifugo_seeds[f"hostile-{where}-{i}"] = centrifugo_pub(event, data)
        for field in ("ttl", "ping"):
            centrifugo_seeds[f"hostile-connect-{field}-{i}"] = compact(
                {"id": 1, "connect": {"client": "c", "expires": True, field: bad, "pong": True}})
        centrifugo_seeds[f"hostile-refresh-ttl-{i}"] = compact({"id": 4, "refresh": {"ttl": bad}})
        centrifugo_seeds[f"hostile-disconnect-code-{i}"] = compact(
            {"push": {"disconnect": {"code": bad, "reason": "r"}}})
        centrifugo_seeds[f"hostile-unsub-code-{i}"] = compact(
            {"push": {"channel": "channel.668", "unsub": {"code": bad}}})
        pusher_seeds[f"hostile-activity-timeout-{i}"] = pusher(
            "pusher:connection_established", {"socket_id": "1.2", "activity_timeout": bad}, None)
    # Ids missing from the payload, taken from a topic that is itself hostile.
    for i, topic in enumerate(["channel.0", "channel.-1", "channel.18446744073709551615",
                               "channel.+7", "channel.", "chatrooms.668.v2", "channel.668\u0000"]):
        pusher_seeds[f"hostile-topic-{i}"] = pusher(LIVE, {"livestream": {"id": 9}}, topic)
        pusher_seeds[f"hostile-topic-stop-{i}"] = pusher(STOP, {"livestream": {"id": 9}}, topic)
        centrifugo_seeds[f"hostile-topic-{i}"] = centrifugo_pub(STOP, {"livestream": {"id": 9}}, topic)
    # NUL in every string the decoders return.
    for i, s in enumerate(NUL_STRINGS):
        pusher_seeds[f"nul-title-{i}"] = pusher(LIVE, live_data(session_title=s))
        pusher_seeds[f"nul-channel-{i}"] = pusher(STOP, stop_data(), s)
        pusher_seeds[f"nul-event-{i}"] = pusher("App\\Events\\" + s, {}, "channel.1")
        pusher_seeds[f"nul-socket-{i}"] = pusher(
            "pusher:connection_established", {"socket_id": s}, None)
        centrifugo_seeds[f"nul-title-{i}"] = centrifugo_pub(LIVE, live_data(session_title=s))
        centrifugo_seeds[f"nul-client-{i}"] = compact({"id": 1, "connect": {"client": s}})
        centrifugo_seeds[f"nul-reason-{i}"] = compact({"push": {"disconnect": {"code": 1, "reason": s}}})
    # Wrong types where objects are expected, and data of every shape.
    for i, data in enumerate([5, "x", [], {}, None, True, "[]", "{}", " ", "{\"livestream\":[]}",
                              {"livestream": "x"}, {"livestream": {"id": 1, "channel": 5}},
                              {"livestream": {"id": 1, "channel": {"id": 2, "is_banned": "yes"}}},
                              {"livestream": {"id": 1, "channel_id": 2, "created_at": 5,
                                              "session_title": ["x"]}}]):
        for event in (LIVE, STOP):
            pusher_seeds[f"wrong-type-{event[-4:]}-{i}"] = compact(
                {"event": event, "data": data, "channel": "channel.668"})
        centrifugo_seeds[f"wrong-type-{i}"] = compact(
            {"push": {"channel": "channel.668", "pub": {"data": data}}})
    pusher_seeds["wrong-type-event"] = '{"event":5,"data":"{}","channel":"channel.1"}'
    pusher_seeds["wrong-type-channel"] = '{"event":"X","data":"{}","channel":5}'
    pusher_seeds["not-object"] = "[1,2,3]"
    centrifugo_seeds["not-object"] = "[1,2,3]\n\"x\"\n5"
    centrifugo_seeds["wrong-type-push"] = '{"push":5}\n{"push":{"channel":5,"pub":5}}'
    # 3000-deep arrays: the JSON parser's recursion limit refuses them, in the frame and in data.
    pusher_seeds["deep-array"] = deep(3000)
    pusher_seeds["deep-data"] = compact({"event": LIVE, "data": deep(3000), "channel": "channel.1"})
    pusher_seeds["deep-data-object"] = (
        '{"event":"App\\\\Events\\\\StreamerIsLive","channel":"channel.1","data":' + deep(3000) + "}")
    centrifugo_seeds["deep-array"] = deep(3000)
    centrifugo_seeds["deep-data"] = centrifugo_pub(LIVE, deep(3000))
    # Dates at and past chrono's edges.
    for i, t in enumerate(["9999-12-31T23:59:59Z", "0000-01-01T00:00:00+23:59", "2025-02-30T00:00:00Z",
                           "2025-09-14T23:18:20.0000000000000000001Z", "+275760-09-13T00:00:00Z", ""]):
        pusher_seeds[f"date-{i}"] = pusher(LIVE, live_data(created_at=t))
    return pusher_seeds, centrifugo_seeds


def page(items):
    return compact({"data": items, "message": "OK"})


def api_seeds(item_fixture, id_fields):
    item = fixture(item_fixture)
    seeds = {
        "fixture": page([item]),
        "fixture-50": page([item] * 50),
        "empty": page([]),
        "data-null": compact({"data": None}),
        "data-object": compact({"data": item}),
        "no-data": compact({"message": "Unauthorized"}),
        "not-object": "[1]",
        "html": "<!DOCTYPE html><html><head><title>Just a moment...</title></head></html>",
        "html-cf": "  <html><body><script src=\"/cdn-cgi/challenge-platform/h/g/orchestrate/chl_page/v1?ray=x\" "
                   "data-cf_chl=\"1\"></script></body></html>",
        "duplicate-key": '{"data":[],"data":[]}',
        "deep": '{"data":' + deep(3000) + "}",
        "empty-body": "",
    }
    for field in id_fields:
        for i, bad in enumerate(HOSTILE_IDS):
            seeds[f"hostile-{field}-{i}"] = page([dict(item, **{field: bad})])
        seeds[f"missing-{field}"] = page([{k: v for k, v in item.items() if k != field}])
    for key, value in item.items():
        if isinstance(value, str):
            for i, s in enumerate(NUL_STRINGS):
                seeds[f"nul-{key}-{i}"] = page([dict(item, **{key: s})])
            seeds[f"wrong-type-{key}"] = page([dict(item, **{key: 5})])
    return seeds


def token_seeds():
    seeds = {
        "typical": compact({"access_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.e30.sig",
                            "token_type": "Bearer", "expires_in": 3600}),
        "sixty-days": '{"access_token":"a","token_type":"Bearer","expires_in":5184000}',
        "string-lifetime": '{"access_token":"a","expires_in":"7200"}',
        "no-lifetime": '{"access_token":"a"}',
        "null-lifetime": '{"access_token":"a","expires_in":null}',
        "empty-token": '{"access_token":""}',
        "number-token": '{"access_token":5}',
        "object-lifetime": '{"access_token":"a","expires_in":{"x":1}}',
        "not-object": "[1,2]",
        "html": "<!DOCTYPE html><html>",
        "oauth-error": '{"error":"invalid_client","error_description":"Client authentication failed"}',
        "introspect": compact(fixture("oauth-token-introspect.response.json")),
        "deep": '{"access_token":"a","expires_in":' + deep(3000) + "}",
        "empty-body": "",
    }
    for i, bad in enumerate(HOSTILE_IDS + ["  60  ", "1e3", "-0", "NaN", "inf", 1.5, -1e300]):
        seeds[f"hostile-lifetime-{i}"] = compact({"access_token": "a", "expires_in": bad})
    for i, s in enumerate(NUL_STRINGS):
        seeds[f"nul-token-{i}"] = compact({"access_token": s, "expires_in": 3600})
    return seeds


def webhook_seeds():
    """Kick's documented bodies, with hostile ids, times and types."""
    started = fixture("webhook-livestream-status-updated.started.json")
    ended = fixture("webhook-livestream-status-updated.ended.json")
    seeds = {"started": compact(started), "ended": compact(ended),
             "metadata": compact(fixture("webhook-livestream-metadata-updated.json"))}
    for i, bad in enumerate(HOSTILE_IDS):
        body = json.loads(json.dumps(started))
        body["broadcaster"]["user_id"] = bad
        seeds[f"hostile-user-id-{i}"] = compact(body)
    for i, t in enumerate(["", "yesterday", "2999-01-01T00:00:00Z", "1999-01-01T00:00:00Z",
                           "2026-01-01T00:00:00+99:00", "+275760-09-13T00:00:00Z"]):
        for name, base, field in [("start", started, "started_at"), ("end", ended, "ended_at")]:
            body = json.loads(json.dumps(base))
            body[field] = t
            seeds[f"time-{name}-{i}"] = compact(body)
    for i, s in enumerate(NUL_STRINGS):
        body = json.loads(json.dumps(started))
        body["title"] = s
        seeds[f"nul-title-{i}"] = compact(body)
    seeds["live-with-end"] = compact({**started, "ended_at": started.get("started_at")})
    seeds["not-object"] = "[1]"
    return seeds


def all_seeds():
    pusher_seeds, centrifugo_seeds = frame_seeds()
    return {
        # The row builder sees what either decoder accepts.
        "staged_row": {**{f"p-{k}": v for k, v in pusher_seeds.items()},
                       **{f"c-{k}": v for k, v in centrifugo_seeds.items()}},
        "webhook_body": webhook_seeds(),
        "pusher_frame": pusher_seeds,
        "centrifugo_frame": centrifugo_seeds,
        "api_channels": api_seeds("api-v1-channels.item.swagger-example.json",
                                  ["broadcaster_user_id", "channel_id"]),
        "api_livestreams": api_seeds("api-v1-livestreams.item.swagger-example.json",
                                     ["broadcaster_user_id", "channel_id"]),
        "api_users": api_seeds("api-v1-users.item.swagger-example.json", ["user_id"]),
        "api_token": token_seeds(),
    }


def huge_inputs():
    """Inputs as large as the collector accepts (frames: 8 MiB; API pages: 4 MiB), shaped to
    hit whatever a decoder might do per byte, per element or per line."""
    big = "x" * MIB
    escaped = "\\\"" * (MIB // 2)
    live_big_title = pusher(LIVE, live_data(session_title=big + "🌟" * 1000))
    api_item = {"broadcaster_user_id": 1, "channel_id": 1, "user_id": 1, "slug": big, "name": big}
    many_items = page([{"broadcaster_user_id": 1, "channel_id": 2, "user_id": 3, "slug": "s",
                        "stream": {"is_live": True}}] * 40_000)
    return {
        "pusher_frame": {
            "string-1mib": live_big_title,
            "escaped-1mib": '{"event":"X","channel":"c","data":"' + escaped + '"}',
            "data-8mib": pusher("App\\Events\\ChatMessageEvent", {"content": "y" * (8 * MIB - 200)}),
            "array-8mib": pusher(LIVE, {"livestream": {"id": 1, "x": [1] * (4 * MIB - 100)}}),
            "unknown-event-1mib": pusher("App\\Events\\" + big, {}),
        },
        "centrifugo_frame": {
            "string-1mib": centrifugo_pub(LIVE, live_data(session_title=big)),
            "lines-8mib": "{}\n" * (8 * MIB // 3),
            "bad-lines-8mib": "x\n" * (4 * MIB),
            "blank-lines-8mib": " \n" * (4 * MIB),
            "connect-client-1mib": compact({"id": 1, "connect": {"client": big}}),
        },
        "api_channels": {"string-1mib": page([api_item]), "items-4mib": many_items},
        "api_livestreams": {"string-1mib": page([api_item]), "items-4mib": many_items},
        "api_users": {"string-1mib": page([api_item]), "items-4mib": many_items},
        "staged_row": {
            "string-1mib": live_big_title,
            "lines-8mib": "{}\n" * (8 * MIB // 3),
            "bad-lines-8mib": "x\n" * (4 * MIB),
        },
        "webhook_body": {
            "title-1mib": compact({"broadcaster": {"user_id": 1}, "is_live": True,
                                   "title": big, "started_at": "2026-01-01T00:00:00Z"}),
            "spaces-4mib": " " * (4 * MIB - 10) + "{}",
        },
        "api_token": {
            "token-1mib": compact({"access_token": big, "expires_in": 3600}),
            "spaces-4mib": " " * (4 * MIB - 10) + "{}",
            "html-late-4mib": " " * (4 * MIB - 10) + "<html>",
        },
    }


def write(out, sets):
    for target, seeds in sets.items():
        d = out / target
        d.mkdir(parents=True, exist_ok=True)
        for name, text in seeds.items():
            safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in name)
            (d / safe).write_text(text, encoding="utf-8")
        print(f"{target}: {len(seeds)} inputs in {d}")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("seeds", "huge"):
        sys.exit(__doc__)
    out = pathlib.Path(sys.argv[2])
    write(out, all_seeds() if sys.argv[1] == "seeds" else huge_inputs())


if __name__ == "__main__":
    main()
