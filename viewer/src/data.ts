// DICOMweb reads the reading screen needs before (and without) the Cornerstone core: the
// series of a study (QIDO-RS) and a series' metadata (WADO-RS), each fetched ONCE per page
// and shared — the first-image preview, the thumbnails and the image loader all use the same
// promise, so starting them early (while the core chunk downloads) costs nothing later.
// Entries live a short while only (a study may still be arriving; access may change after
// break-glass); failures and empty answers are never kept. Keys include the bearer token, so
// what one user read is never handed to the next who signs in on the same page.

import { authHeaders, get, token } from './api';
import type { StudyContext } from './types';

export const DICOMWEB = `${location.origin}/dicomweb`;

/** DICOM JSON of one instance (the subset this app reads). */
export type DicomJson = Record<string, { vr: string; Value?: unknown[] }>;

export interface SeriesInfo {
  series_uid: string;
  modality: string;
  number: string;
  description: string;
  count: number;
}

export function tag(ds: DicomJson, key: string): unknown {
  return ds[key]?.Value?.[0];
}

export function str(ds: DicomJson, key: string): string {
  const v = tag(ds, key);
  if (v && typeof v === 'object' && 'Alphabetic' in v) return String((v as { Alphabetic: string }).Alphabetic);
  return v === undefined || v === null ? '' : String(v);
}

const KEEP_MS = 30_000;
const cache = new Map<string, { at: number; value: Promise<unknown> }>();

function shared<T>(what: string, load: () => Promise<T>, keep: (v: T) => boolean = () => true): Promise<T> {
  const key = `${token() ?? ''} ${what}`;
  const now = performance.now();
  for (const [k, v] of cache) if (now - v.at >= KEEP_MS) cache.delete(k);
  const hit = cache.get(key);
  if (hit) return hit.value as Promise<T>;
  const value = load();
  cache.set(key, { at: now, value });
  const forget = () => {
    if (cache.get(key)?.value === value) cache.delete(key);
  };
  value.then((v) => (keep(v) ? undefined : forget()), forget);
  return value;
}

async function fetchSeries(studyUid: string): Promise<SeriesInfo[]> {
  const response = await fetch(`${DICOMWEB}/studies/${studyUid}/series`, {
    headers: { Accept: 'application/dicom+json', ...authHeaders() },
  });
  if (response.status === 204 || response.status === 404) return [];
  if (!response.ok) throw new Error(`series query: HTTP ${response.status}`);
  const rows = (await response.json()) as DicomJson[];
  return rows
    .map((r) => ({
      series_uid: str(r, '0020000E'),
      modality: str(r, '00080060'),
      number: str(r, '00200011'),
      description: str(r, '0008103E'),
      count: Number(tag(r, '00201209') ?? 0),
    }))
    // Images first: a study opens on its first image series, not on a report, key object
    // selection (an IOCM rejection note is one) or presentation state listed before it.
    .sort((a, b) => Number(NON_IMAGE.has(a.modality)) - Number(NON_IMAGE.has(b.modality)) || Number(a.number) - Number(b.number));
}

/** Modalities of series that hold no image (PS3.3 C.7.3.1.1.1). */
export const NON_IMAGE = new Set(['SR', 'KO', 'PR', 'DOC', 'REG', 'FID', 'AU', 'ECG', 'HD', 'RTPLAN', 'RTSTRUCT', 'RTRECORD', 'PLAN', 'RWV']);

// -- documents: what a reader reads rather than looks at --------------------------------

export const ENCAPSULATED_PDF = '1.2.840.10008.5.1.4.1.1.104.1';
export const ENCAPSULATED_CDA = '1.2.840.10008.5.1.4.1.1.104.2';
/** Structured report classes shown as documents (PS3.4 B.5): text, enhanced, comprehensive
 * (3D, extensible), the radiation and radiopharmaceutical dose reports, CAD, acquisition
 * context and echo. Key Object Selection (88.59) is not one: key images are shown elsewhere. */
const SR_CLASSES = [
  '11', '22', '33', '34', '35', '40', '50', '65', '67', '68', '69', '70', '71', '72', '73', '74', '75', '76',
].map((n) => `1.2.840.10008.5.1.4.1.1.88.${n}`);
export type DocumentKind = 'pdf' | 'cda' | 'sr';
export const DOCUMENT_CLASSES: Record<string, DocumentKind> = {
  [ENCAPSULATED_PDF]: 'pdf',
  [ENCAPSULATED_CDA]: 'cda',
  ...Object.fromEntries(SR_CLASSES.map((c) => [c, 'sr' as const])),
};

export interface DocumentRef {
  series_uid: string;
  sop_uid: string;
  kind: DocumentKind;
}

/** The document instances of a study by series (one QIDO-RS query by SOP Class UID: an
 * Encapsulated PDF may come as modality OT, so the series' modality alone does not tell). */
