// One image viewport: a series as a stack, its overlays and its thumbnails.

import { Enums, eventTarget, imageLoader, metaData, utilities as csUtils, type RenderingEngine, type StackViewport, type Types } from '@cornerstonejs/core';
import { wadors } from '@cornerstonejs/dicom-image-loader';
import { utilities as toolUtils } from '@cornerstonejs/tools';
import { blobUrl } from './api';
import { type DocumentRef, NON_IMAGE, type SeriesInfo, seriesMetadata, studyDocuments, studySeries } from './data';
import { documentLabel, renderDocuments } from './documents';
import { h } from './dom';
import { dicomDate, nhsNumber, personName } from './format';
import { DICOMWEB, type DicomJson, parseImageId, seriesImageIds, str } from './imaging';
import { measurementsOf } from './measurements';
import type { Camera, ViewState } from './types';

export { studySeries, type SeriesInfo };

function nhsFromMetadata(ds: DicomJson): string {
  const seq = (ds['00101002']?.Value ?? []) as DicomJson[];
  for (const item of seq) {
    if (['NHS', '2.16.840.1.113883.2.1.4.1'].includes(str(item, '00100021'))) return str(item, '00100020');
  }
  return '';
}

export class Pane {
  readonly element: HTMLDivElement;
  readonly root: HTMLElement;
  readonly overlay: HTMLElement;
  readonly strip: HTMLElement;
  studyUid = '';
  seriesUid = '';
  private header: DicomJson = {};
  private loadToken = 0;
  private preview: HTMLElement | null = null;
  /** The study's document series (SR, PDF), shown in place of the viewport when chosen. */
  documents = new Map<string, DocumentRef[]>();
  private docView: HTMLElement | null = null;
  private docUrls: string[] = [];

  constructor(
    readonly engine: RenderingEngine,
    readonly viewportId: string,
    readonly label: string,
    private readonly onShown: (pane: Pane) => void,
  ) {
    this.element = h('div', { class: 'viewport', id: `vp-${viewportId}`, 'data-pane': label }) as HTMLDivElement;
    this.element.oncontextmenu = (e) => e.preventDefault();
    this.overlay = h('div', { class: 'overlay' });
    this.strip = h('div', { class: 'thumbnails', 'data-pane': label });
    this.root = h('section', { class: 'pane', 'data-pane': label }, h('div', { class: 'pane-label' }, label), this.element, this.overlay);
  }

  enable(): void {
    this.engine.enableElement({
      viewportId: this.viewportId,
      type: Enums.ViewportType.STACK,
      element: this.element,
      defaultOptions: { background: [0, 0, 0] as Types.Point3 },
    });
    const update = () => this.updateOverlay();
    for (const ev of [Enums.Events.STACK_NEW_IMAGE, Enums.Events.VOI_MODIFIED, Enums.Events.CAMERA_MODIFIED, Enums.Events.IMAGE_RENDERED]) {
      this.element.addEventListener(ev, update);
    }
  }

  /** Shows the server-rendered first image (preview.ts) until this pane draws its own. */
  adoptPreview(element: HTMLElement): void {
    this.preview = element;
    this.root.append(element);
  }

  private dropPreview(): void {
    this.preview?.remove();
    this.preview = null;
  }

  get viewport(): StackViewport {
    return this.engine.getViewport(this.viewportId) as StackViewport;
  }

