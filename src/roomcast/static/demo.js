// The demo page of `roomcast serve`: chat rooms with presence, and a live dashboard of every
// instance's figures (the $stats room). Plain DOM and canvas, no dependencies.
import { RoomcastClient } from "/client.js";

const $ = (id) => document.getElementById(id);
const WINDOW = 60; // seconds of history in the charts
const COLORS = ["#2f6fde", "#e8590c", "#1f9d55", "#9c36b5", "#c0392b", "#0c8599", "#5c940d", "#a61e4d"];

let client = null;
let me = null;
let selected = null;
const history = new Map(); // room -> [{who, text, mine, system}]

// ------------------------------------------------------------------ connecting

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  me = $("name").value.trim();
  const token = $("token").value.trim();
  if (!me && !token) return;
  const fromQuery = new URLSearchParams(location.search).get("rooms");
  const rooms = fromQuery ? fromQuery.split(",").filter(Boolean) : ["lobby"];
  client?.close(); // (a second try, e.g. with the token the server asked for)
  history.clear();
  $("login-problem").hidden = true;
  client = new RoomcastClient(token ? { token: () => token } : { userId: me });
  window.roomcast = client; // for the browser tests and for poking at it from the console
  wire(client);
  $("login").hidden = true;
  $("chat").hidden = false;
  for (const room of rooms) await join(room);
  select(history.keys().next().value ?? null);
  client.watchStats();
  client.connect().catch(() => {});
});

function wire(client) {
  client.on("state", (state) => {
    const badge = $("status");
    badge.className = `status ${state}`;
    badge.dataset.state = state;
    badge.textContent = state === "open" ? `connected${me ? ` as ${me}` : ""}` : state;
    // While disconnected, the member list is what it was: say so rather than show it as live.
    const stale = state === "reconnecting" || state === "closed";
    $("presence-list").classList.toggle("stale", stale);
    $("presence-state").textContent = stale ? (state === "closed" ? "(disconnected)" : "reconnecting…") : "";
  });
  client.on("open", ({ reconnected }) => {
    if (reconnected) note(selected, "reconnected; rooms rejoined");
    measure(client.ping());
  });
  client.on("close", ({ code, kind, willReconnect, delay, status }) => {
    if (status === 401) {
      // The server answered the upgrade with 401: retrying without a token cannot help.
      const text = "This server wants a token: paste a JWT into the Token field (its sub is your name) and connect again, or open the page with ?token=<JWT>&autoconnect=1.";
      note(selected, `not connected: ${text}`);
      $("login-problem").textContent = text;
      $("login-problem").hidden = false;
      $("login").hidden = false;
      return;
    }
    const next = willReconnect ? `; retrying in ${(delay / 1000).toFixed(1)} s` : "";
    note(selected, `disconnected (${code} ${kind})${next}`);
  });
  client.on("message", ({ room, sender, data }) => {
    add(room, { who: sender ?? "server", text: typeof data === "string" ? data : data?.text ?? JSON.stringify(data) });
  });
  client.on("presence", ({ room, users, joined, left }) => {
    // Notices for other members only, and per user: a second tab of someone already here is
    // not an arrival, and closing one of two tabs is not a departure.
    const count = (user) => users.find((u) => u.userId === user)?.connections ?? 0;
    if (joined !== undefined && joined !== me && count(joined) === 1) note(room, `${joined} joined`);
    if (left !== undefined && left !== me && count(left) === 0) note(room, `${left} left`);
    if (room === selected) drawPresence();
  });
  client.on("error", ({ error, code, room }) => {
    drawPresence();
    // A server without presence refuses the watch: the presence panel says so, not the chat.
    if (room !== undefined && client.rooms.get(room)?.presence === false) return;
    note(selected, `error${code ? ` ${code}` : ""}: ${error}`);
  });
  client.on("stats", record);
}

