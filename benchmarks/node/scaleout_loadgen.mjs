// The scale-out benchmark's load generator (benchmarks/scaleout.py): the
// official socket.io-client, rooms of receivers spread over the nodes, and
// one publisher client per room.
//
//   node scaleout_loadgen.mjs '<json config>'
//
// Config:
//   urls          the nodes receivers connect to, receiver k to urls[k % n]
//                 (the round-robin a balancer does); `url` alone means [url]
//   rooms         how many rooms (1); their names are `room` ("scaleout")
//                 when there is one, else `room`-0, `room`-1, ...
//   room_size     receivers per room (`receivers`, default 10); receiver k is
//                 a member of room floor(k / room_size)
//   publisher_url where every room's publisher connects (urls[0])
//   user_rooms    true: receiver k also joins its own room `user_prefix`k
//                 ("u-"), the per-user rooms of the "nodes" measurement
//   node_emitter  {redis}: emit to the per-user rooms from this process with
//                 @socket.io/redis-emitter, when that package is installed
//   touch_urls    nodes that get one connection, closed again before anything
//                 is measured (a server that starts its Redis listener on its
//                 first connection, as python-socketio does, is listening)
//   pad, tick_ms, deadline_s
//
// It prints one JSON object per line ({"event": ...}) and obeys commands on
// stdin, one per line:
//   phase <index> <rate> <warmup_s> <window_s> <drain_s> [group|user]
//       publish at <rate> msgs/s in total for <warmup_s> (not counted), say
//       "measure_start", publish <window_s>, say "measure_end", wait up to
//       <drain_s> for the window's deliveries, say "phase" with the counts.
//       group (default): emit k goes through publisher k % rooms to its room;
//       user: through the redis-emitter to the room of receiver k % receivers
//   watch <index>
//       count deliveries tagged <index> that another process sends; "watching"
//   settle <index> <expected> <drain_s>
//       close the watched window, wait up to <drain_s> for <expected>
//       deliveries, say "phase"
//   stop
//       say "result" and exit
// Publishers are not members of the rooms: a room emit is delivered exactly
// room_size times, a user-room emit once. Messages carry a step tag (-2
// probe, -1 warm-up, else the phase index) and a sequence number, so loss and
// duplicates are counted per phase.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";
import { existsSync } from "node:fs";
import { performance } from "node:perf_hooks";