export function studyDocuments(studyUid: string): Promise<Map<string, DocumentRef[]>> {
  return shared(`documents/${studyUid}`, async () => {
    const classes = Object.keys(DOCUMENT_CLASSES).join(',');
    const rows = await qidoInstances(studyUid, `SOPClassUID=${classes}&includefield=00080016`);
    const out = new Map<string, DocumentRef[]>();
    for (const r of rows) {
      const kind = DOCUMENT_CLASSES[str(r, '00080016')];
      if (!kind) continue;
      const series_uid = str(r, '0020000E');
      out.set(series_uid, [...(out.get(series_uid) ?? []), { series_uid, sop_uid: str(r, '00080018'), kind }]);
    }
    return out;
  });
}

/** Which series of the study hold the instances ``sops`` (an SR's image references that are
 * in the study; the rest are not), by QIDO-RS in batches that keep the URL short. */
export async function locateInstances(studyUid: string, sops: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const unique = [...new Set(sops)];
  for (let i = 0; i < unique.length; i += 40) {
    const rows = await qidoInstances(studyUid, `SOPInstanceUID=${unique.slice(i, i + 40).join(',')}`);
    for (const r of rows) out.set(str(r, '00080018'), str(r, '0020000E'));
  }
  return out;
}

async function qidoInstances(studyUid: string, query: string): Promise<DicomJson[]> {
  const response = await fetch(`${DICOMWEB}/studies/${studyUid}/instances?${query}`, {
    headers: { Accept: 'application/dicom+json', ...authHeaders() },
  });
  if (response.status === 204 || response.status === 404) return [];
  if (!response.ok) throw new Error(`instance query: HTTP ${response.status}`);
  return (await response.json()) as DicomJson[];
}

/** The series of a study, from QIDO-RS; empty when the study is unknown or not visible. */
export function studySeries(studyUid: string): Promise<SeriesInfo[]> {
  return shared(`series/${studyUid}`, () => fetchSeries(studyUid), (v) => v.length > 0);
}

/** Patient context, priors and access of a study (/api/viewer), shared like the rest. */
export function studyContext(studyUid: string): Promise<StudyContext> {
  return shared(`context/${studyUid}`, () => get<StudyContext>(`/api/viewer/studies/${studyUid}`));
}

/** Slice order: position along the normal of the image plane, then instance number. */
function sortKey(ds: DicomJson): [number, number] {
  const ipp = ds['00200032']?.Value as number[] | undefined;
  const iop = ds['00200037']?.Value as number[] | undefined;
  let position = Number.NaN;
  if (ipp && iop && iop.length === 6) {
    const n = [iop[1] * iop[5] - iop[2] * iop[4], iop[2] * iop[3] - iop[0] * iop[5], iop[0] * iop[4] - iop[1] * iop[3]];
    position = ipp[0] * n[0] + ipp[1] * n[1] + ipp[2] * n[2];
  }
  return [Number.isNaN(position) ? 0 : position, Number(tag(ds, '00200013') ?? 0)];
}

async function fetchMetadata(studyUid: string, seriesUid: string): Promise<DicomJson[]> {
  const response = await fetch(`${DICOMWEB}/studies/${studyUid}/series/${seriesUid}/metadata`, {
    headers: { Accept: 'application/dicom+json', ...authHeaders() },
  });
  if (!response.ok) throw new Error(`series metadata: HTTP ${response.status}`);
  const instances = (await response.json()) as DicomJson[];
  instances.sort((a, b) => {
    const [pa, ia] = sortKey(a);
    const [pb, ib] = sortKey(b);
    return pa - pb || ia - ib;
  });
  return instances;
}

/** A series' WADO-RS metadata, instances sorted by slice position; fetched once per page. */
export function seriesMetadata(studyUid: string, seriesUid: string): Promise<DicomJson[]> {
  return shared(`metadata/${studyUid}/${seriesUid}`, () => fetchMetadata(studyUid, seriesUid));
}

/** The frames of a series in display order: (sop, frame number, instance metadata). */
export function seriesFrames(instances: DicomJson[]): { sop: string; frame: number; ds: DicomJson }[] {
  const out: { sop: string; frame: number; ds: DicomJson }[] = [];
  for (const ds of instances) {
    const frames = Number(tag(ds, '00280008') ?? 1) || 1;
    for (let f = 1; f <= frames; f++) out.push({ sop: str(ds, '00080018'), frame: f, ds });
  }
  return out;
}

// -- what each frame is asked for in (shared by the image loader and the early frame fetch) --

