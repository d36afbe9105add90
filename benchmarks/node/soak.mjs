// The soak benchmark's chat traffic: the official socket.io-client, every
// client in this one Node process, all through the load balancer.
//
//   node soak.mjs '<json config>'
//
// Driven by benchmarks/soak.py (via benchmarks/suite/soak_traffic.py): one
// JSON object per line on stdout ({"event": ...}), commands on stdin ("stop").
//
// - listeners: long-lived clients, listener i in room i % rooms; they
//   reconnect by themselves (reconnection on, short delays) and, when the
//   server could not recover their connection, join their room again as an
//   application does;
// - senders: long-lived clients outside the rooms emitting "to_room" (the
//   chat app's handler) at a bounded total rate, round-robin over the
//   senders that are connected, each with an ack;
// - churners: loops that connect, join a room, send a few messages, wait for
//   their own echo, disconnect, pause, again.
//
// Every room message carries a run-wide id and its send time in its text
// ("id:t"), so each listener counts what it got per id: the driver then knows,
// for every message, who missed it and who got it twice. Times are wall-clock
// ms (performance.timeOrigin + performance.now()), comparable with Python's
// time.time() on the same machine.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";

const cfg = JSON.parse(process.argv[2] || "{}");
const now = () => performance.timeOrigin + performance.now();
const say = (event, data = {}) =>
  process.stdout.write(JSON.stringify({ event, t: now(), ...data }) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const room = (i) => `soak-${i % cfg.rooms}`;

// Bounded: past its deadline the process reports and exits by itself.
setTimeout(() => {
  say("error", { message: `soak traffic deadline of ${cfg.deadline_s} s reached` });
  process.exit(3);
}, cfg.deadline_s * 1000).unref();

let stopRequested = false;
let stopWaiter = null;
createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() === "stop") { stopRequested = true; if (stopWaiter) stopWaiter(); }
});
// stdin closed (the driver is gone): stop as if told to
process.stdin.on("end", () => { stopRequested = true; if (stopWaiter) stopWaiter(); });

function options(extra = {}) {
  return {
    transports: cfg.transports,           // polling first, then the upgrade: the cookie matters
    withCredentials: true,                // engine.io-client's cookie jar in Node: HAProxy's SERVERID
    forceNew: true,                       // one Manager and one connection per client
    timeout: 10_000,
    reconnectionDelay: cfg.reconnect_delay_ms,
    reconnectionDelayMax: cfg.reconnect_delay_max_ms,
    ...extra,
  };
}

function open(extra) {
  return new Promise((resolve, reject) => {
    const socket = io(cfg.lb_url, options(extra));
    const fail = (err) => { socket.close(); reject(err); };
    socket.once("connect", () => { socket.off("connect_error", fail); resolve(socket); });
    socket.once("connect_error", fail);
  });
}

// -- messages: one record per send, receipts per listener ----------------------------
const messages = { t: [], room: [], acked: [], kind: [], latency: [] }; // latency: max over listeners
const KIND = { sender: 0, churn: 1 };
let pendingAcks = 0;

function send(socket, roomIndex, kind) {
  const id = messages.t.length;
  const t = now();
  messages.t.push(t);
  messages.room.push(roomIndex % cfg.rooms);
  messages.acked.push(0);
  messages.kind.push(kind);
  messages.latency.push(-1);
  pendingAcks += 1;
  socket.timeout(cfg.ack_timeout_ms).emit("to_room", { room: room(roomIndex), text: `${id}:${t}` },
    (err) => { pendingAcks -= 1; if (!err) messages.acked[id] = 1; });
  return id;
}

// receipts[i][id]: how many times listener i got message id (saturates at 255)
class Receipts {
  constructor() { this.counts = new Uint8Array(4096); }
  add(id) {
    while (id >= this.counts.length) {
      const bigger = new Uint8Array(this.counts.length * 2);
      bigger.set(this.counts);
      this.counts = bigger;
    }
    if (this.counts[id] < 255) this.counts[id] += 1;
    return this.counts[id];
  }
  get(id) { return id < this.counts.length ? this.counts[id] : 0; }
}

