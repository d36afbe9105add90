// The Node.js peer of the reconnect storm (benchmarks/storm.py): socket.io 4.8
// with @socket.io/redis-streams-adapter and connection state recovery on, the
// same events as benchmarks/storm_app.py:
//   "join" room     -> join it, ack {node: pid}
//   "publish" m     -> emit "msg" m to the room m.r (every member, the sender
//                      too), then ack {node: pid}
// GET /readyz answers 200 once the adapter's Redis client is connected and its
// subscriber has joined the namespace's channel (HAProxy's check).
//
//   node storm_server.mjs --host 127.0.0.1 --port 5000 --redis redis://127.0.0.1:6390/0
//
// Recovery is socket.io's own: every room emit is appended to one Redis stream
// (XADD; its id is the packet's offset), and a socket's session (its id and
// rooms) is written to Redis when it disconnects for a recoverable reason. A
// server that is SIGKILLed writes no session, so its clients cannot recover:
// that is what the storm compares. --recovery-window (120 s, socket.io's own
// default is 2 min) is maxDisconnectionDuration; --max-len (200,000) bounds
// the stream (the adapter's default, 10,000 entries, holds only ~11 s of the
// storm's default traffic, 900 emits/s, far less than the window).
// SIGTERM/SIGINT exit at once.
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-streams-adapter";
import { createClient } from "redis";

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "5000" },
    redis: { type: "string" },
    "recovery-window": { type: "string", default: "120" },
    "max-len": { type: "string", default: "200000" },
  },
});
if (!values.redis) {
  console.error("--redis is required: the streams adapter keeps the recovery state there");
  process.exit(2);
}

let ready = false;
const http = createServer((req, res) => {
  const ok = req.url === "/healthz" || (req.url === "/readyz" && ready);
  res.writeHead(ok ? 200 : req.url === "/readyz" ? 503 : 404, { "content-type": "text/plain" });
  res.end(ok ? "ok\n" : "not ready\n");
});

const redisClient = createClient({ url: values.redis });
redisClient.on("error", (err) => console.error("redis:", err.message));
await redisClient.connect();
const io = new Server(http, {
  serveClient: false,
  adapter: createAdapter(redisClient, { maxLen: Number(values["max-len"]) }),
  connectionStateRecovery: {
    maxDisconnectionDuration: Number(values["recovery-window"]) * 1000,
    skipMiddlewares: true,
  },
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(room);
    if (typeof ack === "function") ack({ node: process.pid });
  });
  socket.on("publish", (message, ack) => {
    io.to(message.r).emit("msg", message);
    if (typeof ack === "function") ack({ node: process.pid });
  });
});

// The adapter subscribes (its own duplicate client) and starts reading the
// stream asynchronously. Ready once Redis counts a subscriber on this server's
// private channel (subscribed together with the namespace's public one): a
// room emit from another server then reaches it. The public channel alone
// would count the other servers' subscriptions too.
async function waitSubscribed() {
  const channel = `socket.io#/#${io.of("/").adapter.uid}#`; // the adapter's default prefix
  for (let i = 0; i < 200; i++) {
    try {
      const reply = await redisClient.sendCommand(["PUBSUB", "NUMSUB", channel]);
      if (Number(reply[1]) >= 1) return true;
    } catch { /* not connected yet */ }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}

for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
http.listen(Number(values.port), values.host, async () => {
  ready = await waitSubscribed();
  console.log(`socket.io (redis-streams-adapter, recovery ${values["recovery-window"]} s) `
              + `${values.host}:${values.port} pid ${process.pid} ready=${ready}`);
});
