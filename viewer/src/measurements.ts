// MDT: the presenter's measurements (length, angle, elliptical ROI) on the image shown, as the
// live room carries them, and drawn on followers as annotations they cannot edit. Handles are
// in patient coordinates (mm): the same anatomy whatever each window's size, zoom or pan.

import type { StackViewport, Types } from '@cornerstonejs/core';
import { AngleTool, EllipticalROITool, LengthTool, annotation as csAnnotation, utilities as toolUtils } from '@cornerstonejs/tools';
import type { Types as ToolTypes } from '@cornerstonejs/tools';
import { parseImageId } from './imaging';
import type { Measurement } from './types';

/** What the server keeps per view (services/mdt_live.py MAX_MEASUREMENTS). */
export const MAX_MEASUREMENTS = 50;

const TOOLS = { Length: LengthTool, Angle: AngleTool, EllipticalROI: EllipticalROITool } as const;
type Tool = keyof typeof TOOLS;
/** Handles per tool, as the server checks them (an angle being drawn has two). */
const POINTS: Record<Tool, [number, number]> = { Length: [2, 2], Angle: [2, 3], EllipticalROI: [4, 4] };

const isTool = (name: unknown): name is Tool => typeof name === 'string' && name in TOOLS;
const round = (p: ArrayLike<number>): [number, number, number] => [0, 1, 2].map((i) => Math.round(p[i] * 1000) / 1000) as [number, number, number];

function measured(): ToolTypes.Annotation[] {
  return csAnnotation.state.getAllAnnotations().filter((a) => isTool(a.metadata?.toolName));
}

/** The measurements on the image the viewport shows (the presenter's state), at most MAX. */
export function measurementsOf(vp: StackViewport): Measurement[] {
  const current = vp.getCurrentImageId();
  if (!current) return [];
  const { sop_uid, frame } = parseImageId(current);
  const out: Measurement[] = [];
  for (const a of measured()) {
    const tool = a.metadata?.toolName as Tool;
    const points = a.data?.handles?.points ?? [];
    const [least, most] = POINTS[tool];
    if (a.metadata?.referencedImageId !== current || !a.annotationUID || points.length < least || points.length > most) continue;
    const box = a.data.handles?.textBox;
    out.push({
      uid: a.annotationUID,
      tool,
      sop_uid,
      frame,
      points: points.map(round),
      text_box: box?.hasMoved && box.worldPosition ? round(box.worldPosition) : null,
    });
    if (out.length >= MAX_MEASUREMENTS) break;
  }
  return out;
}

/**
 * A follower shows exactly the presenter's measurements of the image shown: new ones are
 * added as locked annotations (the follower's measurement tools only draw, see
 * imaging.ts followTools), moved ones updated in place, the rest (removed by the presenter,
 * another slice, its own from when it presented) taken off.
 */
export function showMeasurements(vp: StackViewport, list: Measurement[]): void {
  const current = vp.getCurrentImageId();
  const here = current ? parseImageId(current) : null;
  const wanted = new Map(
    list.filter((m) => isTool(m.tool) && here && m.sop_uid === here.sop_uid && m.frame === here.frame).map((m) => [m.uid, m]),
  );
  let changed = false;
  for (const a of measured()) {
    const uid = a.annotationUID ?? '';
    const m = wanted.get(uid);
    if (m && a.metadata?.toolName === m.tool && a.metadata.referencedImageId === current) {
      wanted.delete(uid);
      if (JSON.stringify((a.data.handles?.points ?? []).map(round)) === JSON.stringify(m.points) && sameBox(a, m)) continue;
      place(a, m);
      a.invalidated = true;
    } else {
      csAnnotation.locking.setAnnotationLocked(uid, false);
      csAnnotation.state.removeAnnotation(uid);
    }
    changed = true;
  }
  for (const m of wanted.values()) {
    const a = TOOLS[m.tool].createAnnotationForViewport(vp, { annotationUID: m.uid, highlighted: false }) as ToolTypes.Annotation;
    place(a, m);
    csAnnotation.state.addAnnotation(a, vp.element);
    csAnnotation.locking.setAnnotationLocked(m.uid, true);
    changed = true;
  }
  if (changed) toolUtils.triggerAnnotationRenderForViewportIds([vp.id]);
}

/** A follower who becomes presenter continues from what everyone sees: its copies of the
 * previous presenter's measurements become its own to edit. */
export function unlockMeasurements(): void {
  csAnnotation.locking.unlockAllAnnotations();
}

/** Delete key: the selected measurements go (and, presenting, from everyone's screen). */
export function removeSelectedMeasurements(vp: StackViewport): void {
  for (const uid of csAnnotation.selection.getAnnotationsSelected() ?? []) {
    const a = csAnnotation.state.getAnnotation(uid);
    if (a && isTool(a.metadata?.toolName) && !csAnnotation.locking.isAnnotationLocked(uid)) csAnnotation.state.removeAnnotation(uid);
  }
  toolUtils.triggerAnnotationRenderForViewportIds([vp.id]);
}

function sameBox(a: ToolTypes.Annotation, m: Measurement): boolean {
  const box = a.data.handles?.textBox;
  const mine = box?.hasMoved && box.worldPosition ? round(box.worldPosition) : null;
  return JSON.stringify(mine) === JSON.stringify(m.text_box);
}

function place(a: ToolTypes.Annotation, m: Measurement): void {
  a.data.handles ??= { points: [] };
  a.data.handles.points = m.points.map((p) => [...p] as Types.Point3);
  const box = a.data.handles.textBox;
  if (box) {
    box.hasMoved = m.text_box !== null;
    if (m.text_box) box.worldPosition = [...m.text_box] as Types.Point3;
  }
}
