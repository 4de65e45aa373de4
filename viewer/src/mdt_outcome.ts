// R32: the radiology input to an MDT item (opinion, plan, the studies reviewed, a discrepancy
// with the original report), and the primary reporter's notices of such discrepancies.
// The server decides who may record (radiologists who may see the patient) and to whom a
// discrepancy goes (the report's OBR-32 reporter at the reporting trust).

import { get, post, query } from './api';
import { errorBox, h } from './dom';
import type { MdtOutcome, MeetingItem, ReporterNotice } from './types';

/** The outcome form and the outcomes recorded so far, for one visible item. */
export function outcomeForm(meetingId: string, item: MeetingItem): HTMLElement {
  const base = `/api/mdt/meetings/${meetingId}/items/${item.id}/outcomes`;
  const opinion = h('textarea', { rows: 3, name: 'opinion', required: true, placeholder: 'Radiology opinion' });
  const plan = h('textarea', { rows: 2, name: 'plan', placeholder: 'Plan' });
  const studies = item.study_uids.map((uid, n) =>
    h('label', { class: 'reviewed' }, h('input', { type: 'checkbox', name: 'reviewed', value: uid, checked: true }), ` Study ${n + 1}`),
  );
  const discrepancy = h('input', { type: 'checkbox', name: 'discrepancy' });
  const note = h('textarea', { rows: 2, name: 'discrepancy_note', placeholder: 'What differs from the original report', hidden: true });
  discrepancy.addEventListener('change', () => (note.hidden = !discrepancy.checked));
  const message = h('p', { class: 'outcome-message', role: 'status' });
  const list = h('ol', { class: 'outcomes' });
  const record = h('button', { type: 'submit', class: 'small' }, 'Record outcome');
  const form = h(
    'form',
    { class: 'outcome-form', 'data-item': item.id },
    opinion,
    plan,
    h('div', {}, 'Reviewed: ', ...studies),
    h('label', {}, discrepancy, ' Discrepancy with the original report (tells its reporter)'),
    note,
    record,
    message,
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const reviewed = studies
      .map((l) => l.querySelector('input') as HTMLInputElement)
      .filter((i) => i.checked)
      .map((i) => ({ study_uid: i.value }));
    record.disabled = true;
    post<MdtOutcome>(base, {
      opinion: opinion.value,
      plan: plan.value,
      reviewed,
      discrepancy: discrepancy.checked,
      discrepancy_note: discrepancy.checked ? note.value : '',
    })
      .then((saved) => {
        list.append(outcomeView(saved));
        form.reset();
        note.hidden = true;
        message.textContent = saved.notices.length
          ? `Recorded; the reporter was told (${saved.notices.map((n) => `${n.reporter ?? 'reporting team'}, ${n.trust}`).join('; ')}).`
          : 'Recorded.';
      })
      .catch((err: Error) => (message.textContent = err.message))
      .finally(() => (record.disabled = false));
  });
  const box = h('details', { class: 'mdt-outcome' }, h('summary', {}, 'Radiology input'), list, form);
  box.addEventListener(
    'toggle',
    () =>
      void get<{ outcomes: MdtOutcome[] }>(base)
        .then((r) => list.replaceChildren(...r.outcomes.map(outcomeView)))
        .catch((err: Error) => list.replaceChildren(errorBox(err.message))),
    { once: true },
  );
  return box;
}

function outcomeView(o: MdtOutcome): HTMLElement {
  return h(
    'li',
    { 'data-outcome': o.id },
    h('div', {}, h('strong', {}, 'Opinion: '), o.opinion),
    o.plan ? h('div', {}, h('strong', {}, 'Plan: '), o.plan) : null,
    o.discrepancy ? h('div', { class: 'discrepancy' }, h('strong', {}, 'Discrepancy: '), o.discrepancy_note ?? '') : null,
    h('small', {}, `${o.by}${o.trust ? ` (${o.trust})` : ''}, ${new Date(o.at).toLocaleString()} · ${o.reviewed.length} studies reviewed`),
  );
}

/** #/notices: discrepancies flagged to the signed-in user as a report's primary reporter. */
export async function notices(root: HTMLElement, params: URLSearchParams): Promise<void> {
  const status = params.get('status') ?? 'open';
  const list = h('ul', { class: 'notices', id: 'notice-list' });
  root.append(
    h('h1', {}, 'Report discrepancies from MDTs'),
    h('p', {}, h('a', { href: '#/notices?status=open' }, 'Open'), ' · ', h('a', { href: '#/notices?status=all' }, 'All')),
    list,
  );
  try {
    const r = await get<{ notices: ReporterNotice[] }>('/api/viewer/notices' + query({ status }));
    if (!r.notices.length) list.append(h('li', { class: 'empty' }, 'No discrepancies for you.'));
    for (const n of r.notices) list.append(noticeView(n));
  } catch (e) {
    list.append(errorBox((e as Error).message));
  }
}

function noticeView(n: ReporterNotice): HTMLElement {
  const response = h('textarea', { rows: 2, placeholder: 'Your response (e.g. addendum issued)' });
  const ack = h('button', { type: 'button', class: 'small' }, 'Acknowledge');
  const item = h(
    'li',
    { 'data-notice': n.id, 'data-status': n.status },
    h('a', { href: `#/study/${n.study_uid}` }, `${n.patient.issuer} ${n.patient.patient_id} · accession ${n.accession}`),
    h('div', {}, h('strong', {}, 'Discrepancy: '), n.discrepancy_note ?? ''),
    h('div', {}, h('strong', {}, 'MDT opinion: '), n.opinion),
    n.plan ? h('div', {}, h('strong', {}, 'Plan: '), n.plan) : null,
    h('small', {}, `Flagged by ${n.flagged_by}${n.flagged_trust ? ` (${n.flagged_trust})` : ''}, ${new Date(n.flagged_at).toLocaleString()}`),
  );
  if (n.status === 'open') {
    ack.addEventListener('click', () =>
      void post<ReporterNotice>(`/api/viewer/notices/${n.id}/acknowledge`, { response: response.value })
        .then((done) => item.replaceWith(noticeView(done)))
        .catch((err: Error) => alert(err.message)),
    );
    item.append(response, ack);
  } else {
    item.append(h('div', {}, `Acknowledged by ${n.acknowledged_by ?? ''}: ${n.response ?? ''}`));
  }
  return item;
}
