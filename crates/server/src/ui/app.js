// rota's dashboard. It only calls the node's public HTTP API with same-origin paths, so
// every member serves the same page. What the user looks at (queue, state, page, job, key)
// lives in the URL hash, so a view can be bookmarked or reloaded.
//
// Rule: user data (keys, values, payloads, errors, names) reaches the DOM only as text
// (`textContent`, text nodes, `setAttribute`), never as HTML.
'use strict';

const REFRESH_EVERY_MS = 2000;
const JOBS_PER_PAGE = 50;
const CELL_CHARS_MAX = 120;
const STATES = ['scheduled', 'queued', 'leased', 'succeeded', 'dead', 'cancelled'];
const CANCELLABLE = new Set(['scheduled', 'queued', 'leased']);

// ---- small DOM helpers -------------------------------------------------------------------

// el('td', {class: 'num', 'data-x': 1}, 'text', childNode, ...): strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const $ = (id) => document.getElementById(id);

function truncate(text, max) {
  const s = String(text);
  return s.length > max ? s.slice(0, max) + '…' : s;
}

function show(value) {
  return value === undefined || value === null || value === '' ? '–' : String(value);
}

function pretty(value) {
  return value === undefined ? '' : JSON.stringify(value, null, 2);
}

const JSON_SPACE = ' \t\r\n';

// The text of member `name` of the JSON object `text`, as the server sent it, or undefined.
// A payload or result shown from this text keeps what JSON.parse would lose: integers past
// 2^53, `1.0`, key order, repeated keys.
function rawMember(text, name) {
  let i = 0;
  const space = () => { while (i < text.length && JSON_SPACE.includes(text[i])) i += 1; };
  const string = () => { // from the opening quote to past the closing one
    i += 1;
    while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    i += 1;
  };
  const value = () => {
    space();
    const start = i;
    if (text[i] === '"') {
      string();
    } else if (text[i] === '{' || text[i] === '[') {
      let depth = 0;
      do {
        const c = text[i];
        if (c === '"') { string(); continue; }
        if (c === '{' || c === '[') depth += 1;
        else if (c === '}' || c === ']') depth -= 1;
        i += 1;
      } while (depth > 0 && i < text.length);
    } else {
      while (i < text.length && !(',}]' + JSON_SPACE).includes(text[i])) i += 1;
    }
    return text.slice(start, i);
  };
  space();
  if (text[i] !== '{') return undefined;
  i += 1;
  for (;;) {
    space();
    if (text[i] !== '"') return undefined;
    const keyStart = i;
    string();
    let key;
    try { key = JSON.parse(text.slice(keyStart, i)); } catch (_) { return undefined; }
    space();
    if (text[i] !== ':') return undefined;
    i += 1;
    const member = value();
    if (key === name) return member;
    space();
    if (text[i] !== ',') return undefined;
    i += 1;
  }
}

// JSON text indented as JSON.stringify(value, null, 2) would, changing only whitespace.
function prettyText(raw) {
  let out = '';
  let depth = 0;
  let i = 0;
  const newline = () => '\n' + '  '.repeat(depth);
  while (i < raw.length) {
    const c = raw[i];
    if (c === '"') {
      const start = i;
      i += 1;
      while (i < raw.length && raw[i] !== '"') i += raw[i] === '\\' ? 2 : 1;
      i += 1;
      out += raw.slice(start, i);
    } else if (JSON_SPACE.includes(c)) {
      i += 1;
    } else if (c === '{' || c === '[') {
      let next = i + 1;
      while (next < raw.length && JSON_SPACE.includes(raw[next])) next += 1;
      if (raw[next] === (c === '{' ? '}' : ']')) { // empty: {} or []
        out += c + raw[next];
        i = next + 1;
      } else {
        depth += 1;
        out += c + newline();
        i += 1;
      }
    } else if (c === '}' || c === ']') {
      depth -= 1;
      out += newline() + c;
      i += 1;
    } else if (c === ',') {
      out += ',' + newline();
      i += 1;
    } else if (c === ':') {
      out += ': ';
      i += 1;
    } else {
      out += c;
      i += 1;
    }
  }
  return out;
}

