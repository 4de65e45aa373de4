// The reading screen: current study (and a prior side by side), tools, report and key images.
// Images come from DICOMweb alone; patient context, priors, reports and key images from the
// viewer API, so the images still show where that context cannot be read.

import { Enums, RenderingEngine, eventTarget, getRenderingEngine } from '@cornerstonejs/core';
import { Enums as ToolEnums, SynchronizerManager, synchronizers, utilities as toolUtils } from '@cornerstonejs/tools';
import type { Types as ToolTypes } from '@cornerstonejs/tools';
import { ApiError, del, get, post } from './api';
import { breakGlass, breakGlassBanner } from './breakglass';
import { errorBox, h } from './dom';
import { dicomDate, dicomDateTime, personName } from './format';
import { PRESETS, TOOL_GROUP, type MouseTool, createToolGroup, followTools, initImaging, setPrimaryTool } from './imaging';
import { removeSelectedMeasurements, showMeasurements, unlockMeasurements } from './measurements';
import { Pane, studySeries } from './pane';
import { studyContext, studyDocuments } from './data';
import { launchList } from './launch';
import { takePreview } from './preview';
import { patientHeader } from './timeline';
import type { KeyImage, Report, StudyEntry, ViewState } from './types';

const ENGINE = 'solent-engine';
const SLICE_SYNC = 'solent-slice-sync';
const VOI_SYNC = 'solent-voi-sync';
/** How a prior matched the current study, as the prior list says it. */
const RELEVANCE = { code: 'same procedure', region: 'same body region', modality: 'same modality' } as const;

export interface StudyViewOptions {
  prior?: string | null;
  /** The studies of a multi-study EPR launch (#/study/UID?launch=UID1,UID2,…), listed above. */
  launched?: string[];
  /** Called after any change of what the main pane shows (MDT presenter). */
  onChange?: (state: ViewState) => void;
  /** Follow mode: the user's own input does not drive the view (MDT follower). */
  follow?: boolean;
  itemId?: number | null;
}

export interface StudyView {
  main: Pane;
  /** MDT: whether the user's own input drives the view (presenter) or only follows. */
  setFollow(follow: boolean): void;
  apply(state: ViewState): Promise<void>;
  destroy(): void;
}

let active: StudyView | null = null;
/** Events after which what is drawn where may have moved (the MDT pointer is placed again). */
export const VIEW_MOVED = [Enums.Events.CAMERA_MODIFIED, Enums.Events.IMAGE_RENDERED];
/** The left-button tool the user chose (restored when a follower becomes presenter). */
let chosen: MouseTool = 'WindowLevel';
const ANNOTATION_EVENTS = [
  ToolEnums.Events.ANNOTATION_ADDED,
  ToolEnums.Events.ANNOTATION_MODIFIED,
  ToolEnums.Events.ANNOTATION_COMPLETED,
  ToolEnums.Events.ANNOTATION_REMOVED,
];

export function closeStudyView(): void {
  active?.destroy();
  active = null;
}

function destroyEngine(): void {
  for (const id of [SLICE_SYNC, VOI_SYNC]) SynchronizerManager.destroySynchronizer(id);
  getRenderingEngine(ENGINE)?.destroy();
}