/** Transfer syntaxes the image loader's decoders (this build) read, as the archive stores them. */
const NATIVE = new Set(['1.2.840.10008.1.2', '1.2.840.10008.1.2.1', '1.2.840.10008.1.2.2', '1.2.840.10008.1.2.1.99']);
const BROWSER_DECODES = new Set([
  '1.2.840.10008.1.2.5', // RLE
  '1.2.840.10008.1.2.4.50', // JPEG baseline
  '1.2.840.10008.1.2.4.51', // JPEG extended (12-bit)
  '1.2.840.10008.1.2.4.57', // JPEG lossless
  '1.2.840.10008.1.2.4.70', // JPEG lossless SV1
  '1.2.840.10008.1.2.4.80', // JPEG-LS lossless
  '1.2.840.10008.1.2.4.81', // JPEG-LS near-lossless
  '1.2.840.10008.1.2.4.90', // JPEG 2000 lossless
  '1.2.840.10008.1.2.4.91', // JPEG 2000
  '1.2.840.10008.1.2.4.201', // HTJ2K lossless
  '1.2.840.10008.1.2.4.202', // HTJ2K lossless RPCL
  '1.2.840.10008.1.2.4.203', // HTJ2K
]);
export const HTJ2K_LOSSLESS = '1.2.840.10008.1.2.4.201';
const RLE_LOSSLESS = '1.2.840.10008.1.2.5';
const AS_STORED = 'multipart/related; type=application/octet-stream; transfer-syntax=*';
const UNCOMPRESSED = 'multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1';
/** Lossless HTJ2K, transcoded by the archive: ~2.6x smaller than 16-bit CT, fast to decode;
 * uncompressed as the second choice when the server cannot encode it (e.g. float pixels). */
const TRANSCODED = `multipart/related; type="image/jphc"; transfer-syntax=${HTJ2K_LOSSLESS}, ${UNCOMPRESSED}; q=0.5`;

/** Whether native (uncompressed) frames are asked for compressed; ?raw=1 turns it off. */
const compressNative = !new URLSearchParams(location.search).has('raw');

/** The transfer syntax an instance is stored in, from its WADO-RS metadata. */
export function storedSyntaxOf(ds: DicomJson): string {
  return str(ds, '00083002') || str(ds, '00020010');
}

/**
 * The Accept header of a frame stored in ``ts``. Frames in a syntax the browser decodes come
 * as stored (no server work). Uncompressed frames come as lossless HTJ2K (the link, not the
 * CPU, is what limits a trust's WAN). Anything the browser's decoders cannot read (JPEG XL,
 * which would need a 1 MB decoder; anything unknown) is transcoded by the archive to lossless
 * HTJ2K or, failing that, uncompressed: the image shows instead of nothing.
 */
export function acceptFor(ts: string): string {
  if (NATIVE.has(ts)) return compressNative ? TRANSCODED : AS_STORED;
  if (BROWSER_DECODES.has(ts)) return AS_STORED;
  return TRANSCODED;
}

/** The syntax a frame stored in ``ts`` is expected to arrive in (what acceptFor asks first). */
export function arrivingFor(ts: string): string {
  if (NATIVE.has(ts)) return compressNative ? HTJ2K_LOSSLESS : ts;
  return BROWSER_DECODES.has(ts) ? ts : HTJ2K_LOSSLESS;
}

/**
 * The metadata the image loader gets for a frame arriving in ``arriving``: a colour image
 * stored colour-by-plane (Planar Configuration 1) comes out of the JPEG, JPEG-LS and JPEG 2000
 * decoders (and the archive's HTJ2K transcoding) colour-by-pixel, but Cornerstone would still
 * unscramble it by plane (only its JPEG Lossless decoder resets the value): garbage on screen.
 * RLE and uncompressed frames really are by plane and keep the stored value.
 */
export function asDecoded(ds: DicomJson, arriving: string): DicomJson {
  const planar = ds['00280006']?.Value?.[0];
  if (planar !== 1 || NATIVE.has(arriving) || arriving === RLE_LOSSLESS) return ds;
  return { ...ds, '00280006': { vr: 'US', Value: [0] } };
}

type BinaryElement = { vr: string; Value?: unknown[]; InlineBinary?: string; BulkDataURI?: string };

/** (descriptor, table, segmented table) tags of the red, green and blue palettes. */
const PALETTES = [
  ['00281101', '00281201', '00281221'],
  ['00281102', '00281202', '00281222'],
  ['00281103', '00281203', '00281223'],
] as const;

/**
 * A PALETTE COLOR image's lookup tables as numbers in ``Value``, which is all Cornerstone
 * reads: DICOM JSON carries a table as InlineBinary (base64 of the OW value) or, when large, as
 * a BulkDataURI, and some ultrasound machines send segmented tables (PS3.3 C.7.9.2), which
 * Cornerstone does not expand. Without this it refuses the image ("does not have a complete
 * color palette") and the frame never appears. ``instance``: the instance's WADO-RS URL.
 */