// Replaces a container's children only when the data differs from what it shows, so a
// refresh that changed nothing does not reset selection or scroll.
const rendered = new WeakMap(); // container → the JSON of the data it shows

function renderIfChanged(container, data, render) {
  const key = JSON.stringify(data);
  if (rendered.get(container) === key) return;
  rendered.set(container, key);
  render();
}

function forgetRendered(container) {
  rendered.delete(container);
}

// ---- errors and notices ------------------------------------------------------------------

const errors = new Map();

function setError(source, message) {
  errors.set(source, message);
  renderErrors();
}

function clearError(source) {
  if (errors.delete(source)) renderErrors();
}

function renderErrors() {
  const list = $('errors');
  // A server that answers nothing fails every request: one line says so, not one per
  // request.
  const shown = unreachable ? [['server', `unreachable: ${unreachable}`]] : [...errors];
  list.replaceChildren(...shown.map(([source, message]) =>
    el('li', {'data-source': source}, el('strong', {}, source + ': '), message)));
}

// The network error of the last refresh in which no request reached the server, else ''.
let unreachable = '';
// Requests of the refresh under way that reached the server / did not.
const reached = {yes: 0, no: 0, last: ''};

function notice(text) {
  $('notice').textContent = text;
}

window.addEventListener('error', (event) => setError('page', event.message || 'script error'));
window.addEventListener('unhandledrejection', (event) =>
  setError('page', String(event.reason && event.reason.message || event.reason)));

// ---- the API -----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The message of rota's error envelopes: `/v1` `{"error": {"code", "message", "field"}}`,
// etcd's `{"errorCode", "message", "cause"}`, or the text of a plain answer.
function errorText(body, text) {
  if (body && body.error && typeof body.error.message === 'string') {
    const e = body.error;
    return e.message + (e.field ? ` (field ${e.field})` : '') + (e.code ? ` [${e.code}]` : '');
  }
  if (body && typeof body.message === 'string') {
    return body.message + (body.cause ? `: ${body.cause}` : '') +
      (body.errorCode !== undefined ? ` [${body.errorCode}]` : '');
  }
  return truncate(text.trim(), 300) || 'empty answer';
}

async function api(method, path, acceptStatus, json) {
  return (await apiWithText(method, path, acceptStatus, json)).body;
}

// `api`, also giving the answer's text. `json`: a body to send, as JSON.
async function apiWithText(method, path, acceptStatus, json) {
  let response;
  const headers = {Accept: 'application/json'};
  const init = {method, cache: 'no-store', headers};
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  }
  try {
    response = await fetch(path, init);
  } catch (e) {
    reached.no += 1;
    reached.last = e.message;
    throw new ApiError(0, `${method} ${path}: ${e.message}`);
  }
  reached.yes += 1;
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!response.ok && !(acceptStatus && acceptStatus.includes(response.status))) {
    throw new ApiError(response.status, `${method} ${path}: ${response.status} ${errorText(body, text)}`);
  }
  if (body === null) throw new ApiError(response.status, `${method} ${path}: the answer is not JSON`);
  return {body, text};
}

const seg = encodeURIComponent;

// `/a/b c` → `/a/b%20c`: each segment of an etcd key encoded on its own.
function keyPath(key) {
  return key.split('/').filter((part) => part !== '').map(seg).join('/');
}

// Runs one refresh step, recording its error under `source` (cleared once it works again).
async function guarded(source, step) {
  try {
    await step();
    clearError(source);
    return true;
  } catch (e) {
    setError(source, e.message);
    return false;
  }
}

// ---- view state (the URL hash) -----------------------------------------------------------

