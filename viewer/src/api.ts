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

export function setToken(value: string | null): void {
  if (value === null) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, value);
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
export async function signIn(name: string, password: string): Promise<void> {
  const basic = btoa(unescape(encodeURIComponent(`${name}:${password}`)));
  // credentials 'omit': a 401 Basic challenge must not open the browser's own password prompt.
  const response = await fetch('/api/auth/token', {
    method: 'POST',
    credentials: 'omit',
    headers: { Authorization: `Basic ${basic}`, Accept: 'application/json' },
  });
  if (!response.ok) throw await failure(response);
  const body = (await response.json()) as { access_token: string };
  setToken(body.access_token);
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
