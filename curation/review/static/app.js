// The review page: no build step, no libraries, nothing fetched but this server's /api.
// Every piece of clip data is put into the page as text (textContent), never as HTML.
'use strict';
const $ = (id) => document.getElementById(id);
const STATUSES = ['accepted', 'rejected', 'error'];
const BY = ['thresholds', 'human'];
const S = {data: null, els: new Map(), shown: [], current: null, picked: new Set(), editing: null,
           working: {}, busy: 0};

function busy(delta) { S.busy += delta; document.body.dataset.busy = String(S.busy); }

async function api(method, url, body) {
  busy(1);
  try {
    const opts = {method, headers: {}, credentials: 'same-origin'};
    if (body !== undefined) { opts.headers['Content-Type'] = 'application/json'; opts.body = JSON.stringify(body); }
    const res = await fetch(url, opts);
    const out = await res.json().catch(() => ({error: res.statusText}));
    if (!res.ok) throw new Error(out.error || res.statusText);
    return out;
  } finally { busy(-1); }
}

function say(text) { $('message').textContent = text || ''; }

function fmt(v) { return v === null || v === undefined ? '–' : (Math.abs(v) < 0.01 && v !== 0 ? v.toExponential(2) : (+v).toFixed(3)); }

// ---- cards -------------------------------------------------------------------------------------
function makeCard(clip) {
  const el = $('card-tpl').content.firstElementChild.cloneNode(true);
  el.dataset.id = clip.id;
  const media = el.querySelector('.media');
  if (clip.preview && clip.kind === 'image') {
    const img = document.createElement('img'); img.alt = 'preview'; img.loading = 'lazy';
    img.src = '/api/clips/' + encodeURIComponent(clip.id) + '/preview'; media.appendChild(img);
  } else if (clip.preview) {
    const v = document.createElement('video');
    v.muted = true; v.loop = true; v.playsInline = true; v.preload = 'none';
    v.src = '/api/clips/' + encodeURIComponent(clip.id) + '/preview';
    media.appendChild(v); observer.observe(v);
  } else { media.textContent = 'no preview (the clip could not be read)'; }
  el.addEventListener('click', (ev) => {
    if (ev.target.closest('button') || ev.target.closest('textarea')) return;
    if (ev.shiftKey || ev.target.classList.contains('pick')) togglePick(clip.id); else setCurrent(clip.id);
    if (ev.target.classList.contains('pick')) ev.preventDefault();
  });
  el.querySelector('.b-accept').addEventListener('click', () => decide([clip.id], 'accept'));
  el.querySelector('.b-reject').addEventListener('click', () => decide([clip.id], 'reject'));
  el.querySelector('.b-reset').addEventListener('click', () => decide([clip.id], 'reset'));
  el.querySelector('.b-edit').addEventListener('click', () => { setCurrent(clip.id); edit(); });
  S.els.set(clip.id, el);
  return el;
}

function fillCard(el, clip) {
  el.className = 'card ' + clip.status + (S.current === clip.id ? ' current' : '') + (S.picked.has(clip.id) ? ' picked' : '');
  el.dataset.status = clip.status; el.dataset.by = clip.decided_by;
  el.querySelector('.status').textContent = clip.status;
  const by = el.querySelector('.by');
  by.textContent = clip.decided_by === 'human' ? 'human' : 'thresholds';
  by.className = 'by ' + clip.decided_by;
  by.title = clip.decided_by === 'human' ? 'decided by a person; thresholds say ' + clip.threshold_status : '';
  el.querySelector('.pick').checked = S.picked.has(clip.id);
  const span = clip.start_time === null ? '' : ' · ' + (+clip.start_time).toFixed(2) + '–' + (+clip.end_time).toFixed(2) + ' s';
  el.querySelector('.name').textContent = clip.name + span;
  el.querySelector('.name').title = clip.id;
  const reasons = el.querySelector('.reasons'); reasons.replaceChildren();
  for (const r of clip.reasons) { const d = document.createElement('div'); d.textContent = r; reasons.appendChild(d); }
  const table = el.querySelector('.scores'); table.replaceChildren();
  for (const k of Object.keys(clip.scores).sort()) {
    const tr = table.insertRow(); tr.insertCell().textContent = k; tr.insertCell().textContent = fmt(clip.scores[k]);
  }
  if (S.editing !== clip.id) {
    const cap = el.querySelector('.caption .text');
    cap.replaceChildren(); cap.textContent = clip.caption === null ? '(none)' : clip.caption;
  }
  el.querySelector('.caption .label').textContent = 'caption' + (clip.caption_source ? ' (' + clip.caption_source + ')' : '');
  el.querySelector('.training .text').textContent = clip.training_caption === null ? '(none)' : clip.training_caption;
  el.querySelector('.b-accept').disabled = clip.status === 'error';
}

