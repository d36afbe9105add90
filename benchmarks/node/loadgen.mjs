// The fan-out benchmark's load generator: the official socket.io-client,
// many websocket clients in this one Node process.
//
//   node loadgen.mjs '<json config>'
//
// It prints one JSON object per line on stdout ({"event": ...}); the Python
// driver (benchmarks/suite/loadgen.py) reads them as they come, samples the
// nodes' CPU on the "measure_start"/"measure_end" markers, and answers on
// stdin where a mode waits for it ("next", "prekill", "killed", "stop").
// Modes (config.mode):
//   ladder    N clients in one room, publishers emit "publish" at increasing
//             rates; one "step" line per rate, then a "result" line
//   idle      open connections up to each checkpoint, wait for "next"
//   listen    clients in one room record the latency of "msg" events that
//             another process (Celery, an Emitter) sends, until "stop"
//   failover  clients behind a balancer lose their node (SIGKILLed by the
//             driver) and reconnect; when did they resume, what did they miss
//
// Time stamps are wall-clock milliseconds with sub-ms resolution
// (performance.timeOrigin + performance.now()): monotonic inside this
// process, and comparable with Python's time.time() for the modes where
// another process sends the messages.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";

const cfg = JSON.parse(process.argv[2] || "{}");
const ROOM = cfg.room || "bench";
const now = () => performance.timeOrigin + performance.now();
const say = (event, data = {}) =>
  process.stdout.write(JSON.stringify({ event, t: now(), ...data }) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Every run is bounded: past its deadline the process reports and exits.
setTimeout(() => {
  say("error", { message: `loadgen deadline of ${cfg.deadline_s} s reached` });
  process.exit(3);
}, (cfg.deadline_s || 120) * 1000).unref();

// -- stdin: the driver's commands, one per line ------------------------------
const commands = [];
const waiters = [];
createInterface({ input: process.stdin }).on("line", (line) => {
  const waiter = waiters.shift();
  if (waiter) waiter(line.trim());
  else commands.push(line.trim());
});
const nextCommand = () =>
  commands.length ? Promise.resolve(commands.shift()) : new Promise((r) => waiters.push(r));

// -- latency histogram: 0.1 ms buckets up to 60 s, O(1) per sample ------------
class Histogram {
  constructor() { this.buckets = new Uint32Array(600_001); this.count = 0; this.max = 0; }
  add(ms) {
    const i = Math.min(600_000, Math.max(0, Math.round(ms * 10)));
    this.buckets[i] += 1;
    this.count += 1;
    if (ms > this.max) this.max = ms;
  }
  percentile(fraction) {
    if (!this.count) return null;
    const rank = Math.max(1, Math.ceil(fraction * this.count));
    let seen = 0;
    for (let i = 0; i < this.buckets.length; i++) {
      seen += this.buckets[i];
      if (seen >= rank) return i / 10;
    }
    return this.max;
  }
  summary() {
    return { p50_ms: this.percentile(0.5), p99_ms: this.percentile(0.99),
             max_ms: this.count ? Math.round(this.max * 10) / 10 : null };
  }
}

// -- clients ----------------------------------------------------------------------
function clientOptions(extra = {}) {
  return {
    transports: ["websocket"],
    forceNew: true, // one Manager, one websocket per client (io() would share them per URL)
    reconnection: false,
    timeout: 20_000,
    // engine.io-client offers permessage-deflate unless told not to, as browsers do
    perMessageDeflate: cfg.deflate ? { threshold: 1024 } : false,
    ...extra,
  };
}

function openClient(url, extra) {
  return new Promise((resolve, reject) => {
    const socket = io(url, clientOptions(extra));
    const fail = (err) => { socket.close(); reject(err); };
    socket.once("connect", () => { socket.off("connect_error", fail); resolve(socket); });
    socket.once("connect_error", fail);
  });
}

// Opens `count` clients spread round-robin over `urls`, `concurrency` handshakes
// in flight; client i goes to urls[(offset + i) % urls.length].
async function openMany(urls, count, { offset = 0, extra, into = [] } = {}) {
  const concurrency = cfg.concurrency || 100;
  let next = 0;
  let failed = 0;
  const errors = {};
  const start = into.length;
  async function worker() {
    while (next < count) {
      const i = next++;
      try {
        into[start + i] = await openClient(urls[(offset + i) % urls.length], extra);
      } catch (err) {
        failed += 1;
        errors[err.message] = (errors[err.message] || 0) + 1;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return { sockets: into.filter(Boolean), failed, errors };
}

async function joinAll(sockets) {
  const acks = await Promise.all(sockets.map((s) => s.timeout(15_000).emitWithAck("join", ROOM)));
  return acks.map((ack) => (ack && ack.node) || null);
}

// ~100 bytes of JSON per message: room, step, sequence number, send time, padding
const PAD = "x".repeat(cfg.pad || 40);
const payload = (step, seq, kind) => ({ r: ROOM, s: step, q: seq, k: kind, t: now(), p: PAD });

// Publishes `rate` messages/s for `seconds` through `publishers` in turn,
// catching up after a late timer tick so the average rate holds.
function publishFor(publishers, rate, seconds, step) {
  return new Promise((resolve) => {
    const start = now();
    const total = Math.floor(rate * seconds);
    let sent = 0;
    const timer = setInterval(() => {
      const elapsed = now() - start;
      const due = Math.min(total, Math.floor((rate * elapsed) / 1000));
      while (sent < due) {
        publishers[sent % publishers.length].emit("publish", payload(step, sent, "ladder"));
        sent += 1;
      }
      if (sent >= total && elapsed >= seconds * 1000) { clearInterval(timer); resolve(sent); }
    }, cfg.tick_ms || 2);
  });
}

async function closeAll(sockets) {
  for (const socket of sockets) socket.close();
  await sleep(200);
}

// -- ladder ----------------------------------------------------------------------
async function ladder() {
  const urls = cfg.urls;
  const opened = await openMany(urls, cfg.clients);
  const sockets = opened.sockets;
  if (opened.failed) say("warning", { message: "clients failed to connect", ...opened });
  const nodes = await joinAll(sockets);
  // one publisher per node: client i sits on urls[i % n], so the first n cover every node
  const publishers = sockets.slice(0, Math.min(cfg.publishers || urls.length, sockets.length));
  const receivers = sockets.length;

  // messages of the step being measured; anything else (warm-up, late) is ignored
  let current = null;
  let late = 0;
  let seenProbe = new Set();
  sockets.forEach((socket, i) => socket.on("msg", (m) => {
    const t = now();
    if (current && m.s === current.step) { current.delivered += 1; current.hist.add(t - m.t); }
    else if (m.s === -2) seenProbe.add(i);
    else if (m.s >= 0) late += 1;
  }));

  // every client must get a probe before anything is measured: every node is
  // then subscribed and routing the room (python-socketio subscribes lazily)
  const syncDeadline = now() + 15_000;
  while (seenProbe.size < receivers && now() < syncDeadline) {
    publishers.forEach((p, k) => p.emit("publish", payload(-2, k, "probe")));
    await sleep(100);
  }
  // whether the server accepted permessage-deflate (the `ws` socket under engine.io-client)
  const deflated = sockets.filter((s) => {
    const ws = s.io.engine && s.io.engine.transport && s.io.engine.transport.ws;
    return ws && String(ws.extensions || "").includes("permessage-deflate");
  }).length;
  say("ready", { clients: receivers, failed: opened.failed, nodes: countBy(nodes),
                 synced: seenProbe.size, publishers: publishers.length, deflated });
  if (seenProbe.size < receivers) {
    say("error", { message: `${receivers - seenProbe.size} clients never received a probe` });
  }

  // until no late message arrived for 500 ms; false if the backlog outlasted maxMs
  async function quiet(maxMs) {
    const until = now() + maxMs;
    while (now() < until) {
      const seen = late;
      await sleep(500);
      if (seen === late) return true;
    }
    return false;
  }

  async function step(index, rate, label, extra = {}) {
    if (cfg.warmup_s > 0) await publishFor(publishers, rate, cfg.warmup_s, -1);
    current = { step: index, delivered: 0, hist: new Histogram() };
    say("measure_start", { step: index });
    const started = now();
    const sent = await publishFor(publishers, rate, cfg.step_s, index);
    const window = (now() - started) / 1000;
    say("measure_end", { step: index });
    const expected = sent * receivers;
    const drainUntil = now() + cfg.drain_s * 1000;
    while (current.delivered < expected && now() < drainUntil) await sleep(20);
    const s = current;
    current = null;
    const loss = expected ? Math.max(0, 1 - s.delivered / expected) : 0;
    const lat = s.hist.summary();
    const passed = s.delivered > 0 && loss <= cfg.max_loss && lat.p99_ms !== null
      && lat.p99_ms <= cfg.max_p99_ms;
    const result = { step: index, label, rate, seconds: window, sent, expected,
                     delivered: s.delivered, loss, delivered_per_s: s.delivered / window,
                     ...lat, passed, ...extra };
    say("step", result);
    return result;
  }

  const steps = [];
  let best = null;
  for (const [i, rate] of cfg.rates.entries()) {
    const r = await step(i, rate, "ladder");
    steps.push(r);
    if (r.passed) best = r;
    else if (cfg.stop_on_fail !== false) break;
  }
  if (cfg.half && best) {
    // let a failed step's backlog drain before measuring at half load
    const started = now();
    const drained = steps[steps.length - 1] === best || (await quiet(20_000));
    steps.push(await step(cfg.rates.length, best.rate / 2, "half",
                          { backlog_wait_s: (now() - started) / 1000, backlog_drained: drained }));
  }
  say("result", { clients: receivers, steps, late });
  await closeAll(sockets);
}

function countBy(values) {
  const counts = {};
  for (const v of values) counts[v] = (counts[v] || 0) + 1;
  return counts;
}

// -- idle: memory per connection -----------------------------------------------
async function idle() {
  const sockets = [];
  let failed = 0;
  for (const target of cfg.checkpoints) {
    const started = now();
    const r = await openMany(cfg.urls, target - sockets.length, { into: sockets });
    failed += r.failed;
    sockets.splice(0, sockets.length, ...sockets.filter(Boolean));
    await sleep((cfg.settle_s ?? 2) * 1000);
    const alive = sockets.filter((s) => s.connected).length;
    say("checkpoint", { target, open: alive, failed, open_seconds: (now() - started) / 1000,
                        errors: r.errors });
    if ((await nextCommand()) !== "next") break;
  }
  say("result", { open: sockets.filter((s) => s.connected).length, failed });
  await closeAll(sockets);
}

// -- listen: latency of messages another process sends -------------------------
async function listen() {
  const { sockets, failed } = await openMany(cfg.urls, cfg.clients);
  await joinAll(sockets);
  const kinds = {};
  for (const socket of sockets) {
    socket.on("msg", (m) => {
      if (!cfg.kinds.includes(m.k)) return;
      const k = (kinds[m.k] ||= { delivered: 0, hist: new Histogram() });
      k.delivered += 1;
      k.hist.add(now() - m.t);
    });
  }
  say("ready", { clients: sockets.length, failed });
  while ((await nextCommand()) !== "stop");
  const result = {};
  for (const [name, k] of Object.entries(kinds)) {
    result[name] = { delivered: k.delivered, ...k.hist.summary() };
  }
  say("result", { clients: sockets.length, kinds: result });
  await closeAll(sockets);
}

// -- failover: resume after the node is SIGKILLed --------------------------------
async function failover() {
  // publishers connect to each node directly, so the driver can silence the
  // victim's before killing it: everything published afterwards can reach a subject
  const pubs = (await openMany(cfg.direct_urls, cfg.direct_urls.length)).sockets;
  const pubNodes = await joinAll(pubs);
  const reconnect = { reconnection: true, reconnectionDelay: cfg.reconnect_delay_ms,
                      reconnectionDelayMax: cfg.reconnect_delay_max_ms,
                      randomizationFactor: cfg.randomization };
  const subjects = (await openMany([cfg.lb_url], cfg.subjects, { extra: reconnect })).sockets;
  // their first "connect" fired inside openMany, before these handlers existed
  const states = subjects.map(() => ({ seqs: new Set(), connects: 1 }));
  let killedAt = null;
  subjects.forEach((socket, i) => {
    const st = states[i];
    socket.on("msg", (m) => {
      if (m.s !== 1) return;
      st.seqs.add(m.q);
      if (killedAt !== null && st.reconnected !== undefined && st.first === undefined) {
        st.first = now();
      }
    });
    socket.on("disconnect", () => { if (st.disconnected === undefined) st.disconnected = now(); });
    socket.on("connect", async () => {
      st.connects += 1;
      st.reconnected = now();
      st.recovered = socket.recovered;
      if (!socket.recovered) { // a new session: the app joins its room again
        try { await socket.timeout(10_000).emitWithAck("join", ROOM); } catch { /* counted below */ }
      }
      st.joined = now();
    });
    socket.on("connect_error", () => { st.connectErrors = (st.connectErrors || 0) + 1; });
  });
  const subjectNodes = await joinAll(subjects);

  let live = pubs.slice();
  let seq = 0;
  const timer = setInterval(() => {
    if (live.length) live[seq % live.length].emit("publish", payload(1, seq++, "failover"));
  }, 1000 / cfg.rate);
  await sleep(300);
  say("ready", { subjects: subjectNodes, publishers: pubNodes });

  let victim = null;
  for (;;) {
    const [command, arg] = (await nextCommand()).split(" ");
    if (command === "prekill") { // stop publishing through the node about to die
      victim = arg;
      live = pubs.filter((p, k) => String(pubNodes[k]) !== victim);
      await sleep(200);
      say("prekill_ok", { seq });
    } else if (command === "killed") {
      killedAt = Number(arg);
      break;
    } else if (command === "stop") break;
  }
  const seqAtKill = seq;
  const victims = states.filter((st, i) => String(subjectNodes[i]) === victim);
  const until = now() + cfg.timeout_s * 1000;
  while (now() < until && victims.some((st) => st.first === undefined)) await sleep(20);
  await sleep(cfg.tail_s * 1000); // keep publishing: replayed or not, what arrives after?
  clearInterval(timer);
  await sleep(500);
  const lastSeq = seq;
  const rel = (t) => (t === undefined || killedAt === null ? null : t - killedAt);
  const out = victims.map((st) => {
    let missed = 0;
    for (let q = Math.max(0, seqAtKill - cfg.rate); q < lastSeq; q++) if (!st.seqs.has(q)) missed++;
    return { disconnect_ms: rel(st.disconnected), reconnect_ms: rel(st.reconnected),
             joined_ms: rel(st.joined), first_message_ms: rel(st.first),
             recovered: st.recovered === true, missed, connect_errors: st.connectErrors || 0 };
  });
  say("result", { victims: out, published: lastSeq, subjects: subjects.length });
  await closeAll([...pubs, ...subjects]);
}

const modes = { ladder, idle, listen, failover };
modes[cfg.mode]().then(
  () => process.exit(0),
  (err) => { say("error", { message: String(err && err.stack || err) }); process.exit(2); },
);