export async function studyView(root: HTMLElement, studyUid: string, opts: StudyViewOptions = {}): Promise<StudyView | null> {
  closeStudyView();
  // Series, context and the core's set-up run together (data.ts shares what main.ts started).
  const seriesP = studySeries(studyUid).catch(() => []);
  void studyDocuments(studyUid).catch(() => undefined); // the strip's documents, shared with the pane
  const contextP = studyContext(studyUid).catch((e: Error) => e);
  await initImaging();
  root.classList.add('reading');
  const series = await seriesP;
  if (!series.length) {
    const button = h('button', { id: 'break-glass-open', class: 'danger' }, 'Break glass…');
    button.addEventListener('click', async () => {
      if (await breakGlass({ study_uid: studyUid })) {
        root.replaceChildren();
        await studyView(root, studyUid, opts);
      }
    });
    root.replaceChildren(
      errorBox('No such study that you can see.'),
      h('p', {}, 'If this patient is in your care in an emergency, you may break glass.'),
      button,
    );
    return null;
  }

  destroyEngine();
  const engine = new RenderingEngine(ENGINE);
  const group = createToolGroup(TOOL_GROUP);
  const changed = () => {
    if (opts.onChange && main.seriesUid) opts.onChange(main.state(opts.itemId ?? null));
  };
  const main = new Pane(engine, 'current', 'Current', () => changed());
  let prior: Pane | null = null;

  const preview = takePreview(studyUid);
  if (preview && !opts.follow) main.adoptPreview(preview.element);
  const context = await contextP;
  const side = h('aside', { class: 'side' });
  const header = h('div', { class: 'study-head' });
  const toolbar = h('div', { class: 'toolbar', role: 'toolbar' });
  const panes = h('div', { class: 'panes' }, main.root);
  const strips = h('div', { class: 'strips' }, main.strip);
  root.replaceChildren(header, toolbar, h('div', { class: 'reading-body' }, strips, panes, side));
  main.enable();
  group.addViewport(main.viewportId, ENGINE);
  // The canvases take the size of their pane when enabled; the header, toolbar and side panel
  // fill in after that and the pane shrinks. Without a resize the canvas keeps its first size
  // and the browser squeezes it into the pane: anatomy drawn out of proportion.
  let sizing = 0;
  const sizes = new ResizeObserver(() => {
    cancelAnimationFrame(sizing);
    sizing = requestAnimationFrame(() => engine.resize(true, true));
  });
  sizes.observe(panes);
  sizes.observe(main.root);

  if (context instanceof Error) {
    header.append(errorBox(`Patient context, priors and reports unavailable: ${context.message}`));
  } else {
    if (context.study.access === 'break-glass') {
      header.append(breakGlassBanner(context.break_glass?.expires_at));
    }
    header.append(patientHeader(context.patient), studyLine(context.study));
  }

  if (opts.launched) header.append(launchList(opts.launched, studyUid));

  buildToolbar(toolbar, group, () => [main, ...(prior ? [prior] : [])], main, studyUid);
  // A follower's mouse does nothing to the view (and its toolbar is off), so it cannot drift
  // from the presenter's; the view comes only from apply().
  const following = (follow: boolean) => {
    followTools(group, follow, chosen);
    for (const control of toolbar.querySelectorAll<HTMLButtonElement | HTMLSelectElement>('button, select')) {
      if (control.id !== 'key-image') control.disabled = follow;
    }
    main.element.classList.toggle('following', follow);
  };
  if (opts.follow) following(true);

  // Priors: the archive lists the most relevant first (R19: the same mapped procedure, then a
  // body region in common, then the newest); it hangs beside the current study unless the route
  // names another (#/study/UID?prior=UID2, which needs DICOMweb only; ?prior= hangs none).
  const priors = context instanceof Error ? [] : context.priors;
  const wanted = opts.prior === undefined ? (priors[0]?.study_uid ?? null) : opts.prior;
  if (!opts.follow && (priors.length || wanted)) {
    const choose = h(
      'select',
      { id: 'prior-select', 'aria-label': 'Prior study' },
      h('option', { value: '' }, 'No prior'),
      ...priors.map((p) =>
        h(
          'option',
          { value: p.study_uid, 'data-relevance': p.relevance ?? '' },
          `${dicomDate(p.date)} ${p.trust} ${p.modalities.join('/')} ${p.description ?? ''}${p.relevance ? ` — ${RELEVANCE[p.relevance]}` : ''}`,
        ),
      ),
    );
    if (wanted && !priors.some((p) => p.study_uid === wanted)) choose.append(h('option', { value: wanted }, wanted));
    choose.value = wanted ?? '';
    choose.addEventListener('change', () => void hangPrior(choose.value || null));
    toolbar.append(h('label', { class: 'prior' }, 'Prior ', choose));
  }

  // The pane whose scrolling the other follows (see hangPrior): the last one the user touched.
  let driver = main.viewportId;
  const leads = (pane: Pane) => {
    for (const ev of ['pointerdown', 'wheel'] as const) {
      pane.element.addEventListener(ev, () => (driver = pane.viewportId), { capture: true, passive: true });
    }
  };
  leads(main);

  async function hangPrior(uid: string | null): Promise<void> {
    for (const id of [SLICE_SYNC, VOI_SYNC]) SynchronizerManager.destroySynchronizer(id);
    if (prior) {
      group.removeViewports(ENGINE, prior.viewportId);
      engine.disableElement(prior.viewportId);
      sizes.unobserve(prior.root);
      prior.root.remove();
      prior.strip.remove();
      prior = null;
    }
    if (!uid) return;
    const priorSeries = await studySeries(uid);
    prior = new Pane(engine, 'prior', 'Prior', () => undefined);
    panes.append(prior.root);
    strips.append(prior.strip);
    engine.resize(true);
    prior.enable();
    group.addViewport(prior.viewportId, ENGINE);
    engine.resize(true, true);
    sizes.observe(prior.root);
    await prior.showStudy(uid, priorSeries);
    // Slice sync runs from the pane the user last touched (keys scroll the current) to the other
    // one only. Two-way, the other pane's new image arrives after the synchronizer's re-entry
    // guard is down and pulled the driving pane back to the nearest position it has (End on the
    // current could land a few slices short of the last).
    driver = main.viewportId;
    leads(prior);
    const slice = SynchronizerManager.createSynchronizer(
      SLICE_SYNC,
      Enums.Events.STACK_NEW_IMAGE,
      (sync, source, target) =>
        source.viewportId === driver ? synchronizers.imageSliceSyncCallback(sync, source, target) : undefined,
    );
    const voi = synchronizers.createVOISynchronizer(VOI_SYNC, { syncInvertState: true, syncColormap: false });
    for (const s of [slice, voi]) {
      s.add({ renderingEngineId: ENGINE, viewportId: main.viewportId });
      s.add({ renderingEngineId: ENGINE, viewportId: prior.viewportId });
    }
  }

  if (!(context instanceof Error)) void sidePanel(side, studyUid, main);
  else side.append(h('p', { class: 'empty' }, 'Report unavailable.'));

  const keyHandler = (e: KeyboardEvent) => {
    if (opts.follow) return;
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement || e.target instanceof HTMLSelectElement) return;
    if (main.showingDocument) return; // the keys scroll and window images, not documents
    if (e.key === 'Delete' || e.key === 'Backspace') return removeSelectedMeasurements(main.viewport);
    driver = main.viewportId; // keys scroll the current
    handleKey(e, group, main, prior, studyUid);
  };
  document.addEventListener('keydown', keyHandler);
  const resize = () => engine.resize(true, false);
  window.addEventListener('resize', resize);

  // Presenter: every change of image, W/L, camera or measurement goes out (throttled by the
  // caller). Annotation events are global (Cornerstone's eventTarget).
  for (const ev of [Enums.Events.STACK_NEW_IMAGE, Enums.Events.VOI_MODIFIED, Enums.Events.CAMERA_MODIFIED]) {
    main.element.addEventListener(ev, changed);
  }
  for (const ev of ANNOTATION_EVENTS) eventTarget.addEventListener(ev, changed);
  await main.showStudy(studyUid, series);
  if (!opts.follow && wanted) await hangPrior(wanted);

  const view: StudyView = {
    main,
    async apply(state: ViewState) {
      if (state.study_uid !== main.studyUid) return; // the caller reopens for another study
      if (state.series_uid && state.series_uid !== main.seriesUid) await main.showSeries(state.series_uid, state.image_index);
      const last = main.viewport.getImageIds().length - 1;
      const index = Math.min(Math.max(0, state.image_index ?? 0), last);
      if (Number.isInteger(state.image_index) && main.viewport.getCurrentImageIdIndex() !== index) await main.viewport.setImageIdIndex(index);
      if (state.voi) main.setVoi(state.voi.center, state.voi.width);
      if (state.camera) main.applyCamera(state.camera);
      showMeasurements(main.viewport, state.measurements ?? []);
      main.updateOverlay();
    },
    setFollow(follow: boolean) {
      opts.follow = follow;
      following(follow);
      if (!follow) unlockMeasurements();
    },
    destroy() {
      document.removeEventListener('keydown', keyHandler);
      sizes.disconnect();
      for (const ev of ANNOTATION_EVENTS) eventTarget.removeEventListener(ev, changed);
      window.removeEventListener('resize', resize);
      toolUtils.cine.stopClip(main.element);
      destroyEngine();
      root.classList.remove('reading');
    },
  };
  active = view;
  return view;
}

