// The reconnect storm's load generator: the official socket.io-client 4.8,
// every client in this one Node process, all through the balancer.
//
//   node storm_loadgen.mjs '<json config>'
//
// Driven by benchmarks/suite/storm_measure.py: JSON config in, one JSON object
// per line out ({"event": ...}), commands on stdin. The run:
//
//   1. open cfg.clients websockets through cfg.lb_url, cfg.concurrency
//      handshakes in flight; client i joins the room "r<i / room_size>" (the
//      join ack names the node, so a room has members on every node) -> "ready"
//   2. every client publishes to its room once per cfg.interval_s, at a random
//      phase, while it is connected and in its room: {r, f: sender, q: the
//      sender's sequence number, t: send time}, with a cfg.ack_timeout_ms ack
//   3. after cfg.warmup_s: "before_start"; cfg.before_s later: "kill_now"; the
//      driver SIGKILLs the node and answers "killed <pid>"
//   4. until every client of that node is back (connected again, and either
//      recovered or in its room again), at most cfg.recover_timeout_s, and at
//      least cfg.storm_s ("storm_end" then); cfg.tail_s more of traffic; stop
//      publishing; cfg.drain_s for the last deliveries and acks
//   5. "result": per class of client, what arrived, what was missed and what
//      arrived twice; when the killed node's clients were back; latencies
//
// A client that comes back without its session (socket.recovered false) joins
// its room again, as an application does. The client keeps socket.io's
// reconnection defaults unless the config says otherwise (1 s +- 50%, at most
// 5 s): the jitter is what spreads a real storm. Time stamps are
// performance.timeOrigin + performance.now(), in ms: one clock for senders
// and receivers, since both are in this process.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";

