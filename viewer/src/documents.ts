// Documents in the reading screen: a structured report (SR) read as a document, built from its
// WADO-RS metadata (title, completion and verification, observers, the content tree), and an
// encapsulated PDF (or CDA) as the archive renders it: the document itself, fetched with the
// bearer token and shown from a blob URL. Every DICOM value goes in as text (dom.ts's h()
// makes text nodes and sets attributes), never as HTML: a value holding markup shows as typed.

import { authHeaders, blobUrl } from './api';
import { DICOMWEB, type DicomJson, type DocumentKind, type DocumentRef, locateInstances, seriesMetadata, str } from './data';
import { h } from './dom';
import { dicomDate, dicomDateTime, personName } from './format';

/** Opens an image of the study in the pane (an SR's image reference). */
export type OpenImage = (seriesUid: string, sopUid: string, frame: number) => void;

const KIND_LABEL: Record<DocumentKind, string> = { pdf: 'PDF', cda: 'CDA', sr: 'SR' };

type Item = DicomJson;

function items(ds: Item, key: string): Item[] {
  return (ds[key]?.Value ?? []) as Item[];
}

function meaning(ds: Item, key: string): string {
  const code = items(ds, key)[0];
  return code ? str(code, '00080104') || str(code, '00080100') : '';
}

/** What the series strip calls a document: "SR: <title>", "PDF: <Document Title>". */
export function documentLabel(kind: DocumentKind, ds: Item | undefined, description: string): string {
  const title = ds ? (kind === 'sr' ? meaning(ds, '0040A043') || str(ds, '00420010') : str(ds, '00420010') || meaning(ds, '0040A043')) : '';
  return `${KIND_LABEL[kind]}: ${title || description || 'document'}`;
}

/** Shows the documents ``docs`` (of one series) in ``view``; object URLs made go to ``urls``
 * (the caller revokes them when the view goes). */
export async function renderDocuments(view: HTMLElement, studyUid: string, docs: DocumentRef[], open: OpenImage, urls: string[]): Promise<void> {
  const series = docs[0]?.series_uid ?? '';
  const metadata = await seriesMetadata(studyUid, series).catch(() => [] as DicomJson[]);
  const bySop = new Map(metadata.map((ds) => [str(ds, '00080018'), ds]));
  for (const doc of docs) {
    const ds = bySop.get(doc.sop_uid);
    const article = h('article', { class: `document ${doc.kind}`, 'data-sop': doc.sop_uid });
    view.append(article);
    try {
      if (doc.kind === 'sr') {
        if (!ds) throw new Error('its metadata could not be read');
        article.append(...(await structuredReport(ds, studyUid, open)));
      } else {
        article.append(...(await encapsulated(doc, ds, studyUid, urls)));
      }
    } catch (e) {
      article.append(h('p', { class: 'error', role: 'alert' }, `This document cannot be shown: ${(e as Error).message}`));
    }
  }
}

async function encapsulated(doc: DocumentRef, ds: Item | undefined, studyUid: string, urls: string[]): Promise<HTMLElement[]> {
  const title = documentLabel(doc.kind, ds, '');
  const rendered = `${DICOMWEB}/studies/${studyUid}/series/${doc.series_uid}/instances/${doc.sop_uid}/rendered`;
  const head = h('header', { class: 'doc-head' }, h('h2', { class: 'doc-title' }, title), ds ? facts(ds) : null);
  if (doc.kind === 'cda') {
    // CDA is XML that may carry script or style sheets: shown as text, not as a page.
    const response = await fetch(rendered, { headers: { Accept: 'text/xml', ...authHeaders() }, credentials: 'omit' });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return [head, h('pre', { class: 'cda' }, await response.text())];
  }
  const url = await blobUrl(rendered, 'application/pdf');
  urls.push(url);
  const name = `${(str(ds ?? {}, '00420010') || 'document').replace(/[^\w .-]+/g, '_')}.pdf`;
  head.append(h('a', { class: 'doc-download', href: url, download: name }, 'Download the PDF'));
  return [head, h('iframe', { class: 'pdf', src: url, title })];
}

