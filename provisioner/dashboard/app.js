/* vdipool's dashboard: reads the control API (the same endpoints and checks
 * as vdipoolctl), follows GET /v1/events, and draws pools, desktops, golds
 * and datastores. What must stay true:
 *   - every value from the API is put into the page as text (textContent or
 *     a text node), never as HTML, and never into a style attribute;
 *   - the token (TCP listener) comes from the URL fragment or the form, is
 *     kept in this tab's sessionStorage only, and is sent as a bearer header,
 *     never in a URL;
 *   - every action asks for confirmation and shows the API's answer. */
'use strict';

const TOKEN_KEY = 'vdipool.token';
const STATE_ORDER = ['assigned', 'ready', 'booting', 'resuming', 'starting', 'cloning', 'paused',
  'unreachable', 'adopting', 'ending', 'failed', 'empty'];
const ROWS_SHOWN = 500;

const model = {
  status: null,
  pools: new Map(),     // name -> GET /v1/pools entry
  desktops: new Map(),  // name -> desktop (GET /v1/pools/{pool}, then events)
  images: null,         // GET /v1/images
  families: new Map(),  // gold name -> GET /v1/golds/{name} (families with versions)
  goldList: [],         // GET /v1/golds
  space: null,          // GET /v1/space
  hosts: [],            // GET /v1/hosts
  detail: null,         // GET /v1/desktops/{name} of the selected desktop
};
const ui = { view: 'pools', selected: null, needToken: false, renderQueued: false };

/* ---- small helpers ------------------------------------------------------------- */

function $(id) { return document.getElementById(id); }

/* An element with attributes (never 'style') and children (strings become
 * text nodes). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/* A bar of segments [{cls, value, title}], widths in proportion to total. */
function bar(segments, total, thin) {
  const b = el('div', { class: thin ? 'bar thin' : 'bar' });
  const sum = total || segments.reduce((a, s) => a + s.value, 0) || 1;
  for (const s of segments) {
    if (!(s.value > 0)) continue;
    const span = el('span', { class: s.cls, title: s.title });
    span.style.width = Math.max(100 * s.value / sum, s.min ? 0.6 : 0).toFixed(3) + '%';
    b.append(span);
  }
  return b;
}

function bytes(n) {
  if (n === undefined || n === null) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = Number(n), i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0)) + ' ' + units[i];
}

function duration(seconds) {
  if (seconds === undefined || seconds === null || seconds < 0) return '';
  seconds = Math.floor(seconds);
  if (seconds < 60) return seconds + 's';
  const m = Math.floor(seconds / 60), s = seconds % 60;
  if (m < 60) return m + 'm ' + s + 's';
  const h = Math.floor(m / 60);
  if (h < 48) return h + 'h ' + (m % 60) + 'm';
  return Math.floor(h / 24) + 'd ' + (h % 24) + 'h';
}

/* A time of today as 14:03:27, an earlier one as 2026-11-24 14:03. */
function clock(unix) {
  if (!unix) return '';
  const d = new Date(unix * 1000), pad = n => String(n).padStart(2, '0');
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (d.toDateString() === new Date().toDateString()) return time + ':' + pad(d.getSeconds());
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

function now() { return Date.now() / 1000; }
function base(path) { return path ? String(path).split('/').pop() : ''; }

function notice(text, isError) {
  const n = $('notice');
  $('notice-text').textContent = text;
  n.className = isError ? 'error' : '';
  n.hidden = false;
  clearTimeout(notice.timer);
  if (!isError) notice.timer = setTimeout(() => { n.hidden = true; }, 10000);
}

/* ---- the API --------------------------------------------------------------------- */

function authHeaders() {
  const t = sessionStorage.getItem(TOKEN_KEY);
  return t ? { Authorization: 'Bearer ' + t } : {};
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const init = { method, headers: authHeaders(), cache: 'no-store' };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (res.status === 401) askToken();
  if (!res.ok) {
    const why = data && (data.error || (data.errors && JSON.stringify(data.errors)));
    throw new ApiError(res.status, why || (res.status + ' ' + res.statusText));
  }
  return data;
}

function takeTokenFromFragment() {
  const m = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    // Out of the address bar, history and screenshots.
    history.replaceState(null, '', location.pathname + location.search);
  }
}

