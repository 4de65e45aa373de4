// The patient's timeline: every study from every trust the user may see, newest first.

import { ApiError, get, query } from './api';
import { breakGlass, breakGlassBanner } from './breakglass';
import { errorBox, h } from './dom';
import { dicomDate, nhsNumber, personName } from './format';
import type { PatientEntry, SearchResult, StudyEntry, Timeline } from './types';
import { patientHref } from './worklist';

export function patientHeader(p: PatientEntry): HTMLElement {
  return h(
    'div',
    { class: 'patient-header' },
    h('strong', { class: 'name' }, personName(p.name)),
    h('span', {}, 'NHS ', h('span', { class: 'nhs' }, nhsNumber(p.nhs_number) || '—')),
    h('span', {}, `Born ${dicomDate(p.birth_date)}`),
    h('span', {}, p.sex ?? ''),
    ...p.records.map((r) => h('span', { class: 'record' }, h('span', { class: 'trust-badge' }, r.trust), r.patient_id)),
  );
}

export function studyRow(s: StudyEntry, extra?: Node): HTMLElement {
  return h(
    'tr',
    { class: `study-row access-${s.access}`, 'data-study': s.study_uid },
    h('td', {}, dicomDate(s.date)),
    h('td', {}, h('span', { class: 'trust-badge' }, s.trust)),
    h('td', { class: 'modality' }, s.modalities.join('/')),
    h('td', {}, s.body_part ?? ''),
    h('td', {}, h('a', { href: `#/study/${s.study_uid}` }, s.description || '(no description)')),
    h('td', {}, s.accession ?? ''),
    h('td', { class: 'num' }, `${s.series_count} / ${s.instance_count}`),
    h('td', { class: `report ${s.report_status ?? 'none'}` }, s.report_status ?? 'no report'),
    h('td', {}, s.access === 'break-glass' ? h('span', { class: 'bg-flag' }, 'break-glass') : ''),
    extra ? h('td', {}, extra) : null,
  );
}

export function studyTable(studies: StudyEntry[], extra?: (s: StudyEntry) => Node): HTMLElement {
  const heads = ['Date', 'Trust', 'Modality', 'Body part', 'Description', 'Accession', 'Series / images', 'Report', ''];
  return h(
    'table',
    { class: 'studies' },
    h('thead', {}, h('tr', {}, ...heads.map((t) => h('th', {}, t)))),
    h('tbody', {}, ...studies.map((s) => studyRow(s, extra?.(s)))),
  );
}

export async function timeline(root: HTMLElement, issuer: string, patientId: string): Promise<void> {
  if (issuer === 'NHS') {
    // An EPR launch by NHS number: the one person with that number, across trusts.
    const r = await get<SearchResult>('/api/viewer/search' + query({ nhs_number: patientId, limit: 2 }));
    if (r.patients.length === 1) {
      location.replace(patientHref(r.patients[0]));
      return;
    }
    root.replaceChildren(errorBox(`No patient with NHS number ${nhsNumber(patientId)} that you can see.`));
    return;
  }
  const path = `/api/viewer/patients/${encodeURIComponent(issuer)}/${encodeURIComponent(patientId)}/timeline`;
  root.append(h('p', { class: 'loading' }, 'Loading timeline…'));
  let t: Timeline;
  try {
    t = await get<Timeline>(path);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      // Unknown and not visible look the same; the user may still state a reason to look.
      const button = h('button', { id: 'break-glass-open', class: 'danger' }, 'Break glass…');
      button.addEventListener('click', async () => {
        const grant = await breakGlass({ issuer, patient_id: patientId });
        if (grant) {
          root.replaceChildren();
          await timeline(root, issuer, patientId);
        }
      });
      root.replaceChildren(
        h('h1', {}, 'Patient'),
        errorBox(`No patient ${patientId} at ${issuer} that you can see.`),
        h('p', {}, 'If this patient is in your care in an emergency, you may break glass.'),
        button,
      );
      return;
    }
    root.replaceChildren(errorBox(`Timeline unavailable: ${(e as Error).message}`));
    return;
  }
  root.replaceChildren(
    t.break_glass ? breakGlassBanner(t.break_glass.expires_at) : '',
    patientHeader(t.patient),
    h('h1', {}, 'Imaging timeline'),
    t.studies.length ? studyTable(t.studies) : h('p', { class: 'empty' }, 'No studies.'),
  );
}