const observer = new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (e.isIntersecting) { e.target.preload = 'auto'; e.target.play().catch(() => {}); } else e.target.pause();
  }
});

// ---- filters, sort, counts ---------------------------------------------------------------------
function passes(clip) {
  if (!$('st_' + clip.status).checked || !$('by_' + clip.decided_by).checked) return false;
  const reason = $('f-reason').value;
  if (reason && !clip.reason_kinds.includes(reason)) return false;
  const text = $('f-text').value.trim().toLowerCase();
  if (text) {
    const hay = [clip.id, clip.name, clip.caption || '', ...clip.reasons].join(' ').toLowerCase();
    if (!hay.includes(text)) return false;
  }
  const key = $('f-score').value, lo = $('f-min').value, hi = $('f-max').value;
  if (key && (lo !== '' || hi !== '')) {
    const v = clip.scores[key];
    if (v === null || v === undefined) return false;
    if (lo !== '' && v < parseFloat(lo)) return false;
    if (hi !== '' && v > parseFloat(hi)) return false;
  }
  return true;
}

function render() {
  const key = $('sort').value, dir = $('dir').value === 'asc' ? 1 : -1;
  const clips = S.data.clips.filter(passes);
  clips.sort((a, b) => {
    if (key === 'source') return (a.name + a.start_frame).localeCompare(b.name + b.start_frame, undefined, {numeric: true});
    const x = a.scores[key], y = b.scores[key];
    const nx = x === null || x === undefined, ny = y === null || y === undefined;
    if (nx || ny) return nx === ny ? a.id.localeCompare(b.id) : (nx ? 1 : -1);
    return x === y ? a.id.localeCompare(b.id) : (x < y ? -1 : 1) * dir;
  });
  const box = $('cards');
  for (const el of box.children) el.hidden = true;
  for (const c of clips) {
    const el = S.els.get(c.id) || makeCard(c);
    fillCard(el, c); el.hidden = false; box.appendChild(el);
  }
  S.shown = clips.map((c) => c.id);
  if (!S.shown.includes(S.current)) S.current = S.shown[0] || null;
  for (const id of S.shown) S.els.get(id).classList.toggle('current', id === S.current);
  counts(clips);
  pickButtons();
  drawHists();
}

function counts(shown) {
  const all = S.data.clips;
  const n = (list, f) => list.filter(f).length;
  for (const s of STATUSES) $('n_' + s).textContent = n(all, (c) => c.status === s);
  for (const b of BY) $('nb_' + b).textContent = n(all, (c) => c.decided_by === b);
  $('counts').textContent = shown.length + ' of ' + all.length + ' clips shown · ' + n(all, (c) => c.status === 'accepted')
    + ' accepted, ' + n(all, (c) => c.decided_by === 'human') + ' decided by a person';
}

function checkbox(parent, id, label, countId) {
  const l = document.createElement('label'); const i = document.createElement('input');
  i.type = 'checkbox'; i.id = id; i.checked = true; i.addEventListener('change', render);
  const c = document.createElement('span'); c.id = countId; c.className = 'n';
  l.append(i, ' ' + label + ' (', c, ')'); parent.appendChild(l);
}

function setupControls() {
  for (const s of STATUSES) checkbox($('f-status'), 'st_' + s, s, 'n_' + s);
  for (const b of BY) checkbox($('f-by'), 'by_' + b, b, 'nb_' + b);
  const opt = (sel, value, text) => { const o = document.createElement('option'); o.value = value; o.textContent = text; sel.appendChild(o); };
  opt($('sort'), 'source', 'source and time');
  opt($('f-score'), '', '(choose)');
  for (const k of S.data.scores) { opt($('sort'), k, k); opt($('f-score'), k, k); }
  for (const id of ['f-reason', 'f-text', 'f-score', 'f-min', 'f-max', 'sort', 'dir']) $(id).addEventListener('input', render);
  $('sel-accept').addEventListener('click', () => decide([...S.picked], 'accept'));
  $('sel-reject').addEventListener('click', () => decide([...S.picked], 'reject'));
  $('sel-clear').addEventListener('click', () => { S.picked.clear(); render(); });
  $('export').addEventListener('click', exportAll);
  $('apply').addEventListener('click', applyThresholds);
  $('help-btn').addEventListener('click', () => help(true));
}

