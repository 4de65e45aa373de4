// MDT meetings: the coordinator builds them; participants join and follow the presenter's view
// live over the meeting's WebSocket (one room per meeting, per the server contract).

import { get, post, put, query, setPurpose, token } from './api';
import { errorBox, h } from './dom';
import { nhsNumber, personName } from './format';
import { dropPreview, startPreview } from './preview';
import { type StudyView, VIEW_MOVED, closeStudyView, studyView } from './studyview';
import { outcomeForm } from './mdt_outcome';
import type { Me, Meeting, MeetingItem, ViewState } from './types';

export async function meetings(root: HTMLElement, params: URLSearchParams): Promise<void> {
  const date = params.get('date') ?? today();
  const picker = h('input', { type: 'date', value: date, id: 'mdt-date' });
  picker.addEventListener('change', () => (location.hash = `#/mdt?date=${picker.value}`));
  const list = h('ul', { class: 'meetings', id: 'meeting-list' });
  root.append(h('h1', {}, 'MDT meetings'), h('label', {}, 'Date ', picker), list, createForm(date));
  try {
    const r = await get<{ meetings: Meeting[] }>('/api/mdt/meetings' + query({ date }));
    if (!r.meetings.length) list.append(h('li', { class: 'empty' }, 'No meetings on this date.'));
    for (const m of r.meetings) {
      list.append(
        h(
          'li',
          { 'data-meeting': m.id },
          h('a', { href: `#/mdt/${m.id}` }, m.title),
          ` — ${m.time ? `${m.time}, ` : ''}${m.team}, ${m.items.length} patients, coordinator ${m.coordinator}, prefetch ${m.prefetch.state}`,
        ),
      );
    }
  } catch (e) {
    list.append(errorBox(`Meetings unavailable: ${(e as Error).message}`));
  }
}

function createForm(date: string): HTMLElement {
  const items = h('textarea', {
    name: 'items',
    rows: 4,
    placeholder: 'One patient a line: TRUST PATIENT_ID [STUDY_UID ...]',
  });
  const error = h('p', { class: 'error', role: 'alert' });
  const form = h(
    'form',
    { id: 'mdt-create', class: 'card' },
    h('h2', {}, 'New meeting (coordinator)'),
    h('label', {}, 'Title ', h('input', { name: 'title', required: true })),
    h('label', {}, 'Date ', h('input', { name: 'date', type: 'date', value: date, required: true })),
    h('label', {}, 'Starts ', h('input', { name: 'time', type: 'time' })),
    h('label', {}, 'Team ', h('input', { name: 'team', required: true })),
    h('label', {}, 'Patients and studies, in order', items),
    error,
    h('button', { type: 'submit' }, 'Create meeting'),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const rows = String(data.get('items') ?? '')
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((parts) => parts.length >= 2 && parts[0]);
    const body = {
      title: String(data.get('title')),
      date: String(data.get('date')),
      team: String(data.get('team')),
      time: String(data.get('time') ?? '') || null,
      items: rows.map(([issuer, patient_id, ...study_uids]) => ({ issuer, patient_id, study_uids })),
    };
    post<Meeting>('/api/mdt/meetings', body)
      .then((m) => (location.hash = `#/mdt/${m.id}`))
      .catch((err: Error) => (error.textContent = err.message));
  });
  return form;
}

/** What the server sends instead of the view when the presented patient is not one this
 * participant may see: the item only, no UIDs, no image position. */
interface Restricted {
  item_id: number | null;
  restricted: true;
}
type Shown = ViewState | Restricted;

type ServerMessage =
  | { type: 'welcome'; you: string; presenter: string | null; participants: string[]; state: Shown | null; seq: number }
  | { type: 'view'; state: Shown; seq: number; by: string }
  | { type: 'pointer'; point: [number, number, number] | null }
  | { type: 'presenter'; presenter: string | null }
  | { type: 'participants'; participants: string[] }
  | { type: 'error'; detail: string };

