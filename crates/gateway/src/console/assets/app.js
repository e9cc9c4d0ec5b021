// The Portcullis console: a page that reads and writes through the same
// /api/v1 the CLI uses. Every value is put into the page as text (never as
// HTML); the session cookie is HttpOnly, and state changes carry the CSRF
// value /api/v1/me gives this page.
'use strict';

const state = { me: null, events: null };

// Bidirectional and invisible format characters shown as what they are:
// a statement must read on the page as it runs (U+202E can make
// `DELETE … WHERE x = 1` out of `DELETE …; /* …`).
const HIDDEN = /[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]/g;
function visible(text) {
  return String(text).replace(HIDDEN, (c) => `⟨U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, '0')}⟩`);
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') e.textContent = visible(v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === 'string' ? visible(c) : c);
  }
  return e;
}

function when(ms) {
  return ms ? new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '';
}

async function api(path, options) {
  const opts = Object.assign({ credentials: 'same-origin', headers: {} }, options || {});
  if (opts.method && opts.method !== 'GET' && state.me && state.me.csrf) {
    opts.headers['x-portcullis-csrf'] = state.me.csrf;
  }
  const resp = await fetch(path, opts);
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  return { status: resp.status, body };
}

async function start() {
  document.getElementById('signout').addEventListener('click', signOut);
  const r = await api('/api/v1/me');
  if (r.status !== 200) {
    const m = await api('/ui/methods');
    const methods = (m.status === 200 && m.body) || {};
    document.getElementById('signin-link').hidden = !methods.oidc;
    document.getElementById('signin-saml').hidden = !methods.saml;
    document.getElementById('signin-none').hidden = !!(methods.oidc || methods.saml);
    document.getElementById('signin').hidden = false;
    return;
  }
  state.me = r.body;
  document.getElementById('nav').hidden = false;
  document.getElementById('nav-audit').hidden = !state.me.admin;
  document.getElementById('nav-access').hidden = !state.me.admin;
  document.getElementById('who').hidden = false;
  document.getElementById('principal').textContent =
    state.me.principal + (state.me.admin ? ' (admin)' : '');
  window.addEventListener('hashchange', route);
  route();
}

async function signOut() {
  await api('/ui/logout', { method: 'POST' });
  window.location.assign('/ui/');
}