const view = {queue: '', state: '', after: '', job: '', key: '/'};

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const state = params.get('state') || '';
  view.queue = params.get('queue') || '';
  view.state = STATES.includes(state) ? state : '';
  view.after = /^\d+$/.test(params.get('after') || '') ? params.get('after') : '';
  view.job = /^\d+$/.test(params.get('job') || '') ? params.get('job') : '';
  view.key = params.get('key') || '/';
}

function navigate(changes) {
  const next = Object.assign({}, view, changes);
  const params = new URLSearchParams();
  for (const name of ['queue', 'state', 'after', 'job', 'key']) {
    if (next[name] && !(name === 'key' && next[name] === '/')) params.set(name, next[name]);
  }
  const hash = '#' + params.toString();
  if (hash === location.hash || (hash === '#' && location.hash === '')) {
    refresh();
  } else {
    location.hash = hash; // the hashchange listener reads it back and refreshes
  }
}

// ---- cluster -----------------------------------------------------------------------------

let self = null;
let leaderId = '';

async function refreshCluster() {
  await Promise.all([
    guarded('node', async () => {
      self = await api('GET', '/v2/stats/self');
      leaderId = self.leaderInfo && self.leaderInfo.leader || '';
    }),
    guarded('health', async () => {
      const health = await api('GET', '/health', [503]);
      renderFact('health', health.health === 'true' ? 'healthy' : 'unhealthy (no leader)',
        health.health === 'true' ? 'ok' : 'bad');
    }),
    guarded('version', async () => {
      const version = await api('GET', '/version');
      renderFact('version', `etcd API ${version.etcdserver} (cluster ${version.etcdcluster})`);
    }),
  ]);
  if (self) {
    renderFact('name', self.name);
    renderFact('id', self.id);
    renderFact('role', self.state === 'StateLeader' ? 'leader' : 'follower');
    renderFact('leader', leaderId || 'none (election under way)', leaderId ? '' : 'bad');
    $('node-summary').textContent = `node ${self.name} (${self.state === 'StateLeader' ? 'leader' : 'follower'})`;
  }
  await guarded('members', async () => {
    const answer = await api('GET', '/v2/members');
    const members = answer.members || [];
    const body = $('members').tBodies[0];
    renderIfChanged(body, [members, leaderId, self && self.id], () => {
      body.replaceChildren(...members.map((member) => {
        const roles = [];
        if (member.id === leaderId) roles.push('leader');
        if (self && member.id === self.id) roles.push('this node');
        return el('tr', {'data-member-id': member.id, 'data-leader': member.id === leaderId},
          el('td', {}, member.name || '(not started)'),
          el('td', {class: 'mono'}, member.id),
          el('td', {}, roles.join(', ') || 'follower'),
          el('td', {class: 'mono'}, (member.peerURLs || []).join(' ')),
          el('td', {class: 'mono'}, (member.clientURLs || []).join(' ')));
      }));
    });
  });
}

function renderFact(name, value, tone) {
  const list = $('node');
  let dd = list.querySelector(`dd[data-fact="${name}"]`);
  if (!dd) {
    dd = el('dd', {'data-fact': name});
    list.append(el('dt', {}, name), dd);
  }
  dd.textContent = value;
  dd.className = tone || '';
}

// ---- queues ------------------------------------------------------------------------------

let queueNames = [];
const deadCounts = new Map(); // queue → dead jobs, from the last poll
const lastSucceeded = new Map(); // queue → {count, atMs}
const succeededPerSecond = new Map(); // queue → number, from the last two polls

async function refreshQueues() {
  await guarded('queues', async () => {
    const answer = await api('GET', '/v1/queues');
    const queues = answer.queues || [];
    const nowMs = performance.now();
    for (const queue of queues) {
      const count = queue.counts.succeeded;
      const last = lastSucceeded.get(queue.name);
      if (last && nowMs > last.atMs) {
        // Retention removes finished jobs, so the count may drop; that is not negative work.
        succeededPerSecond.set(queue.name, Math.max(0, count - last.count) * 1000 / (nowMs - last.atMs));
      }
      lastSucceeded.set(queue.name, {count, atMs: nowMs});
    }
    queueNames = queues.map((queue) => queue.name);
    deadCounts.clear();
    for (const queue of queues) deadCounts.set(queue.name, queue.counts.dead);
    renderQueues(queues);
    renderQueueSelect();
  });
}

