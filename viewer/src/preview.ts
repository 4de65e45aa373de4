// The first image, before the Cornerstone core has even arrived: the shown slice of the
// shown series (the same one the pane will open at), rendered by the server as a JPEG at the
// image's own window. It costs one small request after the metadata, which the reading screen
// needs anyway (data.ts shares it), and it works for every transfer syntax the server decodes.
// The same slice's full-fidelity frame is fetched right behind it into the HTTP cache, where
// the image loader finds it once the core has started.
// The pane takes the element over and drops it when Cornerstone draws its first full-fidelity
// image of that series.

import { authHeaders } from './api';
import { DICOMWEB, type DicomJson, seriesFrames, seriesMetadata, studySeries, warmFrame } from './data';

export interface Preview {
  studyUid: string;
  seriesUid: string;
  element: HTMLImageElement;
  /** The series' frame URLs and metadata, nearest to the shown slice first. */
  around: { url: string; ds: DicomJson }[];
}

let current: Preview | null = null;

/**
 * Starts the preview of a study's first series into ``host``. The promise settles when the
 * image is on screen or when there will be none (it never rejects: the preview is optional).
 * The caller loads the Cornerstone core after it: evaluating that 4 MB chunk holds the main
 * thread for most of a second, and its download shares the link with these small requests.
 */
export function startPreview(host: HTMLElement, studyUid: string): Promise<void> {
  dropPreview();
  const element = document.createElement('img');
  element.className = 'preview';
  element.alt = '';
  element.decoding = 'async';
  const preview: Preview = { studyUid, seriesUid: '', element, around: [] };
  current = preview;
  host.append(element);
  return (async () => {
    const series = await studySeries(studyUid);
    if (!series.length || current !== preview) return;
    // The first series with images (Rows): a document filed as OT (an encapsulated PDF) sorts
    // among the images and has no frame to render; the pane opens the same series.
    let frames: ReturnType<typeof seriesFrames> = [];
    for (const s of series.slice(0, 4)) {
      frames = seriesFrames(await seriesMetadata(studyUid, s.series_uid)).filter((f) => f.ds['00280010'] !== undefined);
      if (current !== preview) return;
      if (frames.length) {
        preview.seriesUid = s.series_uid;
        break;
      }
    }
    const middle = Math.floor(frames.length / 2);
    const shown = frames[middle];
    if (!shown || current !== preview) return;
    const urlOf = (f: { sop: string; frame: number }) =>
      `${DICOMWEB}/studies/${studyUid}/series/${preview.seriesUid}/instances/${f.sop}/frames/${f.frame}`;
    preview.around = frames
      .map((f, i) => ({ url: urlOf(f), ds: f.ds, d: Math.abs(i - middle) }))
      .sort((a, b) => a.d - b.d)
      .slice(1);
    const frameUrl = urlOf(shown);
    const pending = fetch(`${frameUrl}/rendered?quality=85`, { headers: { Accept: 'image/jpeg', ...authHeaders() }, credentials: 'omit' });
    warmFrame(frameUrl, shown.ds); // the full-fidelity bytes of the same slice, right behind
    const response = await pending;
    if (!response.ok || current !== preview) return;
    element.src = URL.createObjectURL(await response.blob());
    await element.decode();
    if (current === preview) performance.mark('solent:preview-image:Current');
  })().catch(() => element.remove());
}

/**
 * The link is idle while the core evaluates and starts (most of a second on a trust link):
 * the ``count`` slices nearest the shown one are fetched into the HTTP cache meanwhile, where
 * the image loader's prefetch finds them.
 */
export function warmAround(studyUid: string, count: number): void {
  if (current?.studyUid !== studyUid) return;
  for (const { url, ds } of current.around.slice(0, count)) warmFrame(url, ds);
}

/** The pending preview of ``studyUid``'s ``seriesUid`` (or its first series), handed over once. */
export function takePreview(studyUid: string): Preview | null {
  const p = current;
  if (!p || p.studyUid !== studyUid) return null;
  return p;
}

export function dropPreview(): void {
  if (!current) return;
  current.element.remove();
  if (current.element.src) URL.revokeObjectURL(current.element.src);
  current = null;
}