function route() {
  const page = document.getElementById('page');
  page.replaceChildren();
  if (state.events) { state.events.close(); state.events = null; }
  const hash = window.location.hash;
  let which = 'sessions';
  if (hash.startsWith('#/replay/')) which = 'replay';
  else if (hash.startsWith('#/reviews')) which = 'reviews';
  else if (hash.startsWith('#/tokens')) which = 'tokens';
  else if (hash.startsWith('#/audit') && state.me.admin) which = 'audit';
  else if (hash.startsWith('#/access') && state.me.admin) which = 'access';
  for (const name of ['sessions', 'reviews', 'tokens', 'access', 'audit']) {
    const link = document.getElementById('nav-' + name);
    if (name === which || (which === 'replay' && name === 'sessions')) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (which === 'replay') {
    const [id, query] = hash.slice('#/replay/'.length).split('?');
    replayPage(page, decodeURIComponent(id), new URLSearchParams(query || '').get('ev'));
  }
  else if (which === 'reviews') reviewsPage(page);
  else if (which === 'tokens') tokensPage(page);
  else if (which === 'audit') auditPage(page);
  else if (which === 'access') accessPage(page);
  else sessionsPage(page);
}

// Sessions: newest first, filtered, a page at a time.
function sessionsPage(page) {
  // `person`: a person's own sessions and their agents' (alice:
  // user:alice and agent:NAME@alice).
  const fields = ['principal', 'person', 'connection', 'protocol', 'outcome'];
  const inputs = {};
  const form = el('form', { class: 'filters', role: 'search', 'aria-label': 'Filter sessions' });
  for (const f of fields) {
    inputs[f] = el('input', { name: f, id: 'filter-' + f });
    form.append(el('label', { for: 'filter-' + f }, f[0].toUpperCase() + f.slice(1), inputs[f]));
  }
  const since = el('input', { type: 'datetime-local', id: 'filter-since', name: 'since' });
  form.append(el('label', { for: 'filter-since' }, 'Started after (UTC)', since));
  const live = el('input', { type: 'checkbox', id: 'filter-live' });
  form.append(el('label', { for: 'filter-live' }, 'Live only', live));
  form.append(el('button', { type: 'submit', text: 'Filter' }));
  const tbody = el('tbody', { id: 'sessions' });
  const more = el('button', { type: 'button', id: 'older', text: 'Older', hidden: true });
  const status = el('p', { class: 'note', id: 'sessions-status' });
  let before = null;
  async function load(reset) {
    if (reset) { tbody.replaceChildren(); before = null; }
    const q = new URLSearchParams();
    for (const f of fields) if (inputs[f].value) q.set(f, inputs[f].value);
    if (live.checked) q.set('live', '1');
    if (since.value) q.set('since', String(Date.parse(since.value + 'Z')));
    if (before) { q.set('before', before.ms); q.set('before_id', before.id); }
    const r = await api('/api/v1/sessions?' + q.toString());
    if (r.status !== 200) {
      status.textContent = (r.body && r.body.message) || 'Could not list sessions.';
      status.className = 'error';
      return;
    }
    for (const s of r.body.sessions) {
      tbody.append(el('tr', { 'data-session': s.id },
        el('td', { text: when(s.started_at_ms) }),
        el('td', { text: s.principal }),
        el('td', { text: s.connection }),
        el('td', { text: s.protocol }),
        s.live ? liveCell(s) : el('td', { text: s.outcome || '' }),
        el('td', {}, el('a', { href: '#/replay/' + encodeURIComponent(s.id), text: s.id }))));
    }
    before = r.body.next_before;
    more.hidden = !before;
    status.textContent = tbody.children.length ? '' : 'No sessions.';
  }
  form.addEventListener('submit', (e) => { e.preventDefault(); load(true); });
  more.addEventListener('click', () => load(false));
  const table = el('table', { 'aria-label': 'Sessions' },
    el('thead', {}, el('tr', {}, ...['Started', 'Principal', 'Connection', 'Protocol', 'Outcome', 'Session']
      .map((h) => el('th', { scope: 'col', text: h })))),
    tbody);
  page.append(el('h2', { text: 'Sessions' }), form, status, table, more);
  load(true);
}

// A live session's outcome cell: an admin may end it (through the store,
// on whichever gateway runs it).
function liveCell(s) {
  const cell = el('td', { class: 'live' }, 'live');
  if (!state.me.admin) return cell;
  const note = el('span', { role: 'status' });
  const end = el('button', {
    type: 'button', class: 'end', text: 'End', 'aria-label': 'End session ' + s.id,
    onclick: async () => {
      end.disabled = true;
      const r = await api(`/api/v1/sessions/${encodeURIComponent(s.id)}/end`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ reason: 'ended from the console by ' + state.me.principal }),
      });
      note.textContent = r.status === 202 ? ' ending…' : ' ' + ((r.body && r.body.message) || `refused (${r.status})`);
    },
  });
  cell.append(' ', end, note);
  return cell;
}

