// Cornerstone3D set-up: rendering (GPU, or CPU where WebGL is missing), the WADO-RS image
// loader with the bearer token, the request caps and the tools every viewport shares.

import {
  Enums as CoreEnums,
  getWebWorkerManager,
  imageRetrievalPoolManager,
  init as coreInit,
  setUseCPURendering,
} from '@cornerstonejs/core';
import { init as loaderInit, wadors } from '@cornerstonejs/dicom-image-loader';
import {
  AngleTool,
  EllipticalROITool,
  Enums as ToolEnums,
  LengthTool,
  PanTool,
  PlanarRotateTool,
  StackScrollTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
  addTool,
  init as toolsInit,
} from '@cornerstonejs/tools';
import type { Types as ToolTypes } from '@cornerstonejs/tools';
import { authHeaders } from './api';
import { DICOMWEB, type DicomJson, acceptFor, arrivingFor, asDecoded, seriesFrames, withPalettes, seriesMetadata, storedSyntaxOf, str, tag } from './data';

export { DICOMWEB, type DicomJson, str, tag };
export { PRESETS } from './presets';
export const TOOL_GROUP = 'solent-stack';
/** Frame requests in flight for what the user looks at (Cornerstone's interaction queue,
 * which is served before the background prefetch). */
export const MAX_IN_FLIGHT = 6;
/** Bounds of the background prefetch's requests in flight (see adaptPrefetch). */
const PREFETCH_MIN = 4;
const PREFETCH_MAX = 12;

let ready: Promise<void> | null = null;
let workers = 1;

function webglAvailable(): boolean {
  try {
    const canvas = document.createElement('canvas');
    return Boolean(canvas.getContext('webgl2') ?? canvas.getContext('webgl'));
  } catch {
    return false;
  }
}

export function initImaging(): Promise<void> {
  ready ??= (async () => {
    const cpu = !webglAvailable() || new URLSearchParams(location.search).has('cpu');
    coreInit({ rendering: { useCPURendering: cpu } } as Parameters<typeof coreInit>[0]);
    if (cpu) setUseCPURendering(true);
    document.documentElement.dataset.rendering = cpu ? 'cpu' : 'gpu';
    workers = Math.max(1, Math.min(4, (navigator.hardwareConcurrency || 2) - 1));
    loaderInit({
      maxWebWorkers: workers,
      // Called by the loader's XHR with the image id: the bearer token and the frame's Accept.
      beforeSend: (_xhr: unknown, imageId: string) => ({ ...authHeaders(), Accept: frameAccept(imageId) }),
    } as Parameters<typeof loaderInit>[0]);
    const { RequestType } = CoreEnums;
    imageRetrievalPoolManager.setMaxSimultaneousRequests(RequestType.Interaction, MAX_IN_FLIGHT);
    imageRetrievalPoolManager.setMaxSimultaneousRequests(RequestType.Thumbnail, MAX_IN_FLIGHT);
    imageRetrievalPoolManager.setMaxSimultaneousRequests(RequestType.Prefetch, PREFETCH_MIN);
    adaptPrefetch();
    toolsInit();
    for (const tool of [
      StackScrollTool,
      WindowLevelTool,
      ZoomTool,
      PanTool,
      PlanarRotateTool,
      LengthTool,
      AngleTool,
      EllipticalROITool,
    ]) {
      addTool(tool);
    }
  })();
  return ready;
}

/**
 * Sizes the prefetch's requests in flight to what the link and the server sustain: after each
 * window of frames received (twice the cap), two more in flight while that raised the frames
 * per second by a tenth, two fewer when it lowered them (the server, not the link, was the
 * limit). Measured from arrivals, not from resource timing fields, which network emulation
 * and proxies distort. The slice the user scrolls to is an interaction request and still goes
 * first. Over HTTP/1.1 the browser opens at most 6 connections per host, so the cap stays at
 * 5 there (one connection free for the slice scrolled to); over HTTP/2 it may reach 12.
 */
function adaptPrefetch(): void {
  if (typeof PerformanceObserver === 'undefined') return;
  const { RequestType } = CoreEnums;
  // HTTP/1.1: at most 6 connections per host; one stays free for the slice scrolled to.
  const protocol = (performance.getEntriesByType('navigation')[0] as PerformanceNavigationTiming | undefined)?.nextHopProtocol ?? '';
  const most = protocol.startsWith('http/1') || !protocol ? 5 : PREFETCH_MAX;
  let cap = PREFETCH_MIN;
  let lastRate = 0;
  let count = 0;
  let since = performance.now();
  new PerformanceObserver((list) => {
    for (const e of list.getEntries() as PerformanceResourceTiming[]) {
      if (/\/frames\/\d+$/.test(e.name) && e.transferSize > 0) count += 1; // not from the cache
    }
    if (count < 2 * cap) return;
    const now = performance.now();
    const rate = count / (now - since);
    if (rate > lastRate * 1.1) cap = Math.min(most, cap + 2);
    else if (rate < lastRate * 0.9) cap = Math.max(PREFETCH_MIN, cap - 2);
    lastRate = rate;
    count = 0;
    since = now;
    imageRetrievalPoolManager.setMaxSimultaneousRequests(RequestType.Prefetch, cap);
    document.documentElement.dataset.prefetchInFlight = String(cap);
  }).observe({ type: 'resource', buffered: false });
}

export type MouseTool = 'WindowLevel' | 'Pan' | 'Zoom' | 'Length' | 'Angle' | 'EllipticalROI' | 'StackScroll' | 'PlanarRotate';