function askToken() {
  if (ui.needToken) return;
  ui.needToken = true;
  sessionStorage.removeItem(TOKEN_KEY);
  $('token-form').hidden = false;
  $('token-input').focus();
  setLive(false, 'token needed');
}

/* ---- loading and following -------------------------------------------------------- */

async function loadPools(withDesktops) {
  const list = await api('GET', '/v1/pools');
  const names = new Set(list.pools.map(p => p.name));
  model.pools = new Map(list.pools.map(p => [p.name, p]));
  if (withDesktops) {
    const desktops = new Map();
    await Promise.all(list.pools.map(p => loadDesktops(p.name, desktops).catch(() => null)));
    model.desktops = desktops;
  } else {
    for (const [name, d] of model.desktops) if (!names.has(d.pool)) model.desktops.delete(name);
  }
}

/* A pool's desktops a page at a time: vdipoold builds each answer on its
 * loop, so a pool of thousands is read in pieces rather than one answer of
 * megabytes. */
async function loadDesktops(pool, into) {
  const PAGE = 1000;
  for (let offset = 0; ; offset += PAGE) {
    const page = await api('GET', `/v1/pools/${encodeURIComponent(pool)}?offset=${offset}&limit=${PAGE}`);
    for (const d of page.desktops || []) into.set(d.name, d);
    if (!page.desktops || offset + PAGE >= page.desktops_total) return;
  }
}

async function loadGolds() {
  const [images, golds] = await Promise.all([api('GET', '/v1/images'), api('GET', '/v1/golds')]);
  model.images = images;
  model.goldList = golds.golds || [];
  const families = new Map();
  await Promise.all(model.goldList.filter(g => g.dir).map(async g => {
    try { families.set(g.name, await api('GET', '/v1/golds/' + encodeURIComponent(g.name))); }
    catch (e) { families.set(g.name, { error: e.message, versions: [] }); }
  }));
  model.families = families;
}

async function loadSpace() {
  const [space, hosts] = await Promise.all([api('GET', '/v1/space'), api('GET', '/v1/hosts')]);
  model.space = space;
  model.hosts = hosts.hosts || [];
}

async function loadDetail() {
  if (!ui.selected) { model.detail = null; return; }
  try { model.detail = await api('GET', '/v1/desktops/' + encodeURIComponent(ui.selected)); }
  catch (e) { model.detail = { name: ui.selected, gone: e.message }; }
}

async function loadAll() {
  await Promise.all([loadPools(true), loadGolds(), loadSpace(), loadDetail()]);
  model.status = await api('GET', '/v1/status');
  render();
}

/* Pools' counts after desktop events, at most every 250 ms. */
function poolsSoon() {
  if (poolsSoon.timer) return;
  poolsSoon.timer = setTimeout(async () => {
    poolsSoon.timer = null;
    try { await loadPools(false); render(); } catch (e) { /* the stream's state says it */ }
  }, 250);
}

function onEvent(type, data) {
  if (type === 'hello') {
    model.status = data;
    loadAll().catch(e => notice('Cannot read the service: ' + e.message, true));
  } else if (type === 'desktop') {
    model.desktops.set(data.name, data);
    if (data.name === ui.selected) loadDetail().then(render);
    poolsSoon();
    render();
  }
}

function setLive(on, text) {
  const l = $('live');
  l.className = on ? 'live' : 'live off';
  l.textContent = text || (on ? 'live' : 'reconnecting');
}

/* GET /v1/events read through fetch (EventSource cannot send the token). */
async function follow() {
  let backoff = 500;
  while (!ui.needToken) {
    try {
      const res = await fetch('/v1/events', { headers: authHeaders(), cache: 'no-store' });
      if (res.status === 401) { askToken(); return; }
      if (!res.ok) throw new Error('events: ' + res.status);
      setLive(true);
      backoff = 500;
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let type = 'message', data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) type = line.slice(7);
            else if (line.startsWith('data: ')) data += line.slice(6);
          }
          if (data) {
            try { onEvent(type, JSON.parse(data)); } catch (e) { /* one bad event is skipped */ }
          }
        }
      }
    } catch (e) { /* reconnect below */ }
    if (ui.needToken) return;
    setLive(false);
    await new Promise(r => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 10000);
  }
}

