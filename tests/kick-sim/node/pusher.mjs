// pusher-js (the official Pusher client) against kick-sim: connect, subscribe to a channel feed,
// and print the first App\Events\StreamerIsLive it receives, as one JSON line.
// Usage: node pusher.mjs <host> <port> <app key> <channel id>
import Pusher from "pusher-js";

const [host, port, key, channelId] = process.argv.slice(2);
const pusher = new Pusher(key, {
  cluster: "us2",
  wsHost: host,
  wsPort: Number(port),
  forceTLS: false,
  enabledTransports: ["ws"],
  disableStats: true,
});
const timer = setTimeout(() => {
  console.error("timeout waiting for StreamerIsLive");
  process.exit(2);
}, 15000);
const channel = pusher.subscribe(`channel.${channelId}`);
channel.bind("pusher:subscription_succeeded", () => console.log(JSON.stringify({ subscribed: channel.name })));
channel.bind("App\\Events\\StreamerIsLive", (data) => {
  console.log(JSON.stringify({ event: "App\\Events\\StreamerIsLive", data }));
  clearTimeout(timer);
  pusher.disconnect();
  process.exit(0);
});