function setupReasons() {
  const sel = $('f-reason'), keep = sel.value;
  while (sel.options.length > 1) sel.remove(1);
  for (const r of [...new Set(S.data.clips.flatMap((c) => c.reason_kinds))].sort()) {
    const o = document.createElement('option'); o.value = r; o.textContent = r; sel.appendChild(o);
  }
  sel.value = keep;
}

// ---- selection and actions ---------------------------------------------------------------------
function setCurrent(id, scroll) {
  if (!id) return;
  S.current = id;
  for (const [k, el] of S.els) el.classList.toggle('current', k === id);
  const el = S.els.get(id);
  if (scroll) el.scrollIntoView({block: 'nearest'});
  el.focus({preventScroll: true});
}

function move(step) {
  if (!S.shown.length) return;
  const i = S.shown.indexOf(S.current);
  setCurrent(S.shown[Math.max(0, Math.min(S.shown.length - 1, (i < 0 ? 0 : i + step)))], true);
}

function togglePick(id) {
  if (S.picked.has(id)) S.picked.delete(id); else S.picked.add(id);
  const el = S.els.get(id); el.classList.toggle('picked', S.picked.has(id));
  el.querySelector('.pick').checked = S.picked.has(id);
  pickButtons();
}

function pickButtons() {
  for (const b of ['sel-accept', 'sel-reject', 'sel-clear']) $(b).disabled = S.picked.size === 0;
  $('sel-accept').textContent = 'accept selected (' + S.picked.size + ')';
  $('sel-reject').textContent = 'reject selected (' + S.picked.size + ')';
}

function update(clips) {
  const byId = new Map(clips.map((c) => [c.id, c]));
  S.data.clips = S.data.clips.map((c) => byId.get(c.id) || c);
  render();
}

async function decide(ids, action) {
  if (!ids.length) return;
  try {
    const out = ids.length === 1 ? await api('POST', '/api/clips/' + encodeURIComponent(ids[0]) + '/decision', {action})
                                 : await api('POST', '/api/decisions', {ids, action});
    if (ids.length > 1) S.picked.clear();
    say(''); update(out.clips);
  } catch (e) { say(e.message); }
}

function edit() {
  const id = S.current; if (!id || S.editing) return;
  const clip = S.data.clips.find((c) => c.id === id);
  const box = S.els.get(id).querySelector('.caption .text');
  const ta = document.createElement('textarea'); ta.value = clip.caption || ''; ta.setAttribute('aria-label', 'caption');
  S.editing = id; box.replaceChildren(ta); ta.focus();
  ta.addEventListener('keydown', async (ev) => {
    ev.stopPropagation();
    if (ev.key === 'Escape') { ev.preventDefault(); S.editing = null; render(); setCurrent(id); }
    if (ev.key === 'Enter' && !ev.shiftKey) {
      ev.preventDefault();
      try {
        const out = await api('PUT', '/api/clips/' + encodeURIComponent(id) + '/caption', {caption: ta.value});
        S.editing = null; say(''); update(out.clips); setCurrent(id);
      } catch (e) { say(e.message); }
    }
  });
}

function help(show) { $('help').hidden = !show; }

document.addEventListener('keydown', (ev) => {
  if (!S.data || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const t = ev.target.tagName;
  if (t === 'INPUT' || t === 'TEXTAREA' || t === 'SELECT') { if (ev.key === 'Escape') ev.target.blur(); return; }
  const picked = S.picked.size ? [...S.picked] : (S.current ? [S.current] : []);
  const keys = {
    j: () => move(1), k: () => move(-1), a: () => decide(picked, 'accept'), r: () => decide(picked, 'reject'),
    u: () => decide(picked, 'reset'), x: () => S.current && togglePick(S.current), e: edit,
    '?': () => help($('help').hidden), Escape: () => help(false),
  };
  const f = keys[ev.key];
  if (f) { ev.preventDefault(); f(); }
});

// ---- histograms and thresholds -----------------------------------------------------------------
const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs) { const e = document.createElementNS(SVG, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); return e; }