function rateText(rate) {
  return rate ? `${rate.limit} per ${rate.per} (burst ${rate.burst})` : 'none';
}

function renderQueues(queues) {
  const body = $('queue-table').tBodies[0];
  $('queues-empty').hidden = queues.length > 0;
  body.replaceChildren(...queues.map((queue) => {
    const c = queue.counts;
    const config = queue.config;
    const rate = succeededPerSecond.get(queue.name);
    const open = el('button', {type: 'button', class: 'link', 'data-open-queue': queue.name}, queue.name);
    return el('tr', {'data-queue': queue.name, class: queue.name === view.queue ? 'selected' : null},
      el('td', {}, open),
      el('td', {}, config.concurrency === null ? 'unlimited' : config.concurrency),
      el('td', {}, rateText(config.rate)),
      el('td', {}, config.lease_ttl),
      el('td', {}, config.max_attempts),
      el('td', {class: config.paused ? 'bad' : ''}, config.paused ? 'paused' : 'no'),
      ...STATES.map((state) => el('td', {class: 'num', 'data-count': state}, c[state])),
      el('td', {class: 'num', 'data-count': 'depth'}, c.scheduled + c.queued),
      el('td', {class: 'num', 'data-throughput': ''}, rate === undefined ? '–' : rate.toFixed(1)));
  }));
}

function renderQueueSelect() {
  const select = $('job-queue');
  const names = queueNames.includes(view.queue) || !view.queue ? queueNames : [view.queue, ...queueNames];
  renderIfChanged(select, names, () => {
    select.replaceChildren(el('option', {value: ''}, '(choose a queue)'),
      ...names.map((name) => el('option', {value: name}, name)));
  });
  select.value = view.queue;
}

// ---- jobs --------------------------------------------------------------------------------

async function refreshJobs() {
  const body = $('job-table').tBodies[0];
  $('job-state').value = view.state;
  const dead = view.queue ? deadCounts.get(view.queue) || 0 : 0;
  $('jobs-retry-dead').hidden = dead === 0;
  $('jobs-retry-dead').textContent = `Retry ${dead} dead`;
  if (!view.queue) {
    body.replaceChildren();
    forgetRendered(body);
    $('jobs-empty').hidden = false;
    $('jobs-empty').textContent = 'Choose a queue.';
    $('jobs-page').textContent = '';
    $('jobs-next').disabled = true;
    $('jobs-first').disabled = true;
    clearError('jobs');
    return;
  }
  await guarded('jobs', async () => {
    let path = `/v1/queues/${seg(view.queue)}/jobs?limit=${JOBS_PER_PAGE}`;
    if (view.state) path += `&state=${seg(view.state)}`;
    if (view.after) path += `&after=${seg(view.after)}`;
    const page = await api('GET', path);
    const jobs = page.jobs || [];
    $('jobs-empty').hidden = jobs.length > 0;
    $('jobs-empty').textContent = 'No jobs on this page.';
    $('jobs-next').disabled = page.next === null || page.next === undefined;
    $('jobs-next').dataset.next = page.next === null || page.next === undefined ? '' : page.next;
    $('jobs-first').disabled = !view.after;
    $('jobs-page').textContent = (view.after ? `after job ${view.after}` : 'first page') +
      (jobs.length ? `: jobs ${jobs[0].id}–${jobs[jobs.length - 1].id}` : '');
    renderIfChanged(body, [jobs, view.job], () => body.replaceChildren(...jobs.map(jobRow)));
  });
}

function lastError(job) {
  const list = job.errors || [];
  return list.length ? list[list.length - 1].error : '';
}

