// IVY Gateway dashboard. Plain JavaScript, no libraries, served by the gateway itself.
// Every string that came from a meter, a user or the network is inserted with textContent, never as HTML.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);

  const state = {
    me: null,
    meters: new Map(),          // meterId -> row object from /api/meters, updated live
    sort: { key: 'meterId', dir: 1 },
    search: '',
    selected: null,             // meter id shown in the detail panel
    detailReadings: new Map(),  // register -> {value, unit, ts}
    history: new Map(),         // register -> [{ts, value}]
    historyUnits: new Map(),
    historyBuckets: new Map(),  // register -> [{ts, min, max}] when the history is aggregated
    range: 3600000,             // chart range (ms): 1 h, 24 h, 7 d or 30 d
    historyStep: null,          // bucket width of the loaded history, null for raw points
    thresholds: null,           // global alarm thresholds from /api/info
    events: [],
    alarms: [],
    logPaused: false,
    tableDirty: false,          // rows added/removed or order may change: rebuild
    dirtyRows: new Set(),       // meters whose cells changed: update in place
    rowEls: new Map(),          // meterId -> <tr>
    lastFullRender: 0,
    pendingLog: [],
    detailDirty: false,
    source: null,
    reconnectDelay: 1000,
    statsTimer: null,
  };

  const MAX_EVENTS = 200;
  const MAX_LOG = 500;
  const MAX_POINTS = 5000;

  const PARAM_TEMPLATES = {
    read_register: { register: 'VOLTAGE_A' },
    read_all: { registers: ['VOLTAGE_A', 'CURRENT_A', 'ACTIVE_POWER_TOTAL'] },
    read_group: { group: 'all' },
    // Never pre-filled with a disconnect: `open` cuts the customer's supply, and every relay command asks first.
    relay_control: { state: 'close' },
    read_relay_state: {},
    read_address: {},
    sync_time: {},
    read_obis: { obis: '1-0:32.7.0.255', classId: 3, attribute: 2 },
  };

  // ---------- helpers ----------

  function el(tag, props, children) {
    const e = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null) continue;
        if (k === 'text') e.textContent = String(v);
        else if (k === 'class') e.className = v;
        else if (k === 'dataset') Object.assign(e.dataset, v);
        else e.setAttribute(k, String(v));
      }
    }
    for (const c of children || []) e.append(c);
    return e;
  }

  function fmtTime(ms) {
    if (!ms) return '–';
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false }) + (Date.now() - ms > 86400000 ? ' ' + d.toLocaleDateString() : '');
  }

  function fmtValue(v) {
    if (v === null || v === undefined) return '–';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  function fmtDuration(secs) {
    const d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600), m = Math.floor((secs % 3600) / 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    return `${m}m ${secs % 60}s`;
  }

  async function api(path, options) {
    const opts = Object.assign({ headers: {}, credentials: 'same-origin' }, options || {});
    if (opts.body !== undefined && typeof opts.body !== 'string') {
      opts.body = JSON.stringify(opts.body);
      opts.headers['Content-Type'] = 'application/json';
    }
    const res = await fetch(path, opts);
    let body = null;
    const text = await res.text();
    if (text) {
      try { body = JSON.parse(text); } catch (_) { body = { error: text }; }
    }
    if (res.status === 401 && path !== '/api/login') showLogin();
    return { ok: res.ok, status: res.status, body };
  }

  // ---------- login ----------

  function showLogin(message) {
    stopStream();
    clearInterval(state.statsTimer);
    $('app-view').hidden = true;
    $('banner').hidden = true;
    $('login-view').hidden = false;
    $('login-error').textContent = message || '';
    $('login-user').focus();
  }

  async function onLogin(ev) {
    ev.preventDefault();
    $('login-submit').disabled = true;
    $('login-error').textContent = '';
    const r = await api('/api/login', {
      method: 'POST',
      body: { username: $('login-user').value, password: $('login-password').value },
    });
    $('login-submit').disabled = false;
    if (!r.ok) {
      $('login-error').textContent = (r.body && r.body.error) || `login failed (${r.status})`;
      return;
    }
    $('login-password').value = '';
    await start();
  }

  async function onLogout() {
    await api('/api/logout', { method: 'POST' });
    state.me = null;
    showLogin('Logged out.');
  }

  // ---------- start ----------

  async function start() {
    const me = await api('/api/me');
    if (!me.ok) { showLogin(); return; }
    state.me = me.body;
    $('login-view').hidden = true;
    $('app-view').hidden = false;
    $('whoami').textContent = `${state.me.user} (${state.me.role})`;
    const canCommand = !!state.me.canCommand;
    $('command-send').disabled = !canCommand;
    $('command-note').textContent = canCommand ? '' : 'Viewers cannot send commands.';
    const info = await api('/api/info');
    if (info.ok) {
      $('gateway-name').textContent = info.body.name || 'IVY Gateway';
      $('gateway-version').textContent = 'v' + info.body.version;
      document.title = (info.body.name || 'IVY Gateway') + ' — dashboard';
      state.thresholds = info.body.alarms && info.body.alarms.enabled ? info.body.alarms : null;
    }
    await reloadAll();
    startStream();
    clearInterval(state.statsTimer);
    state.statsTimer = setInterval(loadStats, 5000);
    routeFromHash();
  }

  async function reloadAll() {
    await Promise.all([loadMeters(), loadAlarms(), loadEvents(), loadStats()]);
    if (state.selected) await openDetail(state.selected, false);
  }

  async function loadMeters() {
    const r = await api('/api/meters');
    if (!r.ok) return;
    state.meters.clear();
    for (const m of r.body.meters) state.meters.set(m.meterId, m);
    renderMeters();
    renderMeterIds();
  }

  async function loadStats() {
    const r = await api('/api/stats');
    if (!r.ok) return;
    const s = r.body;
    $('card-meters').textContent = `${s.meters.online} / ${Math.max(s.meters.total, state.meters.size)}`;
    $('card-rpm').textContent = String(s.readingsPerMinute);
    $('card-alarms').textContent = String(s.alarms.active);
    $('card-uptime').textContent = fmtDuration(s.uptime);
    $('card-memory').textContent = s.memory && s.memory.rss ? `${(s.memory.rss / 1048576).toFixed(1)} MB` : '–';
    // Upstream MQTT only: messages waiting for the broker's PUBACK, the oldest one's age, and drops.
    const up = s.upstream;
    $('card-outbox-box').hidden = !up;
    if (up) {
      const o = s.outbox;
      const link = up.connected ? 'connected' : 'disconnected';
      const age = o.queued > 0 ? `, oldest ${fmtDuration(o.oldestAgeSecs)}` : '';
      const dropped = o.dropped > 0 ? `, ${o.dropped} dropped` : '';
      $('card-outbox').textContent = `${o.queued} queued${age}${dropped} (${link})`;
    }
  }

  // ---------- meters table ----------

  function rowMatches(m, q) {
    if (!q) return true;
    return [m.meterId, m.ip, m.protocol].some((v) => v && String(v).toLowerCase().includes(q));
  }

  function sortValue(m, key) {
    const v = m[key];
    if (key === 'online') return v ? 1 : 0;
    return v === undefined || v === null ? '' : v;
  }

  function renderMeters() {
    state.tableDirty = false;
    const t0 = performance.now();
    const q = state.search.trim().toLowerCase();
    const { key, dir } = state.sort;
    const rows = [...state.meters.values()].filter((m) => rowMatches(m, q)).sort((a, b) => {
      const x = sortValue(a, key), y = sortValue(b, key);
      if (x < y) return -dir;
      if (x > y) return dir;
      return a.meterId < b.meterId ? -1 : 1;
    });
    const frag = document.createDocumentFragment();
    state.rowEls.clear();
    state.dirtyRows.clear();
    for (const m of rows) {
      const tr = el('tr', { class: 'clickable' + (m.meterId === state.selected ? ' selected' : ''), dataset: { meter: m.meterId } }, [
        el('td', { text: m.meterId }), el('td'), el('td'), el('td'), el('td'), el('td'), el('td'),
      ]);
      fillRow(tr, m);
      state.rowEls.set(m.meterId, tr);
      frag.append(tr);
    }
    $('meters-body').replaceChildren(frag);
    state.lastFullRender = performance.now();
    updateMeterCounts(q ? rows.length : null);
    for (const th of document.querySelectorAll('#meters-table th[data-sort]')) {
      th.classList.toggle('sorted-asc', th.dataset.sort === key && dir === 1);
      th.classList.toggle('sorted-desc', th.dataset.sort === key && dir === -1);
    }
    $('meters-table').dataset.renderMs = (performance.now() - t0).toFixed(1);
    $('meters-table').dataset.rows = String(rows.length);
  }

  // The meters card and the table title follow live status changes, between the periodic stats refreshes.
  function updateMeterCounts(shown) {
    const online = [...state.meters.values()].filter((m) => m.online).length;
    $('meters-count').textContent = `(${online} online of ${state.meters.size}${shown !== null && shown !== undefined ? `, ${shown} shown` : ''})`;
    $('card-meters').textContent = `${online} / ${state.meters.size}`;
  }

  function fillRow(tr, m) {
    const c = tr.children;
    c[1].textContent = m.online ? 'online' : 'offline';
    c[1].className = m.online ? 'status-online' : 'status-offline';
    c[2].textContent = m.protocol || '–';
    c[3].textContent = m.ip || '–';
    c[4].textContent = fmtTime(m.lastReadingAt);
    c[5].textContent = fmtTime(m.lastSeen);
    c[6].textContent = String(m.activeAlarms || 0);
  }

  function markRow(id) {
    if (state.rowEls.has(id)) state.dirtyRows.add(id);
    else state.tableDirty = true;
  }

  function renderMeterIds() {
    const frag = document.createDocumentFragment();
    for (const id of [...state.meters.keys()].sort()) frag.append(el('option', { value: id }));
    $('meter-ids').replaceChildren(frag);
  }

  function meterRow(id) {
    let m = state.meters.get(id);
    if (!m) {
      m = { meterId: id, online: false, activeAlarms: 0 };
      state.meters.set(id, m);
      renderMeterIds();
    }
    return m;
  }

  // ---------- detail ----------

  async function openDetail(id, pushHash) {
    state.selected = id;
    state.detailReadings.clear();
    state.history.clear();
    state.historyUnits.clear();
    $('detail').hidden = false;
    $('detail-id').textContent = id;
    $('detail-error').textContent = '';
    $('detail-readings').replaceChildren();
    $('charts').replaceChildren();
    $('command-meter').value = id;
    if (pushHash !== false) history.replaceState(null, '', '#/meters/' + encodeURIComponent(id));
    const r = await api('/api/meters/' + encodeURIComponent(id));
    if (state.selected !== id) return;
    if (!r.ok) {
      $('detail-status').textContent = '';
      $('detail-meta').textContent = '';
      $('detail-error').textContent = (r.body && r.body.error) || `cannot load meter (${r.status})`;
      return;
    }
    const m = r.body;
    for (const [reg, v] of Object.entries(m.readings || {})) state.detailReadings.set(reg, v);
    renderDetailHeader(m);
    await loadHistory(id);
    renderMeters();
  }

  // Bucket width per range: about 300 to 700 points per chart, one query each (raw points for one hour).
  const RANGE_STEPS = { 3600000: null, 86400000: '5m', 604800000: '15m', 2592000000: '1h' };

  async function loadHistory(id) {
    const to = Date.now(), from = to - state.range;
    const step = RANGE_STEPS[state.range] || null;
    const base = '/api/meters/' + encodeURIComponent(id) + '/readings?from=' + from + '&to=' + to;
    let h = await api(base + (step ? '&step=' + step : '') + '&limit=10000');
    // Without the store there is only the in-memory ring (no aggregates).
    if (!h.ok && step && h.body && h.body.code === 'store_disabled') h = await api(base + '&limit=5000');
    if (state.selected !== id) return;
    state.history.clear();
    state.historyBuckets.clear();
    state.historyStep = h.ok && h.body.buckets ? step : null;
    if (h.ok) {
      for (const p of h.body.points || []) {
        if (!state.history.has(p.register)) state.history.set(p.register, []);
        state.history.get(p.register).push({ ts: p.ts, value: p.value });
        state.historyUnits.set(p.register, p.unit);
      }
      for (const b of h.body.buckets || []) {
        if (!state.history.has(b.register)) { state.history.set(b.register, []); state.historyBuckets.set(b.register, []); }
        state.history.get(b.register).push({ ts: b.ts, value: b.avg });
        state.historyBuckets.get(b.register).push({ ts: b.ts, min: b.min, max: b.max, last: b.last, count: b.count });
        state.historyUnits.set(b.register, b.unit);
      }
      $('history-source').textContent = (h.body.source === 'store' ? 'stored history' : 'since start (memory)') +
        (state.historyStep ? ` · ${state.historyStep} min/avg/max` : '');
    } else {
      $('history-source').textContent = (h.body && h.body.error) || `history unavailable (${h.status})`;
    }
    for (const b of $('range-picker').querySelectorAll('button')) {
      b.setAttribute('aria-pressed', String(Number(b.dataset.range) === state.range));
    }
    const csv = $('csv-download');
    csv.href = base + (step ? '&step=' + step : '') + '&format=csv';
    csv.setAttribute('download', `${id}-${new Date(from).toISOString().slice(0, 10)}.csv`);
    $('charts').replaceChildren();
    renderDetail();
  }

  function renderDetailHeader(m) {
    const row = state.meters.get(m.meterId) || m;
    const online = m.online !== undefined ? m.online : row.online;
    $('detail-status').textContent = online ? 'online' : 'offline';
    $('detail-status').className = 'pill ' + (online ? 'ok' : 'bad');
    const bits = [m.protocol || row.protocol, m.ip || row.ip, m.readingsCount !== undefined ? `${m.readingsCount} readings` : null];
    $('detail-meta').textContent = bits.filter(Boolean).join(' · ');
  }

  function closeDetail() {
    state.selected = null;
    $('detail').hidden = true;
    history.replaceState(null, '', '#/');
    renderMeters();
  }

  function renderDetail() {
    state.detailDirty = false;
    if (!state.selected) return;
    const frag = document.createDocumentFragment();
    for (const reg of [...state.detailReadings.keys()].sort()) {
      const v = state.detailReadings.get(reg);
      frag.append(el('tr', { dataset: { register: reg } }, [
        el('td', { text: reg }),
        el('td', { text: fmtValue(v.value), class: 'value' }),
        el('td', { text: v.unit || '' }),
        el('td', { text: fmtTime(v.ts) }),
      ]));
    }
    $('detail-readings').replaceChildren(frag);
    renderCharts();
  }

  function renderCharts() {
    const box = $('charts');
    const existing = new Map([...box.querySelectorAll('.chart')].map((c) => [c.dataset.register, c]));
    for (const reg of [...state.history.keys()].sort()) {
      let chart = existing.get(reg);
      if (!chart) {
        const canvas = el('canvas');
        const readout = el('p', { class: 'readout muted' });
        chart = el('div', { class: 'chart', dataset: { register: reg } }, [el('h3', { text: reg }), canvas, readout]);
        canvas.addEventListener('mousemove', (e) => hover(chart, e));
        canvas.addEventListener('mouseleave', () => { readout.textContent = ''; chart.dataset.hover = ''; });
        box.append(chart);
      }
      drawChart(chart, state.history.get(reg), state.historyUnits.get(reg), state.historyBuckets.get(reg));
      chart.dataset.points = String(state.history.get(reg).length);
    }
  }

  // Alarm thresholds that apply to a chart, by the unit of its register (what the alarm rules compare).
  function thresholdsFor(register, unit) {
    const t = state.thresholds;
    const lines = [];
    if (t) {
      if (unit === 'V' && /VOLTAGE/i.test(register)) lines.push(['over', t.overvoltageV], ['under', t.undervoltageV]);
      if (unit === 'A') lines.push(['over', t.overcurrentA]);
      if (unit === 'kW' && /ACTIVE_POWER/i.test(register)) lines.push(['overload', t.overloadKw]);
      if (unit === 'W' && /ACTIVE_POWER/i.test(register)) lines.push(['overload', t.overloadKw * 1000]);
    }
    for (const a of state.alarms) {
      if (a.meterId === state.selected && a.register === register) lines.push([a.type, a.threshold]);
    }
    return lines.filter(([, v]) => typeof v === 'number' && isFinite(v));
  }

  function fmtAxisTime(ms, span) {
    const d = new Date(ms);
    const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });
    if (span <= 86400000) return hm;
    const md = d.toLocaleDateString([], { month: '2-digit', day: '2-digit' });
    return span <= 3 * 86400000 ? `${md} ${hm}` : md;
  }

  // Round tick step (ms) giving about `n` ticks over `span`.
  function timeStep(span, n) {
    const steps = [60e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 7200e3, 10800e3, 21600e3, 43200e3, 86400e3, 172800e3, 604800e3];
    return steps.find((s) => span / s <= n) || steps[steps.length - 1];
  }

  function drawChart(chart, points, unit, buckets) {
    const canvas = chart.querySelector('canvas');
    const ratio = window.devicePixelRatio || 1;
    const w = Math.max(200, canvas.clientWidth || 260), h = 160;
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = '10px system-ui, sans-serif';
    ctx.fillStyle = '#64748b';
    const now = Date.now();
    const t1 = now, t0 = now - state.range;
    const register = chart.dataset.register;
    const lines = thresholdsFor(register, unit);
    chart.dataset.unit = unit || '';
    chart.dataset.range = String(state.range);
    chart.dataset.step = state.historyStep || '';
    chart.dataset.thresholds = String(lines.length);
    if (!points || points.length === 0) { ctx.fillText('no data in this range', 40, 20); chart.dataset.xTicks = '0'; return; }
    let min = Infinity, max = -Infinity;
    for (const p of points) { min = Math.min(min, p.value); max = Math.max(max, p.value); }
    for (const b of buckets || []) { min = Math.min(min, b.min); max = Math.max(max, b.max); }
    // Thresholds close to the data are drawn; far ones would flatten the curve.
    const near = lines.filter(([, v]) => v >= min - (max - min + 1) && v <= max + (max - min + 1));
    for (const [, v] of near) { min = Math.min(min, v); max = Math.max(max, v); }
    if (min === max) { min -= 1; max += 1; }
    const pad = (max - min) * 0.05; min -= pad; max += pad;
    const left = 44, right = w - 6, top = 14, bottom = h - 18;
    const x = (ts) => left + ((ts - t0) / (t1 - t0)) * (right - left);
    const y = (v) => bottom - ((v - min) / (max - min)) * (bottom - top);
    chart.__plot = { x, t0, t1, left, right, points, buckets, unit };
    // Axes: unit on the value axis, wall-clock labels on the time axis.
    ctx.strokeStyle = '#e2e8f0';
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    for (let i = 0; i <= 3; i++) {
      const v = min + ((max - min) * i) / 3, yy = y(v);
      ctx.beginPath(); ctx.moveTo(left, yy); ctx.lineTo(right, yy); ctx.stroke();
      ctx.fillText(`${+v.toPrecision(4)}`, left - 4, yy + 3);
    }
    ctx.textAlign = 'left';
    ctx.fillText(unit || '', 2, 10);
    ctx.textAlign = 'center';
    const span = t1 - t0, tick = timeStep(span, 5);
    const offset = new Date().getTimezoneOffset() * 60000;
    let ticks = 0;
    for (let t = Math.ceil((t0 - offset) / tick) * tick + offset; t <= t1; t += tick) {
      const xx = x(t);
      ctx.beginPath(); ctx.moveTo(xx, top); ctx.lineTo(xx, bottom); ctx.stroke();
      ctx.fillText(fmtAxisTime(t, span), xx, h - 5);
      ticks += 1;
    }
    chart.dataset.xTicks = String(ticks);
    // Min..max band of aggregated history.
    if (buckets && buckets.length) {
      ctx.fillStyle = 'rgba(15, 118, 110, 0.15)';
      ctx.beginPath();
      buckets.forEach((b, i) => { if (i === 0) ctx.moveTo(x(b.ts), y(b.max)); else ctx.lineTo(x(b.ts), y(b.max)); });
      for (let i = buckets.length - 1; i >= 0; i--) ctx.lineTo(x(buckets[i].ts), y(buckets[i].min));
      ctx.closePath();
      ctx.fill();
    }
    ctx.strokeStyle = '#0f766e';
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    points.forEach((p, i) => { if (i === 0) ctx.moveTo(x(p.ts), y(p.value)); else ctx.lineTo(x(p.ts), y(p.value)); });
    ctx.stroke();
    // Sparse data: mark each point, or a lone point would not show.
    if (points.length < 60) {
      ctx.fillStyle = '#0f766e';
      for (const p of points) { ctx.beginPath(); ctx.arc(x(p.ts), y(p.value), 2, 0, 2 * Math.PI); ctx.fill(); }
    }
    // Alarm thresholds, dashed.
    ctx.strokeStyle = '#dc2626';
    ctx.fillStyle = '#dc2626';
    ctx.setLineDash([4, 3]);
    ctx.textAlign = 'right';
    for (const [name, v] of near) {
      ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(right, y(v)); ctx.stroke();
      ctx.fillText(`${name} ${v}`, right, y(v) - 2);
    }
    ctx.setLineDash([]);
    ctx.textAlign = 'left';
  }

  function hover(chart, e) {
    const plot = chart.__plot;
    if (!plot || !plot.points.length) return;
    const rect = e.target.getBoundingClientRect();
    const px = e.clientX - rect.left;
    const ts = plot.t0 + ((px - plot.left) / (plot.right - plot.left)) * (plot.t1 - plot.t0);
    let best = 0;
    for (let i = 1; i < plot.points.length; i++) {
      if (Math.abs(plot.points[i].ts - ts) < Math.abs(plot.points[best].ts - ts)) best = i;
    }
    const p = plot.points[best], b = plot.buckets && plot.buckets[best];
    const u = plot.unit ? ' ' + plot.unit : '';
    const when = new Date(p.ts).toLocaleString([], { hour12: false });
    chart.querySelector('.readout').textContent = b
      ? `${when} · avg ${+p.value.toPrecision(6)}${u} · min ${b.min} · max ${b.max} · last ${b.last} (${b.count})`
      : `${when} · ${p.value}${u}`;
    chart.dataset.hover = String(p.ts);
  }

  // ---------- alarms and events ----------

  async function loadAlarms() {
    const r = await api('/api/alarms');
    if (!r.ok) return;
    state.alarms = r.body.alarms;
    renderAlarms();
  }

  function renderAlarms() {
    const canAck = state.me && state.me.canCommand;
    const frag = document.createDocumentFragment();
    for (const a of state.alarms) {
      const ack = a.acknowledged
        ? el('span', { class: 'acked', text: 'acknowledged' })
        : el('button', { type: 'button', class: 'secondary ack', dataset: { alarm: a.id }, text: 'Acknowledge' });
      if (!canAck && !a.acknowledged) ack.disabled = true;
      frag.append(el('tr', { dataset: { alarm: a.id } }, [
        el('td', { text: a.meterId }),
        el('td', { text: a.type, class: 'sev-' + a.severity }),
        el('td', { text: fmtValue(a.value) }),
        el('td', { text: fmtValue(a.threshold) }),
        el('td', { text: fmtTime(a.raisedAt) }),
        el('td', {}, [ack]),
      ]));
    }
    $('alarms-body').replaceChildren(frag);
    $('alarms-empty').hidden = state.alarms.length > 0;
    $('card-alarms').textContent = String(state.alarms.length);
  }

  async function acknowledge(id, button) {
    button.disabled = true;
    const r = await api('/api/alarms/' + encodeURIComponent(id) + '/ack', { method: 'POST' });
    if (!r.ok) {
      button.disabled = false;
      button.textContent = (r.body && r.body.code) || 'failed';
    }
    await loadAlarms();
  }

  async function loadEvents() {
    const r = await api('/api/events?limit=' + MAX_EVENTS);
    if (!r.ok) return;
    state.events = r.body.events;
    renderEvents();
  }

  function renderEvents() {
    const frag = document.createDocumentFragment();
    for (const e of state.events) {
      frag.append(el('li', { class: e.severity ? 'sev-' + e.severity : '', dataset: { event: e.event } }, [
        el('span', { class: 'muted', text: fmtTime(e.ts) + ' ' }),
        el('strong', { text: e.meterId }),
        document.createTextNode(' ' + e.event + (e.data && e.data.value !== undefined ? ` (${fmtValue(e.data.value)})` : '')),
      ]));
    }
    $('events-list').replaceChildren(frag);
  }

  // ---------- live stream ----------

  function setStreamState(ok, text) {
    $('stream-state').textContent = text;
    $('stream-state').className = 'pill ' + (ok ? 'ok' : 'bad');
    $('banner').hidden = ok;
  }

  function stopStream() {
    if (state.source) { state.source.close(); state.source = null; }
  }

  function startStream() {
    stopStream();
    const source = new EventSource('/api/stream');
    state.source = source;
    let opened = false;
    source.addEventListener('hello', () => {
      const reconnect = opened || state.reconnectDelay > 1000 || !$('banner').hidden;
      opened = true;
      state.reconnectDelay = 1000;
      setStreamState(true, 'live');
      // Anything may have happened while we were away.
      if (reconnect) reloadAll();
    });
    source.addEventListener('message', (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (_) { return; }
      onStreamMessage(msg, ev.data);
    });
    source.addEventListener('lagged', () => reloadAll());
    source.onerror = () => {
      setStreamState(false, 'disconnected');
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. the session expired or the gateway restarted): retry ourselves.
        state.source = null;
        const delay = state.reconnectDelay;
        state.reconnectDelay = Math.min(state.reconnectDelay * 2, 15000);
        setTimeout(async () => {
          const me = await api('/api/me').catch(() => null);
          if (me && me.ok) startStream();
          else if (!me) { setTimeout(startStream, 0); }
        }, delay);
      }
    };
  }

  function onStreamMessage(msg, raw) {
    appendLog(raw);
    if (msg.type === 'readings') {
      const m = meterRow(msg.meterId);
      for (const r of msg.readings) {
        m.lastReadingAt = Math.max(m.lastReadingAt || 0, r.ts);
        m.lastSeen = Math.max(m.lastSeen || 0, r.ts);
        if (msg.meterId === state.selected) {
          state.detailReadings.set(r.register, { value: r.value, unit: r.unit, ts: r.ts });
          // Live points extend raw history only (aggregated ranges are reloaded with the range picker).
          if (typeof r.value === 'number' && !state.historyStep) {
            if (!state.history.has(r.register)) state.history.set(r.register, []);
            const pts = state.history.get(r.register);
            pts.push({ ts: r.ts, value: r.value });
            if (pts.length > MAX_POINTS) pts.splice(0, pts.length - MAX_POINTS);
            state.historyUnits.set(r.register, r.unit);
          }
          state.detailDirty = true;
        }
      }
      if (!m.protocol) m.protocol = msg.source;
      markRow(msg.meterId);
    } else if (msg.type === 'status') {
      const m = meterRow(msg.meterId);
      m.online = msg.online;
      m.lastSeen = Math.max(m.lastSeen || 0, msg.ts);
      if (msg.online) { m.ip = msg.ip; m.protocol = msg.protocol; m.connectedAt = msg.connectedAt; }
      markRow(msg.meterId);
      if (msg.meterId === state.selected) renderDetailHeader({ meterId: msg.meterId, online: msg.online, ip: msg.ip, protocol: msg.protocol });
    } else if (msg.type === 'event') {
      state.events.unshift(msg);
      if (state.events.length > MAX_EVENTS) state.events.length = MAX_EVENTS;
      state.eventsDirty = true;
      if (msg.event.startsWith('alarm') && !state.alarmsReloadPending) {
        // A fleet can raise many alarms at once: one reload per burst.
        state.alarmsReloadPending = true;
        setTimeout(() => loadAlarms().then(() => {
          state.alarmsReloadPending = false;
          const counts = new Map();
          for (const a of state.alarms) counts.set(a.meterId, (counts.get(a.meterId) || 0) + 1);
          for (const m of state.meters.values()) {
            const n = counts.get(m.meterId) || 0;
            if ((m.activeAlarms || 0) !== n) { m.activeAlarms = n; markRow(m.meterId); }
          }
        }), 300);
      }
    }
  }

  function appendLog(raw) {
    if (state.logPaused) return;
    state.pendingLog.push(new Date().toLocaleTimeString([], { hour12: false }) + ' ' + raw);
    if (state.pendingLog.length > MAX_LOG) state.pendingLog.splice(0, state.pendingLog.length - MAX_LOG);
  }

  function flushLog() {
    if (!state.pendingLog.length) return;
    const log = $('log');
    const frag = document.createDocumentFragment();
    for (const line of state.pendingLog) frag.append(el('li', { text: line }));
    state.pendingLog = [];
    log.append(frag);
    let extra = log.childElementCount - MAX_LOG;
    while (extra-- > 0) log.firstElementChild.remove();
    log.scrollTop = log.scrollHeight;
  }

  // Live updates are applied to the data at once and to the DOM at most twice per second: changed rows in place,
  // a full re-sort/rebuild only when rows come or go (and not more often than its own cost allows).
  function frame() {
    const now = performance.now();
    const cost = Number($('meters-table').dataset.renderMs || 0);
    if (state.tableDirty && now - state.lastFullRender > Math.max(1000, cost * 10)) renderMeters();
    if (state.dirtyRows.size) {
      for (const id of state.dirtyRows) {
        const tr = state.rowEls.get(id), m = state.meters.get(id);
        if (tr && m) fillRow(tr, m);
      }
      state.dirtyRows.clear();
      updateMeterCounts();
    }
    if (state.detailDirty) renderDetail();
    if (state.eventsDirty) { state.eventsDirty = false; renderEvents(); }
    flushLog();
  }

  // ---------- commands ----------

  function setTemplate() {
    $('command-params').value = JSON.stringify(PARAM_TEMPLATES[$('command-method').value] || {}, null, 1);
  }

  // The gateway's spellings of a reconnect (request.rs); anything else is treated as a disconnect when asking.
  const RELAY_CLOSE = ['close', 'on', 'connect', 'reconnect'];

  // Resolves true only when the user confirms, in the page's dialog, switching the relay of `meter` as `params` say.
  function confirmRelay(meter, params) {
    const dialog = $('relay-confirm');
    const wanted = params && typeof params === 'object' ? (params.state ?? params.action) : undefined;
    const open = !RELAY_CLOSE.includes(String(wanted).toLowerCase());
    $('relay-confirm-title').textContent = open ? 'Disconnect the supply?' : 'Reconnect the supply?';
    $('relay-confirm-text').textContent = open
      ? `This opens the relay of meter ${meter}: the premises it supplies lose power.`
      : `This closes the relay of meter ${meter}: the premises it supplies get power again.`;
    $('relay-confirm-ok').textContent = open ? `Open relay of ${meter}` : `Close relay of ${meter}`;
    dialog.returnValue = '';
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'confirm'), { once: true });
      dialog.showModal();
    });
  }

  async function sendCommand(ev) {
    ev.preventDefault();
    const out = $('command-response');
    out.classList.remove('failed');
    let params;
    try {
      params = $('command-params').value.trim() ? JSON.parse($('command-params').value) : {};
    } catch (e) {
      out.textContent = 'Parameters are not valid JSON: ' + e.message;
      out.classList.add('failed');
      return;
    }
    const meter = $('command-meter').value.trim();
    if (!meter) return;
    if ($('command-method').value === 'relay_control' && !(await confirmRelay(meter, params))) {
      out.textContent = `relay_control to ${meter} not sent (cancelled)`;
      delete out.dataset.status;
      return;
    }
    $('command-send').disabled = true;
    out.textContent = `sending ${$('command-method').value} to ${meter}…`;
    const r = await api('/api/meters/' + encodeURIComponent(meter) + '/commands', {
      method: 'POST',
      body: { method: $('command-method').value, params },
    });
    $('command-send').disabled = !(state.me && state.me.canCommand);
    out.textContent = `HTTP ${r.status}\n` + JSON.stringify(r.body, null, 2);
    out.dataset.status = String(r.status);
    out.classList.toggle('failed', !r.ok);
  }

  // ---------- routing ----------

  function routeFromHash() {
    const m = location.hash.match(/^#\/meters\/(.+)$/);
    if (m) {
      let id;
      try { id = decodeURIComponent(m[1]); } catch (_) { id = m[1]; }
      openDetail(id, false);
    }
  }

  // ---------- wiring ----------

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', onLogin);
    $('logout').addEventListener('click', onLogout);
    $('meter-search').addEventListener('input', (e) => { state.search = e.target.value; renderMeters(); });
    for (const th of document.querySelectorAll('#meters-table th[data-sort]')) {
      th.addEventListener('click', () => {
        const key = th.dataset.sort;
        state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
        renderMeters();
      });
    }
    $('meters-body').addEventListener('click', (e) => {
      const tr = e.target.closest('tr[data-meter]');
      if (tr) openDetail(tr.dataset.meter);
    });
    $('detail-close').addEventListener('click', closeDetail);
    $('range-picker').addEventListener('click', (e) => {
      const b = e.target.closest('button[data-range]');
      if (!b || !state.selected) return;
      state.range = Number(b.dataset.range);
      loadHistory(state.selected);
    });
    $('alarms-body').addEventListener('click', (e) => {
      const b = e.target.closest('button[data-alarm]');
      if (b) acknowledge(b.dataset.alarm, b);
    });
    $('command-method').addEventListener('change', setTemplate);
    $('command-form').addEventListener('submit', sendCommand);
    $('log-pause').addEventListener('click', () => {
      // Lines that arrived before the click belong to the frozen view: show them now, not at the next frame.
      if (!state.logPaused) flushLog();
      state.logPaused = !state.logPaused;
      $('log-pause').textContent = state.logPaused ? 'Resume' : 'Pause';
      $('log-pause').setAttribute('aria-pressed', String(state.logPaused));
    });
    $('log-clear').addEventListener('click', () => { state.pendingLog = []; $('log').replaceChildren(); });
    window.addEventListener('hashchange', routeFromHash);
    setTemplate();
    setInterval(frame, 500);
    start().catch(() => showLogin());
  });
})();