// latencies of every delivery to a listener, 1 ms buckets up to 10 min
const hist = new Uint32Array(600_001);
function percentile(fraction) {
  let total = 0;
  for (const c of hist) total += c;
  if (!total) return null;
  const rank = Math.max(1, Math.ceil(fraction * total));
  let seen = 0;
  for (let i = 0; i < hist.length; i++) { seen += hist[i]; if (seen >= rank) return i; }
  return null;
}

// -- listeners ---------------------------------------------------------------------------
async function openListeners() {
  const listeners = [];
  const reconnect = { reconnection: true, reconnectionAttempts: Infinity };
  let next = 0;
  async function worker() {
    while (next < cfg.listeners) {
      const i = next++;
      for (let attempt = 0; ; attempt++) {
        try { listeners[i] = await open(reconnect); break; }
        catch (err) { if (attempt >= 20) throw err; await sleep(250); }
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(20, cfg.listeners) }, worker));
  return listeners.map((socket, i) => {
    const st = { i, socket, room: i % cfg.rooms, receipts: new Receipts(), probe: false,
                 connects: 1, recovered: 0, fresh: 0, rejoin_failed: 0, disconnects: 0,
                 connect_errors: 0, history: [] };
    socket.on("room_message", (m) => {
      const text = String((m && m.text) || "");
      if (text === "probe") { st.probe = true; return; }
      const [idText, tText] = text.split(":");
      const id = Number(idText);
      if (!Number.isInteger(id) || id < 0 || id >= messages.t.length) return;
      if (st.receipts.add(id) === 1) {
        const ms = Math.max(0, now() - Number(tText));
        hist[Math.min(600_000, Math.round(ms))] += 1;
        if (ms > messages.latency[id]) messages.latency[id] = ms;
      }
    });
    socket.on("disconnect", () => { st.disconnects += 1; });
    socket.on("connect_error", () => { st.connect_errors += 1; });
    socket.on("connect", async () => {
      st.connects += 1;
      // when and how: the driver tells reconnects of each restart apart (bounded: the driver's
      // restarts are few; a client flapping without end would still stop at 1,000)
      if (st.history.length < 1000) st.history.push([Math.round(now()), socket.recovered ? 1 : 0]);
      if (socket.recovered) { st.recovered += 1; return; }
      st.fresh += 1; // a new session: the application joins its room again
      try { await socket.timeout(10_000).emitWithAck("join", room(st.room)); }
      catch { st.rejoin_failed += 1; }
    });
    return st;
  });
}

// -- senders -----------------------------------------------------------------------------
function startSenders(senders) {
  const started = now();
  let due = 0;
  let skipped = 0;
  let turn = 0;
  const timer = setInterval(() => {
    const target = Math.floor((cfg.rate * (now() - started)) / 1000);
    while (due < target) {
      due += 1;
      const live = senders.filter((s) => s.connected);
      if (!live.length) { skipped += 1; continue; } // every sender is reconnecting
      send(live[turn % live.length], turn, KIND.sender);
      turn += 1;
    }
  }, 10);
  return { stop: () => clearInterval(timer), skipped: () => skipped };
}

// -- churners ----------------------------------------------------------------------------
const churn = { cycles: 0, ok: 0, failed: 0, errors: {} };

async function churnLoop(k) {
  let n = 0;
  while (!stopRequested) {
    const roomIndex = k + n++;
    let socket = null;
    try {
      socket = await open({ reconnection: false });
      await socket.timeout(10_000).emitWithAck("join", room(roomIndex));
      let last = -1;
      const echoed = new Promise((resolve) => {
        socket.on("room_message", (m) => {
          if (Number(String((m && m.text) || "").split(":")[0]) === last) resolve(true);
        });
      });
      for (let j = 0; j < cfg.churn_messages; j++) last = send(socket, roomIndex, KIND.churn);
      const ok = await Promise.race([echoed, sleep(cfg.ack_timeout_ms).then(() => false)]);
      if (!ok) throw new Error("own message not echoed");
      churn.ok += 1;
    } catch (err) {
      churn.failed += 1;
      const key = String((err && err.message) || err).slice(0, 80);
      churn.errors[key] = (churn.errors[key] || 0) + 1;
      await sleep(500); // a failing cluster is not hammered
    } finally {
      churn.cycles += 1;
      if (socket) socket.close();
    }
    await sleep(cfg.churn_pause_ms);
  }
}