/* Space, golds and the clocks of ages, every 10 s. */
async function tick() {
  if (ui.needToken) return;
  try {
    if (ui.view === 'golds' || ui.view === 'desktops') await loadGolds();
    if (ui.view === 'datastores') await loadSpace();
    await loadPools(false);
  } catch (e) { /* shown by the stream's state */ }
  render();
}

/* ---- actions ------------------------------------------------------------------------ */

function confirmAction(text, okLabel) {
  return new Promise(resolve => {
    const d = $('confirm');
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = okLabel;
    const done = answer => {
      $('confirm-ok').onclick = $('confirm-cancel').onclick = d.oncancel = null;
      if (d.open) d.close();
      resolve(answer);
    };
    $('confirm-ok').onclick = () => done(true);
    $('confirm-cancel').onclick = () => done(false);
    d.oncancel = () => done(false);
    d.showModal();
  });
}

async function act(question, okLabel, method, path, body, describe) {
  if (!await confirmAction(question, okLabel)) return;
  try {
    const answer = await api(method, path, body);
    notice(describe(answer), false);
  } catch (e) {
    notice('Refused: ' + e.message, true);
  }
  loadAll().catch(() => {});
}

function releaseDesktop(d) {
  const assigned = d.state === 'assigned';
  const q = assigned
    ? `End ${d.user}'s session on ${d.name}? The desktop and its child are destroyed and the pool makes a fresh one.`
    : `End ${d.name} (${d.state})? It is destroyed with its child and the pool makes a fresh one.`;
  act(q, assigned ? 'Release' : 'End desktop', 'POST',
    '/v1/desktops/' + encodeURIComponent(d.name) + '/release', { reason: 'operator' },
    a => `${a.name}: ${assigned ? 'session ended' : 'ended'} by an operator; it is ${a.state}, the pool refills.`);
}

function drainPool(p, drain) {
  const q = drain
    ? `Drain pool ${p.name}? No new sessions; its spares end; the ${p.desktops_by_state.assigned} running sessions go on until their users log off. The drain is kept across restarts.`
    : `Open pool ${p.name} again? It makes its ${p.spares} spares again.`;
  act(q, drain ? 'Drain' : 'Undrain', 'POST',
    '/v1/pools/' + encodeURIComponent(p.name) + (drain ? '/drain' : '/undrain'), undefined,
    a => `Pool ${a.name} is ${a.drained ? 'drained' : 'open'}.`);
}

function rolloutPool(p) {
  act(`Roll pool ${p.name} out to ${p.held_for_rollout_to}? Ready desktops are replaced; sessions finish.`,
    'Roll out', 'POST', '/v1/pools/' + encodeURIComponent(p.name) + '/rollout', undefined,
    a => `Pool ${a.name} rolls out to ${a.gold}.`);
}

function publishGold(name) {
  act(`Publish the open edit of ${name} as its next version? Pools that follow ${name} roll over to it.`,
    'Publish', 'POST', '/v1/golds/' + encodeURIComponent(name) + '/publish', {},
    v => `${name}: version ${v.version} is published and current; pools that follow it roll over.`);
}

function rollbackGold(name, version) {
  act(`Make version ${version} of ${name} current again? Pools that follow ${name} roll over to it.`,
    'Roll back', 'POST', '/v1/golds/' + encodeURIComponent(name) + '/rollback', { to: version },
    a => `${a.gold || name}: version ${a.current} is current (was ${a.was}).`);
}

/* ---- views ----------------------------------------------------------------------------- */

/* Redraws the view at most every 200 ms: a busy pool sends hundreds of
 * events a second, and a view of thousands of desktops is redrawn whole. */
function render() {
  if (ui.renderQueued) return;
  ui.renderQueued = true;
  const wait = Math.max(0, 200 - (performance.now() - (ui.renderedAt || 0)));
  setTimeout(() => requestAnimationFrame(() => {
    ui.renderQueued = false;
    ui.renderedAt = performance.now();
    renderSummary();
    if (ui.view === 'pools') renderPools();
    else if (ui.view === 'desktops') renderDesktops();
    else if (ui.view === 'golds') renderGolds();
    else renderDatastores();
  }), wait);
}