// Tokens: yours and your agents' (everyone's for an admin); mint one for
// an agent acting for you (its secret shown once), revoke.
function tokensPage(page) {
  const tbody = el('tbody', { id: 'tokens' });
  const status = el('p', { class: 'note', id: 'tokens-status' });
  const name = el('input', { id: 'token-agent', name: 'agent', required: true, pattern: '[A-Za-z0-9_.:-]+', placeholder: 'claude' });
  const ttl = el('select', { id: 'token-ttl', name: 'ttl' },
    ...['1h', '8h', '24h'].map((t) => el('option', { value: t, text: t, selected: t === '8h' })));
  const shown = el('div', { id: 'token-new', role: 'status' });
  const form = el('form', { class: 'filters', 'aria-label': 'New token for an agent' },
    el('label', { for: 'token-agent' }, 'Agent name', name),
    el('label', { for: 'token-ttl' }, 'Lifetime', ttl),
    el('button', { type: 'submit', text: 'Create' }));
  async function load() {
    const r = await api('/api/v1/tokens');
    if (r.status !== 200) {
      status.textContent = (r.body && r.body.message) || 'Could not list tokens.';
      status.className = 'error';
      return;
    }
    tbody.replaceChildren(...r.body.tokens.map((t) => {
      const cell = el('td', {});
      if (t.state === 'active') {
        cell.append(el('button', {
          type: 'button', class: 'revoke', text: 'Revoke', 'aria-label': 'Revoke token ' + t.id,
          onclick: async () => {
            const res = await api(`/api/v1/tokens/${encodeURIComponent(t.id)}/revoke`, { method: 'POST' });
            if (res.status === 200 && t.current) { window.location.reload(); return; }
            status.textContent = res.status === 200 ? '' : ((res.body && res.body.message) || `Refused (${res.status}).`);
            load();
          },
        }));
      }
      return el('tr', { 'data-token': t.id },
        el('td', { text: t.id + (t.current ? ' (this session)' : '') }),
        el('td', { text: t.principal + (t.on_behalf_of ? ' for ' + t.on_behalf_of : '') }),
        el('td', { text: t.kind }),
        el('td', { text: when(t.created_at * 1000) }),
        el('td', { text: t.expires_at ? when(t.expires_at * 1000) : 'never' }),
        el('td', { class: 'state', text: t.state }),
        cell);
    }));
    status.textContent = tbody.children.length ? '' : 'No tokens.';
  }
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const r = await api('/api/v1/tokens', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ principal: 'agent:' + name.value, ttl: ttl.value }),
    });
    if (r.status !== 201) {
      shown.replaceChildren(el('p', { class: 'error', text: (r.body && r.body.message) || `Refused (${r.status}).` }));
      return;
    }
    // Shown once: the gateway keeps only its hash.
    shown.replaceChildren(
      el('p', { text: `${r.body.principal}, acting for ${r.body.on_behalf_of} until ${when(r.body.expires_at * 1000)}. Copy it now; it is not shown again:` }),
      el('code', { id: 'token-secret', text: r.body.token }));
    name.value = '';
    load();
  });
  const table = el('table', { 'aria-label': 'Tokens' },
    el('thead', {}, el('tr', {}, ...['Token', 'Principal', 'Kind', 'Created', 'Expires', 'State', '']
      .map((h) => el('th', { scope: 'col', text: h })))),
    tbody);
  page.append(el('h2', { text: 'Tokens' }),
    el('p', { class: 'note', text: 'An agent’s token acts for you with your groups, and ends when you revoke it.' }),
    form, shown, status, table);
  load();
}

// Reviews: pending first, kept current by server-sent events.
function reviewsPage(page) {
  const list = el('div', { id: 'reviews' });
  const status = el('p', { class: 'note', id: 'reviews-status', text: 'Loading…' });
  page.append(el('h2', { text: 'Reviews' }),
    el('p', { class: 'note', text: 'You cannot approve your own request, nor one an agent made for you. A review needs as many distinct approvers as it says.' }),
    status, list);
  const render = (reviews) => {
    reviews.sort((a, b) => (a.state === 'pending' ? 0 : 1) - (b.state === 'pending' ? 0 : 1) || b.created_at - a.created_at);
    list.replaceChildren(...reviews.map(reviewCard));
    status.textContent = reviews.length ? '' : 'No reviews.';
  };
  const source = new EventSource('/api/v1/reviews/events');
  source.addEventListener('reviews', (e) => render(JSON.parse(e.data).reviews));
  source.addEventListener('error', () => { status.textContent = 'Reconnecting…'; });
  state.events = source;
}