export async function withPalettes(ds: DicomJson, instance: string): Promise<DicomJson> {
  if (str(ds, '00280004') !== 'PALETTE COLOR') return ds;
  const out: DicomJson = { ...ds };
  for (const [descriptorTag, tableTag, segmentedTag] of PALETTES) {
    const table = ds[tableTag] as BinaryElement | undefined;
    if (table?.Value) continue;
    const known = paletteValues.get(`${instance}|${tableTag}`);
    if (known) {
      out[tableTag] = { vr: 'OW', Value: known };
      continue;
    }
    const segmented = !table && Boolean(ds[segmentedTag]);
    const element = (table ?? ds[segmentedTag]) as BinaryElement | undefined;
    if (!element) continue;
    const bytes = await binaryOf(element, instance);
    if (!bytes) continue;
    const descriptor = ds[descriptorTag]?.Value ?? ds['00281101']?.Value ?? [];
    const entries = Number(descriptor[0]) || 65536;
    const words = new Uint16Array(bytes.buffer, bytes.byteOffset, Math.floor(bytes.length / 2));
    const values = segmented
      ? expandSegmented(words)
      : bytes.length === entries
        ? Array.from(bytes) // 8-bit entries, one per byte
        : Array.from(words);
    out[tableTag] = { vr: 'OW', Value: values };
    paletteValues.set(`${instance}|${tableTag}`, values); // every frame of it shares them
  }
  return out;
}

const paletteValues = new Map<string, number[]>();

async function binaryOf(element: BinaryElement, instance: string): Promise<Uint8Array | null> {
  if (typeof element.InlineBinary === 'string') {
    const raw = Uint8Array.from(atob(element.InlineBinary), (c) => c.charCodeAt(0));
    return new Uint8Array(raw.buffer.slice(0)); // own, aligned buffer for the word view
  }
  if (typeof element.BulkDataURI !== 'string') return null;
  const url = new URL(element.BulkDataURI, `${instance}/`).toString();
  return shared(`bulk/${url}`, () => bulkData(url)).catch(() => null);
}

/** One bulk data element (WADO-RS: a single-part multipart body). */
async function bulkData(url: string): Promise<Uint8Array> {
  const response = await fetch(url, {
    headers: { ...authHeaders(), Accept: 'multipart/related; type="application/octet-stream"' },
  });
  if (!response.ok) throw new Error(`bulk data: HTTP ${response.status}`);
  const body = new Uint8Array(await response.arrayBuffer());
  const boundary = /boundary="?([^";\s]+)"?/.exec(response.headers.get('content-type') ?? '')?.[1];
  if (!boundary) return body;
  // latin1: one character per byte, so the text's indices are the body's.
  const text = new TextDecoder('latin1').decode(body);
  const start = text.indexOf('\r\n\r\n') + 4;
  const end = text.indexOf(`\r\n--${boundary}`, start);
  return new Uint8Array(body.slice(start, end < 0 ? body.length : end));
}

/** A segmented palette table (PS3.3 C.7.9.2: discrete, linear and indirect segments). */
export function expandSegmented(words: Uint16Array): number[] {
  const out: number[] = [];
  const expand = (from: number, segments: number, depth: number): void => {
    let i = from;
    for (let done = 0; done < segments && i + 1 < words.length; done++) {
      const [kind, length] = [words[i], words[i + 1]];
      if (kind === 0) {
        for (let k = 0; k < length && i + 2 + k < words.length; k++) out.push(words[i + 2 + k]);
        i += 2 + length;
      } else if (kind === 1) {
        const y0 = out.length ? out[out.length - 1] : 0;
        const y1 = words[i + 2] ?? y0;
        for (let k = 1; k <= length; k++) out.push(Math.round(y0 + ((y1 - y0) * k) / length));
        i += 3;
      } else if (kind === 2 && depth < 4) {
        const offset = (words[i + 2] ?? 0) + (words[i + 3] ?? 0) * 65536;
        expand(offset, length, depth + 1);
        i += 4;
      } else {
        return; // not a segment type: stop rather than read garbage
      }
    }
  };
  expand(0, Infinity, 0);
  return out;
}

/**
 * Fetches one frame exactly as the image loader will ask for it (same URL, Accept and
 * token), so the response waits in the browser's HTTP cache (frames are immutable, private,
 * Vary: Accept) while the Cornerstone core downloads and starts: the shown slice's bytes are
 * on hand, and transcoded by the server, before the loader exists. Best effort.
 */
export function warmFrame(url: string, ds: DicomJson): void {
  fetch(url, { headers: { ...authHeaders(), Accept: acceptFor(storedSyntaxOf(ds)) } })
    .then((r) => r.arrayBuffer())
    .catch(() => undefined);
}