// A command's error is its exit status and its stderr's tail: shown as the status and the
// last line (a traceback's exception), as `rota job ls` does, not the tail's first line.
function briefError(text) {
  const match = /^((?:exit status|killed by signal) \d+: )([\s\S]*)$/.exec(text);
  if (match && match[2].trimEnd().includes('\n')) {
    const lines = match[2].split('\n').map((line) => line.trim()).filter((line) => line !== '');
    return `${match[1]}… ${lines[lines.length - 1]}`;
  }
  return text.replace(/\s*\n\s*/g, ' ');
}

function actionButtons(job) {
  const buttons = [];
  if (job.state === 'dead') {
    buttons.push(el('button', {type: 'button', 'data-action': 'retry', 'data-job-id': job.id}, 'Retry'));
  }
  if (CANCELLABLE.has(job.state)) {
    buttons.push(el('button', {type: 'button', 'data-action': 'cancel', 'data-job-id': job.id, class: 'danger'}, 'Cancel'));
  }
  return buttons;
}

function jobRow(job) {
  return el('tr', {'data-job-id': job.id, 'data-state': job.state, class: String(job.id) === view.job ? 'selected' : null},
    el('td', {}, el('button', {type: 'button', class: 'link', 'data-open-job': job.id}, job.id)),
    el('td', {}, el('span', {class: `state ${job.state}`}, job.state)),
    el('td', {class: 'num'}, job.priority),
    el('td', {}, `${job.attempts}/${job.max_attempts}`),
    el('td', {class: 'mono'}, show(job.created_at)),
    el('td', {class: 'mono'}, show(job.run_at)),
    el('td', {}, show(job.worker)),
    el('td', {'data-field': 'last-error'}, truncate(briefError(lastError(job)), CELL_CHARS_MAX)),
    el('td', {class: 'actions'}, ...actionButtons(job)));
}

async function refreshJobDetail() {
  const detail = $('job-detail');
  if (!view.job) {
    detail.hidden = true;
    detail.replaceChildren();
    forgetRendered(detail);
    clearError('job');
    return;
  }
  const ok = await guarded('job', async () => {
    const {body: job, text} = await apiWithText('GET', `/v1/jobs/${seg(view.job)}`);
    job.payloadText = rawMember(text, 'payload');
    job.resultText = rawMember(text, 'result');
    detail.hidden = false;
    renderIfChanged(detail, job, () => renderJobDetail(detail, job));
  });
  if (!ok) {
    detail.hidden = true;
    forgetRendered(detail);
  }
}

function renderJobDetail(detail, job) {
  const fields = ['id', 'queue', 'state', 'priority', 'attempts', 'max_attempts', 'created_at', 'run_at',
    'worker', 'lease_token', 'lease_expires_at', 'finished_at', 'purge_at'];
  const facts = el('dl', {class: 'facts'});
  for (const name of fields) {
    if (job[name] === undefined) continue;
    facts.append(el('dt', {}, name), el('dd', {'data-field': name}, show(job[name])));
  }
  const errorRows = (job.errors || []).map((e) =>
    el('tr', {}, el('td', {class: 'num'}, e.attempt), el('td', {class: 'mono'}, e.at), el('td', {}, el('pre', {}, e.error))));
  detail.setAttribute('data-job-id', job.id);
  detail.replaceChildren(
    el('div', {class: 'toolbar'},
      el('h3', {}, `Job ${job.id} `, el('span', {class: `state ${job.state}`}, job.state)),
      ...actionButtons(job),
      el('span', {class: 'spacer'}),
      el('button', {type: 'button', 'data-close-job': ''}, 'Close')),
    facts,
    el('h4', {}, 'payload'), el('pre', {class: 'json', 'data-field': 'payload'},
      job.payloadText === undefined ? pretty(job.payload) : prettyText(job.payloadText)),
    el('h4', {}, 'result'), el('pre', {class: 'json', 'data-field': 'result'},
      job.resultText === undefined ? pretty(job.result) : prettyText(job.resultText)),
    el('h4', {}, `errors (${errorRows.length})`),
    errorRows.length
      ? el('table', {class: 'errors'}, el('thead', {}, el('tr', {}, el('th', {}, 'attempt'), el('th', {}, 'at'), el('th', {}, 'error'))),
        el('tbody', {}, ...errorRows))
      : el('p', {class: 'muted'}, 'none'));
}