const cfg = JSON.parse(process.argv[2] || "{}");
const now = () => performance.timeOrigin + performance.now();
const say = (event, data = {}) =>
  process.stdout.write(JSON.stringify({ event, t: now(), ...data }) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// a message sent this long before its receiver's disconnect counts as sent
// "while away": it was on its way to a node that then died
const AWAY_GRACE_MS = 1000;

setTimeout(() => { // every run is bounded
  say("error", { message: `storm loadgen deadline of ${cfg.deadline_s} s reached` });
  process.exit(3);
}, cfg.deadline_s * 1000).unref();

const commands = [];
const waiters = [];
createInterface({ input: process.stdin }).on("line", (line) => {
  const waiter = waiters.shift();
  if (waiter) waiter(line.trim());
  else commands.push(line.trim());
});
const nextCommand = (timeoutMs) => new Promise((resolve) => {
  if (commands.length) return resolve(commands.shift());
  const timer = setTimeout(() => { waiters.splice(waiters.indexOf(done), 1); resolve(null); },
                           timeoutMs);
  const done = (line) => { clearTimeout(timer); resolve(line); };
  waiters.push(done);
});

// Latency histogram: 1 ms buckets to 10 s, then one overflow bucket (whose
// samples keep their exact maximum). Mergeable, O(1) per sample.
class Histogram {
  constructor() { this.counts = new Uint32Array(10_002); this.n = 0; this.max = 0; }
  add(ms) {
    this.counts[Math.min(10_001, Math.max(0, Math.floor(ms)))] += 1;
    this.n += 1;
    if (ms > this.max) this.max = ms;
  }
  merge(other) {
    for (let i = 0; i < this.counts.length; i++) this.counts[i] += other.counts[i];
    this.n += other.n;
    this.max = Math.max(this.max, other.max);
    return this;
  }
  quantile(q) {
    if (!this.n) return null;
    const rank = Math.ceil(q * this.n);
    let seen = 0;
    for (let i = 0; i < 10_001; i++) if ((seen += this.counts[i]) >= rank) return i + 1;
    return Math.round(this.max);
  }
  summary() {
    return { count: this.n, p50_ms: this.quantile(0.5), p99_ms: this.quantile(0.99),
             max_ms: this.n ? Math.round(this.max) : null };
  }
}

// -- the clients ------------------------------------------------------------------
const ROOM_SIZE = cfg.room_size;
const clients = [];          // index -> client state
let killAsked = null;        // K0: when "kill_now" went out (the latency windows' edge)
let killedCmd = null;        // when "killed" arrived
let victimPid = null;
let stopAt = null;           // publishing stopped
let countFrom = Infinity;    // start of the counted window (and of the "before" window)
const hists = new Map();     // node pid (the client's first node) -> {before, storm, after}

// the offset each message was delivered with (any member's), to tell why a
// recovered client missed one (see missSamples)
const offsets = new Map();
const MISS_SAMPLES = 200;
// duplicates, each with both copies: when each arrived against the client's
// reconnects, and the offset each carried (to tell a replayed copy from a
// live one)
const dupSamples = [];
const DUP_SAMPLES = 200;

// "1700000000000-3" -> [ms, seq], compared as stream ids
function offsetKey(offset) {
  const [ms, seq] = String(offset).split("-").map(Number);
  return [ms, seq];
}
function offsetAfter(a, b) {
  const [am, as] = offsetKey(a);
  const [bm, bs] = offsetKey(b);
  return am > bm || (am === bm && as > bs);
}

function histsOf(pid) {
  if (!hists.has(pid)) {
    hists.set(pid, { before: new Histogram(), storm: new Histogram(), after: new Histogram() });
  }
  return hists.get(pid);
}

let lastDelivery = 0;

function onMessage(c, m, offset) {
  const t = now();
  lastDelivery = t;
  if (m.r !== c.room) { c.foreign += 1; return; }
  const key = m.f * 100_000 + m.q;
  const copies = (c.recv.get(key) || 0) + 1;
  c.recv.set(key, copies);
  const copy = { at_ms: Math.round(t), connects: c.connects, offset: typeof offset === "string"
    ? offset : null, recovered: c.socket.recovered === true };
  if (copies === 1) c.first.set(key, copy);
  else if (dupSamples.length < DUP_SAMPLES) dupSamples.push(dupSample(c, m, key, copy));
  if (typeof offset === "string") { // the recovery offset the server attached
    offsets.set(key, offset);
    c.lastOffset = offset;
  }
  if (c.node === null || m.t < countFrom || (stopAt !== null && m.t >= stopAt)) return;
  // by send time: before the kill, the storm_s after it, the rest
  const h = histsOf(c.node);
  if (killAsked === null || m.t < killAsked) h.before.add(t - m.t);
  else if (m.t < killAsked + cfg.storm_s * 1000) h.storm.add(t - m.t);
  else h.after.add(t - m.t);
}

async function onReconnect(c) {
  const t = now();
  c.connects += 1;
  const away = c.away[c.away.length - 1];
  if (!away || away.back !== null) return; // a connect without a disconnect: nothing to close
  away.reconnect = t;
  away.recovered = c.socket.recovered === true;
  if (!away.recovered) { // a new session: the application joins its room again
    try {
      const ack = await c.socket.timeout(15_000).emitWithAck("join", c.room);
      away.node = ack && ack.node;
    } catch {
      away.rejoinFailed = true;
      return;
    }
  }
  away.back = now();
  c.active = true;
}

function makeClient(index) {
  const c = { index, room: `r${Math.floor(index / ROOM_SIZE)}`, node: null, active: false,
              recv: new Map(), first: new Map(), foreign: 0, seq: 0, sendT: [], sendAck: [], sendNode: [],
              away: [],
              connects: 0, connectErrors: 0, attempts: 0 };
  c.socket = io(cfg.lb_url, {
    transports: ["websocket"], // no polling, so no stickiness needed at the balancer
    forceNew: true,            // one websocket per client
    reconnection: true,
    reconnectionDelay: cfg.reconnect_delay_ms,
    reconnectionDelayMax: cfg.reconnect_delay_max_ms,
    randomizationFactor: cfg.randomization,
    timeout: 20_000,
    perMessageDeflate: false,
  });
  c.socket.on("msg", (m, offset) => onMessage(c, m, offset));
  c.socket.on("connect_error", () => { c.connectErrors += 1; });
  c.socket.io.on("reconnect_attempt", () => { c.attempts += 1; });
  c.socket.on("disconnect", (reason) => {
    c.active = false;
    c.away.push({ start: now(), reason, reconnect: null, back: null, recovered: null,
                  lastOffset: c.lastOffset });
  });
  return c;
}

// connected, then in its room; false after cfg.open_timeout_s
function openAndJoin(c) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => { c.socket.close(); resolve(false); },
                             cfg.open_timeout_s * 1000);
    c.socket.once("connect", async () => {
      c.connects = 1;
      c.socket.on("connect", () => onReconnect(c));
      try {
        const ack = await c.socket.timeout(15_000).emitWithAck("join", c.room);
        c.node = ack && ack.node;
        c.active = true;
        clearTimeout(timer);
        resolve(true);
      } catch {
        clearTimeout(timer);
        c.socket.close();
        resolve(false);
      }
    });
  });
}