  /** Thumbnails are asked for first (small, they tell the user what is there), then the shown
   * series' frames without waiting for them: the frames' own queue does the ordering. */
  async showStudy(studyUid: string, all: SeriesInfo[], seriesUid?: string): Promise<void> {
    this.studyUid = studyUid;
    // Documents (an SR, a dose report, a scanned form as PDF) have their entry after the
    // images; other series without images (key objects, presentation states) have none.
    const found = await studyDocuments(studyUid).catch(() => new Map<string, DocumentRef[]>());
    this.documents = new Map(
      all
        .filter((s) => found.has(s.series_uid) && (NON_IMAGE.has(s.modality) || found.get(s.series_uid)!.length >= s.count))
        .map((s) => [s.series_uid, found.get(s.series_uid)!]),
    );
    const isDocument = (s: SeriesInfo) => this.documents.has(s.series_uid);
    const series = all
      .filter((s) => isDocument(s) || !NON_IMAGE.has(s.modality))
      .sort((a, b) => Number(isDocument(a)) - Number(isDocument(b)));
    const thumbs = series.map((s) => {
      if (isDocument(s)) return { button: this.documentEntry(s) };
      const img = h('img', { alt: s.description || s.modality });
      const button = h(
        'button',
        { class: 'thumb', 'data-series': s.series_uid, title: s.description },
        img,
        h('span', {}, `${s.modality} ${s.number ? `#${s.number}` : ''} ${s.description}`),
        h('span', { class: 'count' }, `${s.count} im`),
      );
      button.addEventListener('click', () => void this.showSeries(s.series_uid));
      void blobUrl(`${DICOMWEB}/studies/${studyUid}/series/${s.series_uid}/thumbnail`)
        .then((url) => {
          img.src = url;
        })
        .catch(() => img.classList.add('missing'));
      return { button };
    });
    this.strip.replaceChildren(...thumbs.map((t) => t.button));
    const first = seriesUid ?? series[0]?.series_uid;
    if (first) await this.showSeries(first);
  }

  /** A document series' entry in the strip: "SR: <title>", "PDF: <Document Title>". */
  private documentEntry(s: SeriesInfo): HTMLElement {
    const docs = this.documents.get(s.series_uid) ?? [];
    const kind = docs[0]?.kind ?? 'sr';
    const label = h('span', { class: 'doc-label' }, documentLabel(kind, undefined, s.description));
    const button = h(
      'button',
      { class: 'thumb document', 'data-series': s.series_uid, 'data-kind': kind, title: s.description },
      h('span', { class: 'doc-icon', 'aria-hidden': 'true' }, kind.toUpperCase()),
      label,
      h('span', { class: 'count' }, `${docs.length} document${docs.length === 1 ? '' : 's'}`),
    );
    button.addEventListener('click', () => void this.showSeries(s.series_uid));
    void seriesMetadata(this.studyUid, s.series_uid)
      .then((instances) => {
        label.textContent = documentLabel(kind, instances[0], s.description);
        button.title = label.textContent;
      })
      .catch(() => undefined);
    return button;
  }

  async showSeries(seriesUid: string, index?: number): Promise<void> {
    const token = ++this.loadToken;
    this.seriesUid = seriesUid;
    for (const b of this.strip.querySelectorAll<HTMLElement>('.thumb')) {
      b.classList.toggle('active', b.dataset.series === seriesUid);
    }
    this.closeDocument();
    const docs = this.documents.get(seriesUid);
    if (docs) return this.showDocuments(seriesUid, docs, token);
    const ids = await seriesImageIds(this.studyUid, seriesUid);
    if (token !== this.loadToken) return;
    this.header = headerOf(ids[0]) ?? {};
    toolUtils.stackPrefetch.disable(this.element);
    this.trackLoading(ids, token);
    this.watchFailures(token);
    const start = index ?? Math.floor(ids.length / 2);
    try {
      await this.viewport.setStack(ids, Math.min(Math.max(0, start), ids.length - 1));
    } catch {
      /* that frame failed: frameFailed shows the server's rendering of it */
    }
    this.viewport.render();
    toolUtils.stackPrefetch.enable(this.element);
    this.element.dataset.series = seriesUid;
    this.updateOverlay();
    this.onShown(this);
  }

  /** Documents take the pane's place (over the viewport, which keeps its images). */
  private async showDocuments(seriesUid: string, docs: DocumentRef[], token: number): Promise<void> {
    this.dropPreview();
    this.dropFallback();
    const view = h('div', { class: 'document-view', 'data-series': seriesUid });
    this.docView = view;
    this.root.append(view);
    const urls: string[] = [];
    await renderDocuments(view, this.studyUid, docs, (series, sop, frame) => void this.showImage(series, sop, frame), urls);
    if (token !== this.loadToken || this.docView !== view) urls.forEach((u) => URL.revokeObjectURL(u));
    else this.docUrls = urls;
  }

  /** Whether a document, not the viewport, is what the pane shows (image keys do nothing). */
  get showingDocument(): boolean {
    return this.docView !== null;
  }

  private closeDocument(): void {
    this.docView?.remove();
    this.docView = null;
    for (const url of this.docUrls) URL.revokeObjectURL(url);
    this.docUrls = [];
  }

  /** Shows frame ``frame`` of instance ``sop`` (a link in a structured report). */
  async showImage(seriesUid: string, sop: string, frame = 1): Promise<void> {
    if (this.documents.has(seriesUid)) return this.showSeries(seriesUid);
    const ids = await seriesImageIds(this.studyUid, seriesUid);
    const index = ids.findIndex((id) => {
      const p = parseImageId(id);
      return p.sop_uid === sop && p.frame === frame;
    });
    await this.showSeries(seriesUid, Math.max(0, index));
  }

  /**
   * A frame the browser cannot load or decode (a syntax or a stream its decoders reject, a
   * transcoding the server refused, a network failure) is shown as the archive renders it
   * (/rendered, at the user's current window, or the image's own before there is one)
   * instead of leaving the previous slice or nothing on screen; a W/L change re-renders it.
   * The load is retried a few times (2, 4, 8 s: a network blip); when the real frame arrives
   * it replaces the rendering, as does the next slice that loads normally. A frame that
   * failed counts as settled in "loading n/N" and in the series-loaded mark.
   */
  private fallback: HTMLImageElement | null = null;
  private failed = new Set<string>();

  private frameFailed(id: string, token: number, attempt: number): void {
    this.failed.add(id);
    if (this.targetId() === id) void this.showRendered(id, token);
    if (attempt >= 3) return;
    setTimeout(() => {
      if (token !== this.loadToken || !this.failed.has(id)) return;
      imageLoader.loadAndCacheImage(id).then(
        () => this.frameArrived(id, token),
        () => this.frameFailed(id, token, attempt + 1),
      );
    }, 2000 * 2 ** attempt);
  }

  private frameArrived(id: string, token: number): void {
    if (token !== this.loadToken || !this.failed.delete(id)) return;
    this.failedCount = this.failed.size;
    const ids = this.viewport.getImageIds();
    const index = ids.indexOf(id);
    if (this.targetId() !== id || index < 0) return this.updateOverlay();
    // Shown again through the public API (the viewport believes it shows that index); the
    // user's W/L and camera survive the reload.
    const voi = this.askedVoi ?? this.voi();
    const camera = this.camera();
    void this.viewport.setStack(ids, index).then(() => {
      if (voi) this.setVoi(voi.center, voi.width);
      this.applyCamera(camera);
    });
  }

  private targetId(): string | undefined {
    return this.viewport.getImageIds()[this.viewport.getTargetImageIdIndex()];
  }

  private watchFailures(token: number): void {
    this.element.addEventListener(Enums.Events.STACK_NEW_IMAGE, (evt: Event) => {
      const id = (evt as CustomEvent<{ imageId?: string }>).detail?.imageId;
      if (token === this.loadToken && id && !this.failed.has(id)) this.dropFallback();
    });
    let pending = 0;
    this.element.addEventListener(Enums.Events.VOI_MODIFIED, () => {
      if (!this.settingVoi) this.askedVoi = null; // a W/L drag: the viewport's own VOI rules
      const id = this.fallback?.dataset.imageId;
      if (token !== this.loadToken || !id) return;
      clearTimeout(pending);
      pending = window.setTimeout(() => void this.showRendered(id, token), 150);
    });
  }

  private async showRendered(imageId: string, token: number): Promise<void> {
    const { series_uid, sop_uid, frame } = parseImageId(imageId);
    const voi = this.askedVoi ?? this.voi();
    const query = voi ? `?window=${voi.center.toFixed(1)},${Math.max(1, voi.width).toFixed(1)}` : '';
    const url = await blobUrl(`${DICOMWEB}/studies/${this.studyUid}/series/${series_uid}/instances/${sop_uid}/frames/${frame}/rendered${query}`);
    if (token !== this.loadToken || !this.failed.has(imageId)) return URL.revokeObjectURL(url);
    this.dropPreview();
    const img = this.fallback ?? h('img', { class: 'preview rendered-fallback', alt: 'rendered by the server' });
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = url;
    img.dataset.imageId = imageId;
    img.dataset.window = query.slice(8);
    this.fallback = img;
    this.root.append(img);
  }

  private dropFallback(): void {
    if (!this.fallback) return;
    URL.revokeObjectURL(this.fallback.src);
    this.fallback.remove();
    this.fallback = null;
  }

  /** Progress of the series' frames into the cache (overlay), and performance marks for the
   * first drawn image and the fully loaded series (read by bench/viewer.py). A frame that
   * failed is settled too (shown as rendered by the server, see frameFailed). */
  loaded = 0;
  total = 0;
  failedCount = 0;
  private trackLoading(ids: string[], token: number): void {
    const wanted = new Set(ids);
    const settled = new Set<string>();
    this.loaded = 0;
    this.total = ids.length;
    this.failedCount = 0;
    this.failed = new Set();
    // The viewport renders (IMAGE_RENDERED) before any image is set, too: the first image is
    // the first render after a frame of this series became the displayed one.
    let displayed = false;
    let first = true;
    const onNewImage = (evt: Event) => {
      const id = (evt as CustomEvent<{ imageId?: string }>).detail?.imageId;
      if (token === this.loadToken && id && wanted.has(id)) displayed = true;
    };
    const onRendered = () => {
      if (first && displayed && token === this.loadToken) {
        first = false;
        performance.mark(`solent:first-image:${this.label}`);
        this.dropPreview();
      }
    };
    this.element.addEventListener(Enums.Events.STACK_NEW_IMAGE, onNewImage);
    this.element.addEventListener(Enums.Events.IMAGE_RENDERED, onRendered);
    const settle = (id: string) => {
      settled.add(id);
      this.loaded = settled.size;
      this.failedCount = this.failed.size;
      if (settled.size === wanted.size) performance.mark(`solent:series-loaded:${this.label}`);
      this.updateOverlay();
    };
    const onLoaded = (evt: Event) => {
      const id = (evt as CustomEvent<{ image?: { imageId?: string } }>).detail?.image?.imageId;
      if (token !== this.loadToken) return stop();
      if (!id || !wanted.has(id)) return;
      if (this.failed.has(id)) this.frameArrived(id, token);
      if (!settled.has(id)) settle(id);
      else this.updateOverlay();
    };
    const onError = (evt: Event) => {
      const id = (evt as CustomEvent<{ imageId?: string }>).detail?.imageId;
      if (token !== this.loadToken) return stop();
      if (!id || !wanted.has(id) || this.failed.has(id)) return;
      this.frameFailed(id, token, 0);
      if (!settled.has(id)) settle(id);
    };
    const stop = () => {
      eventTarget.removeEventListener(Enums.Events.IMAGE_LOADED, onLoaded);
      eventTarget.removeEventListener(Enums.Events.IMAGE_LOAD_ERROR, onError);
    };
    eventTarget.addEventListener(Enums.Events.IMAGE_LOADED, onLoaded);
    eventTarget.addEventListener(Enums.Events.IMAGE_LOAD_ERROR, onError);
  }

  scroll(delta: number): void {
    const vp = this.viewport;
    const n = vp.getImageIds().length;
    if (!n) return;
    const next = Math.min(n - 1, Math.max(0, vp.getCurrentImageIdIndex() + delta));
    void vp.setImageIdIndex(next);
  }

  /** The last W/L asked for (preset, MDT presenter): what a server rendering follows while
   * the viewport holds no image of its own. */
  private askedVoi: { center: number; width: number } | null = null;
  private settingVoi = false;

  setVoi(center: number, width: number): void {
    this.settingVoi = true;
    try {
      this.viewport.setProperties({ voiRange: csUtils.windowLevel.toLowHighRange(width, center) });
    } finally {
      this.settingVoi = false;
    }
    this.askedVoi = { center, width };
    this.viewport.render();
    const id = this.fallback?.dataset.imageId;
    if (id) void this.showRendered(id, this.loadToken);
  }

  voi(): { center: number; width: number } | null {
    const r = this.viewport.getProperties().voiRange;
    if (!r) return null;
    const { windowCenter, windowWidth } = csUtils.windowLevel.toWindowLevel(r.lower, r.upper);
    return { center: windowCenter, width: windowWidth };
  }

  camera(): Camera {
    const vp = this.viewport;
    const p = vp.getViewPresentation();
    const cam = vp.getCamera();
    return {
      zoom: p.zoom ?? 1,
      pan: [p.pan?.[0] ?? 0, p.pan?.[1] ?? 0],
      focal: cam.focalPoint ? ([0, 1, 2].map((i) => Math.round(cam.focalPoint![i] * 1000) / 1000) as [number, number, number]) : null,
      rotation: p.rotation ?? 0,
      flip_h: Boolean(cam.flipHorizontal),
      flip_v: Boolean(cam.flipVertical),
      invert: Boolean(vp.getProperties().invert),
    };
  }

  applyCamera(c: Camera): void {
    const vp = this.viewport;
    const cam = vp.getCamera();
    if (Boolean(cam.flipHorizontal) !== c.flip_h) vp.setCamera({ flipHorizontal: c.flip_h });
    if (Boolean(vp.getCamera().flipVertical) !== c.flip_v) vp.setCamera({ flipVertical: c.flip_v });
    vp.setViewPresentation(c.focal ? { zoom: c.zoom, rotation: c.rotation } : { zoom: c.zoom, pan: c.pan, rotation: c.rotation });
    if (c.focal) {
      // Move the camera in the image plane only, so that c.focal is at the centre.
      const now = vp.getCamera();
      const f = now.focalPoint;
      const n = now.viewPlaneNormal;
      if (f && n && now.position) {
        const d = [0, 1, 2].map((i) => c.focal![i] - f[i]);
        const along = d[0] * n[0] + d[1] * n[1] + d[2] * n[2];
        const move = d.map((v, i) => v - along * n[i]);
        if (Math.hypot(...move) > 1e-3) {
          const shift = (p: Types.Point3) => p.map((v, i) => v + move[i]) as Types.Point3;
          vp.setCamera({ focalPoint: shift(f), position: shift(now.position) });
        }
      }
    }
    if (Boolean(vp.getProperties().invert) !== c.invert) vp.setProperties({ invert: c.invert });
    vp.render();
  }

  rotate(degrees: number): void {
    const vp = this.viewport;
    vp.setViewPresentation({ rotation: ((vp.getViewPresentation().rotation ?? 0) + degrees + 360) % 360 });
    vp.render();
  }

  flip(horizontal: boolean): void {
    const vp = this.viewport;
    const cam = vp.getCamera();
    vp.setCamera(horizontal ? { flipHorizontal: !cam.flipHorizontal } : { flipVertical: !cam.flipVertical });
    vp.render();
  }

  invert(): void {
    const vp = this.viewport;
    vp.setProperties({ invert: !vp.getProperties().invert });
    vp.render();
  }

  reset(): void {
    const vp = this.viewport;
    vp.resetProperties();
    vp.resetCamera();
    vp.render();
  }

  state(itemId: number | null = null): ViewState {
    return {
      item_id: itemId,
      study_uid: this.studyUid,
      series_uid: this.seriesUid,
      image_index: this.viewport.getCurrentImageIdIndex(),
      voi: this.voi(),
      camera: this.camera(),
      measurements: measurementsOf(this.viewport),
    };
  }

  current(): { series_uid: string; sop_uid: string; frame: number } {
    return parseImageId(this.viewport.getCurrentImageId());
  }

  updateOverlay(): void {
    const vp = this.engine.getViewport(this.viewportId) as StackViewport | undefined;
    if (!vp || !this.seriesUid) return;
    const ds = this.header;
    const ids = vp.getImageIds();
    const index = vp.getCurrentImageIdIndex();
    const ipp = slicePosition(vp.getCurrentImageId());
    const voi = this.voi();
    const tl = [
      personName(str(ds, '00100010')),
      `NHS ${nhsNumber(nhsFromMetadata(ds)) || '—'}`,
      `${str(ds, '00100021')} ${str(ds, '00100020')}`,
    ];
    const tr = [
      `${dicomDate(str(ds, '00080020'))} ${str(ds, '00080061') || str(ds, '00080060')}`,
      str(ds, '00081030'),
      `Se ${str(ds, '00200011')} ${str(ds, '0008103E')}`,
    ];
    const bl = [
      `Im ${index + 1}/${ids.length}` +
        (this.loaded < this.total ? ` · loading ${this.loaded}/${this.total}` : '') +
        (this.failedCount ? ` · ${this.failedCount} shown as rendered by the archive` : ''),
      ipp !== null ? `Pos ${ipp.toFixed(1)} mm` : '',
    ];
    const br = [voi ? `W ${Math.round(voi.width)} L ${Math.round(voi.center)}` : '', `Zoom ${this.camera().zoom.toFixed(2)}`];
    const block = (cls: string, lines: string[]) => h('div', { class: cls }, ...lines.filter(Boolean).map((l) => h('div', {}, l)));
    this.overlay.replaceChildren(block('tl', tl), block('tr', tr), block('bl', bl), block('br', br));
    this.overlay.dataset.index = String(index);
    this.overlay.dataset.imageId = ids[index] ?? ''; // which frame is on screen (tests, support)
  }
}

/** The slice's position along its normal (mm), from the image plane metadata. */
export function slicePosition(imageId: string | undefined): number | null {
  if (!imageId) return null;
  const plane = metaData.get('imagePlaneModule', imageId) as
    | { imagePositionPatient?: number[]; rowCosines?: number[]; columnCosines?: number[] }
    | undefined;
  const p = plane?.imagePositionPatient;
  const r = plane?.rowCosines;
  const c = plane?.columnCosines;
  if (!p || !r || !c) return null;
  const n = [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]];
  return p[0] * n[0] + p[1] * n[1] + p[2] * n[2];
}
function headerOf(imageId: string | undefined): DicomJson | null {
  if (!imageId) return null;
  return (wadors.metaDataManager.get(imageId) as unknown as DicomJson) ?? null;
}