function studyLine(s: StudyEntry): HTMLElement {
  return h(
    'div',
    { class: 'study-line' },
    h('span', { class: 'trust-badge' }, s.trust),
    ` ${dicomDate(s.date)} ${s.modalities.join('/')} ${s.description ?? ''} · Acc ${s.accession ?? '—'} · report: ${s.report_status ?? 'none'}`,
  );
}

function buildToolbar(
  bar: HTMLElement,
  group: ToolTypes.IToolGroup,
  panes: () => Pane[],
  main: Pane,
  studyUid: string,
): void {
  const tools: [MouseTool, string, string][] = [
    ['WindowLevel', 'W/L', 'w'],
    ['StackScroll', 'Scroll', 's'],
    ['Pan', 'Pan', 'p'],
    ['Zoom', 'Zoom', 'z'],
    ['Length', 'Length', 'l'],
    ['Angle', 'Angle', 'a'],
    ['EllipticalROI', 'ROI', 'o'],
  ];
  const toolButtons = tools.map(([tool, label, key]) => {
    const b = h('button', { type: 'button', 'data-tool': tool, title: `${label} (${key})` }, label);
    b.addEventListener('click', () => selectTool(group, tool));
    return b;
  });
  const action = (label: string, title: string, fn: () => void, id: string) => {
    const b = h('button', { type: 'button', id, title }, label);
    b.addEventListener('click', fn);
    return b;
  };
  const presets = h(
    'select',
    { id: 'preset', 'aria-label': 'Window preset' },
    h('option', { value: '' }, 'W/L preset'),
    ...Object.entries(PRESETS).map(([name, p]) => h('option', { value: name }, `${name} (${p.key})`)),
  );
  presets.addEventListener('change', () => {
    const p = PRESETS[presets.value];
    if (p) main.setVoi(p.center, p.width);
    presets.value = '';
  });
  bar.append(
    h('span', { class: 'group' }, ...toolButtons),
    presets,
    h(
      'span',
      { class: 'group' },
      action('⟳', 'Rotate 90° (r)', () => panes().forEach((p) => p.rotate(90)), 'rotate'),
      action('⇋', 'Flip horizontal (h)', () => panes().forEach((p) => p.flip(true)), 'flip-h'),
      action('⇵', 'Flip vertical (v)', () => panes().forEach((p) => p.flip(false)), 'flip-v'),
      action('Invert', 'Invert (i)', () => main.invert(), 'invert'),
      action('Reset', 'Reset (0)', () => panes().forEach((p) => p.reset()), 'reset'),
      action('▶ Cine', 'Cine (c)', () => toggleCine(main), 'cine'),
      action('★ Key', 'Mark key image (k)', () => void markKeyImage(main, studyUid), 'key-image'),
    ),
  );
  selectTool(group, 'WindowLevel');
}

