// The worklist: search patients across trusts (one row per person), page, recent patients.

import { get, query } from './api';
import { errorBox, h } from './dom';
import { dicomDate, nhsNumber, personName, toDicomDate } from './format';
import type { PatientEntry, SearchResult } from './types';

const PAGE = 25;

export function patientHref(p: PatientEntry): string {
  const [issuer = '', pid = ''] = p.key.split('|');
  return `#/patient/${encodeURIComponent(issuer)}/${encodeURIComponent(pid)}`;
}

function table(patients: PatientEntry[]): HTMLElement {
  if (!patients.length) return h('p', { class: 'empty' }, 'No patients found.');
  return h(
    'table',
    { class: 'patients' },
    h(
      'thead',
      {},
      h('tr', {}, ...['Name', 'NHS number', 'Born', 'Sex', 'Hospital numbers', 'Studies', 'Latest'].map((t) => h('th', {}, t))),
    ),
    h(
      'tbody',
      {},
      ...patients.map((p) =>
        h(
          'tr',
          { class: 'patient-row', 'data-key': p.key },
          h('td', {}, h('a', { href: patientHref(p) }, personName(p.name))),
          h('td', { class: 'nhs' }, nhsNumber(p.nhs_number)),
          h('td', {}, dicomDate(p.birth_date)),
          h('td', {}, p.sex ?? ''),
          h(
            'td',
            {},
            ...p.records.map((r) => h('span', { class: 'record' }, h('span', { class: 'trust-badge' }, r.trust), r.patient_id)),
          ),
          h('td', { class: 'num' }, p.study_count),
          h('td', {}, dicomDate(p.latest_study_date)),
        ),
      ),
    ),
  );
}

export function worklist(root: HTMLElement, params: URLSearchParams): void {
  const field = (name: string, label: string, type = 'text', extra: Record<string, string> = {}) =>
    h('label', {}, label, h('input', { name, type, value: params.get(name) ?? '', ...extra }));
  const form = h(
    'form',
    { class: 'search', id: 'search' },
    field('q', 'Search', 'search', { placeholder: 'name, NHS number or hospital number' }),
    field('nhs_number', 'NHS number', 'text', { inputmode: 'numeric' }),
    field('name', 'Name'),
    field('patient_id', 'Hospital number'),
    field('trust', 'Trust', 'text', { size: '5' }),
    field('accession', 'Accession'),
    field('date_from', 'From', 'date'),
    field('date_to', 'To', 'date'),
    field('modality', 'Modality', 'text', { size: '4' }),
    h('button', { type: 'submit' }, 'Search'),
  );
  const results = h('section', { id: 'results' });
  const recent = h('section', { id: 'recent' }, h('h2', {}, 'Recent patients'));
  root.append(h('h1', {}, 'Worklist'), form, results, recent);

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const next = new URLSearchParams();
    for (const [k, v] of data.entries()) if (typeof v === 'string' && v.trim()) next.set(k, v.trim());
    location.hash = `#/?${next.toString()}`;
  });

  const searched = [...params.keys()].some((k) => k !== 'offset');
  if (searched) void search(results, params);
  void get<{ patients: PatientEntry[] }>('/api/viewer/recent')
    .then((r) => recent.append(table(r.patients)))
    .catch((e: Error) => recent.append(errorBox(`Recent patients unavailable: ${e.message}`)));
}

async function search(results: HTMLElement, params: URLSearchParams): Promise<void> {
  const offset = Number(params.get('offset') ?? 0) || 0;
  const p = (k: string) => params.get(k);
  const nhs = p('nhs_number')?.replace(/\s/g, '');
  results.append(h('p', { class: 'loading' }, 'Searching…'));
  try {
    const r = await get<SearchResult>(
      '/api/viewer/search' +
        query({
          q: p('q'),
          nhs_number: nhs,
          name: p('name'),
          patient_id: p('patient_id'),
          trust: p('trust')?.toUpperCase(),
          accession: p('accession'),
          date_from: p('date_from') ? toDicomDate(p('date_from') ?? '') : null,
          date_to: p('date_to') ? toDicomDate(p('date_to') ?? '') : null,
          modality: p('modality')?.toUpperCase(),
          offset,
          limit: PAGE,
        }),
    );
    results.replaceChildren(
      r.capped
        ? h('p', { class: 'count capped', id: 'search-capped', role: 'status' }, `More than ${r.max_studies} studies match: refine your search. The first ${r.total} patient${r.total === 1 ? '' : 's'} are shown.`)
        : h('p', { class: 'count' }, `${r.total} patient${r.total === 1 ? '' : 's'}`),
      table(r.patients),
      pager(params, r),
    );
  } catch (e) {
    results.replaceChildren(errorBox(`Search failed: ${(e as Error).message}`));
  }
}

function pager(params: URLSearchParams, r: SearchResult): HTMLElement {
  const link = (offset: number, label: string) => {
    const next = new URLSearchParams(params);
    next.set('offset', String(offset));
    return h('a', { href: `#/?${next.toString()}`, class: 'page' }, label);
  };
  const last = r.offset + r.patients.length;
  return h(
    'nav',
    { class: 'pager' },
    r.offset > 0 ? link(Math.max(0, r.offset - r.limit), '‹ Previous') : null,
    h('span', {}, r.total ? `${r.offset + 1}–${last} of ${r.capped ? 'at least ' : ''}${r.total}` : ''),
    last < r.total ? link(last, 'Next ›') : null,
  );
}
