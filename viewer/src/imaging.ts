// Cornerstone3D set-up: rendering (GPU, or CPU where WebGL is missing), the WADO-RS image
// loader with the bearer token, the request caps and the tools every viewport shares.

import {
  Enums as CoreEnums,
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

export const DICOMWEB = `${location.origin}/dicomweb`;
export const TOOL_GROUP = 'solent-stack';
/** At most this many frame requests in flight; what the user looks at is asked for first. */
export const MAX_IN_FLIGHT = 6;

let ready: Promise<void> | null = null;

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
    loaderInit({
      maxWebWorkers: Math.max(1, Math.min(4, (navigator.hardwareConcurrency || 2) - 1)),
      beforeSend: () => authHeaders(),
    });
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

/** DICOM JSON of one instance (the subset this app reads). */
export type DicomJson = Record<string, { vr: string; Value?: unknown[] }>;

export function tag(ds: DicomJson, key: string): unknown {
  return ds[key]?.Value?.[0];
}

export function str(ds: DicomJson, key: string): string {
  const v = tag(ds, key);
  if (v && typeof v === 'object' && 'Alphabetic' in v) return String((v as { Alphabetic: string }).Alphabetic);
  return v === undefined || v === null ? '' : String(v);
}

/**
 * Reads a series' WADO-RS metadata once, registers every frame with the image loader and
 * returns the frames' image ids sorted by slice position (then instance number).
 */
export async function seriesImageIds(studyUid: string, seriesUid: string): Promise<string[]> {
  const base = `${DICOMWEB}/studies/${studyUid}/series/${seriesUid}`;
  const response = await fetch(`${base}/metadata`, {
    headers: { Accept: 'application/dicom+json', ...authHeaders() },
  });
  if (!response.ok) throw new Error(`series metadata: HTTP ${response.status}`);
  const instances = (await response.json()) as DicomJson[];
  const sortKey = (ds: DicomJson): [number, number] => {
    const ipp = ds['00200032']?.Value as number[] | undefined;
    const iop = ds['00200037']?.Value as number[] | undefined;
    let position = Number.NaN;
    if (ipp && iop && iop.length === 6) {
      const n = [
        iop[1] * iop[5] - iop[2] * iop[4],
        iop[2] * iop[3] - iop[0] * iop[5],
        iop[0] * iop[4] - iop[1] * iop[3],
      ];
      position = ipp[0] * n[0] + ipp[1] * n[1] + ipp[2] * n[2];
    }
    return [Number.isNaN(position) ? 0 : position, Number(tag(ds, '00200013') ?? 0)];
  };
  instances.sort((a, b) => {
    const [pa, ia] = sortKey(a);
    const [pb, ib] = sortKey(b);
    return pa - pb || ia - ib;
  });
  const ids: string[] = [];
  for (const ds of instances) {
    const sop = str(ds, '00080018');
    const frames = Number(tag(ds, '00280008') ?? 1) || 1;
    for (let f = 1; f <= frames; f++) {
      const id = `wadors:${base}/instances/${sop}/frames/${f}`;
      wadors.metaDataManager.add(id, ds as unknown as Parameters<typeof wadors.metaDataManager.add>[1]);
      ids.push(id);
    }
  }
  return ids;
}

/** (series, sop, frame) of a wadors image id. */
export function parseImageId(id: string): { series_uid: string; sop_uid: string; frame: number } {
  const m = /series\/([^/]+)\/instances\/([^/]+)\/frames\/(\d+)/.exec(id);
  return { series_uid: m?.[1] ?? '', sop_uid: m?.[2] ?? '', frame: Number(m?.[3] ?? 1) };
}

/** W/L presets (centre, width) in HU; the usual radiology defaults. */
export const PRESETS: Record<string, { center: number; width: number; key: string }> = {
  'CT lung': { center: -600, width: 1500, key: '1' },
  'CT mediastinum': { center: 50, width: 350, key: '2' },
  'CT bone': { center: 400, width: 1800, key: '3' },
  'CT brain': { center: 40, width: 80, key: '4' },
  'CT abdomen': { center: 60, width: 400, key: '5' },
};
