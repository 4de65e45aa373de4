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
import { DICOMWEB, type DicomJson, seriesFrames, seriesMetadata, str, tag } from './data';

export { DICOMWEB, type DicomJson, str, tag };
export { PRESETS } from './presets';
export const TOOL_GROUP = 'solent-stack';
/** At most this many frame requests in flight; what the user looks at is asked for first. */
export const MAX_IN_FLIGHT = 6;

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
    imageRetrievalPoolManager.setMaxSimultaneousRequests(RequestType.Prefetch, MAX_IN_FLIGHT - 2);
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
  const { MouseBindings } = ToolEnums;
  group.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
  group.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
  group.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
  group.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
  for (const name of [LengthTool.toolName, AngleTool.toolName, EllipticalROITool.toolName]) {
    group.setToolPassive(name);
  }
  return group;
}

export function setPrimaryTool(group: ToolTypes.IToolGroup, tool: MouseTool): void {
  const name = TOOL_NAMES[tool];
  const current = group.getActivePrimaryMouseButtonTool();
  if (current && current !== name) {
    const annotation = [LengthTool.toolName, AngleTool.toolName, EllipticalROITool.toolName];
    if (annotation.includes(current)) group.setToolPassive(current);
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
    wadors.metaDataManager.add(id, ds as unknown as Parameters<typeof wadors.metaDataManager.add>[1]);
    storedSyntax.set(id.slice(7), str(ds, '00083002') || str(ds, '00020010'));
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

const storedSyntax = new Map<string, string>();

/** Whether native (uncompressed) frames are asked for compressed; ?raw=1 turns it off. */
const compressNative = !new URLSearchParams(location.search).has('raw');

/**
 * The Accept header of one frame request. Frames in a syntax the browser decodes come as
 * stored (no server work). Uncompressed frames come as lossless HTJ2K (the link, not the CPU,
 * is what limits a trust's WAN). Anything the browser's decoders cannot read (JPEG XL, which
 * would need a 1 MB decoder; anything unknown) is transcoded by the archive to lossless HTJ2K
 * or, failing that, uncompressed: the image shows instead of nothing.
 */
export function frameAccept(url: string): string {
  const ts = storedSyntax.get(url.startsWith('wadors:') ? url.slice(7) : url.split('?')[0]) ?? '';
  if (NATIVE.has(ts)) return compressNative ? TRANSCODED : AS_STORED;
  if (BROWSER_DECODES.has(ts)) return AS_STORED;
  return TRANSCODED;
}

/** The syntax a frame is expected to arrive in (what frameAccept asks for first). */
function arrivingSyntax(url: string): string {
  const ts = storedSyntax.get(url) ?? '';
  if (NATIVE.has(ts)) return compressNative ? HTJ2K_LOSSLESS : ts;
  return BROWSER_DECODES.has(ts) ? ts : HTJ2K_LOSSLESS;
}

/** (series, sop, frame) of a wadors image id. */
export function parseImageId(id: string): { series_uid: string; sop_uid: string; frame: number } {
  const m = /series\/([^/]+)\/instances\/([^/]+)\/frames\/(\d+)/.exec(id);
  return { series_uid: m?.[1] ?? '', sop_uid: m?.[2] ?? '', frame: Number(m?.[3] ?? 1) };
}
