// How identifiers and dates are shown to NHS users.

/** NHS numbers are shown 3-3-4 (NHS Digital guidance: "943 476 5919"); a value that is not a
 * valid NHS number (its check digit, modulus 11, does not match) is never shown as one: it is
 * shown as it came, marked invalid (an image header may carry one the archive did not accept). */
export function nhsNumber(value: string | null | undefined): string {
  if (!value) return '';
  const d = value.replace(/[\s-]/g, '');
  return validNhsNumber(d) ? `${d.slice(0, 3)} ${d.slice(3, 6)} ${d.slice(6)}` : `${value} (invalid)`;
}

/** Ten digits whose last is the modulus 11 check digit of the first nine. */
export function validNhsNumber(d: string): boolean {
  if (!/^\d{10}$/.test(d)) return false;
  const sum = [...d.slice(0, 9)].reduce((acc, c, i) => acc + Number(c) * (10 - i), 0);
  const check = 11 - (sum % 11);
  return check !== 10 && (check === 11 ? 0 : check) === Number(d[9]);
}

/** DICOM PN "FAMILY^GIVEN^MIDDLE" as "FAMILY, Given Middle". */
export function personName(value: string | null | undefined): string {
  if (!value) return '';
  const [family = '', ...rest] = value.split('^');
  const given = rest.filter(Boolean).join(' ');
  return given ? `${family.toUpperCase()}, ${titleCase(given)}` : family.toUpperCase();
}

function titleCase(s: string): string {
  // Letters of any script: \b\w would read "Jörg" as "JöRg".
  return s.toLowerCase().replace(/(^|[^\p{L}\p{N}_])(\p{L})/gu, (_m, before: string, c: string) => before + c.toUpperCase());
}

/** YYYYMMDD as DD-Mon-YYYY (unambiguous across locales). */
export function dicomDate(value: string | null | undefined): string {
  if (!value || value.length < 8) return value ?? '';
  const months = 'Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec'.split(' ');
  const m = months[Number(value.slice(4, 6)) - 1] ?? value.slice(4, 6);
  return `${value.slice(6, 8)}-${m}-${value.slice(0, 4)}`;
}

/** An HL7/DICOM timestamp (YYYYMMDD[HHMM[SS]]) as DD-Mon-YYYY HH:MM. */
export function dicomDateTime(value: string | null | undefined): string {
  if (!value || value.length < 12 || !/^\d{12}/.test(value)) return dicomDate(value);
  return `${dicomDate(value.slice(0, 8))} ${value.slice(8, 10)}:${value.slice(10, 12)}`;
}

/** An <input type=date> value (YYYY-MM-DD) as YYYYMMDD. */
export function toDicomDate(value: string): string {
  return value.replace(/-/g, '');
}
