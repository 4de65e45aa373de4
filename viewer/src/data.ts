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
    .sort((a, b) => Number(a.number) - Number(b.number));
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
