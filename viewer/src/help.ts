// The help panel: every keyboard shortcut of the reading screen.

import { h } from './dom';
import { PRESETS } from './presets';

const SHORTCUTS: [string, string][] = [
  ['↑ / ← , ↓ / →', 'previous / next image'],
  ['Page Up / Page Down', '10 images back / forward'],
  ['Home / End', 'first / last image'],
  ['Mouse wheel', 'scroll through images'],
  ['Left drag', 'the chosen tool (W/L by default)'],
  ['Middle drag / right drag', 'pan / zoom'],
  ['w s p z', 'tool: window/level, scroll, pan, zoom'],
  ['l a o', 'tool: length, angle, elliptical ROI (mean/SD/area)'],
  ['Delete', 'remove the selected measurement (click it first)'],
  ['r h v i', 'rotate 90°, flip horizontal, flip vertical, invert'],
  ['0', 'reset the view'],
  ['c', 'cine play / stop'],
  ['k', 'mark the image shown as a key image (with a note)'],
  ...Object.entries(PRESETS).map(([name, p]): [string, string] => [p.key, `preset ${name} (W ${p.width} L ${p.center})`]),
  ['?', 'this help'],
];

export function toggleHelp(): void {
  const panel = document.getElementById('help');
  if (!panel) return;
  if (!panel.hidden) {
    panel.hidden = true;
    return;
  }
  const close = h('button', { type: 'button', id: 'help-close' }, 'Close');
  close.addEventListener('click', () => (panel.hidden = true));
  panel.replaceChildren(
    h('h2', {}, 'Keyboard shortcuts'),
    h('table', {}, h('tbody', {}, ...SHORTCUTS.map(([k, what]) => h('tr', {}, h('th', {}, h('kbd', {}, k)), h('td', {}, what))))),
    close,
  );
  panel.hidden = false;
}