function renderSummary() {
  const s = model.status;
  if (!s) return;
  let assigned = 0, ready = 0;
  for (const p of model.pools.values()) {
    assigned += p.desktops_by_state.assigned || 0;
    ready += p.desktops_by_state.ready || 0;
  }
  $('summary').textContent = `${model.pools.size} pools · ${assigned} sessions · ${ready} ready · ` +
    `hosts ${s.hosts_connected}/${s.hosts} connected · vdipoold ${s.version}` +
    (s.started_at ? `, up ${duration(now() - s.started_at)}` : '');
}

/* A map of gold paths to "family vN" from the families' versions. */
function goldNames() {
  const names = new Map();
  for (const [family, f] of model.families)
    for (const v of f.versions || []) names.set(v.path, `${family} v${v.version}`);
  for (const g of model.goldList) if (g.path && !names.has(g.path)) names.set(g.path, g.name);
  return names;
}

function stateLegend(counts, cls) {
  return el('div', { class: 'legend' }, STATE_ORDER.filter(s => counts[s]).map(s =>
    el('span', { class: 's-' + s + (cls ? ' ' + cls : ''), 'data-state': s },
      s + ' ', el('b', { class: 'n' }, counts[s]))));
}

function renderPools() {
  const view = $('view-pools');
  const names = goldNames();
  const cards = el('div', { class: 'cards' });
  if (!model.pools.size) cards.append(el('p', { class: 'empty-note' }, 'No pools in the config.'));
  for (const p of model.pools.values()) {
    const counts = p.desktops_by_state;
    const used = STATE_ORDER.filter(s => s !== 'empty').reduce((a, s) => a + (counts[s] || 0), 0);
    const total = Math.max(p.size, used);
    const segments = STATE_ORDER.filter(s => s !== 'empty').map(s => ({
      cls: 's-' + s, value: counts[s] || 0, title: `${s}: ${counts[s] || 0}` }));
    const card = el('section', { class: 'card pool', 'data-pool': p.name },
      el('h2', {}, p.name,
        p.drained ? el('span', { class: 'tag warn' }, 'drained since ' + clock(p.drained_since)) : null,
        p.draining ? el('span', { class: 'tag warn' }, 'being removed') : null,
        p.blocked ? el('span', { class: 'tag bad' }, 'blocked') : null,
        p.held_for_rollout_to ? el('span', { class: 'tag warn' }, 'roll-out held') : null),
      el('div', { class: 'sub' }, `gold ${names.get(p.gold) || base(p.gold)} · datastore ${p.datastore} · start ${p.start} · ready when ${p.ready_when}`),
      p.blocked ? el('div', { class: 'problem' }, p.blocked) : null,
      p.no_host ? el('div', { class: 'problem' }, 'No host can take a desktop: ' + p.no_host) : null,
      p.boot_problem ? el('div', { class: 'problem warn' }, p.boot_problem) : null,
      p.memory_image && p.memory_image.problem ? el('div', { class: 'problem warn' }, 'Memory image: ' + p.memory_image.problem) : null,
      el('h3', {}, `Desktops: ${used} of ${p.size}`),
      bar(segments, total),
      stateLegend(counts));
    const fig = el('dl', { class: 'figures' });
    const add = (k, ...v) => fig.append(el('dt', {}, k), el('dd', {}, ...v));
    add('Spares', `${p.spares} wanted, `, el('b', { class: 'spares-ready' }, counts.ready || 0), ' ready');
    const golds = Object.entries(p.desktops_by_gold || {});
    if (golds.length > 1 || p.retiring_gold) {
      const rollSegs = golds.map(([g, n], i) => ({ cls: 'g' + (i % 5), value: n, title: `${names.get(g) || base(g)}: ${n}` }));
      add('Roll-out', el('div', {}, bar(rollSegs, 0, true),
        el('div', { class: 'legend' }, golds.map(([g, n], i) =>
          el('span', { class: 'g' + (i % 5) }, `${names.get(g) || base(g)} ${n}`)))));
    } else if (golds.length === 1) {
      add('Gold in use', `all ${golds[0][1]} on ${names.get(golds[0][0]) || base(golds[0][0])}`);
    }
    const h = p.sessions_last_hour;
    if (h) {
      const reasons = Object.entries(h.ended_by_reason).map(([r, n]) => `${r} ${n}`).join(', ');
      const span = now() - h.since < 3590 ? ` (since ${clock(h.since)})` : '';
      add('Last hour' + span, `${h.started} started · ${h.ended} ended${reasons ? ' (' + reasons + ')' : ''}`);
    }
    const hosts = Object.entries(p.desktops_by_host || {});
    if (hosts.length) add('Hosts', hosts.map(([n, c]) => `${n} ${c}`).join(', '));
    if (p.spares_boot_seconds) add('Spares boot', `median ${p.spares_boot_seconds.median.toFixed(1)} s (max ${p.spares_boot_seconds.max.toFixed(1)} s)`);
    if (p.memory && p.memory.desktops) add('Memory', `${bytes(p.memory.rss_bytes)} resident in ${p.memory.desktops} ${p.memory.desktops === 1 ? 'desktop' : 'desktops'}`);
    card.append(fig);
    const actions = el('div', { class: 'actions' },
      el('button', { type: 'button', class: 'act', onclick: () => { showView('desktops', p.name); } }, 'Desktops'),
      p.draining ? null : el('button', { type: 'button', class: 'act' + (p.drained ? '' : ' danger'), 'data-action': p.drained ? 'undrain' : 'drain', onclick: () => drainPool(p, !p.drained) }, p.drained ? 'Undrain' : 'Drain'),
      p.held_for_rollout_to ? el('button', { type: 'button', class: 'act', onclick: () => rolloutPool(p) }, 'Roll out') : null);
    card.append(actions);
    cards.append(card);
  }
  view.replaceChildren(cards);
}

