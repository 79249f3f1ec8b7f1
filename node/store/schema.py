"""The metadata schema of one site.

PHI (names, patient IDs, birth dates, accession numbers, free text) sits in ``*_phi``
tables beside the rows that a query can release without it: a de-identified answer
is a query that simply does not join them. Every column a C-FIND or a federated query
matches on is indexed, so queries never scan files.
"""

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS patients (
    id INTEGER PRIMARY KEY,
    patient_key TEXT NOT NULL UNIQUE,     -- keyed hash of PatientID + issuer (local link)
    sex TEXT NOT NULL DEFAULT '',
    birth_year INTEGER,                   -- for age ranges without releasing the date
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS patient_phi (
    patient_id INTEGER PRIMARY KEY REFERENCES patients(id) ON DELETE CASCADE,
    pid TEXT NOT NULL,                    -- PatientID
    issuer TEXT NOT NULL DEFAULT '',      -- IssuerOfPatientID
    name TEXT NOT NULL DEFAULT '',        -- PatientName
    birth_date TEXT NOT NULL DEFAULT ''   -- PatientBirthDate (YYYYMMDD)
);
CREATE INDEX IF NOT EXISTS patient_phi_pid ON patient_phi(pid);
CREATE INDEX IF NOT EXISTS patient_phi_name ON patient_phi(name);
-- PN matching in C-FIND is case-insensitive (= ... COLLATE NOCASE, LIKE): needs this one.
CREATE INDEX IF NOT EXISTS patient_phi_name_nocase ON patient_phi(name COLLATE NOCASE);

CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL UNIQUE,
    patient_id INTEGER NOT NULL REFERENCES patients(id),
    study_date TEXT NOT NULL DEFAULT '',  -- YYYYMMDD
    study_time TEXT NOT NULL DEFAULT '',  -- HHMMSS.ffffff
    source TEXT NOT NULL DEFAULT 'local', -- 'local' (C-STORE) or 'upstream' (synced)
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_id);
CREATE INDEX IF NOT EXISTS studies_date ON studies(study_date);

CREATE TABLE IF NOT EXISTS study_phi (
    study_id INTEGER PRIMARY KEY REFERENCES studies(id) ON DELETE CASCADE,
    accession TEXT NOT NULL DEFAULT '',
    study_id_text TEXT NOT NULL DEFAULT '',   -- StudyID
    description TEXT NOT NULL DEFAULT '',
    referring_physician TEXT NOT NULL DEFAULT '',
    institution TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS study_phi_accession ON study_phi(accession);

CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    series_uid TEXT NOT NULL UNIQUE,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    modality TEXT NOT NULL DEFAULT '',
    body_part TEXT NOT NULL DEFAULT '',
    series_number INTEGER,
    series_date TEXT NOT NULL DEFAULT '',
    series_time TEXT NOT NULL DEFAULT '',
    last_instance_at REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_id);
CREATE INDEX IF NOT EXISTS series_modality ON series(modality, body_part);

CREATE TABLE IF NOT EXISTS series_phi (
    series_id INTEGER PRIMARY KEY REFERENCES series(id) ON DELETE CASCADE,
    description TEXT NOT NULL DEFAULT '',
    operators TEXT NOT NULL DEFAULT '',
    station TEXT NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    sop_uid TEXT NOT NULL UNIQUE,
    series_id INTEGER NOT NULL REFERENCES series(id),
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    transfer_syntax TEXT NOT NULL,
    rows INTEGER,
    columns INTEGER,
    number_of_frames INTEGER,
    position_z REAL,                      -- ImagePositionPatient[2], for ordering
    path TEXT,                            -- relative to the data dir; NULL = not local yet
    size INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT 'local',
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_id, instance_number);

-- Durable work (e.g. 'publish' a completed series). A job row is written in the same
-- transaction as the instance that causes it, so nothing acknowledged is forgotten.
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | running | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (kind, ref)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, not_before);

-- Upstream PACS sync bookkeeping and the scratch cache of retrieved instances.
CREATE TABLE IF NOT EXISTS sync_state (
    upstream TEXT PRIMARY KEY,
    last_sync_at REAL NOT NULL,
    last_study_date TEXT NOT NULL DEFAULT '',
    studies_seen INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS cache_entries (
    instance_id INTEGER PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
    size INTEGER NOT NULL,
    last_access REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_lru ON cache_entries(last_access);
"""