/** Completion, verification, observers and dates of an SR or an encapsulated document. */
function facts(ds: Item): HTMLElement {
  const rows: [string, string][] = [];
  const add = (label: string, value: string) => value && rows.push([label, value]);
  const content = `${str(ds, '00080023')}${str(ds, '00080033')}`;
  add('Content date', content.length >= 12 ? dicomDateTime(content) : dicomDate(str(ds, '00080023')));
  add('Completion', str(ds, '0040A491'));
  add('Verification', str(ds, '0040A493'));
  for (const v of items(ds, '0040A073')) {
    const who = [personName(str(v, '0040A075')), str(v, '0040A027')].filter(Boolean).join(', ');
    add('Verified by', `${who}${str(v, '0040A030') ? ` on ${dicomDateTime(str(v, '0040A030'))}` : ''}`);
  }
  for (const a of items(ds, '0040A078')) {
    add('Author', [personName(str(a, '0040A123')), str(items(a, '00080082')[0] ?? {}, '00080080') || str(a, '00080080')].filter(Boolean).join(', '));
  }
  for (const p of items(ds, '0040A370')) add('Request', [str(p, '00080050') && `Acc ${str(p, '00080050')}`, str(p, '00321060')].filter(Boolean).join(' '));
  add('Institution', str(ds, '00080080'));
  add('Manufacturer', str(ds, '00080070'));
  return h('dl', { class: 'doc-facts' }, ...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

/** Referenced SOP Instance UIDs anywhere in an SR's content tree. */
function references(ds: Item, out: string[] = []): string[] {
  for (const item of items(ds, '0040A730')) {
    for (const ref of items(item, '00081199')) out.push(str(ref, '00081155'));
    if (str(item, '0040A040') === 'UIDREF') out.push(str(item, '0040A124'));
    references(item, out);
  }
  return out.filter(Boolean);
}

async function structuredReport(ds: Item, studyUid: string, open: OpenImage): Promise<HTMLElement[]> {
  const located = await locateInstances(studyUid, references(ds)).catch(() => new Map<string, string>());
  const title = meaning(ds, '0040A043') || 'Structured report';
  const head = h('header', { class: 'doc-head' }, h('h2', { class: 'doc-title' }, title), facts(ds));
  const body = h('div', { class: 'sr-content' }, children(ds, 1, '1', { located, open }));
  return [head, body];
}

interface Context {
  located: Map<string, string>;
  open: OpenImage;
}

function children(ds: Item, depth: number, path: string, ctx: Context): HTMLElement | null {
  const list = items(ds, '0040A730');
  if (!list.length) return null;
  return h('ul', { class: 'sr-items' }, list.map((item, i) => contentItem(item, depth, `${path}.${i + 1}`, ctx)));
}

function contentItem(item: Item, depth: number, path: string, ctx: Context): HTMLElement {
  const type = str(item, '0040A040');
  const name = meaning(item, '0040A043');
  const relation = str(item, '0040A010');
  if (type === 'CONTAINER') {
    const heading = h(depth < 4 ? (`h${depth + 2}` as 'h3' | 'h4' | 'h5') : 'h6', { class: 'sr-heading' }, name || 'Section');
    return h('li', { class: 'sr-container', 'data-path': path }, h('section', {}, heading, children(item, depth + 1, path, ctx)));
  }
  const byReference = item['0040DB73']?.Value as number[] | undefined;
  const value = byReference ? `see item ${byReference.join('.')}` : valueOf(item, type, ctx);
  return h(
    'li',
    { class: 'sr-item', 'data-type': type || 'reference', 'data-relationship': relation, 'data-path': path },
    name ? h('span', { class: 'sr-name' }, `${name}: `) : null,
    typeof value === 'string' ? h('span', { class: 'sr-value' }, value) : value,
    children(item, depth + 1, path, ctx),
  );
}

function valueOf(item: Item, type: string, ctx: Context): string | HTMLElement {
  switch (type) {
    case 'TEXT':
      return str(item, '0040A160');
    case 'NUM': {
      const measured = items(item, '0040A300')[0];
      if (!measured) return meaning(item, '0040A301') || '(no value)';
      const unit = items(measured, '004008EA')[0];
      const code = unit ? str(unit, '00080100') : '';
      // The code value is the unit's symbol (UCUM: "mm", "mGy.cm"); UCUM's "1" is a count or
      // ratio, shown bare; an annotation ("{pixels}") reads best as its meaning.
      const shown = !unit || code === '1' ? '' : code && !code.includes('{') ? code : str(unit, '00080104') || code;
      return `${str(measured, '0040A30A')}${shown ? ` ${shown}` : ''}`;
    }
    case 'CODE':
      return meaning(item, '0040A168');
    case 'DATETIME':
      return dicomDateTime(str(item, '0040A120'));
    case 'DATE':
      return dicomDate(str(item, '0040A121'));
    case 'TIME': {
      const t = str(item, '0040A122');
      return t.length >= 4 ? `${t.slice(0, 2)}:${t.slice(2, 4)}${t.length >= 6 ? `:${t.slice(4, 6)}` : ''}` : t;
    }
    case 'PNAME':
      return personName(str(item, '0040A123'));
    case 'UIDREF':
      return reference(str(item, '0040A124'), 1, ctx, str(item, '0040A124'), false);
    case 'IMAGE':
    case 'COMPOSITE':
    case 'WAVEFORM': {
      const ref = items(item, '00081199')[0];
      if (!ref) return '(no reference)';
      const frames = (ref['00081160']?.Value ?? []) as number[];
      const what = type === 'IMAGE' ? 'image' : type === 'WAVEFORM' ? 'waveform' : 'object';
      const label = `${what}${frames.length ? `, frame ${frames.join(', ')}` : ''}`;
      return reference(str(ref, '00081155'), Number(frames[0] ?? 1), ctx, label);
    }
    case 'SCOORD':
    case 'SCOORD3D': {
      const points = ((item['00700022']?.Value ?? []) as number[]).length / (type === 'SCOORD' ? 2 : 3);
      return `${str(item, '00700023') || 'graphic'} (${points} point${points === 1 ? '' : 's'})`;
    }
    case 'TCOORD':
      return str(item, '0040A130') || 'temporal coordinates';
    default:
      return type ? `(${type})` : '';
  }
}

/** A referenced instance: a link that opens it here when it is in the study, else plain text. */
function reference(sop: string, frame: number, ctx: Context, label: string, instance = true): HTMLElement | string {
  const series = ctx.located.get(sop);
  if (!series && !instance) return label; // a UID of something else (a frame of reference…)
  if (!series) return h('span', { class: 'sr-value sr-ref missing', title: sop }, `${label} (not in this study)`);
  const link = h('button', { type: 'button', class: 'link sr-ref', 'data-sop': sop, title: sop }, `${label} — show`);
  link.addEventListener('click', () => ctx.open(series, sop, frame));
  return link;
}
