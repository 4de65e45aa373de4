// Hash routes: #/ worklist, #/patient/ISSUER/ID timeline, #/study/UID reading, #/mdt meetings,
// #/notices report discrepancies (R32), #/launch[/TRUST]?query an EPR launch that came without a
// token (launch.ts), #/smart/PATIENT the patient of a SMART EHR launch (?iss=&launch=, oidc.ts).
// Hash routing keeps every screen one static index.html (IID lands on /viewer/#/...).
// Code-split: this entry chunk holds the worklist and the sign-in only; the reading screen
// (the Cornerstone core, trimmed by viewer/slim.ts) and the MDT screens are loaded on first
// use. The reading chunks are `modulepreload`ed (fetched and compiled, not run) once the
// worklist or a timeline is idle, and at once on a study route, where the study's series,
// metadata and a server-rendered first image are fetched alongside (data.ts, preview.ts); the
// core is run only after that preview is on screen, since evaluating it holds the main thread.

import './style.css';
import { get, setToken, signIn, token } from './api';
import { clear, errorBox, h } from './dom';
import { toggleHelp } from './help';
import { studyContext } from './data';
import { launch } from './launch';
import { finishOidc, oidcConfig, startOidc, startSmartLaunch } from './oidc';
import { dropPreview, startPreview, warmAround } from './preview';
import type { Me } from './types';
import { worklist } from './worklist';

type ReadingModule = typeof import('./studyview');
let reading: ReadingModule | null = null;
const loadReading = (): Promise<ReadingModule> =>
  import('./studyview').then((m) => {
    reading = m;
    return m;
  });

/** File names of the reading screen's chunks, written in by the build (slim.ts readingChunks);
 * the placeholder stays as is in the dev server, where there is nothing to preload. */
const READING_CHUNKS = '__SOLENT_READING_CHUNKS__';
/** The decoder worker's files for lossless HTJ2K (slim.ts), for the HTTP cache. */
const DECODER_FILES = '__SOLENT_DECODER_FILES__';
let preloaded: Promise<unknown> | null = null;
/** Settles when the reading chunks are fetched (or failed: import() will report it). */
function preloadReading(): Promise<unknown> {
  if (READING_CHUNKS.startsWith('__')) return Promise.resolve();
  if (!preloaded) {
    for (const file of DECODER_FILES.split(',')) {
      void fetch(`${import.meta.env.BASE_URL}${file}`).then((r) => r.arrayBuffer()).catch(() => undefined);
    }
  }
  preloaded ??= Promise.all(
    READING_CHUNKS.split(',').map(
      (file) =>
        new Promise((done) => {
          const link = document.createElement('link');
          link.rel = 'modulepreload';
          link.href = `${import.meta.env.BASE_URL}${file}`;
          link.onload = link.onerror = done;
          document.head.append(link);
        }),
    ),
  );
  return preloaded;
}
/** After the worklist or timeline has drawn and the network is quiet: a study is likely next. */
function preloadWhenIdle(): void {
  const later = () => (window.requestIdleCallback ?? ((f: () => void) => setTimeout(f, 1)))(() => void preloadReading(), { timeout: 3000 });
  setTimeout(later, 500);
}

const app = document.getElementById('app') as HTMLElement;
const who = document.getElementById('who') as HTMLElement;
let leave: (() => void) | null = null;

/** Why the last single sign-on failed, shown once on the sign-in form. */
let signInProblem = '';

function signInForm(): void {
  const error = h('p', { class: 'error', role: 'alert' }, signInProblem);
  signInProblem = '';
  const form = h(
    'form',
    { id: 'sign-in', class: 'card' },
    h('h1', {}, 'Sign in to Solent'),
    h('label', {}, 'User name', h('input', { name: 'username', autocomplete: 'username', required: true })),
    h('label', {}, 'Password', h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true })),
    h(
      'label',
      {},
      'Organisation (ODS code; if you work for several)',
      h('input', { name: 'org', autocomplete: 'organization', maxlength: '16', pattern: '[A-Za-z0-9_-]*' }),
    ),
    error,
    h('button', { type: 'submit' }, 'Sign in'),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const data = new FormData(form);
    signIn(String(data.get('username')), String(data.get('password')), String(data.get('org') ?? ''))
      .then(() => route())
      .catch((err: Error) => (error.textContent = err.message));
  });
  app.replaceChildren(form);
  void oidcConfig().then((c) => {
    if (!c || !form.isConnected) return;
    const sso = h('button', { type: 'button', id: 'sign-in-oidc', class: 'secondary' }, `Sign in with ${c.display_name}`);
    sso.addEventListener('click', () => void startOidc(c).catch((err: Error) => (error.textContent = err.message)));
    form.append(h('p', { class: 'or' }, 'or'), sso);
  });
}