const cfg = JSON.parse(process.argv[2] || "{}");
const URLS = cfg.urls || [cfg.url];
const ROOM = cfg.room || "scaleout";
const ROOMS = cfg.rooms || 1;
const ROOM_SIZE = cfg.room_size || cfg.receivers || 10;
const USER_PREFIX = cfg.user_prefix || "u-";
// connection handshakes in flight at once: fast, without a burst of hundreds
const CONNECT_BATCH = 20;
const now = () => performance.timeOrigin + performance.now();
const say = (event, data = {}) =>
  process.stdout.write(JSON.stringify({ event, t: now(), ...data }) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const roomName = (i) => (ROOMS === 1 ? ROOM : `${ROOM}-${i}`);
const userRoom = (k) => `${USER_PREFIX}${k}`;

// Every run is bounded: past its deadline the process reports and exits.
setTimeout(() => {
  say("error", { message: `scaleout loadgen deadline of ${cfg.deadline_s} s reached` });
  process.exit(3);
}, (cfg.deadline_s || 120) * 1000).unref();

const commands = [];
const waiters = [];
createInterface({ input: process.stdin }).on("line", (line) => {
  const waiter = waiters.shift();
  if (waiter) waiter(line.trim());
  else commands.push(line.trim());
});
const nextCommand = () =>
  commands.length ? Promise.resolve(commands.shift()) : new Promise((r) => waiters.push(r));

function openClient(url) {
  return new Promise((resolve, reject) => {
    const socket = io(url, { transports: ["websocket"], forceNew: true, reconnection: false,
                             timeout: 20_000, perMessageDeflate: false });
    const fail = (err) => { socket.close(); reject(err); };
    socket.once("connect", () => { socket.off("connect_error", fail); resolve(socket); });
    socket.once("connect_error", fail);
  });
}

async function openClients(urls) {
  const sockets = [];
  for (let i = 0; i < urls.length; i += CONNECT_BATCH) {
    sockets.push(...await Promise.all(urls.slice(i, i + CONNECT_BATCH).map(openClient)));
  }
  return sockets;
}

// The per-user rooms' emitter of the Node targets, when its package is there.
async function nodeEmitter() {
  if (!cfg.user_rooms || !cfg.node_emitter) return { status: null };
  if (!existsSync(new URL("./node_modules/@socket.io/redis-emitter/package.json",
                          import.meta.url))) {
    return { status: "missing" };
  }
  const { Emitter } = await import("@socket.io/redis-emitter");
  const { createClient } = await import("redis");
  const client = createClient({ url: cfg.node_emitter.redis });
  client.on("error", (err) => say("warning", { message: `emitter redis: ${err.message}` }));
  await client.connect();
  return { status: "ok", emitter: new Emitter(client), client };
}

// ~100 bytes of JSON, as in loadgen.mjs: room, step, sequence number, send time, padding
const PAD = "x".repeat(cfg.pad || 40);
const payload = (room, step, seq) => ({ r: room, s: step, q: seq, k: "scaleout", t: now(),
                                         p: PAD });

// `rate` msgs/s for `seconds` through send(step, seq), catching up after a
// late timer tick so the average holds
function publishFor(send, rate, seconds, step) {
  return new Promise((resolve) => {
    const start = now();
    const total = Math.floor(rate * seconds);
    let sent = 0;
    const timer = setInterval(() => {
      const elapsed = now() - start;
      const due = Math.min(total, Math.floor((rate * elapsed) / 1000));
      while (sent < due) send(step, sent++);
      if (sent >= total && elapsed >= seconds * 1000) {
        clearInterval(timer);
        resolve({ sent, seconds: (now() - start) / 1000 });
      }
    }, cfg.tick_ms || 2);
  });
}

async function main() {
  const count = ROOMS * ROOM_SIZE;
  const receivers = await openClients(
    Array.from({ length: count }, (_, k) => URLS[k % URLS.length]));
  const joins = receivers.map((s, k) => s.timeout(15_000).emitWithAck(
    "join", roomName(Math.floor(k / ROOM_SIZE))));
  if (cfg.user_rooms) {
    joins.push(...receivers.map((s, k) => s.timeout(15_000).emitWithAck("join", userRoom(k))));
  }
  const acks = await Promise.all(joins);
  const publishers = await openClients(
    Array.from({ length: ROOMS }, () => cfg.publisher_url || URLS[0]));
  const emitter = await nodeEmitter();

  // the other nodes: connect once, then leave them with no client at all
  for (const url of cfg.touch_urls || []) {
    const socket = await openClient(url);
    await sleep(200);
    socket.close();
  }

  // per receiver: the sequence numbers of the phase being counted
  let phase = null;
  let probes = new Set();
  let other = 0; // warm-up and messages of earlier phases
  receivers.forEach((socket, i) => socket.on("msg", (m) => {
    if (phase && m.s === phase.index) {
      const seen = phase.seen[i];
      if (seen.has(m.q)) phase.duplicates += 1;
      else seen.add(m.q);
      phase.delivered += 1;
      if (!phase.windowClosed) phase.inWindow += 1;
    } else if (m.s === -2) probes.add(i);
    else other += 1;
  }));

  // every receiver gets a probe through its room before anything is measured
  const syncUntil = now() + 15_000;
  let probe = 0;
  while (probes.size < receivers.length && now() < syncUntil) {
    publishers.forEach((p, i) => p.emit("publish", payload(roomName(i), -2, probe++)));
    await sleep(100);
  }
  const perNode = {};
  for (const ack of acks.slice(0, count)) {
    const node = String(ack && ack.node);
    perNode[node] = (perNode[node] || 0) + 1;
  }
  say("ready", { receivers: receivers.length, rooms: ROOMS, room_size: ROOM_SIZE,
                 publishers: publishers.length, per_node: perNode, synced: probes.size,
                 touched: (cfg.touch_urls || []).length, user_rooms: !!cfg.user_rooms,
                 node_emitter: emitter.status });
  if (probes.size < receivers.length) {
    say("error", { message: `${receivers.length - probes.size} receivers never got a probe` });
  }
  probes = new Set();

  const sendGroup = (step, seq) => {
    const i = seq % publishers.length;
    publishers[i].emit("publish", payload(roomName(i), step, seq));
  };
  const sendUser = (step, seq) => {
    const room = userRoom(seq % receivers.length);
    emitter.emitter.to(room).emit("msg", payload(room, step, seq));
  };
  const watch = (index) => {
    phase = { index, seen: receivers.map(() => new Set()), delivered: 0, inWindow: 0,
              duplicates: 0, windowClosed: false };
  };
  // close the window, wait for its deliveries, report them
  const settle = async (index, rate, sent, seconds, perEmit, drainS) => {
    phase.windowClosed = true;
    const expected = sent * perEmit;
    const drainUntil = now() + drainS * 1000;
    while (phase.delivered < expected && now() < drainUntil) await sleep(20);
    const p = phase;
    phase = null;
    const perReceiver = p.seen.map((s) => s.size);
    say("phase", { phase: index, rate, sent, seconds, expected, delivered: p.delivered,
                   in_window: p.inWindow, duplicates: p.duplicates,
                   min_per_receiver: Math.min(...perReceiver),
                   max_per_receiver: Math.max(...perReceiver) });
  };

  for (;;) {
    const [command, ...args] = (await nextCommand()).split(" ");
    if (command === "watch") {
      watch(Number(args[0]));
      say("watching", { phase: Number(args[0]) });
    } else if (command === "settle") {
      const [index, expected, drainS] = args.map(Number);
      await settle(index, null, expected, null, 1, drainS);
    } else if (command === "phase") {
      const [index, rate, warmupS, windowS, drainS] = args.slice(0, 5).map(Number);
      const user = args[5] === "user";
      if (user && emitter.status !== "ok") {
        say("error", { message: `no per-user emitter in this process (${emitter.status})` });
        break;
      }
      const send = user ? sendUser : sendGroup;
      if (warmupS > 0) await publishFor(send, rate, warmupS, -1);
      watch(index);
      say("measure_start", { phase: index });
      const { sent, seconds } = await publishFor(send, rate, windowS, index);
      say("measure_end", { phase: index, sent, seconds });
      await settle(index, rate, sent, seconds, user ? 1 : ROOM_SIZE, drainS);
    } else break;
  }
  say("result", { other });
  for (const socket of [...receivers, ...publishers]) socket.close();
  if (emitter.client) await emitter.client.quit();
  await sleep(200);
}

main().then(
  () => process.exit(0),
  (err) => { say("error", { message: String((err && err.stack) || err) }); process.exit(2); },
);