export async function meeting(root: HTMLElement, id: string): Promise<() => void> {
  let m: Meeting;
  let me: Me;
  try {
    [m, me] = await Promise.all([get<Meeting>(`/api/mdt/meetings/${id}`), get<Me>('/api/auth/me')]);
  } catch (e) {
    root.append(errorBox(`Meeting unavailable: ${(e as Error).message}`));
    return () => undefined;
  }
  // Every read from here on says it is for this meeting (the archive audits it so).
  setPurpose(`mdt:${id}`);
  const status = h('div', { class: 'mdt-status', id: 'mdt-status' });
  const people = h('div', { class: 'mdt-people', id: 'mdt-people' });
  const controls = h('div', { class: 'mdt-controls' });
  const itemsList = h('ol', { class: 'mdt-items' });
  const stage = h('div', { class: 'mdt-stage', id: 'mdt-stage' });
  const pointer = h('div', { class: 'mdt-pointer', hidden: true });
  const prefetch = h('span', { id: 'mdt-prefetch' }, prefetchText(m));
  root.append(
    h('div', { class: 'mdt-head' }, h('h1', {}, m.title), h('span', {}, `${m.date} · ${m.team} · coordinator ${m.coordinator}`), prefetch),
    h('div', { class: 'mdt-body' }, h('aside', {}, status, people, controls, itemsList), stage),
  );

  let presenter: string | null = m.presenter;
  let participants: string[] = [];
  let view: StudyView | null = null;
  let opening: Promise<void> = Promise.resolve();
  let lastSent = 0;
  let pending: ViewState | null = null;
  let timer: number | undefined;
  let lastView = '';
  let pointed: [number, number, number] | null = null; // the presenter's pointer (mm)
  const isPresenter = () => presenter === me.name;
  const isCoordinator = () => m.coordinator === me.name;

  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  let ws: WebSocket | null = null;
  let left = false; // the participant left the meeting's page: no more reconnects
  let retry = 0; // reconnects since the last welcome (the delay grows with it)
  let retryTimer: number | undefined;
  let wasPresenting = false; // presenting when the connection dropped: present again
  let shownItem: number | null = null; // the item of the study on the stage
  const send = (msg: unknown) => ws?.readyState === WebSocket.OPEN && ws.send(JSON.stringify(msg));

  // The presenter's changes go out at most every 50 ms, the latest state winning; one that
  // changes nothing (a measurement's statistics recomputed on a redraw) is not sent.
  const sendView = (state: ViewState) => {
    if (!isPresenter()) return;
    pending = state;
    const wait = Math.max(0, 50 - (Date.now() - lastSent));
    timer ??= window.setTimeout(() => {
      timer = undefined;
      lastSent = Date.now();
      const text = pending ? JSON.stringify(pending) : lastView;
      if (pending && text !== lastView) send({ type: 'view', state: pending });
      lastView = text;
      pending = null;
    }, wait);
  };

  // At most every 50 ms (every pointer move crosses the nodes like a view change), the latest
  // position winning: where the presenter's mouse stops is always sent.
  let pointerTimer: number | undefined;
  let lastPointer = 0;
  let nextPoint: number[] | null = null;
  const sendPointer = (point: number[] | null) => {
    nextPoint = point;
    pointerTimer ??= window.setTimeout(
      () => {
        pointerTimer = undefined;
        lastPointer = Date.now();
        send({ type: 'pointer', point: nextPoint });
      },
      Math.max(0, 50 - (Date.now() - lastPointer)),
    );
  };

  // The pointer travels in patient coordinates (mm) and each follower puts it where that point
  // is drawn in its own window (size, zoom, pan), again whenever its view moves.
  const placePointer = () => {
    const vp = view?.main.viewport;
    const box = pointer.parentElement; // the pane (positioned); offsetParent is null while hidden
    if (!pointed || !vp || !box || isPresenter()) {
      pointer.hidden = true;
      return;
    }
    const [x, y] = vp.worldToCanvas(pointed);
    const c = vp.canvas.getBoundingClientRect();
    const b = box.getBoundingClientRect();
    const inside = x >= 0 && y >= 0 && x <= c.width && y <= c.height;
    pointer.hidden = !inside || !Number.isFinite(x + y);
    pointer.style.left = `${c.left - b.left - box.clientLeft + x}px`;
    pointer.style.top = `${c.top - b.top - box.clientTop + y}px`;
  };

  const open = async (studyUid: string, itemId: number | null, follow: boolean) => {
    shownItem = itemId;
    // The archive's rendered first image (warmed by the meeting's prefetch) while the rest loads.
    if (!follow) void startPreview(stage, studyUid);
    view = await studyView(stage, studyUid, { onChange: sendView, follow, itemId, prior: null });
    view?.main.element.parentElement?.append(pointer);
    if (view) {
      const main = view.main;
      main.element.addEventListener('mousemove', (e) => {
        if (!isPresenter()) return;
        const r = main.viewport.canvas.getBoundingClientRect();
        const world = main.viewport.canvasToWorld([e.clientX - r.left, e.clientY - r.top]);
        if (world.every(Number.isFinite)) sendPointer(world.map((v) => Math.round(v * 100) / 100));
      });
      main.element.addEventListener('mouseleave', () => isPresenter() && sendPointer(null));
      for (const ev of VIEW_MOVED) main.element.addEventListener(ev, placePointer);
    }
  };

  // Not available to this participant: drop the previous patient's images at once (nothing of
  // them may linger on screen) and say so, until the presenter shows something they may see.
  const restricted = (itemId: number | null) => {
    closeStudyView();
    dropPreview();
    view = null;
    pointer.hidden = true;
    const position = m.items.find((i) => i.id === itemId)?.position;
    stage.classList.remove('reading');
    stage.replaceChildren(
      h(
        'div',
        { class: 'mdt-restricted', id: 'mdt-restricted', role: 'status' },
        h('h2', {}, 'Not available to you'),
        h(
          'p',
          {},
          `The presenter is showing ${position ? `patient ${position} of this meeting` : 'a patient'}, ` +
            'whose records your access does not include. The view returns when the presenter moves on.',
        ),
      ),
    );
  };

  const follow = (state: Shown) => {
    opening = opening
      .then(async () => {
        if (isPresenter()) return;
        if ('restricted' in state) {
          restricted(state.item_id);
        } else {
          if (!view || view.main.studyUid !== state.study_uid) {
            stage.replaceChildren();
            await open(state.study_uid, state.item_id, true);
          }
          await view?.apply(state);
        }
        stage.dataset.restricted = String('restricted' in state);
        stage.dataset.seq = String(Date.now());
      })
      // One view this browser cannot show (a frame that failed, a state it does not
      // understand) must not end the following: the presenter's next view is shown.
      .catch((e: unknown) => console.warn('MDT: could not show the presenter\'s view', e));
  };

  const render = () => {
    status.textContent = presenter ? `Presenter: ${presenter}${isPresenter() ? ' (you)' : ''}` : 'Nobody is presenting';
    status.dataset.presenter = presenter ?? '';
    people.replaceChildren(h('strong', {}, 'Here: '), participants.join(', '));
    controls.replaceChildren();
    if (!presenter || isCoordinator()) {
      const claim = h('button', { id: 'mdt-claim', type: 'button' }, 'Present');
      claim.addEventListener('click', () => send({ type: 'claim' }));
      if (!isPresenter()) controls.append(claim);
    }
    if (isPresenter() || isCoordinator()) {
      const to = h('select', { id: 'mdt-handover-to' }, ...participants.filter((p) => p !== presenter).map((p) => h('option', { value: p }, p)));
      const hand = h('button', { id: 'mdt-handover', type: 'button' }, 'Hand over');
      hand.addEventListener('click', () => to.value && send({ type: 'handover', to: to.value }));
      controls.append(to, hand);
      const warm = h('button', { id: 'mdt-prefetch-start', type: 'button' }, 'Prefetch again');
      warm.addEventListener('click', () => void post(`/api/mdt/meetings/${id}/prefetch`, {}).then(refreshPrefetch));
      controls.append(warm);
    }
    stage.classList.toggle('presenting', isPresenter());
    itemsList.replaceChildren(...m.items.map(itemView));
  };

  const itemView = (item: MeetingItem) => {
    const outcome = h('textarea', { rows: 2, class: 'outcome', 'data-item': item.id }, item.outcome ?? '');
    const save = h('button', { type: 'button', class: 'small' }, 'Save outcome');
    save.addEventListener('click', () =>
      void put<MeetingItem>(`/api/mdt/meetings/${id}/items/${item.id}/outcome`, { text: outcome.value })
        .then((saved) => (item.outcome = saved.outcome))
        .catch((e: Error) => alert(e.message)),
    );
    const studies = item.study_uids.map((uid, n) => {
      const b = h('button', { type: 'button', class: 'small mdt-open', 'data-study': uid }, `Study ${n + 1}`);
      b.addEventListener('click', () => {
        if (isPresenter()) void open(uid, item.id, false).then(() => view && sendView(view.main.state(item.id)));
        else alert('Only the presenter drives the shared view.');
      });
      return b;
    });
    if (item.patient_id === null) {
      return h('li', { 'data-item': item.id, class: 'restricted' }, h('em', {}, 'A patient not available to you'));
    }
    return h(
      'li',
      { 'data-item': item.id },
      h('strong', {}, personName(item.patient_name) || item.patient_id),
      ` ${item.issuer} ${item.patient_id} · NHS ${nhsNumber(item.nhs_number) || '—'} `,
      h('div', {}, ...studies),
      h(
        'span',
        { class: 'mdt-item-prefetch', 'data-state': item.prefetch?.state ?? '' },
        item.prefetch ? `Prefetch: ${item.prefetch.state}${item.prefetch.warmed ? ` (${item.prefetch.warmed} warmed)` : ''}` : '',
      ),
      outcome,
      save,
      radiology(item),
    );
  };

  // The radiology input form of each item (R32), kept across re-renders so typing survives.
  const forms = new Map<number, HTMLElement>();
  const radiology = (item: MeetingItem): HTMLElement => {
    const form = forms.get(item.id) ?? outcomeForm(id, item);
    forms.set(item.id, form);
    return form;
  };

  async function refreshPrefetch(): Promise<void> {
    const fresh = await get<Meeting>(`/api/mdt/meetings/${id}`);
    // Only the prefetch changes here: outcomes being typed stay as they are.
    for (const item of m.items) item.prefetch = fresh.items.find((i) => i.id === item.id)?.prefetch ?? item.prefetch;
    m.prefetch = fresh.prefetch;
    prefetch.textContent = prefetchText(m);
    for (const el of itemsList.querySelectorAll<HTMLElement>('li[data-item]')) {
      const item = m.items.find((i) => String(i.id) === el.dataset.item);
      const span = el.querySelector<HTMLElement>('.mdt-item-prefetch');
      if (item?.prefetch && span) {
        span.dataset.state = item.prefetch.state;
        span.textContent = `Prefetch: ${item.prefetch.state}${item.prefetch.warmed ? ` (${item.prefetch.warmed} warmed)` : ''}`;
      }
    }
    if (m.prefetch.state === 'pending' || m.prefetch.state === 'running') setTimeout(() => void refreshPrefetch(), 2000);
  }

  const onMessage = (event: MessageEvent) => {
    const msg = JSON.parse(String(event.data)) as ServerMessage;
    switch (msg.type) {
      case 'welcome': {
        retry = 0;
        const back = wasPresenting;
        wasPresenting = false;
        presenter = msg.presenter;
        participants = msg.participants;
        status.querySelector('.mdt-connection')?.remove();
        render();
        if (back && !msg.presenter) {
          // Back after a dropped connection while presenting, and nobody took over meanwhile:
          // present again (the room let the role go when the connection went). This screen,
          // not the room's last view, is what the room shows next: the presenter may have
          // gone on while the connection was down (the presenter event sends it).
          send({ type: 'claim' });
        } else if (back && isPresenter() && view) {
          // Still presenting (the room had not let the role go): what this screen moved to
          // while the connection was down was never sent, so send it now.
          const shown = view;
          lastView = '';
          opening = opening.then(() => sendView(shown.main.state(shownItem)));
        } else if (msg.state) {
          follow(msg.state);
        }
        break;
      }
      case 'view':
        if (msg.by !== me.name) follow(msg.state);
        break;
      case 'pointer':
        pointed = msg.point;
        placePointer();
        break;
      case 'presenter': {
        const was = isPresenter();
        presenter = msg.presenter;
        render();
        // The new presenter continues from what everyone sees and drives it from now on.
        opening = opening.then(() => view?.setFollow(!isPresenter()));
        pointed = null;
        lastView = '';
        placePointer();
        // Presenting (again) with a study on the stage: the room shows what this screen shows.
        if (!was && isPresenter() && view) {
          const shown = view;
          opening = opening.then(() => sendView(shown.main.state(shownItem)));
        }
        break;
      }
      case 'participants':
        participants = msg.participants;
        render();
        break;
      case 'error':
        status.textContent = `${status.textContent} — ${msg.detail}`;
        break;
    }
  };

  // The live room's connection. A dropped one (network, a proxy's idle timeout, a server
  // restart) is opened again, sooner first, and the welcome brings this screen back to what the
  // presenter shows; the archive's refusals (token, role, meeting: 44xx) are final.
  const connect = () => {
    retryTimer = undefined;
    const socket = new WebSocket(`${proto}://${location.host}/api/mdt/meetings/${id}/live?token=${encodeURIComponent(token() ?? '')}`);
    ws = socket;
    socket.addEventListener('message', onMessage);
    socket.addEventListener('close', (event) => {
      if (left || ws !== socket) return;
      wasPresenting ||= isPresenter();
      status.querySelector('.mdt-connection')?.remove();
      if (event.code >= 4400 && event.code < 4500) {
        status.append(h('span', { class: 'error mdt-connection' }, ' (disconnected)'));
        return;
      }
      status.append(h('span', { class: 'error mdt-connection' }, ' (connection lost, reconnecting…)'));
      const delay = Math.min(10_000, 500 * 2 ** retry++);
      retryTimer = window.setTimeout(connect, delay);
    });
  };
  connect();
  render();
  if (m.prefetch.state === 'pending' || m.prefetch.state === 'running') setTimeout(() => void refreshPrefetch(), 2000);
  return () => {
    left = true;
    clearTimeout(retryTimer);
    ws?.close();
    closeStudyView();
    setPurpose(null);
  };
}

/** Today's date where the user is (YYYY-MM-DD): meetings are planned in local time, and the
 * UTC date is yesterday's in the first hour of a British summer day. */
function today(): string {
  const d = new Date();
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
}

function prefetchText(m: Meeting): string {
  return `Prefetch: ${m.prefetch.state} ${m.prefetch.done}/${m.prefetch.total}`;
}