function selectTool(group: ToolTypes.IToolGroup, tool: MouseTool): void {
  chosen = tool;
  setPrimaryTool(group, tool);
  for (const b of document.querySelectorAll<HTMLElement>('.toolbar [data-tool]')) {
    b.classList.toggle('active', b.dataset.tool === tool);
  }
}

const playing = new WeakSet<HTMLElement>();
function toggleCine(pane: Pane): void {
  if (playing.has(pane.element)) {
    toolUtils.cine.stopClip(pane.element);
    playing.delete(pane.element);
  } else {
    toolUtils.cine.playClip(pane.element, { framesPerSecond: 12, loop: true });
    playing.add(pane.element);
  }
  document.getElementById('cine')?.classList.toggle('active', playing.has(pane.element));
}

function handleKey(e: KeyboardEvent, group: ToolTypes.IToolGroup, main: Pane, prior: Pane | null, studyUid: string): void {
  const all = prior ? [main, prior] : [main];
  const keys: Record<string, () => void> = {
    ArrowDown: () => main.scroll(1),
    ArrowRight: () => main.scroll(1),
    ArrowUp: () => main.scroll(-1),
    ArrowLeft: () => main.scroll(-1),
    PageDown: () => main.scroll(10),
    PageUp: () => main.scroll(-10),
    Home: () => main.scroll(-1e6),
    End: () => main.scroll(1e6),
    w: () => selectTool(group, 'WindowLevel'),
    s: () => selectTool(group, 'StackScroll'),
    p: () => selectTool(group, 'Pan'),
    z: () => selectTool(group, 'Zoom'),
    l: () => selectTool(group, 'Length'),
    a: () => selectTool(group, 'Angle'),
    o: () => selectTool(group, 'EllipticalROI'),
    r: () => all.forEach((p) => p.rotate(90)),
    h: () => all.forEach((p) => p.flip(true)),
    v: () => all.forEach((p) => p.flip(false)),
    i: () => main.invert(),
    '0': () => all.forEach((p) => p.reset()),
    c: () => toggleCine(main),
    k: () => void markKeyImage(main, studyUid),
  };
  for (const p of Object.values(PRESETS)) keys[p.key] = () => main.setVoi(PRESETS[nameOf(p.key)].center, PRESETS[nameOf(p.key)].width);
  const fn = keys[e.key];
  if (fn && !e.ctrlKey && !e.metaKey && !e.altKey) {
    e.preventDefault();
    fn();
  }
}