function reviewCard(r) {
  const mine = r.requester === state.me.principal || r.on_behalf_of === state.me.principal;
  const card = el('article', { class: 'review', 'data-review': r.id, 'aria-label': 'Review ' + r.id });
  card.append(
    el('h3', {}, el('span', { text: r.id + ' · ' }), el('span', { class: 'state', text: r.state })),
    el('p', { text: `${r.requester}${r.on_behalf_of ? ' for ' + r.on_behalf_of : ''} on ${r.connection} (${r.kind}, ${r.classification})` }),
    el('pre', { text: r.action }),
    el('p', { class: 'note', text: `${r.approvals.length} of ${r.required} approvals · approvers: ${r.approvers.join(', ')} · expires ${when(r.expires_at * 1000)}` }));
  if (r.preview) card.append(previewBlock(r.preview));
  if (r.reason) card.append(el('p', { text: 'Reason: ' + r.reason }));
  if (r.state === 'pending') {
    const reason = el('input', { name: 'reason', 'aria-label': 'Reason for ' + r.id, placeholder: 'Reason' });
    const message = el('p', { class: 'error', role: 'alert' });
    const decide = async (verb) => {
      const res = await api(`/api/v1/reviews/${encodeURIComponent(r.id)}/${verb}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ reason: reason.value || undefined }),
      });
      message.textContent = res.status === 200 ? '' : ((res.body && res.body.message) || `Refused (${res.status}).`);
    };
    const approve = el('button', { type: 'button', class: 'approve', text: 'Approve', onclick: () => decide('approve') });
    const deny = el('button', { type: 'button', class: 'deny', text: 'Deny', onclick: () => decide('deny') });
    if (mine) {
      approve.disabled = true;
      card.append(el('p', { class: 'note', text: 'This request is yours (or your agent’s): someone else must approve it.' }));
    }
    card.append(el('div', {}, reason, ' ', approve, ' ', deny), message);
  }
  return card;
}

// What a held SQL write would change: counts per table, and a few rows
// before and after (masked by every masking rule of the connection).
function previewBlock(p) {
  const box = el('section', { class: 'preview', 'aria-label': 'Preview' }, el('h4', { text: 'Preview' }));
  if (p.status !== 'counted') {
    box.append(el('p', { class: 'note', text: 'Not previewed: ' + p.reason }));
    return box;
  }
  const counts = p.tables.length
    ? el('table', { 'aria-label': 'Rows changed' },
      el('thead', {}, el('tr', {}, ...['Table', 'Inserted', 'Updated', 'Deleted'].map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody', {}, ...p.tables.map((t) => el('tr', {},
        el('td', { text: t.table }), el('td', { text: String(t.inserted) }),
        el('td', { text: String(t.updated) }), el('td', { text: String(t.deleted) })))))
    : el('p', { text: 'Changes no rows.' });
  box.append(counts);
  const sm = p.sample;
  if (sm && sm.rows.length) {
    const cell = (v) => el('td', { text: v === null ? 'NULL' : v });
    const rows = [];
    for (const row of sm.rows) {
      if (row.before) rows.push(el('tr', { class: 'before' }, el('th', { scope: 'row', text: 'before' }), ...row.before.map(cell)));
      if (row.after) rows.push(el('tr', { class: 'after' }, el('th', { scope: 'row', text: 'after' }), ...row.after.map(cell)));
    }
    box.append(el('table', { 'aria-label': 'Sample of ' + sm.table },
      el('caption', { text: `Sample of ${sm.table} (masked)` }),
      el('thead', {}, el('tr', {}, el('td', {}), ...sm.columns.map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, ...rows)));
    if (sm.note) box.append(el('p', { class: 'note', text: sm.note }));
  }
  return box;
}

// Replay: what the caller saw, as recorded (masked), event by event, with
// the recording's digest checked against the one the audit log sealed.
async function replayPage(page, id, focus) {
  const r = await api(`/api/v1/sessions/${encodeURIComponent(id)}/recording`);
  page.append(el('h2', { text: 'Replay' }));
  if (r.status !== 200) {
    page.append(el('p', { class: 'error', id: 'replay-error', text: (r.body && r.body.message) || `Not available (${r.status}).` }));
    return;
  }
  const s = r.body.session;
  page.append(el('p', { text: `${s.principal} on ${s.connection} (${s.protocol}), ${when(s.started_at_ms)}, ${s.live ? 'live' : s.outcome}` }));
  page.append(el('p', {
    id: 'replay-digest',
    class: r.body.digest_matches ? 'live' : 'error',
    text: r.body.digest_matches
      ? `Recording digest ${r.body.digest.slice(0, 16)}… matches the audit log.`
      : `Recording digest ${r.body.digest.slice(0, 16)}… ${r.body.audit_digest ? 'does NOT match the audit log' : 'is not sealed yet (the session is live or was cut)'}.`,
  }));
  if (r.body.total > r.body.records.length) {
    page.append(el('p', { class: 'note', text: `Showing the first ${r.body.records.length} of ${r.body.total} events.` }));
  }
  const speed = el('select', { id: 'replay-speed', 'aria-label': 'Speed' },
    ...['1', '4', '16'].map((v) => el('option', { value: v, text: v + '×' })));
  const play = el('button', { type: 'button', id: 'replay-play', text: 'Play' });
  const list = el('ol', { id: 'replay', class: 'replay' });
  let table = null;
  r.body.records.forEach((rec, n) => {
    const item = el('li', { id: `ev-${n}`, 'data-type': rec.type },
      el('a', { href: `#/replay/${encodeURIComponent(id)}?ev=${n}`, text: `${(rec.t_us / 1e6).toFixed(3)}s`, title: `Link to event ${n + 1}` }), ' ',
      el('strong', { text: rec.type.replace(/_/g, ' ') }), ' ');
    switch (rec.type) {
      case 'pg_query': item.append(el('pre', { text: rec.sql })); table = null; break;
      case 'pg_parse': item.append(el('pre', { text: rec.sql })); break;
      case 'pg_bind': item.append(el('span', { text: `(${(rec.params || []).map((p) => (p === null ? 'NULL' : p)).join(', ')})` })); break;
      case 'pg_row_description':
        table = el('table', { 'aria-label': 'Rows' }, el('thead', {}, el('tr', {}, ...rec.columns.map((c) => el('th', { scope: 'col', text: c })))), el('tbody'));
        item.append(table);
        break;
      case 'pg_data_row':
        if (table) { table.tBodies[0].append(el('tr', {}, ...rec.cells.map((c) => el('td', { text: c === null ? 'NULL' : c })))); return; }
        item.append(el('span', { text: rec.cells.join(' | ') }));
        break;
      case 'pg_command_complete': item.append(el('span', { text: rec.tag })); table = null; break;
      case 'pg_error': item.append(el('span', { class: 'error', text: `${rec.code} ${rec.message}` })); break;
      case 'refused': item.append(el('span', { class: 'error', text: `${rec.code} ${rec.reason}` }), el('pre', { text: rec.statement })); break;
      case 'http_request': item.append(el('span', { text: `${rec.method} ${rec.path}` })); if (rec.body) item.append(el('pre', { text: pretty(rec.body) })); break;
      case 'http_response': item.append(el('span', { text: String(rec.status) })); if (rec.body) item.append(el('pre', { text: pretty(rec.body) })); break;
      case 'session_start': item.append(el('span', { text: `${rec.principal} on ${rec.connection} (${rec.protocol})` })); break;
      case 'session_end': item.append(el('span', { text: rec.outcome })); break;
      default: {
        const rest = Object.assign({}, rec); delete rest.type; delete rest.t_us;
        item.append(el('pre', { text: JSON.stringify(rest, null, 2) }));
      }
    }
    list.append(item);
  });
  let timer = null;
  play.addEventListener('click', () => {
    if (timer) { clearTimeout(timer); timer = null; play.textContent = 'Play'; return; }
    const items = [...list.children];
    items.forEach((i) => { i.hidden = true; });
    play.textContent = 'Pause';
    let n = 0;
    const times = r.body.records.map((x) => x.t_us);
    const next = () => {
      if (n >= items.length) { timer = null; play.textContent = 'Play'; return; }
      items[n].hidden = false;
      const gap = n + 1 < times.length ? (times[n + 1] - times[n]) / 1000 / Number(speed.value) : 0;
      n += 1;
      timer = setTimeout(next, Math.min(Math.max(gap, 0), 2000));
    };
    next();
  });
  page.append(el('div', {}, play, ' ', speed), list);
  // A link to one event: shown and marked.
  const target = focus !== null && document.getElementById(`ev-${focus}`);
  if (target) {
    target.classList.add('current');
    target.scrollIntoView({ block: 'center' });
  }
}

