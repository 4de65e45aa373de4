// Break-glass: the user states why they open a record outside their relationship. The server
// decides, grants for a limited time and audits; the UI only collects the reason.

import { get, post } from './api';
import { h } from './dom';

export type Target = { study_uid: string } | { issuer: string; patient_id: string };

export interface Grant {
  grant: number;
  expires_at: string;
  warning?: string | null;
}

/** Shows the dialog; resolves with the grant, or null when the user cancels. */
export async function breakGlass(target: Target): Promise<Grant | null> {
  const reasons = await get<Record<string, string>>('/api/break-glass/reasons');
  return new Promise((resolve) => {
    const select = h(
      'select',
      { name: 'reason' },
      h('option', { value: '' }, 'Choose a reason…'),
      ...Object.entries(reasons).map(([code, text]) => h('option', { value: code }, text)),
    );
    const text = h('textarea', { name: 'explanation', rows: 3, maxlength: 2000 });
    const error = h('p', { class: 'error', role: 'alert' });
    const dialog = h(
      'dialog',
      { id: 'break-glass', class: 'break-glass' },
      h(
        'form',
        { method: 'dialog' },
        h('h2', {}, 'Break glass'),
        h(
          'p',
          {},
          'You have no care relationship with this patient. Access is time-limited, recorded ' +
            'with your reason and reviewed by the privacy officer.',
        ),
        h('label', {}, 'Reason', select),
        h('label', {}, 'Explain', text),
        error,
        h(
          'menu',
          {},
          h('button', { type: 'button', value: 'cancel', id: 'bg-cancel' }, 'Cancel'),
          h('button', { type: 'submit', value: 'ok', id: 'bg-confirm', class: 'danger' }, 'Break glass'),
        ),
      ),
    );
    const close = (grant: Grant | null) => {
      dialog.close();
      dialog.remove();
      resolve(grant);
    };
    dialog.querySelector('#bg-cancel')?.addEventListener('click', () => close(null));
    dialog.querySelector('form')?.addEventListener('submit', (e) => {
      e.preventDefault();
      if (!select.value || !text.value.trim()) {
        error.textContent = 'Choose a reason and explain.';
        return;
      }
      post<Grant>('/api/break-glass', { reason: select.value, explanation: text.value.trim(), ...target })
        .then(close)
        .catch((err: Error) => {
          error.textContent = err.message;
        });
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** The banner that stays visible while a record is open under break-glass. */
export function breakGlassBanner(expiresAt?: string | null): HTMLElement {
  const until = expiresAt ? ` — expires ${new Date(expiresAt).toLocaleTimeString()}` : '';
  return h('div', { class: 'break-glass-banner', role: 'status' }, `BREAK-GLASS ACCESS — recorded and reviewed${until}`);
}