function desktopRow(d, names, childBytes) {
  const sessionAge = d.state === 'assigned' && d.session_started_at ? duration(now() - d.session_started_at) : '';
  const tr = el('tr', { 'data-desktop': d.name, class: d.name === ui.selected ? 'selected' : null,
    onclick: () => selectDesktop(d.name) },
  el('td', { class: 'name' }, d.name),
  el('td', {}, d.pool),
  el('td', { class: 'state' }, el('span', { class: 'badge s-' + d.state }, d.state)),
  el('td', { class: 'user', title: d.user || '' }, d.user || ''),
  el('td', {}, d.host || ''),
  el('td', {}, d.gold ? (names.get(d.gold) || base(d.gold)) : ''),
  el('td', { class: 'num' }, d.child && childBytes.has(d.child) ? bytes(childBytes.get(d.child)) : ''),
  el('td', { class: 'num' }, d.boot_seconds ? d.boot_seconds.toFixed(1) + ' s' : ''),
  el('td', { class: 'num' }, sessionAge),
  el('td', { class: 'num' }, duration(now() - d.state_since)));
  return tr;
}

function renderDesktops() {
  const poolSel = $('filter-pool');
  const want = [''].concat([...model.pools.keys()]);
  if (poolSel.options.length !== want.length || want.some((n, i) => poolSel.options[i].value !== n)) {
    const keep = poolSel.value;
    poolSel.replaceChildren(...want.map(n => el('option', { value: n }, n || 'all')));
    poolSel.value = want.includes(keep) ? keep : '';
  }
  const stateSel = $('filter-state');
  if (stateSel.options.length === 2)
    for (const s of STATE_ORDER) stateSel.append(el('option', { value: s }, s));
  const pool = poolSel.value, state = stateSel.value, text = $('filter-text').value.trim().toLowerCase();
  const names = goldNames();
  const childBytes = new Map();
  for (const g of (model.images && model.images.golds) || [])
    for (const c of g.children) childBytes.set(c.path, c.allocated_bytes);
  const rows = [];
  let matched = 0;
  const all = [...model.desktops.values()].sort((a, b) => a.pool.localeCompare(b.pool) || a.slot - b.slot);
  for (const d of all) {
    if (pool && d.pool !== pool) continue;
    if (state === '' && d.state === 'empty') continue;
    if (state && state !== '*' && d.state !== state) continue;
    if (text && !d.name.toLowerCase().includes(text) && !(d.user || '').toLowerCase().includes(text)) continue;
    matched++;
    if (rows.length < ROWS_SHOWN) rows.push(desktopRow(d, names, childBytes));
  }
  $('desktops-table').tBodies[0].replaceChildren(...rows);
  $('desktops-count').textContent = matched > rows.length
    ? `showing ${rows.length} of ${matched} desktops (filter to see the others)` : `${matched} desktops`;
  renderDetail();
}