export const TOOL_NAMES: Record<MouseTool, string> = {
  WindowLevel: WindowLevelTool.toolName,
  Pan: PanTool.toolName,
  Zoom: ZoomTool.toolName,
  Length: LengthTool.toolName,
  Angle: AngleTool.toolName,
  EllipticalROI: EllipticalROITool.toolName,
  StackScroll: StackScrollTool.toolName,
  PlanarRotate: PlanarRotateTool.toolName,
};

/** One tool group per hanging: left button = chosen tool, middle = pan, right = zoom, wheel = scroll. */
export function createToolGroup(id: string): ToolTypes.IToolGroup {
  ToolGroupManager.destroyToolGroup(id);
  const group = ToolGroupManager.createToolGroup(id);
  if (!group) throw new Error('tool group could not be created');
  for (const name of Object.values(TOOL_NAMES)) group.addTool(name);
  bindDefaults(group);
  return group;
}

const MEASURE_TOOLS = [LengthTool.toolName, AngleTool.toolName, EllipticalROITool.toolName];

function bindDefaults(group: ToolTypes.IToolGroup): void {
  const { MouseBindings } = ToolEnums;
  group.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
  group.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
  group.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
  group.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
  for (const name of MEASURE_TOOLS) group.setToolPassive(name);
}

/**
 * MDT follower: no mouse tool acts (W/L, scroll, pan, zoom, rotate, measuring: the view is
 * the presenter's); measurement tools stay enabled so the presenter's measurements are drawn.
 * Back to presenting: the default bindings and the tool the user had chosen.
 */
export function followTools(group: ToolTypes.IToolGroup, follow: boolean, primary: MouseTool): void {
  if (follow) {
    for (const name of Object.values(TOOL_NAMES)) {
      if (MEASURE_TOOLS.includes(name)) group.setToolEnabled(name);
      else group.setToolDisabled(name);
    }
    return;
  }
  for (const name of Object.values(TOOL_NAMES)) group.setToolDisabled(name);
  bindDefaults(group);
  setPrimaryTool(group, primary);
}

export function setPrimaryTool(group: ToolTypes.IToolGroup, tool: MouseTool): void {
  const name = TOOL_NAMES[tool];
  const current = group.getActivePrimaryMouseButtonTool();
  if (current && current !== name) {
    if (MEASURE_TOOLS.includes(current)) group.setToolPassive(current);
    else group.setToolDisabled(current);
  }
  const { MouseBindings } = ToolEnums;
  if (name === StackScrollTool.toolName) {
    group.setToolActive(name, {
      bindings: [{ mouseButton: MouseBindings.Primary }, { mouseButton: MouseBindings.Wheel }],
    });
  } else {
    group.setToolActive(name, { bindings: [{ mouseButton: MouseBindings.Primary }] });
  }
}

/**
 * Reads a series' WADO-RS metadata once, registers every frame with the image loader and
 * returns the frames' image ids sorted by slice position (then instance number).
 */
export async function seriesImageIds(studyUid: string, seriesUid: string): Promise<string[]> {
  const base = `${DICOMWEB}/studies/${studyUid}/series/${seriesUid}`;
  const ids: string[] = [];
  for (const { sop, frame, ds } of seriesFrames(await seriesMetadata(studyUid, seriesUid))) {
    const id = `wadors:${base}/instances/${sop}/frames/${frame}`;
    storedSyntax.set(id.slice(7), storedSyntaxOf(ds));
    const decoded = asDecoded(await withPalettes(ds, `${base}/instances/${sop}`), arrivingSyntax(id.slice(7)));
    wadors.metaDataManager.add(id, decoded as unknown as Parameters<typeof wadors.metaDataManager.add>[1]);
    ids.push(id);
  }
  warmDecoders(ids);
  return ids;
}

const warmed = new Set<string>();
/**
 * Each decoder worker loads and initialises the codecs of the syntaxes these frames will
 * arrive in (the worker imports codecs on first use, viewer/slim.ts) while the first frame is
 * still on the wire, instead of after it.
 */
function warmDecoders(ids: string[]): void {
  const syntaxes = [...new Set(ids.map((id) => arrivingSyntax(id.slice(7))))].filter((ts) => !warmed.has(ts));
  if (!syntaxes.length) return;
  syntaxes.forEach((ts) => warmed.add(ts));
  const manager = getWebWorkerManager();
  for (let i = 0; i < workers; i++) {
    manager.executeTask('dicomImageLoader', 'warmTask', { transferSyntaxes: syntaxes }).catch(() => undefined);
  }
}

// -- what each frame is asked for in ---------------------------------------------------------

const storedSyntax = new Map<string, string>();

/** The Accept header of one frame request (see data.ts acceptFor). */
export function frameAccept(url: string): string {
  return acceptFor(storedSyntax.get(url.startsWith('wadors:') ? url.slice(7) : url.split('?')[0]) ?? '');
}

function arrivingSyntax(url: string): string {
  return arrivingFor(storedSyntax.get(url) ?? '');
}

/** (series, sop, frame) of a wadors image id. */
export function parseImageId(id: string): { series_uid: string; sop_uid: string; frame: number } {
  const m = /series\/([^/]+)\/instances\/([^/]+)\/frames\/(\d+)/.exec(id);
  return { series_uid: m?.[1] ?? '', sop_uid: m?.[2] ?? '', frame: Number(m?.[3] ?? 1) };
}