async function showWho(): Promise<void> {
  try {
    const me = await get<Me>('/api/auth/me');
    const out = h('button', { type: 'button', id: 'sign-out' }, 'Sign out');
    out.addEventListener('click', () => {
      setToken(null);
      route();
    });
    const role = me.national_role ? [me.national_role.job_role] : [];
    who.replaceChildren(`${me.name} · ${me.trust ?? ''} · ${[...role, ...me.roles].join(', ')} `, out);
  } catch {
    who.replaceChildren();
  }
}

interface StudyBundle {
  entry?: { resource: { identifier?: { system?: string; value?: string }[]; started?: string } }[];
}

/** A SMART launch's patient: its studies through the launch token's own scope (FHIR
 * ImagingStudy search), the newest opened with the rest listed (as an IID launch of several). */
async function smartPatient(patient: string): Promise<void> {
  const found = await get<StudyBundle>(`/fhir/ImagingStudy?patient=Patient/${encodeURIComponent(patient)}`);
  const uids = (found.entry ?? [])
    .map((e) => ({ started: e.resource.started ?? '', uid: (e.resource.identifier ?? []).find((i) => i.system === 'urn:dicom:uid')?.value?.replace(/^urn:oid:/, '') ?? '' }))
    .filter((s) => /^[0-9.]+$/.test(s.uid))
    .sort((a, b) => b.started.localeCompare(a.started))
    .map((s) => s.uid);
  if (!uids.length) {
    app.append(errorBox('No images for this patient that you may see.'));
    return;
  }
  const rest = uids.length > 1 ? `?launch=${uids.join(',')}` : '';
  location.replace(`#/study/${uids[0]}${rest}`);
}

async function route(): Promise<void> {
  leave?.();
  leave = null;
  reading?.closeStudyView();
  dropPreview();
  clear(app);
  app.className = '';
  if (!token()) {
    who.replaceChildren();
    signInForm();
    return;
  }
  if (!who.textContent) void showWho();
  const [path, search = ''] = location.hash.replace(/^#/, '').split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(search);
  try {
    if (parts[0] === 'launch') {
      await launch(app, parts[1] ?? null, search);
    }
    else if (parts[0] === 'smart' && parts[1]) {
      await smartPatient(parts[1]);
    }
    else if (parts[0] === 'patient' && parts.length === 3) {
      await (await import('./timeline')).timeline(app, parts[1], parts[2]);
      preloadWhenIdle();
    }
    else if (parts[0] === 'study' && parts[1]) {
      const chunks = preloadReading();
      const shown = startPreview(app, parts[1]);
      void studyContext(parts[1]).catch(() => undefined);
      void Promise.all([shown, chunks]).then(() => warmAround(parts[1], 8));
      await Promise.race([shown, new Promise((r) => setTimeout(r, 1500))]);
      const launched = (params.get('launch') ?? '').split(',').filter((u) => /^[0-9.]+$/.test(u));
      await (await loadReading()).studyView(app, parts[1], {
        prior: params.has('prior') ? params.get('prior') || null : undefined,
        launched: launched.length > 1 ? launched : undefined,
      });
    } else if (parts[0] === 'notices') {
      await (await import('./mdt_outcome')).notices(app, params);
    } else if (parts[0] === 'mdt') {
      const [mdt] = await Promise.all([import('./mdt'), loadReading()]); // mdt.ts uses the reading screen
      if (parts[1]) leave = await mdt.meeting(app, parts[1]);
      else await mdt.meetings(app, params);
    }
    else {
      worklist(app, params);
      preloadWhenIdle();
    }
  } catch (e) {
    app.append(errorBox((e as Error).message));
  }
}

window.addEventListener('hashchange', () => void route());
window.addEventListener('solent:signed-out', () => {
  who.replaceChildren();
  signInForm();
});
document.getElementById('help-button')?.addEventListener('click', toggleHelp);
document.addEventListener('keydown', (e) => {
  if (e.key === '?' && !(e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement)) toggleHelp();
  if (e.key === 'Escape') (document.getElementById('help') as HTMLElement).hidden = true;
});
// A SMART EHR launch goes to the identity provider at once; back from it: finish the sign-in
// first, then show where the user was (or the launch patient).
void startSmartLaunch()
  .then(async (away) => {
    if (!away) await finishOidc();
    return away;
  })
  .catch((e: Error) => {
    signInProblem = e.message;
    return false;
  })
  .then(async (away) => {
    if (away) return;
    const problem = signInProblem;
    await route();
    if (problem && token()) {
      // Signed in already: the sign-in form that would show it is not on screen.
      signInProblem = '';
      app.prepend(errorBox(problem));
    }
  });
