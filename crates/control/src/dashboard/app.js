/*
 * Lifeboat dashboard: a single-page view of the control API.
 *
 * Pages are hash routes (#status, #vms, #points, #jobs, #plans, #drills). Every page
 * fetches its data from /api, builds its DOM with textContent (never HTML from data),
 * and marks <body data-ready="1"> once rendered. Writes carry the session's CSRF token.
 */
'use strict';

(function () {
  const PAGES = {
    status: renderStatus,
    vms: renderVms,
    points: renderPoints,
    jobs: renderJobs,
    plans: renderPlans,
    drills: renderDrills,
  };
  const DEFAULT_PAGE = 'status';
  const FINISHED_JOB_STATES = ['succeeded', 'failed', 'cancelled'];
  const CANCELLABLE_JOB_STATES = ['queued', 'running'];

  const app = {
    session: null, // {user, role, csrf, users_exist}
    navigation: 0, // bumped on every navigation; stale renders check it
    timers: [], // intervals owned by the page on screen
  };

  /* ---------- API ---------- */

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const options = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (method !== 'GET') {
      options.headers['Content-Type'] = 'application/json';
      if (app.session && app.session.csrf) options.headers['X-CSRF-Token'] = app.session.csrf;
      if (body !== undefined) options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      throw new ApiError(0, `Cannot reach the Lifeboat server (${err.message})`);
    }
    const text = response.status === 204 ? '' : await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = null;
      }
    }
    if (!response.ok) {
      const message = data && data.error ? data.error : `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, message.trim());
    }
    return data;
  }

  const enc = encodeURIComponent;

  function canOperate() {
    return Boolean(app.session) && (app.session.role === 'operator' || app.session.role === 'admin');
  }

  /* ---------- DOM helpers ---------- */

  function appendChildren(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function setProps(node, props) {
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'text') node.textContent = value;
      else if (key === 'data') Object.assign(node.dataset, value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    return node;
  }

  function el(tag, props, ...children) {
    return appendChildren(setProps(document.createElement(tag), props), children);
  }

  function svg(tag, props, ...children) {
    const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
    return appendChildren(setProps(node, props), children);
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function showError(node, message) {
    node.textContent = message || '';
    node.hidden = !message;
  }

  function errorBox(id) {
    return el('p', { class: 'error', id, role: 'alert', hidden: true });
  }

  function table(props, headers, rows) {
    return el('table', props,
      el('thead', {}, el('tr', {}, headers.map((h) => el('th', { text: h })))),
      el('tbody', {}, rows));
  }

  function emptyNote(rows, text) {
    return rows.length === 0 ? el('p', { class: 'empty muted', text }) : document.createTextNode('');
  }

  /* ---------- Formatting ---------- */

  const TONES = {
    ok: ['up', 'succeeded', 'done', 'met', 'ok'],
    bad: ['down', 'failed', 'missed'],
    warn: ['running', 'queued', 'cancel-requested', 'waiting', 'alert', 'open'],
  };

  function tone(state) {
    for (const [name, states] of Object.entries(TONES)) {
      if (states.includes(state)) return name;
    }
    return 'neutral';
  }

  function badge(text, className) {
    return el('span', { class: `badge tone-${tone(text)} ${className || ''}`.trim(), text });
  }

  function setBadge(node, text) {
    setText(node, text);
    for (const name of ['ok', 'bad', 'warn', 'neutral']) {
      node.classList.toggle(`tone-${name}`, tone(text) === name);
    }
  }

  function formatBytes(bytes) {
    if (bytes === null || bytes === undefined) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let value = Number(bytes);
    let unit = 0;
    while (Math.abs(value) >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
  }

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '—';
    if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ${Math.floor(seconds % 60)} s`;
    return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
  }

  function formatRpo(seconds) {
    if (seconds === null || seconds === undefined) return '—';
    return seconds < 60 ? `${seconds.toFixed(1)} s` : formatDuration(seconds);
  }

  function formatTime(value) {
    if (value === null || value === undefined || value === '') return '—';
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
  }

  function formatPercent(fraction) {
    return fraction === null || fraction === undefined ? '—' : `${(fraction * 100).toFixed(2)} %`;
  }

  function elapsedSeconds(startMs, endMs) {
    if (startMs === null || startMs === undefined) return null;
    return Math.max(0, ((endMs === null || endMs === undefined ? Date.now() : endMs) - startMs) / 1000);
  }

  function progressText(progress) {
    if (!progress) return '';
    let text;
    if (progress.unit === 'bytes') text = `${formatBytes(progress.done)}/${formatBytes(progress.total)}`;
    else text = `${progress.done}/${progress.total} ${progress.unit || ''}`.trim();
    return progress.message ? `${text} — ${progress.message}` : text;
  }

  function updateProgress(bar, progress) {
    const known = Boolean(progress) && progress.total > 0;
    bar.hidden = !known;
    if (!known) return;
    bar.max = progress.total;
    bar.value = Math.min(progress.done, progress.total);
  }

  function stepText(step) {
    return step.detail ? `${step.name} — ${step.detail}` : step.name;
  }

  function stepItems(steps) {
    return (steps || []).map((step) => el('li', { data: { state: step.state }, text: stepText(step) }));
  }

  /* ---------- Session, header and login ---------- */

  function setSession(session) {
    app.session = session;
    const whoami = document.getElementById('whoami');
    whoami.textContent = session ? `${session.user} (${session.role})` : '';
    document.getElementById('logout').hidden = !(session && session.csrf);
    document.getElementById('nav').hidden = !session;
  }

  function showLogin() {
    stopTimers();
    app.navigation += 1;
    setSession(null);
    document.body.dataset.page = 'login';
    const error = el('p', { class: 'error', id: 'login-error', role: 'alert', hidden: true });
    const form = el('form', { id: 'login', class: 'card login', onsubmit: (event) => submitLogin(event, error) },
      el('h1', { text: 'Sign in to Lifeboat' }),
      el('label', {}, 'User', el('input', { id: 'login-user', name: 'user', autocomplete: 'username' })),
      el('label', {}, 'Password',
        el('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password' })),
      error,
      el('button', { id: 'login-submit', type: 'submit', class: 'primary', text: 'Sign in' }));
    document.getElementById('page').replaceChildren(form);
    document.getElementById('login-user').focus();
    document.body.dataset.ready = '1';
  }

  async function submitLogin(event, error) {
    event.preventDefault();
    const button = document.getElementById('login-submit');
    const user = document.getElementById('login-user').value.trim();
    const password = document.getElementById('login-password').value;
    showError(error, '');
    button.disabled = true;
    try {
      setSession(await api('POST', '/api/session', { user, password }));
      navigate();
    } catch (err) {
      showError(error, err.message);
      button.disabled = false;
    }
  }

  async function logout() {
    try {
      await api('POST', '/api/session/logout');
    } catch (err) {
      if (err.status !== 401) {
        const page = document.getElementById('page');
        page.prepend(el('p', { class: 'error', role: 'alert', text: `Log out failed: ${err.message}` }));
        return;
      }
    }
    showLogin();
  }

  /* ---------- Navigation ---------- */

  function stopTimers() {
    for (const id of app.timers) clearInterval(id);
    app.timers = [];
  }

  function currentPage() {
    const name = window.location.hash.replace(/^#/, '');
    return Object.prototype.hasOwnProperty.call(PAGES, name) ? name : DEFAULT_PAGE;
  }

  function pageContext(token) {
    const alive = () => token === app.navigation;
    // Runs fn every ms while this page is on screen; never overlaps itself.
    const every = (ms, fn) => {
      let busy = false;
      const id = setInterval(async () => {
        if (busy || !alive()) return;
        busy = true;
        try {
          await fn();
        } catch (err) {
          if (err.status === 401) showLogin();
        } finally {
          busy = false;
        }
      }, ms);
      app.timers.push(id);
      return () => clearInterval(id);
    };
    return { alive, every };
  }

  async function navigate() {
    if (!app.session) {
      if (!document.getElementById('login')) showLogin();
      return;
    }
    stopTimers();
    app.navigation += 1;
    const token = app.navigation;
    const name = currentPage();
    document.body.dataset.ready = '0';
    document.body.dataset.page = name;
    for (const link of document.querySelectorAll('#nav a')) {
      link.classList.toggle('active', link.getAttribute('href') === `#${name}`);
    }
    const page = document.getElementById('page');
    page.replaceChildren(el('p', { class: 'muted', text: 'Loading…' }));
    const ctx = pageContext(token);
    try {
      await PAGES[name](page, ctx);
    } catch (err) {
      if (!ctx.alive()) return;
      if (err.status === 401) {
        showLogin();
        return;
      }
      page.replaceChildren(el('h1', { text: 'Lifeboat' }), el('p', { class: 'error', role: 'alert', text: err.message }));
    }
    if (ctx.alive()) document.body.dataset.ready = '1';
  }

  /* ---------- #status ---------- */

  /** The status page refreshes itself this often, so it stays honest while left open. */
  const STATUS_REFRESH_MS = 5000;

  async function renderStatus(page, ctx) {
    const error = errorBox('status-error');
    const load = async () => {
      const status = await api('GET', '/api/status');
      const regions = status.regions || [];
      const incidents = await Promise.all(regions.map((region) =>
        api('GET', `/api/regions/${enc(region.name)}/incidents`).catch((err) => {
          if (err.status === 401) throw err;
          return err;
        })));
      if (!ctx.alive()) return;
      showError(error, '');
      page.replaceChildren(
        el('h1', { text: 'Regions' }),
        error,
        emptyNote(regions, 'No regions are configured.'),
        el('div', { class: 'cards' }, regions.map((region, i) => regionCard(region, incidents[i]))),
        el('p', { class: 'muted', text: `Updated ${new Date().toLocaleTimeString()}; refreshed every ${STATUS_REFRESH_MS / 1000} s.` }));
    };
    await load();
    ctx.every(STATUS_REFRESH_MS, () => load().catch((err) => {
      if (err.status === 401) throw err;
      showError(error, `${err.message} (showing the last answer)`);
    }));
  }

  function regionHealth(region) {
    if (region.up === true) return 'up';
    if (region.up === false) return 'down';
    return 'unknown';
  }

  function regionCard(region, incidents) {
    const health = regionHealth(region);
    return el('section', { class: `region card health-${health}`, data: { region: region.name } },
      el('div', { class: 'card-head' }, el('h2', { text: region.name }), badge(health, `health ${health}`)),
      el('dl', { class: 'facts' },
        el('dt', { text: 'Probe' }), el('dd', { class: 'probe', text: region.probe || 'none' }),
        el('dt', { text: 'Last check' }), el('dd', { class: 'last-check' }, lastCheckText(region.last_check))),
      openIncident(region.open_incident),
      slaLine(region),
      monthsTable(region.months),
      el('h3', { text: 'Incidents' }),
      incidentList(incidents));
  }

  function lastCheckText(check) {
    if (!check) return 'not checked yet';
    const result = check.ok ? 'ok' : 'failed';
    return `${formatTime(check.checked_ms)} — ${result}${check.detail ? `: ${check.detail}` : ''}`;
  }

  function openIncident(incident) {
    if (!incident) return null;
    return el('div', { class: 'incident', role: 'status' },
      el('strong', { text: 'Open incident' }),
      ` since ${formatTime(incident.opened_ms)}`,
      incident.reason ? ` — ${incident.reason}` : '');
  }

  function slaLine(region) {
    const target = typeof region.sla_percent === 'number' ? `${region.sla_percent.toFixed(2)} %` : '—';
    const verdict = region.sla_met ? 'met' : 'missed';
    return el('p', { class: 'sla' },
      'This month: ',
      el('strong', { text: `${formatPercent(region.availability_this_month)} of ${target}` }),
      ' SLA ',
      badge(verdict));
  }

  function monthsTable(months) {
    const rows = (months || []).map((month) => el('tr', { data: { month: month.month } },
      el('td', { text: month.month }),
      el('td', { text: formatPercent(month.availability) }),
      el('td', {}, badge(month.sla_met ? 'met' : 'missed'))));
    const history = table({ class: 'months compact' }, ['Month', 'Availability', 'SLA'], rows);
    history.prepend(el('caption', { text: 'Uptime history' }));
    return [history, emptyNote(rows, 'No history yet.')];
  }

  function incidentList(incidents) {
    if (incidents instanceof Error) return el('p', { class: 'error', text: incidents.message });
    const items = (incidents || []).map((incident) => {
      const closed = incident.closed_ms === null || incident.closed_ms === undefined
        ? 'ongoing'
        : `${formatTime(incident.closed_ms)} (${formatDuration(elapsedSeconds(incident.opened_ms, incident.closed_ms))})`;
      return el('li', { class: incident.closed_ms ? 'closed' : 'open', data: { incident: incident.id } },
        el('span', { class: 'when', text: `${formatTime(incident.opened_ms)} → ${closed}` }),
        el('span', { class: 'reason', text: incident.reason || '' }));
    });
    return [el('ul', { class: 'incidents' }, items), emptyNote(items, 'No incidents recorded.')];
  }

  /* ---------- #vms ---------- */

  async function renderVms(page, ctx) {
    const vms = await api('GET', '/api/vms');
    if (!ctx.alive()) return;
    const panel = el('div', { id: 'rpo-panel' });
    const rows = vms.map((vm) => vmRow(vm, (row) => selectVm(row, vm.name, panel, ctx)));
    page.replaceChildren(
      el('h1', { text: 'Virtual machines' }),
      table({ id: 'vms' }, ['Name', 'Region', 'Plans', 'Group', 'RPO', 'Pending', 'Alert', ''], rows),
      emptyNote(rows, 'No VMs are replicated yet.'),
      panel);
  }

  function vmRow(vm, onSelect) {
    const row = el('tr', { class: `clickable${vm.alert ? ' alerting' : ''}`, data: { vm: vm.name } },
      el('td', { class: 'name', text: vm.name }),
      el('td', { text: vm.region || '—' }),
      el('td', { text: (vm.plans || []).join(', ') || '—' }),
      el('td', { text: vm.group || '—' }),
      el('td', { class: 'rpo num', text: formatRpo(vm.rpo_seconds) }),
      el('td', { class: 'pending num', text: formatBytes(vm.pending_bytes) }),
      el('td', { class: 'alert' }, vm.alert ? badge('alert') : el('span', { class: 'muted', text: 'no' })),
      el('td', {}, el('button', { type: 'button', class: 'show-rpo small', text: 'RPO chart' })));
    row.addEventListener('click', () => onSelect(row));
    return row;
  }

  async function selectVm(row, name, panel, ctx) {
    for (const other of row.parentNode.children) other.classList.toggle('selected', other === row);
    const request = (panel.dataset.request = String(Number(panel.dataset.request || 0) + 1));
    panel.replaceChildren(el('p', { class: 'muted', text: `Loading the RPO of ${name}…` }));
    try {
      const samples = await api('GET', `/api/vms/${enc(name)}/rpo`);
      if (!ctx.alive() || panel.dataset.request !== request) return;
      panel.replaceChildren(rpoFigure(name, samples || []));
    } catch (err) {
      if (err.status === 401) return showLogin();
      if (panel.dataset.request === request) panel.replaceChildren(el('p', { class: 'error', text: err.message }));
    }
  }

  function rpoFigure(name, samples) {
    const caption = samples.length === 0
      ? `RPO of ${name} over the last 24 h: no samples yet`
      : `RPO of ${name} over the last 24 h (${samples.length} samples)`;
    return el('figure', { class: 'rpo-figure card', data: { vm: name } },
      el('figcaption', { text: caption }),
      rpoChart(samples));
  }

  function rpoChart(samples) {
    const W = 720, H = 240, L = 64, R = 16, T = 16, B = 36;
    const chart = svg('svg', { class: 'rpo-chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'RPO over time' },
      svg('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }),
      svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
    if (samples.length === 0) {
      chart.append(svg('text', { class: 'empty', x: (L + W - R) / 2, y: (T + H - B) / 2, 'text-anchor': 'middle', text: 'no samples yet' }));
      return chart;
    }
    const times = samples.map((s) => s.time_ms);
    const values = samples.map((s) => s.rpo_seconds);
    let [t0, t1] = [Math.min(...times), Math.max(...times)];
    let [v0, v1] = [Math.min(...values), Math.max(...values)];
    if (t1 === t0) [t0, t1] = [t0 - 1, t1 + 1];
    if (v1 === v0) [v0, v1] = [Math.max(0, v0 - 1), v1 + 1];
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => H - B - ((v - v0) / (v1 - v0)) * (H - T - B);
    const points = samples.map((s) => `${x(s.time_ms).toFixed(1)},${y(s.rpo_seconds).toFixed(1)}`).join(' ');
    const last = samples[samples.length - 1];
    chart.append(
      svg('polyline', { class: 'line', points }),
      svg('circle', { class: 'dot', cx: x(last.time_ms), cy: y(last.rpo_seconds), r: 3 }),
      svg('text', { class: 'label y-max', x: L - 6, y: T + 4, 'text-anchor': 'end', text: formatRpo(v1) }),
      svg('text', { class: 'label y-min', x: L - 6, y: H - B, 'text-anchor': 'end', text: formatRpo(v0) }),
      svg('text', { class: 'label x-min', x: L, y: H - B + 20, 'text-anchor': 'start', text: formatTime(t0) }),
      svg('text', { class: 'label x-max', x: W - R, y: H - B + 20, 'text-anchor': 'end', text: formatTime(t1) }));
    return chart;
  }

  /* ---------- #points ---------- */

  async function renderPoints(page, ctx) {
    const points = await api('GET', '/api/points');
    if (!ctx.alive()) return;
    const rows = points.map(pointRow);
    const count = el('span', { id: 'points-count', class: 'muted' });
    const filter = el('input', { id: 'points-vm', type: 'search', placeholder: 'Filter by VM', 'aria-label': 'Filter by VM' });
    const apply = () => filterPoints(rows, filter.value, count);
    filter.addEventListener('input', apply);
    page.replaceChildren(
      el('h1', { text: 'Recovery points' }),
      el('div', { class: 'toolbar' }, filter, count),
      table({ id: 'points' }, ['Point', 'VM', 'Region', 'Time', 'Consistency', 'Disks'], rows),
      emptyNote(rows, 'No recovery points yet.'));
    apply();
  }

  function pointRow(point) {
    const disks = (point.disks || []).map((disk) =>
      `${disk.name} (${disk.format}, ${formatBytes(disk.virtual_size_bytes)})`).join(', ');
    return el('tr', { data: { point: point.point, vm: point.vm } },
      el('td', { class: 'mono', title: point.point, text: point.point.slice(0, 12) }),
      el('td', { text: point.vm }),
      el('td', { text: point.region || '—' }),
      el('td', { text: formatTime(point.time) }),
      el('td', {}, badge(point.consistency || 'unknown', 'consistency')),
      el('td', { class: 'disks', text: disks || '—' }));
  }

  function filterPoints(rows, query, count) {
    const needle = query.trim().toLowerCase();
    let shown = 0;
    for (const row of rows) {
      row.hidden = needle !== '' && !row.dataset.vm.toLowerCase().includes(needle);
      if (!row.hidden) shown += 1;
    }
    count.textContent = `${shown} of ${rows.length} points`;
  }

  /* ---------- #jobs ---------- */

  async function renderJobs(page, ctx) {
    const view = {
      tbody: el('tbody'),
      rows: new Map(), // job id -> {row, cells, outputRow}
      expanded: new Set(),
      error: errorBox('jobs-error'),
      empty: el('p', { class: 'empty muted', text: 'No jobs yet.', hidden: true }),
    };
    const headers = ['Job', 'Actor', 'State', 'Progress', 'Started', 'Duration', ''];
    page.replaceChildren(
      el('h1', { text: 'Jobs' }),
      view.error,
      el('table', { id: 'jobs' }, el('thead', {}, el('tr', {}, headers.map((h) => el('th', { text: h })))), view.tbody),
      view.empty);
    const refresh = async () => {
      const jobs = await api('GET', '/api/jobs');
      if (ctx.alive()) updateJobs(view, jobs);
    };
    await refresh();
    ctx.every(1000, () => refresh().catch((err) => {
      if (err.status === 401) throw err;
      showError(view.error, err.message);
    }));
  }

  function updateJobs(view, jobs) {
    const seen = new Set();
    const order = [];
    for (const job of jobs) {
      seen.add(job.id);
      let entry = view.rows.get(job.id);
      if (!entry) {
        entry = createJobRow(view, job.id);
        view.rows.set(job.id, entry);
      }
      fillJobRow(view, entry, job);
      order.push(entry.row);
      if (entry.outputRow) order.push(entry.outputRow);
    }
    for (const [id, entry] of view.rows) {
      if (!seen.has(id)) {
        entry.row.remove();
        if (entry.outputRow) entry.outputRow.remove();
        view.rows.delete(id);
      }
    }
    const current = Array.from(view.tbody.children);
    if (current.length !== order.length || current.some((row, i) => row !== order[i])) view.tbody.append(...order);
    view.empty.hidden = jobs.length > 0;
  }

  function createJobRow(view, id) {
    const cells = {
      what: el('td', { class: 'what mono' }),
      actor: el('td', { class: 'actor' }),
      state: el('span', { class: 'badge state' }),
      bar: el('progress'),
      progress: el('span', { class: 'progress-text' }),
      started: el('td', { class: 'started' }),
      duration: el('td', { class: 'duration num' }),
      actions: el('td', { class: 'actions' }),
    };
    const row = el('tr', { class: 'clickable', data: { job: id } },
      cells.what, cells.actor, el('td', {}, cells.state),
      el('td', { class: 'progress' }, cells.bar, cells.progress),
      cells.started, cells.duration, cells.actions);
    const entry = { row, cells, outputRow: null, job: null };
    row.addEventListener('click', () => toggleJobOutput(view, entry));
    return entry;
  }

  function fillJobRow(view, entry, job) {
    const { cells } = entry;
    entry.job = job;
    const what = job.schedule ? job.schedule : (job.command || []).join(' ');
    setText(cells.what, what || '—');
    cells.what.title = job.schedule ? `schedule ${job.schedule}` : what;
    setText(cells.actor, job.actor || (job.schedule ? 'scheduler' : '—'));
    setBadge(cells.state, job.state);
    updateProgress(cells.bar, job.progress);
    setText(cells.progress, progressText(job.progress));
    setText(cells.started, formatTime(job.started_ms));
    setText(cells.duration, formatDuration(elapsedSeconds(job.started_ms, job.finished_ms)));
    fillJobActions(view, entry, job);
    if (entry.outputRow) setText(entry.outputRow.querySelector('pre.output'), jobOutput(job));
  }

  function fillJobActions(view, entry, job) {
    const wanted = canOperate() && CANCELLABLE_JOB_STATES.includes(job.state);
    const button = entry.cells.actions.querySelector('button.cancel');
    if (wanted && !button) {
      entry.cells.actions.append(el('button', {
        type: 'button', class: 'cancel small', text: 'Cancel',
        onclick: (event) => cancelJob(event, view, job.id),
      }));
    } else if (!wanted && button) {
      button.remove();
    }
  }

  function jobOutput(job) {
    const head = job.exit_code === null || job.exit_code === undefined ? '' : `exit code ${job.exit_code}\n`;
    return head + (job.output || '(no output yet)');
  }

  function toggleJobOutput(view, entry) {
    const id = entry.row.dataset.job;
    if (entry.outputRow) {
      entry.outputRow.remove();
      entry.outputRow = null;
      view.expanded.delete(id);
      entry.row.classList.remove('expanded');
      return;
    }
    view.expanded.add(id);
    entry.row.classList.add('expanded');
    entry.outputRow = el('tr', { class: 'job-output', data: { outputOf: id } },
      el('td', { colspan: 7 }, el('pre', { class: 'output', text: jobOutput(entry.job) })));
    entry.row.after(entry.outputRow);
  }

  async function cancelJob(event, view, id) {
    event.stopPropagation();
    const button = event.currentTarget;
    button.disabled = true;
    showError(view.error, '');
    try {
      const job = await api('POST', `/api/jobs/${enc(id)}/cancel`);
      const entry = view.rows.get(id);
      if (entry && job) fillJobRow(view, entry, job);
    } catch (err) {
      if (err.status === 401) return showLogin();
      showError(view.error, err.message);
      button.disabled = false;
    }
  }

  /* ---------- #plans and the failover dialog ---------- */

  async function renderPlans(page, ctx) {
    const [plans, status] = await Promise.all([api('GET', '/api/plans'), api('GET', '/api/status')]);
    if (!ctx.alive()) return;
    const regions = (status.regions || []).map((region) => region.name);
    const sections = plans.map((plan) => planSection(plan, regions, ctx));
    page.replaceChildren(
      el('h1', { text: 'Recovery plans' }),
      emptyNote(sections, 'No recovery plans are configured.'),
      el('div', { class: 'cards' }, sections));
  }

  function planSection(plan, regions, ctx) {
    const groups = (plan.groups || []).map((group, i) =>
      el('li', { class: 'group' }, el('span', { class: 'muted', text: `Group ${i + 1}: ` }), group.join(', ')));
    const section = el('section', { class: 'plan card', data: { plan: plan.name } },
      el('div', { class: 'card-head' }, el('h2', { text: plan.name })),
      el('p', { class: 'muted', text: 'Groups start in this order:' }),
      el('ol', { class: 'groups' }, groups));
    if (canOperate()) {
      section.append(el('div', { class: 'actions' }, el('button', {
        type: 'button', class: 'failover danger', text: 'Failover…',
        onclick: () => failoverDialog.open(plan, regions, (job) => showFailoverLive(section, job, ctx)),
      })));
    }
    return section;
  }

  const POINT_WORDS = {
    latest: 'the latest recovery point',
    processed: 'the latest fully processed recovery point',
    app: 'the latest application-consistent recovery point',
  };

  const failoverDialog = {
    plan: null,
    onStarted: null,
    busy: false,

    field(id) {
      return document.getElementById(`failover-${id}`);
    },

    bind() {
      for (const id of ['kind', 'target', 'point', 'at', 'confirm']) {
        this.field(id).addEventListener('input', () => this.update());
        this.field(id).addEventListener('change', () => this.update());
      }
      this.field('cancel').addEventListener('click', () => this.field('dialog').close());
      this.field('form').addEventListener('submit', (event) => {
        event.preventDefault();
        this.go();
      });
    },

    open(plan, regions, onStarted) {
      this.plan = plan;
      this.onStarted = onStarted;
      this.busy = false;
      this.field('title').textContent = `Failover of plan ${plan.name}`;
      this.field('plan-name').textContent = plan.name;
      this.field('target').replaceChildren(...regions.map((name) => el('option', { value: name, text: name })));
      this.field('kind').value = 'test';
      this.field('point').value = 'latest';
      this.field('at').value = '';
      this.field('confirm').value = '';
      showError(this.field('error'), '');
      this.update();
      this.field('dialog').showModal();
      this.field('confirm').focus();
    },

    atIso() {
      const date = new Date(this.field('at').value);
      return Number.isNaN(date.getTime()) ? null : date.toISOString().replace(/\.\d{3}Z$/, 'Z');
    },

    command() {
      const kind = this.field('kind').value;
      const point = this.field('point').value;
      const command = ['failover', '--plan', this.plan.name, '--to', this.field('target').value];
      if (kind === 'test') command.push('--test');
      if (kind === 'planned') command.push('--planned');
      if (kind !== 'planned') {
        if (point === 'at') command.push('--at', this.atIso() || '?');
        else command.push('--point', point);
      }
      return command;
    },

    summary() {
      const kind = this.field('kind').value;
      const target = this.field('target').value || '?';
      const point = this.field('point').value;
      const from = point === 'at'
        ? `the newest recovery point at or before ${this.atIso() ? formatTime(this.atIso()) : '(choose a moment)'}`
        : POINT_WORDS[point];
      const order = (this.plan.groups || []).map((group) => group.join(', ')).join(', then ');
      const groups = order ? ` Groups start in order: ${order}.` : '';
      if (kind === 'test') {
        return `Start a test copy of plan ${this.plan.name} in ${target} from ${from}, on an isolated network and DNS view. Production keeps running untouched.${groups}`;
      }
      if (kind === 'planned') {
        return `Shut down the VMs of plan ${this.plan.name}, replicate their last writes, and start them in ${target} with no data loss. The region they leave is fenced.${groups}`;
      }
      return `Start the VMs of plan ${this.plan.name} in ${target} from ${from}. Writes made after that point are lost; the region they leave is fenced.${groups}`;
    },

    update() {
      if (!this.plan) return;
      const kind = this.field('kind').value;
      const point = this.field('point');
      point.disabled = kind === 'planned';
      const wantsAt = !point.disabled && point.value === 'at';
      this.field('at-row').hidden = !wantsAt;
      this.field('summary').textContent = this.summary();
      this.field('command').textContent = this.command().join(' ');
      const ready = this.field('confirm').value === this.plan.name
        && this.field('target').value !== ''
        && (!wantsAt || this.atIso() !== null);
      this.field('go').disabled = !ready || this.busy;
    },

    async go() {
      if (this.field('go').disabled) return;
      this.busy = true;
      this.update();
      showError(this.field('error'), '');
      try {
        const job = await api('POST', '/api/jobs', { command: this.command() });
        this.field('dialog').close();
        if (this.onStarted) this.onStarted(job);
      } catch (err) {
        showError(this.field('error'), err.message);
      } finally {
        this.busy = false;
        this.update();
      }
    },
  };

  function showFailoverLive(section, job, ctx) {
    const existing = document.getElementById('failover-live');
    if (existing) existing.remove();
    const live = {
      state: el('span', { class: 'badge state' }),
      bar: el('progress'),
      progress: el('p', { class: 'progress-text' }),
      steps: el('ol', { id: 'failover-steps', class: 'steps' }),
      output: el('pre', { class: 'output' }),
      error: el('p', { class: 'error', role: 'alert', hidden: true }),
    };
    const panel = el('div', { id: 'failover-live', class: 'live', data: { job: job.id } },
      el('h3', {}, 'Failover job ', el('span', { class: 'mono', text: job.id }), ' ', live.state),
      el('p', { class: 'mono muted', text: (job.command || []).join(' ') }),
      live.bar, live.progress, live.steps, live.output, live.error,
      el('p', {}, el('a', { href: '#jobs', text: 'All jobs' })));
    section.append(panel);
    fillFailoverLive(live, job);
    if (FINISHED_JOB_STATES.includes(job.state)) return;
    const stop = ctx.every(1000, async () => {
      try {
        const current = await api('GET', `/api/jobs/${enc(job.id)}`);
        showError(live.error, '');
        fillFailoverLive(live, current);
        if (FINISHED_JOB_STATES.includes(current.state)) stop();
      } catch (err) {
        if (err.status === 401) throw err;
        showError(live.error, err.message);
      }
    });
  }

  function fillFailoverLive(live, job) {
    setBadge(live.state, job.state);
    updateProgress(live.bar, job.progress);
    setText(live.progress, progressText(job.progress) || (job.state === 'queued' ? 'waiting for a node to start it' : ''));
    const steps = job.progress && job.progress.steps;
    live.steps.replaceChildren(...stepItems(steps));
    const exit = job.exit_code === null || job.exit_code === undefined ? '' : `\nexit code ${job.exit_code}`;
    setText(live.output, (job.output || '') + exit);
  }

  /* ---------- #drills ---------- */

  async function renderDrills(page, ctx) {
    const drills = await api('GET', '/api/drills');
    if (!ctx.alive()) return;
    const rows = drills.map(drillRow);
    page.replaceChildren(
      el('h1', { text: 'Failover drills' }),
      el('p', { class: 'muted', text: 'Test failovers: copies started on an isolated network to prove each plan works.' }),
      table({ id: 'drills' }, ['Plan', 'Target', 'Started', 'Finished', 'State', 'Steps'], rows),
      emptyNote(rows, 'No test failover has run yet.'));
  }

  function drillRow(drill) {
    const steps = drill.steps || [];
    const done = steps.filter((step) => step.state === 'done').length;
    const row = el('tr', { class: 'clickable', data: { drill: drill.id } },
      el('td', { text: drill.plan }),
      el('td', { text: drill.target }),
      el('td', { text: formatTime(drill.started) }),
      el('td', { text: formatTime(drill.finished) }),
      el('td', {}, badge(drill.state, 'state')),
      el('td', { class: 'steps-count num', text: `${done}/${steps.length}` }));
    row.addEventListener('click', () => toggleDrillSteps(row, steps));
    return row;
  }

  function toggleDrillSteps(row, steps) {
    const next = row.nextElementSibling;
    if (next && next.classList.contains('drill-steps')) {
      next.remove();
      row.classList.remove('expanded');
      return;
    }
    row.classList.add('expanded');
    const list = steps.length ? el('ol', { class: 'steps' }, stepItems(steps)) : el('p', { class: 'muted', text: 'No steps recorded.' });
    row.after(el('tr', { class: 'drill-steps', data: { stepsOf: row.dataset.drill } }, el('td', { colspan: 6 }, list)));
  }

  /* ---------- Start ---------- */

  async function start() {
    document.getElementById('logout').addEventListener('click', logout);
    failoverDialog.bind();
    window.addEventListener('hashchange', navigate);
    try {
      setSession(await api('GET', '/api/session'));
    } catch (err) {
      if (err.status === 401) {
        showLogin();
        return;
      }
      document.getElementById('page').replaceChildren(
        el('h1', { text: 'Lifeboat' }),
        el('p', { class: 'error', role: 'alert', text: err.message }),
        el('button', { type: 'button', text: 'Retry', onclick: () => window.location.reload() }));
      document.body.dataset.ready = '1';
      return;
    }
    navigate();
  }

  document.addEventListener('DOMContentLoaded', start);
})();
