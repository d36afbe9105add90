// The Node.js peer of the scale-out benchmark with the *sharded* adapter:
// socket.io 4.8 with createShardedAdapter from @socket.io/redis-adapter 8.3
// (Redis 7 sharded pub/sub: SSUBSCRIBE / SPUBLISH), subscriptionMode "dynamic",
// so a server subscribes to a public room's own channel only while it has a
// member of that room. The events are those of server.mjs (the classic
// adapter, one channel per namespace) and benchmarks/fanout_app.py:
//   "join" room  -> join it, ack {node: pid}
//   "publish" m  -> emit "msg" m to the room m.r (every member, the sender too)
// GET /readyz answers 200 once both Redis clients are connected.
//
//   node scaleout_server.mjs --host 127.0.0.1 --port 5000 --redis redis://127.0.0.1:6390/0
//
// --redis redis+cluster://HOST1:PORT1,HOST2:PORT2 connects to a Redis Cluster
// (node-redis createCluster, those hosts as root nodes): the adapter's shard
// channels then live on whichever primary owns their slot.
//
// socket.io's defaults otherwise (perMessageDeflate off). SIGTERM/SIGINT exit at once.
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";
import { createShardedAdapter } from "@socket.io/redis-adapter";
import { createClient, createCluster } from "redis";

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "5000" },
    redis: { type: "string" },
  },
});
if (!values.redis) {
  console.error("--redis is required: the sharded adapter is the point of this server");
  process.exit(2);
}

const http = createServer((req, res) => {
  const ok = req.url === "/readyz" || req.url === "/healthz";
  res.writeHead(ok ? 200 : 404, { "content-type": "text/plain" });
  res.end(ok ? "ok\n" : "not found\n");
});

const CLUSTER = "redis+cluster://";
const pubClient = values.redis.startsWith(CLUSTER)
  ? createCluster({
      rootNodes: values.redis.slice(CLUSTER.length).split(",").map((h) => ({ url: `redis://${h}` })),
    })
  : createClient({ url: values.redis });
const subClient = pubClient.duplicate();
for (const client of [pubClient, subClient]) {
  client.on("error", (err) => console.error("redis:", err.message));
}
await Promise.all([pubClient.connect(), subClient.connect()]);
const io = new Server(http, {
  serveClient: false,
  adapter: createShardedAdapter(pubClient, subClient, { subscriptionMode: "dynamic" }),
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(room);
    if (typeof ack === "function") ack({ node: process.pid });
  });
  socket.on("publish", (message) => {
    io.to(message.r).emit("msg", message);
  });
});

for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
http.listen(Number(values.port), values.host, () => {
  console.log(`socket.io (sharded adapter) ${values.host}:${values.port} pid ${process.pid}`);
});