async function openAll() {
  let next = 0;
  let failed = 0;
  async function worker() {
    while (next < cfg.clients) {
      const c = makeClient(next++);
      clients.push(c);
      if (!(await openAndJoin(c))) failed += 1;
    }
  }
  await Promise.all(Array.from({ length: Math.min(cfg.concurrency, cfg.clients) }, worker));
  return failed;
}

// -- publishing -------------------------------------------------------------------
const timers = [];
function publish(c) {
  if (!c.active || stopAt !== null) return; // never into socket.io-client's offline buffer
  const q = c.seq++;
  const t = now();
  c.sendT.push(t);
  c.sendAck.push(0);
  c.socket.timeout(cfg.ack_timeout_ms).emit("publish", { r: c.room, f: c.index, q, t },
                                            (err, ack) => {
                                              c.sendAck[q] = err ? 2 : 1;
                                              if (ack && ack.node) c.sendNode[q] = ack.node;
                                            });
}

function startPublishing() {
  const period = cfg.interval_s * 1000;
  for (const c of clients) {
    timers.push(setTimeout(() => {
      if (stopAt !== null) return;
      publish(c);
      timers.push(setInterval(() => publish(c), period));
    }, Math.random() * period));
  }
}

// -- counting ---------------------------------------------------------------------
function victimsOf(pid) { return clients.filter((c) => c.node === pid); }

function classOf(c) {
  if (c.node === null) return "never_joined";
  if (c.node !== victimPid) return "survivor";
  if (!c.away.length || c.away.some((a) => a.back === null)) return "not_back";
  return c.away.every((a) => a.recovered) ? "recovered" : "not_recovered";
}

function count() {
  // a message counts when it was sent in the window and acked, or someone got it
  const byRoom = new Map();
  let neverJoined = 0;
  for (const c of clients) {
    if (c.node === null) { neverJoined += 1; continue; } // it expects nothing
    if (!byRoom.has(c.room)) byRoom.set(c.room, []);
    byRoom.get(c.room).push(c);
  }
  const classes = {};
  const lost = { unconfirmed: 0, acked_nobody_received: 0, sent: 0 };
  const missSamples = [];
  for (const members of byRoom.values()) {
    const messages = [];
    for (const s of members) {
      for (let q = 0; q < s.sendT.length; q++) {
        const t = s.sendT[q];
        if (t < countFrom || t >= stopAt) continue;
        lost.sent += 1;
        const key = s.index * 100_000 + q;
        const got = members.some((m) => m.recv.has(key));
        if (!got && s.sendAck[q] !== 1) { lost.unconfirmed += 1; continue; }
        if (!got) lost.acked_nobody_received += 1;
        messages.push([key, t, s]);
      }
    }
    for (const c of members) {
      const k = classOf(c);
      const cl = (classes[k] ||= { clients: 0, expected: 0, received: 0, missed: 0,
                                   missed_while_away: 0, missed_while_connected: 0,
                                   duplicates: 0, foreign: 0, clients_missing: 0 });
      cl.clients += 1;
      cl.foreign += c.foreign;
      let missing = 0;
      for (const [key, t, sender] of messages) {
        cl.expected += 1;
        const n = c.recv.get(key) || 0;
        if (n > 0) { cl.received += 1; continue; }
        missing += 1;
        const away = c.away.find((a) => t >= a.start - AWAY_GRACE_MS
                                        && (a.back === null || t <= a.back));
        if (away) cl.missed_while_away += 1; else cl.missed_while_connected += 1;
        const sampled = missSamples.filter((m) => m.class === k).length;
        if (k !== "not_back" && sampled < MISS_SAMPLES) {
          missSamples.push({ class: k, ...missSample(c, key, t, sender, away, members) });
        }
      }
      cl.missed += missing;
      if (missing) cl.clients_missing += 1;
      for (const n of c.recv.values()) if (n > 1) cl.duplicates += n - 1;
    }
  }
  return { classes, lost, never_joined: neverJoined, miss_samples: missSamples,
           dup_samples: dupSamples };
}

