// The viewer <-> server contract (issue 12), as the server's JSON.

export interface PatientEntry {
  key: string;
  name: string;
  birth_date: string | null;
  sex: string | null;
  nhs_number: string | null;
  records: { trust: string; patient_id: string }[];
  study_count: number;
  latest_study_date: string | null;
}

export interface SearchResult {
  total: number;
  offset: number;
  limit: number;
  /** More studies matched than the server reads: ``total`` is a floor, refine the search. */
  capped?: boolean;
  max_studies?: number;
  detail?: string | null;
  patients: PatientEntry[];
}

export interface StudyEntry {
  study_uid: string;
  trust: string;
  patient_id: string;
  date: string | null;
  time: string | null;
  modalities: string[];
  body_part: string | null;
  description: string | null;
  accession: string | null;
  series_count: number;
  instance_count: number;
  report_status: 'final' | 'preliminary' | 'amended' | null;
  access: 'relationship' | 'break-glass';
}

export interface PriorEntry extends StudyEntry {
  /** The normalised procedure code (NICIP, else SNOMED CT) from the trust's mapping table. */
  procedure_code: string | null;
  /** Why it is relevant to the current study; null: it is not. */
  relevance: 'code' | 'region' | 'modality' | null;
}

export interface BreakGlassState {
  grant_id: number;
  expires_at: string;
}

export interface Timeline {
  patient: PatientEntry;
  studies: StudyEntry[];
  break_glass: BreakGlassState | null;
}

export interface SeriesEntry {
  series_uid: string;
  modality: string;
  number: number | null;
  description: string | null;
  body_part: string | null;
  instance_count: number;
  frames: number;
}

export interface StudyContext {
  study: StudyEntry;
  patient: PatientEntry;
  series: SeriesEntry[];
  /** The one to hang first (R19: same mapped procedure, then body region, modality). */
  priors: PriorEntry[];
  /** The caller's live break-glass grant covering this patient (its expiry for the banner). */
  break_glass?: BreakGlassState | null;
}

export interface ReportVersion {
  version: number;
  status: string;
  issued: string | null;
  text: string;
}

export interface Report {
  id: string | number;
  status: string;
  issued: string | null;
  author: string | null;
  text: string;
  versions: ReportVersion[];
}

export interface KeyImage {
  id: number | string;
  series_uid: string;
  sop_uid: string;
  frame: number;
  note: string;
  by: string;
  at: string;
}

export interface Camera {
  zoom: number;
  pan: [number, number];
  /** The point at the centre of the view (patient coordinates, mm): followed instead of
   * `pan` (canvas pixels), so windows of other sizes centre on the same anatomy. */
  focal?: [number, number, number] | null;
  rotation: number;
  flip_h: boolean;
  flip_v: boolean;
  invert: boolean;
}

/** A presenter's measurement on the image shown (MDT): handles in patient coordinates (mm),
 * so it lands on the same anatomy in every participant's window. */
export interface Measurement {
  uid: string;
  tool: 'Length' | 'Angle' | 'EllipticalROI';
  sop_uid: string;
  frame: number;
  points: [number, number, number][];
  /** where the presenter dragged the label to; null where the tool places it */
  text_box: [number, number, number] | null;
}

export interface ViewState {
  item_id: number | null;
  study_uid: string;
  series_uid: string;
  image_index: number;
  voi: { center: number; width: number } | null;
  camera: Camera;
  measurements: Measurement[];
}

export interface MeetingItem {
  id: number;
  position: number;
  /** null (with every patient field) when the caller may not see this patient */
  issuer: string | null;
  patient_id: string | null;
  patient_name: string | null;
  nhs_number: string | null;
  study_uids: string[];
  outcome: string | null;
  /** This item's prefetch (null when the caller may not see the patient). */
  prefetch: { state: string; warmed: number } | null;
}

export interface Meeting {
  id: number;
  title: string;
  date: string;
  time: string | null;
  team: string;
  coordinator: string;
  presenter: string | null;
  items: MeetingItem[];
  prefetch: { state: 'pending' | 'running' | 'done' | 'failed'; done: number; total: number };
}

export interface Me {
  kind: string;
  name: string;
  trust: string | null;
  trusts: string[];
  roles: string[];
  permissions: string[];
  /** The national RBAC role the session acts under (R33), or null. */
  national_role: { org: string; job_role: string; activities: string[] } | null;
}

/** R32: the radiology input to an MDT, recorded against the studies reviewed. */
export interface MdtOutcome {
  id: number;
  meeting_id: number;
  item_id: number;
  opinion: string;
  plan: string;
  reviewed: { study_uid: string; series_uids: string[] }[];
  discrepancy: boolean;
  discrepancy_note: string | null;
  by: string;
  trust: string | null;
  at: string;
  notices: { id: number; trust: string; reporter: string | null; status: string; acknowledged_by: string | null; response: string | null }[];
}

/** R32: a discrepancy with a report, addressed to its primary reporter. */
export interface ReporterNotice {
  id: number;
  status: 'open' | 'acknowledged';
  trust: string;
  reporter: string | null;
  study_uid: string;
  accession: string;
  report_version: number;
  patient: { issuer: string; patient_id: string };
  meeting_id: number;
  item_id: number;
  opinion: string;
  plan: string;
  discrepancy_note: string | null;
  flagged_by: string;
  flagged_trust: string | null;
  flagged_at: string;
  acknowledged_by: string | null;
  acknowledged_at: string | null;
  response: string | null;
}
