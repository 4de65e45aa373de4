// The first image, before the Cornerstone core has even arrived: the shown slice of the
// shown series (the same one the pane will open at), rendered by the server as a JPEG at the
// image's own window. It costs one small request after the metadata, which the reading screen
// needs anyway (data.ts shares it), and it works for every transfer syntax the server decodes.
// The pane takes the element over and drops it when Cornerstone draws its first full-fidelity
// image of that series.

import { authHeaders } from './api';
import { DICOMWEB, seriesFrames, seriesMetadata, studySeries } from './data';

export interface Preview {
  studyUid: string;
  seriesUid: string;
  element: HTMLImageElement;
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
  const preview: Preview = { studyUid, seriesUid: '', element };
  current = preview;
  host.append(element);
  return (async () => {
    const series = await studySeries(studyUid);
    if (!series.length || current !== preview) return;
    preview.seriesUid = series[0].series_uid;
    const frames = seriesFrames(await seriesMetadata(studyUid, preview.seriesUid));
    const shown = frames[Math.floor(frames.length / 2)];
    if (!shown || current !== preview) return;
    const url = `${DICOMWEB}/studies/${studyUid}/series/${preview.seriesUid}/instances/${shown.sop}/frames/${shown.frame}/rendered?quality=85`;
    const response = await fetch(url, { headers: { Accept: 'image/jpeg', ...authHeaders() }, credentials: 'omit' });
    if (!response.ok || current !== preview) return;
    element.src = URL.createObjectURL(await response.blob());
    await element.decode();
    if (current === preview) performance.mark('solent:preview-image:Current');
  })().catch(() => element.remove());
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
