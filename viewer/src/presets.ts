// W/L presets (centre, width) in HU; the usual radiology defaults. Kept apart from imaging.ts
// so the help panel does not pull the Cornerstone core into the entry chunk.

export const PRESETS: Record<string, { center: number; width: number; key: string }> = {
  'CT lung': { center: -600, width: 1500, key: '1' },
  'CT mediastinum': { center: 50, width: 350, key: '2' },
  'CT bone': { center: 400, width: 1800, key: '3' },
  'CT brain': { center: 40, width: 80, key: '4' },
  'CT abdomen': { center: 60, width: 400, key: '5' },
};
