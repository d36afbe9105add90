// A client of the cluster written the way an application would use the
// official socket.io-client, driven line by line by the python test:
//   stdout: one JSON object per line ({"event": ...})
//   stdin:  "session" -> report a session value; "report" -> print what was
//           received and exit
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const url = process.argv[2];
const room = process.argv[3] || "feed";
const say = (event, data = {}) => console.log(JSON.stringify({ event, ...data }));

const socket = io(url, {
  withCredentials: true, // keeps HAProxy's sticky cookie across polling requests
  reconnectionDelay: 200,
  reconnectionDelayMax: 500,
});
const texts = [];
let connects = 0;
let welcomeNode = null;

socket.on("welcome", (data) => { welcomeNode = data.node; });
socket.on("room_message", (message) => { texts.push(message.text); });
socket.on("connect", async () => {
  connects += 1;
  if (connects === 1) {
    await socket.emitWithAck("join", room);
    await socket.emitWithAck("session_set", { kept: "from-js" });
    // wait for the connect handler's welcome to learn the node
    while (welcomeNode === null) await new Promise((r) => setTimeout(r, 10));
    say("ready", { sid: socket.id, node: welcomeNode });
  } else {
    say("reconnected", { sid: socket.id, recovered: socket.recovered });
  }
});
socket.on("connect_error", (err) => say("connect_error", { message: err.message }));

createInterface({ input: process.stdin }).on("line", async (line) => {
  if (line === "session") {
    const reply = await socket.timeout(5000).emitWithAck("session_get", "kept");
    say("session", { value: reply.value });
  } else if (line === "report") {
    say("report", { texts, sid: socket.id, recovered: socket.recovered, connects });
    socket.close();
    process.exit(0);
  }
});