async function join(room) {
  let problem = null;
  try {
    await client.join(room, { presence: true });
  } catch (error) {
    problem = error;
  }
  if (!client.rooms.has(room)) {
    note(selected, `could not join ${room}: ${problem?.message}`);
    return false;
  }
  if (!history.has(room)) history.set(room, []);
  drawRooms();
  drawPresence();
  return true;
}

async function leave(room) {
  await client.leave(room).catch(() => {});
  history.delete(room);
  if (selected === room) selected = history.keys().next().value ?? null;
  drawRooms();
  drawMessages();
  drawPresence();
}

// The round trip of one ping at each open, then of each message sent: no ping loop, whose
// traffic the dashboard would draw as if someone were talking.
async function measure(roundTrip) {
  try {
    $("latency").textContent = `${(await roundTrip).toFixed(1)} ms`;
  } catch {
    $("latency").textContent = "";
  }
}

// ------------------------------------------------------------------ chat

$("join-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const room = $("room-input").value.trim();
  if (!room) return;
  $("room-input").value = "";
  if (await join(room)) select(room);
});

$("send-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("message-input").value;
  if (!text || !selected) return;
  $("message-input").value = "";
  const room = selected;
  try {
    const started = performance.now();
    await client.publish(room, { text });
    measure(performance.now() - started);
    add(room, { who: me, text, mine: true });
  } catch (error) {
    note(room, `not sent (${error.reason}): ${error.message}`);
  }
});

function select(room) {
  selected = room;
  drawRooms();
  drawMessages();
  drawPresence();
}

function add(room, entry) {
  if (!history.has(room)) return;
  const list = history.get(room);
  list.push(entry);
  if (list.length > 200) list.shift();
  if (room === selected) drawMessages();
}

function note(room, text) {
  if (room) add(room, { text, system: true });
}

function drawRooms() {
  const list = $("rooms");
  list.replaceChildren();
  for (const room of history.keys()) {
    const item = document.createElement("li");
    item.dataset.room = room;
    item.className = room === selected ? "selected" : "";
    item.append(room);
    const close = document.createElement("button");
    close.className = "link";
    close.title = `leave ${room}`;
    close.textContent = "×";
    close.addEventListener("click", (event) => {
      event.stopPropagation();
      leave(room);
    });
    item.append(close);
    item.addEventListener("click", () => select(room));
    list.append(item);
  }
}

function drawMessages() {
  const list = $("messages");
  list.replaceChildren();
  for (const { who, text, mine, system } of history.get(selected) ?? []) {
    const item = document.createElement("li");
    if (system) {
      item.className = "system";
      item.textContent = text;
    } else {
      item.className = mine ? "mine" : "";
      const name = document.createElement("span");
      name.className = "who";
      name.textContent = who;
      item.append(name, text);
    }
    list.append(item);
  }
  list.scrollTop = list.scrollHeight;
}

function drawPresence() {
  $("presence-room").textContent = selected ?? "";
  const list = $("presence-list");
  list.replaceChildren();
  if (!client || !selected) return;
  if (client.rooms.get(selected)?.presence === false) {
    const item = document.createElement("li");
    item.className = "muted";
    item.textContent = "presence is off on this server";
    list.append(item);
    return;
  }
  for (const { userId, connections } of client.presence(selected)) {
    const item = document.createElement("li");
    item.dataset.user = userId;
    item.textContent = connections > 1 ? `${userId} (${connections})` : userId;
    list.append(item);
  }
}

// ------------------------------------------------------------------ dashboard

const instances = new Map(); // instance id -> {color, label, samples: [{t, ...figures}]}
const CHARTS = [
  ["chart-connections", (s) => s.connections],
  ["chart-rooms", (s) => s.rooms],
  ["chart-in", (s) => s.rateIn],
  ["chart-out", (s) => s.rateOut],
  ["chart-slow", (s) => s.slow_consumer_closes],
];