function pretty(body) {
  try { return JSON.stringify(JSON.parse(body), null, 2); } catch (_) { return body; }
}

// Access (admins): connections, their approval rules and the grants that
// reach them; every grant; and the policy asked about any caller.
async function accessPage(page) {
  const r = await api('/api/v1/access');
  if (r.status !== 200) {
    page.append(el('p', { class: 'error', text: (r.body && r.body.message) || 'Could not read the access rules.' }));
    return;
  }
  const masking = (c) => c.masking.length
    ? c.masking.map((m) => `${m.rule} (${m.groups.length ? m.groups.join(', ') : 'everyone'})`).join('; ')
    : 'none';
  const agent = (c) => {
    if (!c.agent) return 'direct';
    return c.agent.linked
      ? `${c.agent.name}: linked, heartbeat ${c.agent.heartbeat_age_s}s ago`
      : `${c.agent.name}: not linked to this gateway`;
  };
  const conns = el('tbody', { id: 'access-connections' }, ...r.body.connections.map((c) => el('tr', {},
    el('td', { text: c.name }),
    el('td', { text: c.protocol }),
    el('td', { text: c.approval ? `${c.approval.mode}: ${c.approval.required} of ${c.approval.approvers.join(', ')}` : 'none' }),
    el('td', { text: masking(c) }),
    el('td', { class: c.agent && !c.agent.linked ? 'error' : '', text: agent(c) }),
    el('td', { text: c.grants.join(', ') || 'nobody' }))));
  const agents = el('tbody', { id: 'access-agents' }, ...r.body.agents.map((a) => el('tr', {},
    el('td', { text: a.agent }),
    el('td', { text: a.version }),
    el('td', { text: a.address }),
    el('td', { text: a.connections.join(', ') }),
    el('td', { text: when(a.connected_at * 1000) }),
    el('td', { text: `${a.heartbeat_age_s}s ago` }))));
  const grants = el('tbody', { id: 'access-grants' }, ...r.body.grants.map((g) => el('tr', {},
    el('td', { text: g.name }),
    el('td', { text: g.principals.join(', ') }),
    el('td', { text: g.groups.join(', ') }),
    el('td', { text: g.connections.join(', ') }))));
  const fields = {};
  const form = el('form', { class: 'filters', id: 'explain', 'aria-label': 'Explain a decision' });
  for (const [name, label] of [['principal', 'Principal'], ['groups', 'Groups (comma-separated)'], ['connection', 'Connection'], ['on_behalf_of', 'On behalf of (optional)']]) {
    fields[name] = el('input', { name, id: 'explain-' + name });
    form.append(el('label', { for: 'explain-' + name }, label, fields[name]));
  }
  form.append(el('button', { type: 'submit', text: 'Explain' }));
  const answer = el('p', { id: 'explain-answer', role: 'status' });
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, input] of Object.entries(fields)) if (input.value) q.set(k, input.value);
    const res = await api('/api/v1/access/explain?' + q.toString());
    if (res.status !== 200) {
      answer.className = 'error';
      answer.textContent = (res.body && res.body.message) || `Refused (${res.status}).`;
    } else if (res.body.allow) {
      answer.className = 'live';
      answer.textContent = `Allowed by grant ${res.body.grant}.`;
    } else {
      answer.className = 'error';
      answer.textContent = 'Denied: ' + res.body.reason;
    }
  });
  const head = (...names) => el('thead', {}, el('tr', {}, ...names.map((h) => el('th', { scope: 'col', text: h }))));
  page.append(
    el('h2', { text: 'Access' }),
    el('h3', { text: 'Connections' }),
    el('table', { 'aria-label': 'Connections' }, head('Connection', 'Protocol', 'Approval', 'Masking', 'Served', 'Grants'), conns),
    el('h3', { text: 'Agents linked to this gateway' }),
    r.body.agents.length
      ? el('table', { 'aria-label': 'Agents' }, head('Agent', 'Version', 'Address', 'Connections', 'Linked since', 'Heartbeat'), agents)
      : el('p', { class: 'note', text: 'No agent is linked to this gateway.' }),
    el('h3', { text: 'Grants' }),
    el('table', { 'aria-label': 'Grants' }, head('Grant', 'Principals', 'Groups', 'Connections'), grants),
    el('h3', { text: 'Who can reach it, and how' }),
    form, answer);
}