async function jobAction(action, id) {
  if (action === 'cancel' && !window.confirm(`Cancel job ${id}?`)) return;
  const [method, path] = action === 'retry'
    ? ['POST', `/v1/jobs/${seg(id)}/retry`]
    : ['DELETE', `/v1/jobs/${seg(id)}`];
  try {
    const job = await api(method, path);
    clearError('action');
    notice(`Job ${job.id} is now ${job.state}.`);
  } catch (e) {
    setError('action', e.message);
  }
  refresh();
}

// Queues the chosen queue's dead jobs again, in rounds of up to 1,000 (one command each),
// each after the last id the one before took, as `rota queue retry` does: a job that dies
// again meanwhile is not taken twice.
async function retryDead() {
  const ROUND_MAX = 1000;
  const queue = view.queue;
  const dead = deadCounts.get(queue) || 0;
  if (!queue || !window.confirm(`Queue the ${dead} dead jobs of ${queue} again?`)) return;
  try {
    let retried = 0;
    let after = null;
    for (;;) {
      const answer = await api('POST', `/v1/queues/${seg(queue)}/retry`, null, {max: ROUND_MAX, after});
      retried += answer.retried.length;
      if (answer.retried.length < ROUND_MAX) break;
      after = answer.retried[answer.retried.length - 1];
    }
    clearError('action');
    notice(`${retried} dead jobs of ${queue} queued again.`);
  } catch (e) {
    setError('action', e.message);
  }
  refresh();
}

// ---- keys --------------------------------------------------------------------------------

async function refreshKeys() {
  const ok = await guarded('keys', async () => {
    const answer = await api('GET', `/v2/keys/${keyPath(view.key)}?sorted=true`);
    renderKeys(answer.node || {});
  });
  if (!ok) {
    renderBreadcrumb(view.key);
    $('key-table').tBodies[0].replaceChildren();
    forgetRendered($('key-table').tBodies[0]);
    $('key-detail').hidden = true;
  }
}

function renderBreadcrumb(key) {
  const parts = key.split('/').filter((part) => part !== '');
  const crumbs = [el('button', {type: 'button', class: 'link', 'data-open-key': '/'}, '/')];
  let path = '';
  for (const part of parts) {
    path += '/' + part;
    crumbs.push(el('button', {type: 'button', class: 'link', 'data-open-key': path}, part + '/'));
  }
  renderIfChanged($('key-path'), parts, () => $('key-path').replaceChildren(...crumbs));
}

function ttlText(node) {
  return node.ttl === undefined ? '–' : `${node.ttl} s`;
}

function renderKeys(node) {
  renderBreadcrumb(node.key || '/');
  const body = $('key-table').tBodies[0];
  const detail = $('key-detail');
  if (!node.dir) {
    body.replaceChildren();
    forgetRendered(body);
    $('key-table').hidden = true;
    $('keys-empty').hidden = true;
    detail.hidden = false;
    renderIfChanged(detail, node, () => detail.replaceChildren(
      el('dl', {class: 'facts'},
        el('dt', {}, 'key'), el('dd', {class: 'mono', 'data-field': 'key'}, node.key),
        el('dt', {}, 'ttl'), el('dd', {'data-field': 'ttl'}, ttlText(node)),
        el('dt', {}, 'expiration'), el('dd', {class: 'mono', 'data-field': 'expiration'}, show(node.expiration)),
        el('dt', {}, 'modifiedIndex'), el('dd', {'data-field': 'modifiedIndex'}, node.modifiedIndex),
        el('dt', {}, 'createdIndex'), el('dd', {'data-field': 'createdIndex'}, node.createdIndex)),
      el('h4', {}, 'value'),
      el('pre', {'data-field': 'value'}, node.value)));
    return;
  }
  detail.hidden = true;
  $('key-table').hidden = false;
  const children = node.nodes || [];
  $('keys-empty').hidden = children.length > 0;
  renderIfChanged(body, children, () => body.replaceChildren(...children.map((child) => {
    const name = child.key.slice(child.key.lastIndexOf('/') + 1);
    return el('tr', {'data-key': child.key, 'data-dir': child.dir === true},
      el('td', {}, el('button', {type: 'button', class: 'link mono', 'data-open-key': child.key}, child.dir ? name + '/' : name)),
      el('td', {class: 'mono'}, child.dir ? '' : truncate(child.value, CELL_CHARS_MAX)),
      el('td', {}, ttlText(child)),
      el('td', {class: 'mono'}, show(child.expiration)),
      el('td', {class: 'num'}, child.modifiedIndex),
      el('td', {class: 'num'}, child.createdIndex));
  })));
}