function selectDesktop(name) {
  ui.selected = name;
  loadDetail().then(render);
}

function renderDetail() {
  const aside = $('desktop-detail');
  const d = model.detail;
  if (!ui.selected || !d) { aside.hidden = true; return; }
  aside.hidden = false;
  const close = el('button', { type: 'button', class: 'act', onclick: () => { ui.selected = null; model.detail = null; render(); } }, 'Close');
  if (d.gone) {
    aside.replaceChildren(el('h2', {}, d.name), el('p', {}, d.gone), close);
    return;
  }
  const fig = el('dl', { class: 'figures' });
  const add = (k, v) => { if (v !== undefined && v !== null && v !== '') fig.append(el('dt', {}, k), el('dd', {}, v)); };
  add('State', el('span', { class: 'badge s-' + d.state }, d.state));
  add('Since', clock(d.state_since));
  add('Pool', d.pool);
  add('User', d.user);
  add('Session', d.session_id ? `#${d.session_id}, started ${clock(d.session_started_at)}` : '');
  add('Host', d.host);
  add('Display', d.display);
  add('Child', d.child);
  add('Gold', d.gold);
  add('Resumed from', d.resumed_from);
  add('Boot', d.boot_seconds ? d.boot_seconds.toFixed(2) + ' s' : '');
  add('Agent', d.agent ? `${d.agent} since ${clock(d.agent_since)}` : '');
  add('Hostname', d.hostname);
  add('Logged in', d.logged_in_users ? d.logged_in_users.join(', ') || 'nobody' : '');
  add('Idle', d.idle_seconds !== undefined && d.idle_seconds >= 0 ? duration(d.idle_seconds) : '');
  add('Paused', d.paused_reason ? `${d.paused_reason} since ${clock(d.paused_since)}` : '');
  add('Was', d.state_before);
  add('Last failure', d.last_failure);
  const history = el('table', { class: 'history' },
    el('thead', {}, el('tr', {}, el('th', {}, 'When'), el('th', {}, 'From'), el('th', {}, 'To'), el('th', {}, 'Why'))),
    el('tbody', {}, (d.history || []).slice().reverse().map(c =>
      el('tr', {}, el('td', {}, clock(c.at)), el('td', {}, c.from), el('td', {}, el('span', { class: 'badge s-' + c.to }, c.to)), el('td', {}, c.reason || '')))));
  const canEnd = !['empty', 'ending', 'unreachable', 'adopting'].includes(d.state);
  aside.replaceChildren(el('h2', {}, d.name), fig, el('h3', {}, 'Last state changes'), history,
    el('div', { class: 'actions' },
      canEnd ? el('button', { type: 'button', class: 'act danger', 'data-action': 'release', onclick: () => releaseDesktop(d) },
        d.state === 'assigned' ? 'Release' : 'End desktop') : null,
      close));
}

