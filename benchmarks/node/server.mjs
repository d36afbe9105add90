// The Node.js peer of the fan-out benchmark: socket.io 4.8 with
// @socket.io/redis-adapter (and the `redis` client), the same events as
// benchmarks/fanout_app.py and benchmarks/peers/flask_socketio_app.py:
//   "join" room  -> join it, ack {node: pid}
//   "publish" m  -> emit "msg" m to the room m.r (every member, the sender too)
// GET /readyz answers 200 once both Redis clients are connected (HAProxy's check).
//
//   node server.mjs --host 127.0.0.1 --port 5000 --redis redis://127.0.0.1:6390/0
//
// Options are socket.io's defaults (perMessageDeflate off on the server side),
// as a user would run it. SIGTERM/SIGINT exit at once.
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "5000" },
    redis: { type: "string" },
  },
});

const http = createServer((req, res) => {
  const ok = req.url === "/readyz" || req.url === "/healthz";
  res.writeHead(ok ? 200 : 404, { "content-type": "text/plain" });
  res.end(ok ? "ok\n" : "not found\n");
});

const options = { serveClient: false };
if (values.redis) {
  const pubClient = createClient({ url: values.redis });
  const subClient = pubClient.duplicate();
  for (const client of [pubClient, subClient]) {
    client.on("error", (err) => console.error("redis:", err.message));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);
  options.adapter = createAdapter(pubClient, subClient);
}
const io = new Server(http, options);

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
  console.log(`socket.io ${values.host}:${values.port} pid ${process.pid}`);
});