function ok(v, t) { return v === null || v === undefined || t.value === null || (t.side === 'min' ? v >= t.value : v <= t.value); }

function wouldAccept() {
  const ts = S.data.thresholds.map((t) => ({...t, value: t.key in S.working ? S.working[t.key] : t.value}));
  return S.data.clips.filter((c) => c.status !== 'error' && Object.keys(c.scores).length
    && ts.every((t) => ok(c.scores[t.score], t))).length;
}

function drawHists() {
  const box = $('hists'); box.replaceChildren();
  for (const t of S.data.thresholds) {
    const vals = S.data.clips.map((c) => c.scores[t.score]).filter((v) => v !== null && v !== undefined);
    if (!vals.length) continue;
    const value = t.key in S.working ? S.working[t.key] : t.value;
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (value !== null) { lo = Math.min(lo, value); hi = Math.max(hi, value); }
    if (hi === lo) hi = lo + 1;
    const bins = 24, counts = new Array(bins).fill(0);
    for (const v of vals) counts[Math.min(bins - 1, Math.floor((v - lo) / (hi - lo) * bins))] += 1;
    const top = Math.max(...counts);
    const div = document.createElement('div'); div.className = 'hist'; div.dataset.key = t.key;
    const title = document.createElement('div'); title.className = 'title';
    const name = document.createElement('span'); name.textContent = t.score + ' ' + (t.side === 'min' ? '≥' : '≤');
    const shown = document.createElement('span'); shown.className = 'value'; shown.textContent = value === null ? 'off' : fmt(value);
    title.append(name, shown);
    const pic = svg('svg', {viewBox: '0 0 240 60', preserveAspectRatio: 'none', role: 'img'});
    counts.forEach((n, i) => {
      const mid = lo + (i + 0.5) * (hi - lo) / bins;
      pic.appendChild(svg('rect', {x: i * 10 + 1, width: 8, y: 60 - 56 * n / top, height: 56 * n / top,
        class: ok(mid, {side: t.side, value}) ? 'in' : 'out'}));
    });
    if (value !== null) { const x = (value - lo) / (hi - lo) * 240; pic.appendChild(svg('line', {x1: x, x2: x, y1: 0, y2: 60})); }
    const range = document.createElement('input'); range.type = 'range'; range.min = lo; range.max = hi;
    range.step = (hi - lo) / 200; range.value = value === null ? (t.side === 'min' ? lo : hi) : value;
    range.setAttribute('aria-label', t.key);
    range.addEventListener('input', () => {
      S.working[t.key] = parseFloat(range.value); shown.textContent = fmt(S.working[t.key]); applyLabel();
    });
    range.addEventListener('change', drawHists);
    div.append(title, pic, range); box.appendChild(div);
  }
  applyLabel();
  const orphans = $('orphans'); orphans.replaceChildren();
  if (S.data.orphans.length) {
    const h = document.createElement('h2'); h.textContent = 'Decisions for clips no longer in this run (' + S.data.orphans.length + ')';
    orphans.appendChild(h);
    for (const o of S.data.orphans) {
      const d = document.createElement('div'); d.textContent = o.id + ': ' + (o.status || 'caption') + (o.caption ? ' · ' + o.caption : '');
      orphans.appendChild(d);
    }
  }
}

function applyLabel() {
  const changed = Object.keys(S.working).length;
  $('apply').disabled = !changed;
  $('apply').textContent = changed ? 'apply thresholds: ' + wouldAccept() + ' would be accepted' : 'apply thresholds';
}

async function applyThresholds() {
  try {
    say('applying thresholds…'); S.data = await api('POST', '/api/thresholds', {values: S.working});
    S.working = {}; say(''); setupReasons(); render();
  } catch (e) { say(e.message); }
}

async function exportAll() {
  try {
    say('writing clips and manifest…'); S.data = await api('POST', '/api/export', {});
    say(''); setupReasons(); render();
  } catch (e) { say(e.message); }
}

async function main() {
  try { S.data = await api('GET', '/api/clips'); } catch (e) { say(e.message); return; }
  document.title = 'Review: ' + S.data.out_dir; $('title').textContent = 'Review: ' + S.data.out_dir;
  setupControls(); setupReasons(); render();
  setCurrent(S.shown[0]);
  document.body.dataset.ready = '1';
}
main();
