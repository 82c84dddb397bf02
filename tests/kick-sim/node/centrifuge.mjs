// centrifuge (Centrifugo's official JS SDK) against kick-sim: negotiate like Kick's web client,
// get a guest token, connect, subscribe to a channel feed, and print the first publication.
// Usage: node centrifuge.mjs <base http url> <channel id> [per-channel]
// With "per-channel", negotiation uses the channel's own endpoint (its region on a realistic sim).
import { Centrifuge } from "centrifuge";
import WebSocket from "ws";

const [base, channelId, mode] = process.argv.slice(2);
const headers = { "Content-Type": "application/json", Origin: "https://kick.com" };
const clientId = crypto.randomUUID();
const negotiation = mode === "per-channel"
  ? `${base}/api/v1/realtime/channels/${channelId}/chat/connection`
  : `${base}/api/v1/realtime/connection`;
const neg = await (await fetch(negotiation, {
  method: "POST", headers,
  body: JSON.stringify({ client: { id: clientId, type: "web" }, capabilities: { accepted_providers: [{ provider: "centrifugo" }] } }),
})).json();
const url = neg.data.connections.find((c) => c.provider === "centrifugo").credentials.url;
const auth = await (await fetch(`${base}/api/v1/realtime/auth/connection`, {
  method: "POST", headers, body: JSON.stringify({ client_id: clientId }),
})).json();

// Kick's servers want Origin: https://kick.com (kick-sim also accepts none, like Kick).
class KickSocket extends WebSocket {
  constructor(address, protocols) { super(address, protocols, { headers: { Origin: "https://kick.com" } }); }
}
const client = new Centrifuge(url, { token: auth.data.token, websocket: KickSocket, name: "js" });
const timer = setTimeout(() => { console.error("timeout waiting for a publication"); process.exit(2); }, 15000);
const sub = client.newSubscription(`channel.${channelId}`);
sub.on("subscribed", () => console.log(JSON.stringify({ subscribed: sub.channel })));
sub.on("publication", (ctx) => {
  console.log(JSON.stringify({ publication: ctx.data }));
  clearTimeout(timer);
  client.disconnect();
  process.exit(0);
});
sub.subscribe();
client.connect();