function record(stats) {
  let entry = instances.get(stats.instance);
  if (!entry) {
    entry = { color: COLORS[instances.size % COLORS.length], label: stats.label, samples: [] };
    instances.set(stats.instance, entry);
  }
  const now = Date.now() / 1000;
  const previous = entry.samples.at(-1);
  const sample = { ...stats, t: now, rateIn: 0, rateOut: 0 };
  if (previous && stats.uptime > previous.uptime) {
    // Counters are totals, so a missed second only widens the interval.
    const span = stats.uptime - previous.uptime;
    sample.rateIn = Math.max(0, stats.messages_in - previous.messages_in) / span;
    sample.rateOut = Math.max(0, stats.messages_out - previous.messages_out) / span;
  }
  entry.samples.push(sample);
  while (entry.samples.length && entry.samples[0].t < now - WINDOW) entry.samples.shift();
}

function drawCharts() {
  const now = Date.now() / 1000;
  for (const [id, entry] of instances) {
    // An instance that stopped reporting (stopped or unreachable) fades out of the charts.
    if (!entry.samples.length || entry.samples.at(-1).t < now - WINDOW) instances.delete(id);
  }
  for (const [canvasId, value] of CHARTS) drawChart($(canvasId), value, now);
  $("instances").textContent = instances.size ? `${instances.size} instance${instances.size > 1 ? "s" : ""}` : "";
  const legend = $("legend");
  legend.replaceChildren();
  for (const [id, { color, label, samples }] of instances) {
    const last = samples.at(-1);
    const item = document.createElement("li");
    item.dataset.instance = id;
    item.dataset.rateIn = last.rateIn;
    const swatch = document.createElement("i");
    swatch.style.background = color;
    item.append(swatch, `${label} · ${last.connections} conn · ${last.rateIn.toFixed(0)}/${last.rateOut.toFixed(0)} msg/s in/out`);
    legend.append(item);
  }
}

function drawChart(canvas, value, now) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  let top = 1;
  for (const { samples } of instances.values()) for (const s of samples) top = Math.max(top, value(s));
  top = niceCeiling(top);
  const pad = { left: 36, right: 6, top: 8, bottom: 16 };
  const x = (t) => pad.left + ((t - (now - WINDOW)) / WINDOW) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);
  g.strokeStyle = "#dfe3ea";
  g.fillStyle = "#6b7385";
  g.font = "10px system-ui, sans-serif";
  g.lineWidth = 1;
  for (const fraction of [0, 0.5, 1]) {
    const v = top * fraction;
    g.beginPath();
    g.moveTo(pad.left, y(v));
    g.lineTo(width - pad.right, y(v));
    g.stroke();
    g.fillText(formatNumber(v), 2, y(v) + 3);
  }
  g.fillText(`-${WINDOW}s`, pad.left, height - 3);
  g.fillText("now", width - pad.right - 18, height - 3);
  for (const { color, samples } of instances.values()) {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    samples.forEach((s, i) => (i ? g.lineTo(x(s.t), y(value(s))) : g.moveTo(x(s.t), y(value(s)))));
    g.stroke();
    const last = samples.at(-1); // the latest value, visible even before there is a line
    if (last) {
      g.fillStyle = color;
      g.beginPath();
      g.arc(x(last.t), y(value(last)), 2.5, 0, 2 * Math.PI);
      g.fill();
    }
  }
}

function niceCeiling(v) {
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 5, 10]) if (v <= step * power) return step * power;
  return 10 * power;
}

function formatNumber(v) {
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

setInterval(drawCharts, 1000);
drawCharts();

// ?name=ann&autoconnect=1 fills the form (and submits it): handy for demos and tests.
const query = new URLSearchParams(location.search);
if (query.get("name")) $("name").value = query.get("name");
if (query.get("token")) $("token").value = query.get("token");
if ((query.get("name") || query.get("token")) && query.get("autoconnect")) $("login-form").requestSubmit();