// a message a client got twice: both copies (times from the message's send),
// the client's aways around them and the offset it held at each disconnect
function dupSample(c, m, key, second) {
  const first = c.first.get(key);
  const rel = (x) => (x === null || x === undefined ? null : Math.round(x - m.t));
  return {
    sent_after_kill_ms: killAsked === null ? null : Math.round(m.t - killAsked),
    sender_is_receiver: m.f === c.index,
    first: { ...first, at_ms: rel(first.at_ms) },
    second: { ...second, at_ms: rel(second.at_ms) },
    aways: c.away.map((a) => ({ start_ms: rel(a.start), reconnect_ms: rel(a.reconnect),
                                recovered: a.recovered, last_offset: a.lastOffset || null })),
  };
}

// the node a client was on at time t, as far as the load generator knows
// (the node of its last rejoin before t; a recovered client's new node is
// not reported, so it stays null after its first away)
function nodeAt(c, t) {
  let node = c.node;
  for (const a of c.away) {
    if (a.start > t) break;
    node = a.node || null;
  }
  return node;
}

// why a client missed a message: when it was sent against the
// client's away window and the kill, who sent it, who got it, and whether its
// offset lies at or before the offset the client had when it disconnected
// (then the client held a later offset than a message it never got)
function missSample(c, key, t, sender, away, members) {
  const offset = offsets.get(key) || null;
  const rel = (x) => (x === null || x === undefined ? null : Math.round(t - x));
  return {
    sent_after_kill_ms: killAsked === null ? null : Math.round(t - killAsked),
    sent_after_away_start_ms: away ? rel(away.start) : null,
    sent_after_reconnect_ms: away ? rel(away.reconnect) : null,
    sent_after_back_ms: away ? rel(away.back) : null,
    aways: c.away.length,
    sender_on_victim: sender.node === victimPid,
    sender_is_receiver: sender === c,
    // the node each was on when the message was sent (its last join, or the
    // one it was on before the kill)
    sender_node: sender.sendNode[key % 100_000] || nodeAt(sender, t),
    receiver_node: nodeAt(c, t),
    received_by: members.filter((m) => m.recv.has(key)).length, members: members.length,
    received_on_sender_node: members.filter((m) => m.recv.has(key)
                                             && nodeAt(m, t) === nodeAt(sender, t)).length,
    offset,
    client_offset_at_disconnect: away ? away.lastOffset || null : null,
    offset_at_or_before_client_offset: offset && away && away.lastOffset
      ? !offsetAfter(offset, away.lastOffset) : null,
  };
}

function spread(values) {
  if (!values.length) return { count: 0, p50_ms: null, p90_ms: null, p99_ms: null, max_ms: null };
  const v = values.slice().sort((a, b) => a - b);
  const at = (q) => Math.round(v[Math.min(v.length - 1, Math.ceil(q * v.length) - 1)]);
  return { count: v.length, p50_ms: at(0.5), p90_ms: at(0.9), p99_ms: at(0.99),
           max_ms: Math.round(v[v.length - 1]) };
}

function storm(killedAt) {
  const victims = victimsOf(victimPid);
  const first = victims.map((c) => c.away.find((a) => a.start >= killAsked)).filter(Boolean);
  const back = first.filter((a) => a.back !== null);
  const rec = back.filter((a) => a.recovered);
  const rel = (t) => t - killedAt;
  const survivorsAway = clients.filter((c) => c.node !== victimPid && c.away.length).length;
  return {
    victims: victims.length, disconnected: first.length, back: back.length,
    recovered: rec.length, not_recovered: back.length - rec.length,
    rejoin_failed: first.filter((a) => a.rejoinFailed).length,
    back_ms: spread(back.map((a) => rel(a.back))),
    back_by: Object.fromEntries([500, 1000, 2000, 5000, 10_000, 30_000].map(
      (ms) => [ms, back.filter((a) => rel(a.back) <= ms).length])),
    reconnect_ms: spread(first.filter((a) => a.reconnect !== null).map((a) => rel(a.reconnect))),
    all_back_ms: back.length === victims.length && back.length
      ? Math.round(Math.max(...back.map((a) => rel(a.back)))) : null,
    all_recovered_ms: rec.length === victims.length && rec.length
      ? Math.round(Math.max(...rec.map((a) => rel(a.back)))) : null,
    reconnect_attempts: victims.reduce((s, c) => s + c.attempts, 0),
    connect_errors: victims.reduce((s, c) => s + c.connectErrors, 0),
    later_disconnects: victims.reduce((s, c) => s + Math.max(0, c.away.length - 1), 0),
    // socket.io-client's reason for each disconnect after the first, and
    // how long the connection before it had lasted
    later_disconnect_reasons: countBy(victims.flatMap((c) => c.away.slice(1)
                                                       .map((a) => a.reason))),
    later_disconnect_after_back_ms: spread(victims.flatMap((c) => c.away.slice(1).map(
      (a, i) => (c.away[i].back === null ? null : a.start - c.away[i].back)))
      .filter((ms) => ms !== null)),
    survivor_clients_disconnected: survivorsAway,
    new_nodes: countBy(first.filter((a) => a.node).map((a) => a.node)),
  };
}

