// The one place the app talks JSON to the server: bearer token, {"detail"} errors.

const TOKEN_KEY = 'solent.token';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly detail: string,
  ) {
    super(`${status}: ${detail}`);
  }
}

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** How an identity provider's token is renewed: its refresh token at its token endpoint
 * (``refresh_token`` empty: the IdP gave none, the user signs in again when it expires). */
export interface Renewal {
  token_endpoint: string;
  client_id: string;
  refresh_token: string;
  token: 'access_token' | 'id_token';
}

const RENEWAL_KEY = 'solent.renewal';
const RECEIVED_KEY = 'solent.token.received';
/** Renew when this share of a token's lifetime has passed: an MDT meeting or a long reporting
 * session outlives one token (60 minutes by default) and must not fall back to sign-in. */
const RENEW_AT = 0.8;
let renewTimer: ReturnType<typeof setTimeout> | undefined;

/** Keep ``value`` as the bearer token. ``renewal``: how to renew an identity provider's token
 * (null: a token of this archive, renewed at /api/auth/token; omitted: unchanged). */
export function setToken(value: string | null, renewal?: Renewal | null): void {
  if (value === null) {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(RENEWAL_KEY);
    sessionStorage.removeItem(RECEIVED_KEY);
  } else {
    sessionStorage.setItem(TOKEN_KEY, value);
    sessionStorage.setItem(RECEIVED_KEY, String(Date.now()));
    if (renewal === null) sessionStorage.removeItem(RENEWAL_KEY);
    else if (renewal !== undefined) sessionStorage.setItem(RENEWAL_KEY, JSON.stringify(renewal));
  }
  scheduleRenewal();
}

/** A token's lifetime in seconds (exp - iat), null for one with no expiry inside (API tokens).
 * Counted from when the viewer got it, not against the browser's clock: a workstation whose
 * clock is off by minutes would otherwise renew too late, or over and over. */
function lifetime(jwt: string): number | null {
  try {
    const part = (jwt.split('.')[1] ?? '').replace(/-/g, '+').replace(/_/g, '/');
    const c = JSON.parse(atob(part)) as { iat?: unknown; exp?: unknown };
    if (typeof c.exp !== 'number' || typeof c.iat !== 'number' || c.exp <= c.iat) return null;
    return c.exp - c.iat;
  } catch {
    return null;
  }
}

function scheduleRenewal(): void {
  clearTimeout(renewTimer);
  renewTimer = undefined;
  const t = token();
  const life = t ? lifetime(t) : null;
  if (!t || !life) return;
  const received = Number(sessionStorage.getItem(RECEIVED_KEY)) || Date.now();
  const due = received + RENEW_AT * life * 1000;
  renewTimer = setTimeout(() => void renew(t), Math.max(1000, due - Date.now()));
}

async function renew(old: string): Promise<void> {
  if (token() !== old) return;
  const raw = sessionStorage.getItem(RENEWAL_KEY);
  const renewal = raw ? (JSON.parse(raw) as Renewal) : null;
  if (renewal && !renewal.refresh_token) return; // the IdP's session ends with its token
  try {
    const response = renewal
      ? await fetch(renewal.token_endpoint, {
          method: 'POST',
          credentials: 'omit',
          headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
          body: new URLSearchParams({
            grant_type: 'refresh_token',
            refresh_token: renewal.refresh_token,
            client_id: renewal.client_id,
          }),
        })
      : await fetch('/api/auth/token', {
          method: 'POST',
          credentials: 'omit',
          headers: { Authorization: `Bearer ${old}`, Accept: 'application/json' },
        });
    // Refused (the session's 12 hours are over, the account was signed out): nothing to do
    // here; the next request is answered 401 and the viewer asks the user to sign in.
    if (!response.ok || token() !== old) return;
    const body = (await response.json()) as Record<string, unknown>;
    const fresh = body[renewal ? renewal.token : 'access_token'];
    if (typeof fresh !== 'string' || !fresh) return;
    const refresh = typeof body.refresh_token === 'string' ? body.refresh_token : renewal?.refresh_token;
    setToken(fresh, renewal ? { ...renewal, refresh_token: refresh ?? '' } : null);
  } catch {
    // Unreachable for a moment: try again in a minute while the token is still ours.
    if (token() === old) renewTimer = setTimeout(() => void renew(old), 60_000);
  }
}

let purpose: string | null = null;

/** Why this page reads (``mdt:<id>`` while an MDT meeting is open): sent with every API and
 * DICOMweb request, so the archive's audit records name the meeting (it checks the claim). */
export function setPurpose(value: string | null): void {
  purpose = value;
}

export function authHeaders(): Record<string, string> {
  const t = token();
  const headers: Record<string, string> = t ? { Authorization: `Bearer ${t}` } : {};
  if (t && purpose) headers['X-Solent-Purpose'] = purpose;
  return headers;
}

async function failure(response: Response): Promise<ApiError> {
  let detail = response.statusText || 'request failed';
  try {
    const body = (await response.json()) as { detail?: unknown };
    if (typeof body.detail === 'string') detail = body.detail;
    else if (body.detail !== undefined) detail = JSON.stringify(body.detail);
  } catch {
    /* not JSON: keep the status text */
  }
  if (response.status === 401 && token()) {
    // The token expired or was revoked: back to the sign-in form.
    setToken(null);
    window.dispatchEvent(new CustomEvent('solent:signed-out'));
  }
  return new ApiError(response.status, detail);
}

export async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json', ...authHeaders() };
  const init: RequestInit = { method, headers, credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

export const get = <T>(path: string): Promise<T> => request<T>('GET', path);
export const post = <T>(path: string, body: unknown): Promise<T> => request<T>('POST', path, body);
export const put = <T>(path: string, body: unknown): Promise<T> => request<T>('PUT', path, body);
export const del = (path: string): Promise<void> => request<void>('DELETE', path);

/** Password sign-in: the server exchanges HTTP Basic credentials for a bearer token. */
/** Sign in; ``org`` (R33): the organisation (ODS code) the session acts for, '' for all of the
 * account's (an account with national roles at several organisations must choose). */
export async function signIn(name: string, password: string, org = ''): Promise<void> {
  const basic = btoa(unescape(encodeURIComponent(`${name}:${password}`)));
  const at = org.trim() ? `?org=${encodeURIComponent(org.trim())}` : '';
  // credentials 'omit': a 401 Basic challenge must not open the browser's own password prompt.
  const response = await fetch(`/api/auth/token${at}`, {
    method: 'POST',
    credentials: 'omit',
    headers: { Authorization: `Basic ${basic}`, Accept: 'application/json' },
  });
  if (!response.ok) throw await failure(response);
  const body = (await response.json()) as { access_token: string };
  setToken(body.access_token, null);
}

/** A binary resource (thumbnail, rendered frame) as an object URL, with the bearer token. */
export async function blobUrl(path: string, accept = 'image/jpeg, image/png'): Promise<string> {
  const response = await fetch(path, { headers: { Accept: accept, ...authHeaders() }, credentials: 'omit' });
  if (!response.ok) throw await failure(response);
  return URL.createObjectURL(await response.blob());
}

export function query(params: Record<string, string | number | null | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

// A reload keeps the session (sessionStorage): its renewal is planned again.
scheduleRenewal();
