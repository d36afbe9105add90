// Connects the official socket.io-client to a namespace given on the command
// line and prints what its connect_error carries, as one JSON line.
import { io } from "socket.io-client";

const socket = io(process.argv[2], { transports: ["websocket"], reconnection: false });
socket.on("connect", () => {
  console.log(JSON.stringify({ event: "connect" }));
  process.exit(0);
});
socket.on("connect_error", (err) => {
  console.log(JSON.stringify({ event: "connect_error", message: err.message, data: err.data ?? null }));
  process.exit(0);
});
setTimeout(() => {
  console.log(JSON.stringify({ event: "timeout" }));
  process.exit(1);
}, 10000);
