// Sign-in with the region's identity provider (OpenID Connect, authorization code + PKCE): the
// viewer is a public client, so no secret is involved. The browser goes to the IdP, comes back
// to /viewer/?code=&state=, exchanges the code at the IdP's token endpoint itself and sends the
// token it gets as its bearer token; the server checks it against the issuer's keys.

import { setToken } from './api';

export interface OidcConfig {
  enabled: boolean;
  issuer: string;
  authorization_endpoint: string;
  token_endpoint: string;
  client_id: string;
  scopes: string;
  display_name: string;
  token: 'access_token' | 'id_token';
}

interface Pending {
  verifier: string;
  state: string;
  nonce: string;
  hash: string;
  config: OidcConfig;
  /** A SMART EHR launch (R23): open the launch patient on the way back. */
  smart?: boolean;
}

/** The scopes a SMART EHR launch asks for: the user, the launch context, the patient's studies. */
const SMART_SCOPES = 'openid fhirUser launch patient/ImagingStudy.rs';

const PENDING = 'solent.oidc';

let config: Promise<OidcConfig | null> | null = null;
/** The server's OIDC settings (a public route), null when sign-in with an IdP is off. */
export function oidcConfig(): Promise<OidcConfig | null> {
  config ??= fetch('/api/auth/oidc', { credentials: 'omit', headers: { Accept: 'application/json' } })
    .then((r) => (r.ok ? (r.json() as Promise<OidcConfig>) : null))
    .then((c) => (c?.enabled ? c : null))
    .catch(() => null);
  return config;
}

function b64url(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

const random = (n: number): string => b64url(crypto.getRandomValues(new Uint8Array(n)));
const redirectUri = (): string => `${location.origin}${import.meta.env.BASE_URL}`;

/** Off to the IdP; where the user was (a launch, a study) is kept for the way back. */
export async function startOidc(c: OidcConfig, extra: Record<string, string> = {}): Promise<void> {
  const verifier = random(32);
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  const smart = 'launch' in extra;
  const pending: Pending = { verifier, state: random(16), nonce: random(16), hash: smart ? '' : location.hash, config: c, smart };
  sessionStorage.setItem(PENDING, JSON.stringify(pending));
  const url = new URL(c.authorization_endpoint);
  for (const [k, v] of Object.entries({
    response_type: 'code',
    client_id: c.client_id,
    redirect_uri: redirectUri(),
    scope: c.scopes,
    state: pending.state,
    nonce: pending.nonce,
    code_challenge: b64url(new Uint8Array(digest)),
    code_challenge_method: 'S256',
    ...extra,
  })) {
    url.searchParams.set(k, v);
  }
  location.assign(url.toString());
}

function claims(jwt: string): Record<string, unknown> {
  const part = (jwt.split('.')[1] ?? '').replace(/-/g, '+').replace(/_/g, '/');
  return JSON.parse(decodeURIComponent(escape(atob(part)))) as Record<string, unknown>;
}

/** On the way back from the IdP (?code=&state= or ?error=): exchange the code, keep the token,
 * restore where the user was. False when this page load is no such return. Throws a readable
 * message when the sign-in failed. */
export async function finishOidc(): Promise<boolean> {
  const params = new URLSearchParams(location.search);
  if (!params.has('code') && !params.has('error')) return false;
  const raw = sessionStorage.getItem(PENDING);
  sessionStorage.removeItem(PENDING);
  const pending = raw ? (JSON.parse(raw) as Pending) : null;
  // The code leaves the address bar (and the history) at once; the hash comes back.
  history.replaceState(null, '', `${import.meta.env.BASE_URL}${pending?.hash ?? ''}`);
  if (!pending || params.get('state') !== pending.state) {
    throw new Error('The sign-in answer does not match a sign-in started here; please try again.');
  }
  if (params.has('error')) {
    throw new Error(`${pending.config.display_name} refused: ${params.get('error_description') ?? params.get('error')}`);
  }
  const c = pending.config;
  const response = await fetch(c.token_endpoint, {
    method: 'POST',
    credentials: 'omit',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code: params.get('code') ?? '',
      redirect_uri: redirectUri(),
      client_id: c.client_id,
      code_verifier: pending.verifier,
    }),
  }).catch(() => null);
  if (!response?.ok) {
    throw new Error(`${c.display_name} did not issue a token (${response ? response.status : 'unreachable'}).`);
  }
  const body = (await response.json()) as Record<string, unknown>;
  if (typeof body.id_token === 'string' && claims(body.id_token).nonce !== pending.nonce) {
    throw new Error('The identity token is not for this sign-in (nonce); please try again.');
  }
  const bearer = body[c.token];
  if (typeof bearer !== 'string' || !bearer) throw new Error(`${c.display_name} sent no ${c.token}.`);
  const refresh = typeof body.refresh_token === 'string' ? body.refresh_token : '';
  setToken(bearer, { token_endpoint: c.token_endpoint, client_id: c.client_id, refresh_token: refresh, token: c.token });
  if (pending.smart) {
    if (typeof body.patient !== 'string' || !/^[0-9]+$/.test(body.patient)) {
      throw new Error(`${c.display_name} gave this launch no patient; open the viewer from the EPR again.`);
    }
    history.replaceState(null, '', `${import.meta.env.BASE_URL}#/smart/${body.patient}`);
  }
  return true;
}

/** SMART App Launch "EHR launch" (R23): the EPR opens /viewer/?iss=<this archive's FHIR base>
 * &launch=<its opaque launch id>. Off to the identity provider (the authorization server named
 * by the FHIR server's /.well-known/smart-configuration) with the launch scopes, the launch id
 * and aud=iss; false when this page load is no launch. Throws a readable message when it cannot
 * be one of ours. */
export async function startSmartLaunch(): Promise<boolean> {
  const params = new URLSearchParams(location.search);
  const iss = params.get('iss');
  const launchId = params.get('launch');
  if (!iss || !launchId) return false;
  history.replaceState(null, '', import.meta.env.BASE_URL);
  const base = `${location.origin}/fhir`;
  if (iss.replace(/\/+$/, '') !== base) {
    throw new Error(`This viewer serves ${base}; the EPR launched it for ${iss}.`);
  }
  const c = await oidcConfig();
  const found = await fetch(`${base}/.well-known/smart-configuration`, { credentials: 'omit', headers: { Accept: 'application/json' } }).catch(() => null);
  if (!c || !found?.ok) throw new Error('A SMART launch needs the region\'s single sign-on, which is not available.');
  const smart = (await found.json()) as { authorization_endpoint: string; token_endpoint: string };
  const config = { ...c, authorization_endpoint: smart.authorization_endpoint, token_endpoint: smart.token_endpoint, scopes: SMART_SCOPES };
  await startOidc(config, { launch: launchId, aud: iss });
  return true;
}
