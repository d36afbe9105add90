// The official socket.io-client behind a balancer with no sticky sessions,
// driven line by line by tests/forwarding/test_official_client_no_sticky.py:
//   argv: URL MODE ("polling": transports ["polling"]; "upgrade": polling
//         then the websocket upgrade, the client's default)
//   stdout: one JSON object per line ({"event": ...})
//   stdin:  "report" -> print what was received and exit
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const [url, mode] = process.argv.slice(2);
const say = (event, data = {}) => console.log(JSON.stringify({ event, ...data }));

const socket = io(url, {
  transports: mode === "polling" ? ["polling"] : ["polling", "websocket"],
  reconnectionDelay: 200,
  reconnectionDelayMax: 500,
});
const texts = [];
const errors = [];
let connects = 0;
let node = null;

socket.on("welcome", (data) => { node = data.node; });
socket.on("room_message", (message) => { texts.push(message.text); });
socket.on("connect", async () => {
  connects += 1;
  node = null;
  await socket.emitWithAck("join", "lobby");
  while (node === null) await new Promise((r) => setTimeout(r, 10));
  say(connects === 1 ? "ready" : "reconnected", { sid: socket.id, node });
});
socket.on("connect_error", (err) => { errors.push(err.message); });
socket.on("disconnect", (reason) => { errors.push(`disconnect: ${reason}`); });

createInterface({ input: process.stdin }).on("line", (line) => {
  if (line === "report") {
    say("report", { texts, errors, connects, transport: socket.io.engine.transport.name });
    socket.close();
    process.exit(0);
  }
});