// Audit (admins): entries newest first, the chain checked on demand
// against the signed checkpoints, and the whole log as JSON lines.
function auditPage(page) {
  const verdict = el('p', { id: 'audit-verdict', role: 'status' });
  const verify = el('button', { type: 'button', id: 'audit-verify', text: 'Verify the chain' });
  verify.addEventListener('click', async () => {
    verify.disabled = true;
    verdict.textContent = 'Verifying…';
    const r = await api('/api/v1/audit/verify');
    verify.disabled = false;
    if (r.status === 200 && r.body.ok) {
      verdict.className = 'live';
      verdict.textContent = `Chain intact: ${r.body.entries} entries up to ${r.body.last_seq}, ${r.body.checkpoints} signed checkpoint(s).`;
    } else {
      verdict.className = 'error';
      verdict.textContent = 'Verification failed: ' + ((r.body && (r.body.error || r.body.message)) || r.status);
    }
  });
  const exportLink = el('a', { class: 'button', href: '/api/v1/audit/export', text: 'Export (JSON lines)' });
  const tbody = el('tbody', { id: 'audit' });
  const more = el('button', { type: 'button', id: 'audit-older', text: 'Older', hidden: true });
  let before = null;
  async function load() {
    const q = new URLSearchParams({ limit: '100' });
    if (before) q.set('before', before);
    const r = await api('/api/v1/audit?' + q.toString());
    if (r.status !== 200) {
      verdict.className = 'error';
      verdict.textContent = (r.body && r.body.message) || 'Could not read the audit log.';
      return;
    }
    for (const e of r.body.entries) {
      const ev = e.event || {};
      const who = ev.principal || ev.requester || (ev.detail && ev.detail.principal) || '';
      const what = [ev.connection, ev.action, ev.outcome, ev.reason].filter(Boolean).join(' · ');
      tbody.append(el('tr', { 'data-seq': String(e.seq) },
        el('td', { text: String(e.seq) }),
        el('td', { text: when(e.time_ms) }),
        el('td', { text: ev.kind || '' }),
        el('td', { text: typeof who === 'string' ? who : '' }),
        el('td', {}, el('span', { text: typeof what === 'string' ? what : '' }),
          el('details', {}, el('summary', { text: 'entry' }), el('pre', { text: JSON.stringify(e, null, 2) })))));
    }
    before = r.body.next_before;
    more.hidden = !before;
  }
  more.addEventListener('click', load);
  const table = el('table', { 'aria-label': 'Audit entries' },
    el('thead', {}, el('tr', {}, ...['Seq', 'Time', 'Kind', 'Principal', 'What']
      .map((h) => el('th', { scope: 'col', text: h })))),
    tbody);
  page.append(el('h2', { text: 'Audit' }), el('div', {}, verify, ' ', exportLink), verdict, table, more);
  load();
}

start();