/* Golds: families -> versions -> children, every bar on one byte scale. */
function renderGolds() {
  const view = $('view-golds');
  const images = (model.images && model.images.golds) || [];
  const byPath = new Map(images.map(g => [g.gold, g]));
  let scale = 1;
  for (const g of images) {
    scale = Math.max(scale, g.virtual_size);
    for (const c of g.children) scale = Math.max(scale, c.allocated_bytes + c.worst_case_bytes);
  }
  const goldNode = (label, g, extra, actions) => {
    const children = g ? g.children : [];
    const alloc = children.reduce((a, c) => a + c.allocated_bytes, 0);
    const worst = children.reduce((a, c) => a + c.worst_case_bytes, 0);
    const marks = [];
    if (g && g.state !== 'sealed') marks.push(el('span', { class: 'tag ' + (g.state === 'tainted' ? 'bad' : 'warn') + ' mark' }, g.state));
    const li = el('li', {},
      el('div', { class: 'node gold' },
        el('div', { class: 'name', title: g ? g.gold : '' }, label, marks, extra, actions || null,
          el('span', { class: 'sub' }, `${children.length} ${children.length === 1 ? 'child' : 'children'} · ${bytes(alloc)} allocated · ${bytes(worst)} worst case`)),
        g ? bar([{ cls: 'k-gold', value: g.virtual_size, title: `virtual ${bytes(g.virtual_size)}` }], scale) : el('span', { class: 'sub' }, 'not in the catalog')));
    if (children.length) {
      const ul = el('ul', {});
      for (const c of children) {
        const tainted = g.state === 'tainted';
        ul.append(el('li', {}, el('div', { class: 'node' },
          el('div', { class: 'name', title: c.path }, base(c.path), ' ', el('span', { class: 'sub inline' }, `${c.pool || '-'} · ${bytes(c.allocated_bytes)}`),
            c.missing ? el('span', { class: 'tag bad mark' }, 'missing') : null,
            c.orphaned ? el('span', { class: 'tag bad mark' }, 'orphaned') : null,
            tainted ? el('span', { class: 'tag bad mark' }, 'tainted parent') : null),
          bar([{ cls: 'k-alloc', value: c.allocated_bytes, min: true, title: `allocated ${bytes(c.allocated_bytes)}` },
            { cls: 'k-worst', value: c.worst_case_bytes, title: `worst case ${bytes(c.worst_case_bytes)}` }], scale))));
      }
      li.append(ul);
    }
    return li;
  };
  const tree = el('ul', { class: 'tree' });
  const shown = new Set();
  for (const g of model.goldList) {
    const f = model.families.get(g.name);
    if (g.dir && f) {
      const versions = el('ul', {});
      for (const v of (f.versions || []).slice().reverse()) {
        shown.add(v.path);
        const rollback = v.state !== 'current' && v.state !== 'tainted'
          ? el('button', { type: 'button', class: 'act mark', 'data-action': 'rollback', onclick: () => rollbackGold(g.name, v.version) }, 'Make current') : null;
        const node = goldNode(`v${v.version}`, byPath.get(v.path),
          [el('span', { class: 'tag' + (v.state === 'current' ? '' : ' warn') + ' mark' }, v.state),
            v.note ? el('span', { class: 'sub' }, ' ' + v.note) : null], rollback);
        node.setAttribute('data-version', `${g.name}-${v.version}`);
        versions.append(node);
      }
      tree.append(el('li', { 'data-family': g.name }, el('div', { class: 'node gold' }, el('div', { class: 'name' }, `${g.name}`,
        el('span', { class: 'tag mark' }, 'family'), f.error ? el('span', { class: 'tag bad mark' }, f.error) : null,
        el('button', { type: 'button', class: 'act mark', 'data-action': 'publish', onclick: () => publishGold(g.name) }, 'Publish edit'),
        el('span', { class: 'sub' }, `${(f.versions || []).length} versions in ${g.dir}`))), versions));
    } else if (g.path) {
      shown.add(g.path);
      tree.append(goldNode(g.name, byPath.get(g.path)));
    }
  }
  for (const g of images) if (!shown.has(g.gold)) tree.append(goldNode(base(g.gold), g));
  view.replaceChildren(el('div', { class: 'card' },
    el('h2', {}, 'Golds and their children'),
    el('div', { class: 'scale' }, `All bars share one scale: full width is ${bytes(scale)}. A child: allocated (dark) and what it may still grow by, its worst case (light).`),
    images.length ? tree : el('p', { class: 'empty-note' }, 'No sealed golds yet.')));
}