// -- the run -----------------------------------------------------------------------------
async function main() {
  const listeners = await openListeners();
  await Promise.all(listeners.map((st) => st.socket.timeout(15_000).emitWithAck("join", room(st.room))));
  const senders = [];
  for (let i = 0; i < cfg.senders; i++) senders.push(await open({ reconnection: true }));

  // every listener hears a probe before the clock starts: every node is then
  // subscribed and routing every room
  const syncUntil = now() + 20_000;
  while (listeners.some((st) => !st.probe) && now() < syncUntil) {
    for (let r = 0; r < cfg.rooms; r++) {
      senders[r % senders.length].emit("to_room", { room: room(r), text: "probe" });
    }
    await sleep(200);
  }
  const synced = listeners.filter((st) => st.probe).length;
  say("ready", { listeners: listeners.length, senders: senders.length, synced });

  const sending = startSenders(senders);
  const churners = Array.from({ length: cfg.churners }, (_, k) => churnLoop(k));
  const ticker = setInterval(() => say("tick", {
    sent: messages.t.length, pending_acks: pendingAcks, churn_cycles: churn.cycles,
    churn_failed: churn.failed,
    listeners_connected: listeners.filter((st) => st.socket.connected).length,
    senders_connected: senders.filter((s) => s.connected).length,
  }), cfg.tick_s * 1000);

  if (!stopRequested) await new Promise((resolve) => { stopWaiter = resolve; });
  sending.stop();
  const stoppedAt = now();
  await Promise.race([Promise.all(churners), sleep(cfg.ack_timeout_ms + 2000)]);

  // drain: until every message some listener could still get has arrived,
  // or the drain ends (recovery replays arrive late, after a reconnect)
  const total = messages.t.length;
  // a message counts once it was emitted: its ack came back, or someone got it
  const emitted = (id) => messages.acked[id] === 1 || messages.latency[id] >= 0;
  const complete = () => listeners.every((st) => {
    for (let id = 0; id < total; id++) {
      if (messages.room[id] === st.room && emitted(id) && st.receipts.get(id) === 0) return false;
    }
    return true;
  });
  const drainUntil = stoppedAt + cfg.drain_s * 1000;
  while (now() < drainUntil && (pendingAcks > 0 || !complete())) await sleep(250);
  clearInterval(ticker);

  // per message: how many listeners of its room got it, missed it, got it twice
  const members = Array.from({ length: cfg.rooms }, () => []);
  for (const st of listeners) members[st.room].push(st);
  const delivered = new Array(total).fill(0);
  const missed = new Array(total).fill(0);
  const dups = new Array(total).fill(0);
  const perListener = listeners.map(() => ({ delivered: 0, missed: 0, dups: 0 }));
  for (let id = 0; id < total; id++) {
    const counted = emitted(id); // else: no ack and nobody got it; the driver reports it apart
    for (const st of members[messages.room[id]]) {
      const c = st.receipts.get(id);
      if (c === 0) { if (counted) { missed[id] += 1; perListener[st.i].missed += 1; } }
      else { delivered[id] += 1; perListener[st.i].delivered += 1; }
      if (c > 1) { dups[id] += c - 1; perListener[st.i].dups += c - 1; }
    }
  }
  say("result", {
    messages: { t: messages.t.map((t) => Math.round(t)), room: messages.room,
                acked: messages.acked, kind: messages.kind, delivered, missed, dups,
                latency_ms: messages.latency.map((l) => Math.round(l)) },
    listeners: listeners.map((st, i) => ({
      room: st.room, ...perListener[i], connects: st.connects, recovered: st.recovered,
      fresh: st.fresh, rejoin_failed: st.rejoin_failed, disconnects: st.disconnects,
      connect_errors: st.connect_errors, connected: st.socket.connected,
      reconnects: st.history })),
    churn, skipped_sends: sending.skipped(), pending_acks: pendingAcks,
    latency_ms: { p50: percentile(0.5), p99: percentile(0.99), p999: percentile(0.999) },
    members: members.map((m) => m.length), drained_s: (now() - stoppedAt) / 1000,
  });
  for (const st of listeners) st.socket.close();
  for (const s of senders) s.close();
  await sleep(200);
}

main().then(
  () => process.exit(0),
  (err) => { say("error", { message: String((err && err.stack) || err) }); process.exit(2); },
);