// ---- refresh loop ------------------------------------------------------------------------

let refreshing = false;
let refreshAgain = false;

// One refresh at a time; a request for another while one runs makes it run once more.
async function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  try {
    do {
      refreshAgain = false;
      Object.assign(reached, {yes: 0, no: 0, last: ''});
      await Promise.all([refreshCluster(), refreshQueues(), refreshJobs(), refreshJobDetail(), refreshKeys()]);
      const wasUnreachable = unreachable;
      unreachable = reached.yes === 0 && reached.no > 0 ? reached.last || 'no answer' : '';
      // What is on screen is from the last refresh that reached the server: greyed out,
      // with its time kept, and no health claimed, until the server answers again.
      document.body.classList.toggle('stale', Boolean(unreachable));
      if (unreachable) {
        renderFact('health', 'unknown (server unreachable)', 'bad');
      } else {
        $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
      }
      if (Boolean(unreachable) !== Boolean(wasUnreachable) || unreachable) renderErrors();
      document.documentElement.dataset.refreshes = String(Number(document.documentElement.dataset.refreshes || 0) + 1);
    } while (refreshAgain);
  } finally {
    refreshing = false;
  }
}

let timer = null;

function schedule() {
  clearInterval(timer);
  timer = null;
  if ($('auto-refresh').checked) timer = setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_EVERY_MS);
}

function start() {
  document.addEventListener('click', (event) => {
    const target = event.target.closest('button');
    if (!target) return;
    const data = target.dataset;
    if (data.action) jobAction(data.action, data.jobId);
    else if (data.openQueue !== undefined) navigate({queue: data.openQueue, state: '', after: ''});
    else if (data.openJob !== undefined) navigate({job: data.openJob});
    else if (data.closeJob !== undefined) navigate({job: ''});
    else if (data.openKey !== undefined) navigate({key: data.openKey});
  });
  $('job-queue').addEventListener('change', (event) => navigate({queue: event.target.value, after: ''}));
  $('job-state').addEventListener('change', (event) => navigate({state: event.target.value, after: ''}));
  $('jobs-next').addEventListener('click', () => {
    const next = $('jobs-next').dataset.next;
    if (next) navigate({after: next});
  });
  $('jobs-first').addEventListener('click', () => navigate({after: ''}));
  $('jobs-retry-dead').addEventListener('click', retryDead);
  const openTyped = () => {
    const id = $('job-open-id').value.trim();
    if (/^\d+$/.test(id)) navigate({job: id});
  };
  $('job-open').addEventListener('click', openTyped);
  $('job-open-id').addEventListener('keydown', (event) => { if (event.key === 'Enter') openTyped(); });
  $('refresh-now').addEventListener('click', () => refresh());
  $('auto-refresh').addEventListener('change', schedule);
  window.addEventListener('hashchange', () => {
    readHash();
    refresh();
  });
  document.addEventListener('visibilitychange', () => { if (!document.hidden && timer) refresh(); });
  for (const fact of ['name', 'id', 'role', 'leader', 'health', 'version']) renderFact(fact, '…');
  readHash();
  schedule();
  refresh();
}

start();