function storeCard(s) {
  const card = el('section', { class: 'card store', 'data-datastore': s.name },
    el('h2', {}, s.name, el('span', { class: 'tag' }, s.kind === 'local' ? 'local to ' + s.host : 'shared')),
    el('div', { class: 'sub' }, s.path));
  if (s.error) { card.append(el('div', { class: 'problem' }, s.error)); return card; }
  const used = s.capacity - s.free;
  const other = Math.max(0, used - s.children_allocated);
  const room = Math.max(0, s.free - s.reserve);
  card.append(el('h3', {}, `Used ${bytes(used)} of ${bytes(s.capacity)}`),
    bar([{ cls: 'k-children', value: s.children_allocated, min: true, title: `children ${bytes(s.children_allocated)}` },
      { cls: 'k-other', value: other, title: `other files ${bytes(other)}` },
      { cls: 'k-free', value: room, title: `room ${bytes(room)}` },
      { cls: 'k-reserve', value: Math.min(s.reserve, s.free), title: `reserve ${bytes(s.reserve)}` }], s.capacity),
    el('div', { class: 'legend' }, el('span', { class: 'k-children' }, `children ${bytes(s.children_allocated)}`),
      el('span', { class: 'k-other' }, `other ${bytes(other)}`), el('span', { class: 'k-free' }, `room ${bytes(room)}`),
      el('span', { class: 'k-reserve' }, `reserve ${bytes(s.reserve)}`)));
  const growth = s.worst_case, within = Math.min(growth, room), past = Math.max(0, growth - room);
  card.append(el('h3', {}, `Admitted growth ${bytes(growth)}: overcommit ${s.overcommit < 0.1 ? s.overcommit.toPrecision(2) : s.overcommit.toFixed(2)}x of the room (at most ${s.max_overcommit}x)`),
    bar([{ cls: 'k-growth', value: within, min: true, title: `within the room ${bytes(within)}` },
      { cls: 'k-over', value: past, title: `past the room ${bytes(past)}` }], Math.max(room, growth)),
    el('div', { class: 'legend' }, el('span', { class: 'k-growth' }, `within the room ${bytes(within)}`),
      el('span', { class: 'k-over' }, `past the room ${bytes(past)}`)),
    el('dl', { class: 'figures' }, el('dt', {}, 'Children'), el('dd', {}, String(s.children))));
  return card;
}

function renderDatastores() {
  const view = $('view-datastores');
  const stores = (model.space && model.space.datastores) || [];
  const groups = new Map([['Shared datastores', []]]);
  for (const s of stores) {
    const key = s.kind === 'local' ? `Host ${s.host}` : 'Shared datastores';
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(s);
  }
  const parts = [];
  if (model.hosts.length > 1 || model.hosts.some(h => h.connection !== 'connected')) {
    parts.push(el('h3', {}, 'Hosts'), el('table', {},
      el('thead', {}, el('tr', {}, ['Host', 'Connection', 'State', 'Desktops', 'Free memory'].map(t => el('th', {}, t)))),
      el('tbody', {}, model.hosts.map(h => el('tr', {}, el('td', {}, h.name), el('td', {}, h.connection),
        el('td', {}, h.state || ''), el('td', { class: 'num' }, h.desktops),
        el('td', { class: 'num' }, h.free_memory !== undefined ? bytes(h.free_memory) + ' of ' + bytes(h.total_memory) : ''))))));
  }
  for (const [title, list] of groups) {
    if (!list.length) continue;
    parts.push(el('h3', {}, title), el('div', { class: 'cards' }, list.map(storeCard)));
  }
  if (!stores.length) parts.push(el('p', { class: 'empty-note' }, 'No datastores in the config.'));
  view.replaceChildren(...parts);
}

function showView(name, pool) {
  ui.view = name;
  for (const b of document.querySelectorAll('#tabs button')) b.classList.toggle('active', b.dataset.view === name);
  for (const v of ['pools', 'desktops', 'golds', 'datastores']) $('view-' + v).hidden = v !== name;
  if (pool !== undefined) { renderDesktops(); $('filter-pool').value = pool; }
  render();
  tick();
}

/* ---- start ------------------------------------------------------------------------------ */

function start() {
  takeTokenFromFragment();
  for (const b of document.querySelectorAll('#tabs button')) b.addEventListener('click', () => showView(b.dataset.view));
  for (const id of ['filter-pool', 'filter-state', 'filter-text']) $(id).addEventListener('input', render);
  $('notice-close').addEventListener('click', () => { $('notice').hidden = true; });
  $('token-form').addEventListener('submit', e => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token-input').value.trim());
    $('token-input').value = '';
    $('token-form').hidden = true;
    ui.needToken = false;
    begin();
  });
  begin();
  setInterval(tick, 10000);
}

function begin() {
  loadAll().catch(e => { if (!ui.needToken) notice('Cannot read the service: ' + e.message, true); });
  follow();
}

start();