function latency() {
  const merged = (pids, phase) => pids.reduce((h, pid) => h.merge(hists.get(pid)[phase]),
                                              new Histogram()).summary();
  const pids = [...hists.keys()];
  const survivors = pids.filter((pid) => pid !== victimPid);
  const out = {};
  for (const phase of ["before", "storm", "after"]) {
    out[phase] = { survivors: merged(survivors, phase),
                   victims: merged(pids.filter((pid) => pid === victimPid), phase) };
  }
  return out;
}

function countBy(values) {
  const counts = {};
  for (const v of values) counts[v] = (counts[v] || 0) + 1;
  return counts;
}

// -- the run ------------------------------------------------------------------------
async function main() {
  const opened = now();
  const failed = await openAll();
  const live = clients.filter((c) => c.active);
  say("ready", { clients: live.length, failed, open_s: (now() - opened) / 1000,
                 nodes: countBy(live.map((c) => c.node)) });
  startPublishing();
  await sleep(cfg.warmup_s * 1000);
  countFrom = now();
  say("before_start");
  await sleep(cfg.before_s * 1000);
  killAsked = now();
  say("kill_now");
  const answer = await nextCommand(15_000);
  if (!answer || !answer.startsWith("killed ")) throw new Error(`no kill: ${answer}`);
  killedCmd = now();
  victimPid = Number(answer.split(" ")[1]);
  const victims = victimsOf(victimPid);
  setTimeout(() => say("storm_end"), Math.max(0, killAsked + cfg.storm_s * 1000 - now()));
  const until = killAsked + cfg.recover_timeout_s * 1000;
  const isBack = (c) => c.away.some((a) => a.start >= killAsked && a.back !== null);
  while (now() < until && !victims.every(isBack)) await sleep(20);
  say("all_back", { back: victims.filter(isBack).length, victims: victims.length });
  const stormEnd = killAsked + cfg.storm_s * 1000;
  if (now() < stormEnd) await sleep(stormEnd - now());
  await sleep(cfg.tail_s * 1000);
  stopAt = now();
  for (const timer of timers) clearTimeout(timer);
  // at least drain_s, then until nothing arrived for a second (at most 60 s
  // more): a message still on its way is late, not lost; its latency is
  // reported in the "after" phase
  await sleep(cfg.drain_s * 1000);
  const settleBy = now() + 60_000;
  while (now() < settleBy && now() - lastDelivery < 1000) await sleep(100);
  // the kill's moment on this clock: the first victim disconnect, unless the
  // driver's answer came first (a victim that noticed nothing)
  const disconnects = victims.flatMap((c) => c.away.filter((a) => a.start >= killAsked)
                                                      .map((a) => a.start));
  const killedAt = Math.min(killedCmd, ...disconnects);
  say("result", {
    clients: clients.length, victim: victimPid,
    kill_ms: { asked_to_first_disconnect: killedAt - killAsked,
               asked_to_answer: killedCmd - killAsked },
    window_s: (stopAt - countFrom) / 1000,
    storm: storm(killedAt), latency: latency(), ...count(),
  });
  for (const c of clients) c.socket.close();
}

main().then(
  // exit once stdout is flushed: a pipe takes a large result line in parts,
  // and exiting earlier cut it
  () => process.stdout.write("", () => setTimeout(() => process.exit(0), 200)),
  (err) => { say("error", { message: String((err && err.stack) || err) }); process.exit(2); },
);
