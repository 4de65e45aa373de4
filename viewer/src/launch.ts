// An EPR launch (IHE IID) opened in a plain browser. The server sends a launch without a token
// here (#/launch[/TRUST]?the EPR's query); once signed in, the viewer asks /api/viewer/launch
// where to go — the same trust scoping and the same refusals as the IID endpoint — and replaces
// this entry with the patient's timeline or the study (Back does not launch again).

import { ApiError, get } from './api';
import { breakGlass, type Target } from './breakglass';
import { errorBox, h } from './dom';
import { dicomDate } from './format';

export interface LaunchedStudy {
  study_uid: string;
  trust: string;
  date: string | null;
  modalities: string[];
  description: string | null;
  accession: string | null;
}

interface LaunchAnswer {
  href: string;
  studies: LaunchedStudy[];
}

/** What the last launch of this page named: labels for the list beside a multi-study launch. */
const launched = new Map<string, LaunchedStudy>();

/** Whom to break glass for, when the launch names one study or one trust's record. */
function breakGlassTarget(params: URLSearchParams, trust: string | null): Target | null {
  const kind = (params.get('requestType') ?? '').toUpperCase();
  if (kind === 'STUDY') {
    const uid = (params.get('studyUID') ?? '').split(',')[0].trim();
    return /^[0-9.]+$/.test(uid) ? { study_uid: uid } : null;
  }
  if (kind === 'PATIENT') {
    const cx = (params.get('patientID') ?? '').split('^');
    const authority = (cx[3] ?? '').split('&')[0] || trust;
    if (cx[0] && authority && authority !== 'NHS' && !authority.startsWith('2.16.840.1.113883.2.1.4.1')) {
      return { issuer: authority, patient_id: cx[0] };
    }
  }
  return null;
}

export async function launch(root: HTMLElement, trust: string | null, search: string): Promise<void> {
  const params = new URLSearchParams(search);
  const ask = new URLSearchParams(params);
  if (trust) ask.set('trust', trust);
  root.replaceChildren(h('p', { class: 'loading' }, 'Opening the images…'));
  let answer: LaunchAnswer;
  try {
    answer = await get<LaunchAnswer>(`/api/viewer/launch?${ask.toString()}`);
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 404) {
      root.replaceChildren(h('h1', {}, 'Cannot open the images'), errorBox((e as Error).message));
      return;
    }
    // Unknown and not visible look the same (the server answers them alike).
    const target = breakGlassTarget(params, trust);
    const button = target && h('button', { id: 'break-glass-open', class: 'danger' }, 'Break glass…');
    button?.addEventListener('click', async () => {
      if (target && (await breakGlass(target))) await launch(root, trust, search);
    });
    root.replaceChildren(h('h1', {}, 'Cannot open the images'), errorBox('No such patient or study that you can see.'));
    if (button) root.append(h('p', {}, 'If this patient is in your care in an emergency, you may break glass.'), button);
    return;
  }
  for (const s of answer.studies) launched.set(s.study_uid, s);
  location.replace(answer.href);
}

/** The studies of a multi-study launch, above the images: the one shown, and links to the rest. */
export function launchList(uids: string[], current: string): HTMLElement {
  const label = (uid: string, i: number): string => {
    const s = launched.get(uid);
    if (!s) return `Study ${i + 1}`;
    return [dicomDate(s.date), s.trust, s.modalities.join('/'), s.description ?? '', s.accession ?? ''].filter(Boolean).join(' ');
  };
  const all = uids.join(',');
  return h(
    'nav',
    { class: 'launch-list', 'aria-label': 'Studies of this launch' },
    `${uids.length} studies launched: `,
    ...uids.map((uid, i) =>
      uid === current
        ? h('strong', { 'aria-current': 'page', 'data-study': uid }, label(uid, i))
        : h('a', { href: `#/study/${encodeURIComponent(uid)}?launch=${all}`, 'data-study': uid }, label(uid, i)),
    ),
  );
}
