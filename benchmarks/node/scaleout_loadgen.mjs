// The scale-out benchmark's load generator (benchmarks/scaleout.py): the
// official socket.io-client, one room's receivers and its publisher, all on
// one node, while the other nodes of the cluster hold no client.
//
//   node scaleout_loadgen.mjs '<json config>'
//
// Config: url (the emitting node), receivers (10), room, touch_urls (the
// other nodes: each gets one connection that is closed again before anything
// is measured, so a server that starts its Redis listener on its first
// connection, as python-socketio does, is listening), pad, tick_ms, deadline_s.
//
// It prints one JSON object per line ({"event": ...}) and obeys commands on
// stdin, one per line:
//   phase <index> <rate> <warmup_s> <window_s> <drain_s>
//       publish at <rate> msgs/s for <warmup_s> (not counted), say
//       "measure_start", publish <window_s>, say "measure_end", wait up to
//       <drain_s> for the window's deliveries, say "phase" with the counts
//   stop
//       say "result" and exit
// The publisher is not a member of the room: every emit is delivered exactly
// `receivers` times. Messages carry a step tag (-2 probe, -1 warm-up, else
// the phase index) and a sequence number, so loss and duplicates are counted
// per phase.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";

const cfg = JSON.parse(process.argv[2] || "{}");
const ROOM = cfg.room || "scaleout";
const now = () => performance.timeOrigin + performance.now();
const say = (event, data = {}) =>
  process.stdout.write(JSON.stringify({ event, t: now(), ...data }) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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

// ~100 bytes of JSON, as in loadgen.mjs: room, step, sequence number, send time, padding
const PAD = "x".repeat(cfg.pad || 40);
const payload = (step, seq) => ({ r: ROOM, s: step, q: seq, k: "scaleout", t: now(), p: PAD });

// `rate` msgs/s for `seconds`, catching up after a late timer tick so the average holds
function publishFor(publisher, rate, seconds, step) {
  return new Promise((resolve) => {
    const start = now();
    const total = Math.floor(rate * seconds);
    let sent = 0;
    const timer = setInterval(() => {
      const elapsed = now() - start;
      const due = Math.min(total, Math.floor((rate * elapsed) / 1000));
      while (sent < due) publisher.emit("publish", payload(step, sent++));
      if (sent >= total && elapsed >= seconds * 1000) {
        clearInterval(timer);
        resolve({ sent, seconds: (now() - start) / 1000 });
      }
    }, cfg.tick_ms || 2);
  });
}

async function main() {
  const receivers = [];
  for (let i = 0; i < (cfg.receivers || 10); i++) receivers.push(await openClient(cfg.url));
  const acks = await Promise.all(
    receivers.map((s) => s.timeout(15_000).emitWithAck("join", ROOM)));
  const publisher = await openClient(cfg.url);

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

  // every receiver gets a probe before anything is measured
  const syncUntil = now() + 15_000;
  let probe = 0;
  while (probes.size < receivers.length && now() < syncUntil) {
    publisher.emit("publish", payload(-2, probe++));
    await sleep(100);
  }
  say("ready", { receivers: receivers.length, nodes: acks.map((a) => a && a.node),
                 synced: probes.size, touched: (cfg.touch_urls || []).length });
  if (probes.size < receivers.length) {
    say("error", { message: `${receivers.length - probes.size} receivers never got a probe` });
  }
  probes = new Set();

  for (;;) {
    const [command, ...args] = (await nextCommand()).split(" ");
    if (command !== "phase") break;
    const [index, rate, warmupS, windowS, drainS] = args.map(Number);
    if (warmupS > 0) await publishFor(publisher, rate, warmupS, -1);
    phase = { index, seen: receivers.map(() => new Set()), delivered: 0, inWindow: 0,
              duplicates: 0, windowClosed: false };
    say("measure_start", { phase: index });
    const { sent, seconds } = await publishFor(publisher, rate, windowS, index);
    phase.windowClosed = true;
    say("measure_end", { phase: index, sent, seconds });
    const expected = sent * receivers.length;
    const drainUntil = now() + drainS * 1000;
    while (phase.delivered < expected && now() < drainUntil) await sleep(20);
    const p = phase;
    phase = null;
    const perReceiver = p.seen.map((s) => s.size);
    say("phase", { phase: index, rate, sent, seconds, expected, delivered: p.delivered,
                   in_window: p.inWindow, duplicates: p.duplicates,
                   min_per_receiver: Math.min(...perReceiver),
                   max_per_receiver: Math.max(...perReceiver) });
  }
  say("result", { other });
  for (const socket of [...receivers, publisher]) socket.close();
  await sleep(200);
}

main().then(
  () => process.exit(0),
  (err) => { say("error", { message: String((err && err.stack) || err) }); process.exit(2); },
);