function nameOf(key: string): string {
  return Object.entries(PRESETS).find(([, p]) => p.key === key)?.[0] ?? '';
}

async function sidePanel(side: HTMLElement, studyUid: string, main: Pane): Promise<void> {
  const reports = h('section', { id: 'reports' }, h('h2', {}, 'Report'));
  const keys = h('section', { id: 'key-images' }, h('h2', {}, 'Key images'));
  side.replaceChildren(reports, keys);
  try {
    const r = await get<{ reports: Report[] }>(`/api/viewer/studies/${studyUid}/reports`);
    if (!r.reports.length) reports.append(h('p', { class: 'empty' }, 'No report yet.'));
    for (const rep of r.reports) {
      reports.append(
        h(
          'article',
          { class: `report ${rep.status}` },
          h('header', {}, h('strong', {}, rep.status.toUpperCase()), ` ${dicomDateTime(rep.issued)} ${personName(rep.author)}`),
          h('pre', {}, rep.text),
          rep.versions.length > 1
            ? h(
                'details',
                {},
                h('summary', {}, `${rep.versions.length} versions`),
                ...rep.versions.map((v) => h('div', { class: 'version' }, h('em', {}, `v${v.version} ${v.status} ${dicomDateTime(v.issued)}`), h('pre', {}, v.text))),
              )
            : null,
        ),
      );
    }
  } catch (e) {
    reports.append(errorBox(`Report unavailable: ${(e as Error).message}`));
  }
  await refreshKeyImages(keys, studyUid, main);
}

async function refreshKeyImages(section: HTMLElement, studyUid: string, main: Pane): Promise<void> {
  const list = h('ul', { class: 'key-list' });
  section.querySelector('ul')?.remove();
  section.querySelector('.error')?.remove();
  try {
    const r = await get<{ key_images: KeyImage[] }>(`/api/viewer/studies/${studyUid}/key-images`);
    for (const k of r.key_images) {
      const go = h('a', { href: '#', class: 'key-go' }, `${k.note || 'Key image'} (frame ${k.frame}) — ${k.by}`);
      go.addEventListener('click', (e) => {
        e.preventDefault();
        void jumpTo(main, k);
      });
      const remove = h('button', { type: 'button', class: 'small', title: 'Remove' }, '×');
      remove.addEventListener('click', () => void del(`/api/viewer/studies/${studyUid}/key-images/${k.id}`).then(() => refreshKeyImages(section, studyUid, main)));
      list.append(h('li', {}, go, remove));
    }
    if (!r.key_images.length) list.append(h('li', { class: 'empty' }, 'None marked.'));
    section.append(list);
  } catch (e) {
    section.append(errorBox(`Key images unavailable: ${(e as Error).message}`));
  }
}

async function jumpTo(main: Pane, k: KeyImage): Promise<void> {
  if (k.series_uid !== main.seriesUid) await main.showSeries(k.series_uid);
  const ids = main.viewport.getImageIds();
  const i = ids.findIndex((id) => id.includes(`/instances/${k.sop_uid}/frames/${k.frame}`));
  if (i >= 0) await main.viewport.setImageIdIndex(i);
}

async function markKeyImage(main: Pane, studyUid: string): Promise<void> {
  const note = prompt('Note for this key image', '') ?? null;
  if (note === null) return;
  try {
    await post(`/api/viewer/studies/${studyUid}/key-images`, { ...main.current(), note });
    const section = document.getElementById('key-images');
    if (section) await refreshKeyImages(section, studyUid, main);
  } catch (e) {
    alert(e instanceof ApiError ? e.detail : (e as Error).message);
  }
}
